"""What an FBS network computes per image, counted exactly, and the density that meets a MACs budget on average.

The MACs of one image are the engine's cost model (`legr.engine.cost.CostModel`: convolutions and Linears, per
image, the LeGR convention) at the keep vector of that image's active channels — every gated convolution's active
output channels, and so its consumer's active input channels — plus its predictors: ``active inputs x outputs`` of
each predictor's fully connected layer (all its outputs: the winners are chosen among all saliencies; its inputs are
only the active ones when the gated convolution reads another pair's channels). What the convention leaves out stays
out: the subsampling (a pooling), the winner-take-all (a top-k) and the boost (folded into the batch norm's affine:
`fast.FastNorm`). The fast path does exactly these multiply-accumulates (`tests/methods/dynamic/test_fbs.py`
counts them with torch's `FlopCounterMode`).

A density keeps at most ``ceil(d * C)`` channels of a gated layer (winners with saliency 0 are skipped too), so the
MACs of an image are at most the *worst case* of its density (every winner active) and an average over images is
what a budget in average MACs per image constrains.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from legr.engine.cost import CostModel
from legr.methods.dynamic.fbs import winners
from legr.methods.dynamic.network import FbsNetwork
from legr.methods.dynamic.pairs import GatedPair


class DynamicCost:
    """MACs per image of an FBS network over the source network whose cost model is ``cost``. ``predictor(i,
    inputs)``: the MACs that decide pair ``i``'s channels when ``inputs`` of its producer's input channels are active
    (default FBS's predictor, ``inputs x out_channels``; RNP passes its agent's)."""

    def __init__(self, cost: CostModel, pairs: Sequence[GatedPair],
                 predictor: Callable[[int, float], float] | None = None) -> None:
        self.cost, self.pairs = cost, list(pairs)
        self.predictor = predictor or (lambda i, inputs: inputs * self.pairs[i].out_channels)

    def image(self, active: Sequence[np.ndarray]) -> float:
        """One image's MACs from its active channels (one boolean array per pair, over the producer's channels)."""
        keep = np.ones(self.cost.graph.num_classes)
        predictors = 0.0
        for i, (p, a) in enumerate(zip(self.pairs, active)):
            keep[p.classes] = a
            inputs = active[p.source].sum() if p.source is not None else p.in_channels
            predictors += self.predictor(i, float(inputs))
        return self.cost.macs(keep) + predictors

    def images(self, active: Sequence[np.ndarray]) -> np.ndarray:
        """Per image MACs from per-pair (images x channels) active arrays."""
        n = len(active[0]) if active else 0
        return np.array([self.image([a[i] for a in active]) for i in range(n)], dtype=np.float64)

    def worst(self, density: float) -> float:
        """The most an image costs at ``density``: every winner of every gated layer active."""
        return self.image([np.arange(p.out_channels) < winners(density, p.out_channels) for p in self.pairs])

    def densities(self) -> list[float]:
        """Every density at which some layer's winner count changes (``j / C``), ascending: the operating points."""
        return sorted({j / p.out_channels for p in self.pairs for j in range(1, p.out_channels + 1)})


@contextmanager
def recording(net: FbsNetwork) -> Iterator[list[list[torch.Tensor]]]:
    """While the block runs, every gate of ``net`` appends its active channels per forward (the masked graph runs
    every batch, also a batch of one); yields the per-gate lists."""
    gates, fast = net.gates, net.fast_path
    records: list[list[torch.Tensor]] = [[] for _ in gates]
    for gate, record in zip(gates, records):
        gate.record = record
    net.fast_path = False
    try:
        yield records
    finally:
        net.fast_path = fast
        for gate in gates:
            gate.record = None


def active_channels(records: list[list[torch.Tensor]]) -> list[np.ndarray]:
    return [torch.cat(r).numpy() if r else np.zeros((0, 0), dtype=bool) for r in records]


@dataclass(frozen=True)
class Operating:
    """An operating point measured on a set of images."""

    density: float
    macs: float  # average per image
    macs_worst: float  # the most any of the images cost
    top1: float

    def to_dict(self) -> dict:
        return {"density": self.density, "macs": self.macs, "macs_worst": self.macs_worst, "top1": self.top1}


def choose_density(candidates: Sequence[float], budget: float, measure: Callable[[float], Operating]
                   ) -> tuple[Operating, list[Operating]]:
    """The largest candidate density whose measured average MACs are at most ``budget``, by bisection over the
    ascending ``candidates`` (the average grows with the density: more winners per layer; it is measured at every
    step, so the answer meets the budget whatever the measurements say), and every point measured. The smallest
    candidate is the answer when nothing larger fits (the caller checks that it fits)."""
    seen: dict[float, Operating] = {}

    def at(i: int) -> Operating:
        d = candidates[i]
        if d not in seen:
            seen[d] = measure(d)
        return seen[d]

    lo, hi = 0, len(candidates) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if at(mid).macs <= budget:
            lo = mid
        else:
            hi = mid - 1
    best = at(lo)
    return best, sorted(seen.values(), key=lambda o: o.density)
