"""Rank selection for a budget from one `Analysis` (ENC, Kim, Khan & Kyung, CVPR 2019, arXiv 1811.12781).

Each decomposable layer has a grid of options (`layer_options`): ranks from its floor ``max(min_rank,
ceil(safeguard·full rank))`` upward in steps of ``rank_step`` while a rank still saves cost (`LayerInfo.max_rank`),
then *whole* (the layer left as it is). An option's accuracy metric is the layer's **PCA energy** kept at that rank,
``a_l(r) = Σ_{i<=r} σ_i^p / Σ_i σ_i^p`` (``energy: squared``: p = 2, the fraction of the weight's squared Frobenius
norm kept, i.e. of its PCA variance; ``linear``: p = 1, the sum of singular values), 1 for a whole layer. The
network's metric is the product of its layers' (ENC's accuracy model), handled as a sum of logs.

- **ENC-Map** (`select_map`): one metric level for every layer: each layer takes its smallest option whose energy
  reaches the level, and the level is the highest whose network meets the budget (found over the finite set of
  levels where a layer's choice changes), so the complexity constraint maps to the ranks through the
  accuracy-complexity curves of the layers.
- **ENC-Model** (`model_candidates`): the rank configuration maximising the network metric under the budget. The
  paper enumerates candidates in a space bounded around the target (R_min, R_max, step t_l, margins δ); we solve the
  same problem exactly up to a cost grid: a dynamic program over layers on ``bins`` cost bins keeps the ``count``
  best configurations (each option's cost rounded *up* to bins, so every configuration fits), then the budget left by
  the rounding is spent greedily (`fill`: the option with the largest metric gain per cost unit first).
- **ENC-Inf**: ENC-Model's best ``count`` candidates, re-scored by inference on part of the *validation* split
  (the method does it: `legr.methods.lowrank.method`).

Ambiguities of the paper and what we chose: the energy's power (squared, as PCA variance, by default); the
candidate space (exact top-k under the budget instead of the hand-bounded grid); ENC-Map's mapping (equal layer
metric; the paper plots accuracy against normalized complexity per layer, we read it as one shared level).
Every selection meets the budget from below; ENC-Map's next level and a step up of every layer both exceed it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from legr.errors import BudgetError
from legr.methods.lowrank.analysis import Analysis


@dataclass(frozen=True)
class RankRules:
    """How ranks may be chosen: floors, grid and the layer metric."""

    safeguard: float = 0.1  # a layer keeps at least this fraction of its full rank ...
    min_rank: int = 1  # ... and at least this many
    rank_step: int = 1  # ranks above the floor are multiples of it
    energy: str = "squared"  # the power of the singular values in the PCA energy: squared (p=2) or linear (p=1)


@dataclass(frozen=True)
class LayerOptions:
    """One layer's options, cheapest first: ranks (None = whole), their cost in the budget unit and log metric."""

    name: str
    ranks: tuple[int | None, ...]
    cost: np.ndarray
    score: np.ndarray


def floor_rank(full_rank: int, rules: RankRules) -> int:
    return max(rules.min_rank, math.ceil(rules.safeguard * full_rank - 1e-9), 1)


def energy(singular: np.ndarray, power: float) -> np.ndarray:
    """``a(r)`` for r = 1..len(singular): the share of ``Σ σ^power`` the first r singular values hold."""
    s = np.asarray(singular, dtype=np.float64) ** power
    total = s.sum()
    return np.ones(len(s)) if total <= 0 else np.cumsum(s) / total


def layer_options(analysis: Analysis, rules: RankRules, unit: str) -> list[LayerOptions]:
    power = {"squared": 2.0, "linear": 1.0}[rules.energy]
    out = []
    for layer in analysis.layers:
        lo, hi = floor_rank(layer.full_rank, rules), layer.max_rank
        ranks: list[int | None] = [r for r in range(lo, hi + 1) if r == lo or r % rules.rank_step == 0]
        ranks.append(None)
        price = layer.macs if unit == "macs" else layer.params
        a = energy(analysis.singular[layer.name], power)
        metric = [1.0 if r is None else float(a[r - 1]) for r in ranks]
        out.append(LayerOptions(layer.name, tuple(ranks), np.array([price(r) for r in ranks], dtype=np.float64),
                                np.log(np.maximum(metric, 1e-300))))
    return out


