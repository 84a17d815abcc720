"""Evaluation: loss and top-1/top-5 of a network on a split, in eval mode, every module's mode restored.

>>> result = evaluate(model, data.test_x, data.test_y, data.mean, data.std)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from legr.data.stream import make_loader

Device = str | torch.device | None


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy ``loss``, ``top1`` and ``top5`` accuracy as fractions in [0, 1], over ``n`` samples.

    ``top5`` is top-min(5, classes) accuracy, so it equals 1.0 for models with at most 5 classes.
    """

    loss: float
    top1: float
    top5: float
    n: int


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode, then restore each module's own previous mode."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (or buffer); CPU for a model with neither."""
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: Sequence[float] | None,
             std: Sequence[float] | None, batch_size: int = 512, device: Device = None) -> EvalResult:
    """Loss and top-1/top-5 accuracy of ``model`` on images ``x`` (uint8 NCHW) with labels ``y``.

    Runs in eval mode under ``torch.inference_mode`` and restores the previous train/eval mode of every module.
    ``device`` None: the model's device (the model is not moved; give ``device`` only where it already lives).
    """
    if len(x) == 0:
        raise ValueError("evaluate needs at least one sample")
    device = torch.device(device) if device is not None else model_device(model)
    loader = make_loader(x, y, batch_size, mean, std, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    top1 = torch.zeros((), dtype=torch.int64, device=device)
    topk = torch.zeros((), dtype=torch.int64, device=device)
    with _eval_mode(model), torch.inference_mode():
        for xb, yb in loader:
            logits = model(xb)
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").double()
            k = min(5, logits.shape[1])
            hits = logits.topk(k, dim=1).indices == yb[:, None]
            top1 += hits[:, 0].sum()
            topk += hits.any(dim=1).sum()
    n = len(x)
    return EvalResult(loss=loss_sum.item() / n, top1=top1.item() / n, top5=topk.item() / n, n=n)


def predict_logits(model: nn.Module, x: torch.Tensor, mean: Sequence[float] | None, std: Sequence[float] | None,
                   batch_size: int = 512, device: Device = None) -> torch.Tensor:
    """The outputs (N, classes) of ``model`` on images ``x`` (uint8 NCHW), float32 on the CPU, in eval mode under
    ``torch.inference_mode`` (every module's mode restored): what a run-time layer on top of the network (the
    probability layer, `legr.engine.prior`) works from, computed once and replayed."""
    device = torch.device(device) if device is not None else model_device(model)
    labels = torch.zeros(len(x), dtype=torch.long)  # the loader wants labels; none are read
    outputs = []
    with _eval_mode(model), torch.inference_mode():
        for xb, _ in make_loader(x, labels, batch_size, mean, std, device=device):
            outputs.append(model(xb).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, 0)
