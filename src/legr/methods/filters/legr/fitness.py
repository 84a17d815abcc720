"""LeGR's search fitness: how the network a candidate ranking cuts is scored while the ranking is learned.

Default (`benchmarks/fitness_correlation.py` says why): re-estimate the pruned network's BatchNorm statistics on a
few training batches (adaptive BN, Li et al. ECCV 2020), then its validation top-1. The paper's CIFAR-10 fitness is
``CandidateFitness(evaluate, metric="loss")``: no BN step, no tau steps, minus the validation loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from legr.data.stream import Loader
from legr.training import EvalResult, make_sgd, recalibrate_bn, train_steps


@dataclass(frozen=True)
class CandidateFitness:
    """``fitness(net, i)`` for candidate ``i``'s pruned network ``net`` (modified in place; a fresh copy each call).

    ``evaluate`` scores a network on the validation split. ``bn``: input batches for adaptive BN (empty: keep the
    source network's statistics). ``tau`` SGD steps (lr/momentum/weight decay ``sgd``) on batches from
    ``train_loader(i)`` come next. ``metric``: validation ``accuracy`` (top-1) or ``loss`` (fitness = minus the loss).
    """

    evaluate: Callable[[nn.Module], EvalResult]
    bn: Sequence[torch.Tensor] = ()
    tau: int = 0
    train_loader: Callable[[int], Loader] | None = None
    sgd: tuple[float, float, float] = (0.01, 0.9, 5e-4)
    metric: Literal["accuracy", "loss"] = "accuracy"

    def __post_init__(self) -> None:
        if self.tau > 0 and self.train_loader is None:
            raise ValueError("tau > 0 needs a train_loader")

    def __call__(self, net: nn.Module, i: int) -> float:
        if self.bn:
            recalibrate_bn(net, self.bn)
        if self.tau > 0:
            train_steps(net, self.train_loader(i), self.tau, make_sgd(net, *self.sgd))
        result = self.evaluate(net)
        return -result.loss if self.metric == "loss" else result.top1