class Selector:
    """Rank configurations (one option index per layer) of an analysed network for budgets in ``unit``."""

    def __init__(self, analysis: Analysis, rules: RankRules, unit: str) -> None:
        self.analysis, self.unit = analysis, unit
        self.options = layer_options(analysis, rules, unit)
        # the cost of everything no option changes: the layers left whole and the rest of the network
        self.fixed = analysis.base[unit] - sum(float(o.cost[-1]) for o in self.options)

    def ranks(self, idx: list[int]) -> dict[str, int]:
        """The decomposed layers' ranks of a configuration (whole layers left out)."""
        return {o.name: o.ranks[i] for o, i in zip(self.options, idx) if o.ranks[i] is not None}

    def cost(self, idx: list[int]) -> float:
        return self.fixed + sum(float(o.cost[i]) for o, i in zip(self.options, idx))

    def score(self, idx: list[int]) -> float:
        """log of the network metric (the product of the layers' energies)."""
        return sum(float(o.score[i]) for o, i in zip(self.options, idx))

    def step_up(self, idx: list[int]) -> list[int]:
        """Every layer one option up (those at whole stay)."""
        return [min(i + 1, len(o.ranks) - 1) for o, i in zip(self.options, idx)]

    def lowest(self) -> float:
        """The cost with every layer at its floor."""
        return self.cost([0] * len(self.options))

    def check(self, budget: float) -> None:
        if self.lowest() > budget + 1e-6:
            raise BudgetError(f"{budget:.0f} {self.unit} is below the lowest low-rank network ({self.lowest():.0f}: "
                              "every layer at its rank floor); raise the target or lower lowrank.safeguard")

    def select_map(self, budget: float) -> list[int]:
        """ENC-Map: the highest shared metric level whose configuration fits ``budget``."""
        self.check(budget)
        levels = np.unique(np.concatenate([o.score for o in self.options])) if self.options else np.zeros(0)

        def at(level: float) -> list[int]:
            return [int(np.searchsorted(o.score, level - 1e-12, side="left")) for o in self.options]

        lo, hi = -1, len(levels) - 1  # at(levels[lo]) fits (lo = -1: every floor), find the last that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self.cost(at(levels[mid])) <= budget else (lo, mid - 1)
        return at(levels[lo]) if lo >= 0 else [0] * len(self.options)

    def fill(self, idx: list[int], budget: float) -> list[int]:
        """Raise layers one option at a time, largest metric gain per cost first, while the network fits."""
        idx = list(idx)
        slack = budget - self.cost(idx)
        while True:
            best, gain = -1, -math.inf
            for n, (o, i) in enumerate(zip(self.options, idx)):
                if i + 1 < len(o.ranks):
                    extra = float(o.cost[i + 1] - o.cost[i])
                    if extra <= slack:
                        g = float(o.score[i + 1] - o.score[i]) / max(extra, 1e-9)
                        if g > gain:
                            best, gain = n, g
            if best < 0:
                return idx
            o = self.options[best]
            slack -= float(o.cost[idx[best] + 1] - o.cost[idx[best]])
            idx[best] += 1

    def model_candidates(self, budget: float, count: int = 1, bins: int = 1000) -> list[list[int]]:
        """ENC-Model: up to ``count`` distinct configurations fitting ``budget``, best network metric first."""
        self.check(budget)
        if not self.options:
            return [[]]
        room = budget - self.lowest()
        size = room / bins if room > 0 else 1.0
        steps = [np.ceil((o.cost - o.cost[0]) / size - 1e-9).astype(np.int64) for o in self.options]
        best = np.full((bins + 1, count), -np.inf)
        best[:, 0] = 0.0  # before any layer: the empty configuration, at every budget
        back = []
        for o, c in zip(self.options, steps):
            best, pointer = _extend(best, c, o.score, count)
            back.append(pointer)
        found = []
        for k in range(count):
            if not np.isfinite(best[bins, k]):
                break
            idx, b = [0] * len(self.options), bins
            for n in range(len(self.options) - 1, -1, -1):
                option, k = divmod(int(back[n][b, k]), count)
                idx[n], b = option, b - int(steps[n][option])
            found.append(self.fill(idx, budget))
        unique = {tuple(i): i for i in found}
        return sorted(unique.values(), key=self.score, reverse=True)[:count]


def _extend(best: np.ndarray, steps: np.ndarray, score: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """One layer more in the top-``count`` dynamic program: ``best[b, k]`` is the k-th best score of configurations
    using at most b bins; returns the new table and, per entry, ``option * count + k`` of the entry it extends."""
    rows = best.shape[0]
    top = np.full((rows, count), -np.inf)
    ptr = np.zeros((rows, count), dtype=np.int64)
    for start in range(0, len(steps), 64):  # options in chunks: memory rows x 64 x count
        chunk = range(start, min(start + 64, len(steps)))
        cand = np.full((rows, len(chunk), count), -np.inf)
        for j, o in enumerate(chunk):
            c = int(steps[o])
            if c < rows:
                cand[c:, j, :] = best[:rows - c, :] + score[o]
        codes = (np.arange(start, chunk.stop)[:, None] * count + np.arange(count)[None, :]).ravel()
        merged = np.concatenate([top, cand.reshape(rows, -1)], axis=1)
        merged_codes = np.concatenate([ptr, np.broadcast_to(codes, (rows, len(codes)))], axis=1)
        order = np.argsort(-merged, axis=1, kind="stable")[:, :count]
        top = np.take_along_axis(merged, order, axis=1)
        ptr = np.take_along_axis(merged_codes, order, axis=1)
    return top, ptr
