"""Adaptive BatchNorm: re-estimate a (pruned) network's BN statistics on a few training batches."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from legr.data.stream import make_loader
from legr.training.evaluate import Device
from legr.training.loops import cycle_batches


def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor | tuple[torch.Tensor, Any]]) -> int:
    """Adaptive BatchNorm (Li et al., EagleEye, ECCV 2020): re-estimate every BatchNorm's running statistics.

    Resets the running mean/var of each ``_BatchNorm`` module, then forwards ``batches`` (input tensors, or
    ``(inputs, labels)`` pairs, already normalized and on the model's device) without gradients, with only the
    BatchNorm modules in train mode (dropout and the rest stay in eval mode), accumulating a cumulative average
    (momentum None). Afterwards every module's train/eval mode and every BatchNorm's momentum are restored; only BN
    buffers (running_mean, running_var, num_batches_tracked) change. A pruned network's old statistics no longer
    match its inputs (most un-tuned pruned CIFAR networks score near chance); after this they do. Returns the number
    of batches forwarded (0: the model has no BatchNorm, nothing was changed).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    count = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        with torch.no_grad():
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
                count += 1
    finally:
        for module, training in modes:
            module.training = training
        for m, momentum in momenta:
            m.momentum = momentum
    if count == 0:
        raise ValueError("recalibrate_bn got no batches (its statistics were reset): give at least one batch")
    return count


def bn_batches(x: torch.Tensor, y: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None,
               count: int, batch_size: int = 128, *, augment: bool = True, seed: int = 0,
               device: Device = None) -> list[torch.Tensor]:
    """``count`` fixed, shuffled (and, by default, augmented as in training) input batches for `recalibrate_bn`,
    drawn once so that every network recalibrated with them sees the same images."""
    loader = make_loader(x, y, batch_size, mean, std, shuffle=True, augment=augment, drop_last=len(x) >= batch_size,
                         seed=seed, device=device)
    return [xb for _, (xb, _) in zip(range(count), cycle_batches(loader))]
