"""From channel scores and a budget (MACs or parameters, the ``unit``) to a keep vector.

Floors (the LeGR "safeguard"): every producer layer of N filters keeps at least
``min(N, max(ceil(safeguard * N), min_channels))`` of them, so no layer is ever emptied. With ``round_to`` R > 1
every prunable group keeps a multiple of R channels (or all of them; floors rounded up to R): widths that run fast
(an 11-filter layer runs about as slowly as a 16-filter one on most kernels).

- `GlobalSolver` (LeGR, naive global ranking): remove the lowest-scored channels of the whole network, skipping
  any whose removal would break a floor, until MACs <= target. The removal order does not depend on the target, so a
  binary search over its prefix gives the exact answer: MACs <= target, and putting back the last removed channel
  would exceed it.
- `solve_uniform` / `UniformSolver` (Li et al. 2017): every layer keeps the same fraction of its filters (the
  top-scored ones); the fraction is the largest for which the rounded network's exact MACs <= target (the official
  LeGR code instead solves the quadratic ``first * r + second * r**2 = target``, which ignores rounding and floors).
- `ratio_keep` / `RatioKeep`: a keep ratio per group (AMC's actions), each group's top-scored filters.

`ALLOCATORS` names the budget allocators a run can use: ``uniform``, ``global`` (the raw criterion ranked across
layers), ``lcp`` (global with a learned offset per layer, Chin et al. 2018) and ``legr`` (global with a learned
affine transform per layer); ``amc`` (a DDPG agent's per-layer ratios, searched per target: `legr.methods.filters.amc`)
registers itself. Each pairs a solver with the search it needs (none, offsets, affine or per target), so any criterion
combines with any allocator.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Protocol, Sequence

import numpy as np

from legr.engine.cost import BudgetUnit, CostModel, format_cost
from legr.errors import BudgetError
from legr.graph import ChannelGraph
from legr.registry import Registry


@dataclass(frozen=True)
class Floors:
    safeguard: float = 0.1  # the LeGR paper's; a run's default is its config's (floors.safeguard: 0.25)
    min_channels: int = 2
    round_to: int = 1  # kept widths are multiples of this (see the module doc)

    def __call__(self, n: int) -> int:
        floor = max(math.ceil(self.safeguard * n - 1e-9), self.min_channels)
        return min(n, -(-floor // self.round_to) * self.round_to)

    def width(self, n: int, wanted: int) -> int:
        """The width kept of ``n`` channels for ``wanted`` (rounded to a multiple of ``round_to``), floors held."""
        return min(n, max(self(n), int(round(wanted / self.round_to)) * self.round_to))


def _producer_dims(graph: ChannelGraph) -> list[np.ndarray]:
    """Class ids of every distinct producer output dim of the prunable groups, then of every piece of a channel split
    inside them: floors hold for each piece too (a piece left without channels would feed a conv with zero input
    channels, which torch turns into zero *output* channels)."""
    dims, seen = [], set()
    groups = graph.prunable_groups()
    prunable = np.zeros(graph.num_classes, dtype=bool)
    for group in groups:
        prunable[group.classes] = True
    candidates = [np.unique(graph.classes(graph.layers[name].producer_ids))
                  for group in groups for name in group.producers]
    candidates += [cls for cls in graph.segments if len(cls) and prunable[cls].all()]
    for cls in candidates:
        key = cls.tobytes()
        if key not in seen:
            seen.add(key)
            dims.append(cls)
    return dims


def min_cost_bound(graph: ChannelGraph, cost: CostModel, floors: Floors, unit: BudgetUnit = "macs") -> float:
    """A lower bound on the cost in ``unit`` of every plan that respects ``floors``, whatever the ranking (so it can
    be checked before any network is trained or scored): a tracked dim keeps at least its channels outside the prunable groups
    plus the floor of the largest-floored producer dim it contains (times that dim's least repetition)."""
    prunable = np.zeros(graph.num_classes, dtype=bool)
    for group in graph.prunable_groups():
        prunable[group.classes] = True
    dims = _producer_dims(graph)

    def lower(cls: np.ndarray) -> float:
        count = np.bincount(cls, minlength=graph.num_classes)
        inside = [floors(len(d)) * int(count[d].min()) for d in dims if count[d].min() > 0]
        return float(np.count_nonzero(~prunable[cls]) + max(inside, default=0))

    return cost.bound(unit, lower)


def check_reachable(graph: ChannelGraph, cost: CostModel, floors: Floors, targets: Sequence[float],
                    unit: BudgetUnit = "macs") -> None:
    """Raise `BudgetError` for any fraction (of the source's cost in ``unit``) in ``targets`` that no plan can reach
    (see `min_cost_bound`)."""
    if not graph.prunable_groups():
        reasons = Counter(g.reason for g in graph.groups if g.reason)
        raise BudgetError("nothing in this model can be pruned: every channel group is fixed"
                          + (f", most often because of {reasons.most_common(1)[0][0]}" if reasons else "")
                          + " (`legr analyze` lists each group and why)")
    bound, base = min_cost_bound(graph, cost, floors, unit), cost.base(unit)
    low = [t for t in targets if t * base < bound]
    if low:
        raise BudgetError(
            f"target {min(low):g} of {format_cost(base, unit)} is below the smallest reachable: no plan goes "
            f"under {format_cost(bound, unit)} ({bound / base:.1%}) with floors safeguard={floors.safeguard:g}, "
            f"min_channels={floors.min_channels}"
        )


def _class_scores(graph: ChannelGraph, scores: Mapping[str, np.ndarray]) -> np.ndarray:
    out = np.full(graph.num_classes, np.nan)
    for group in graph.prunable_groups():
        out[group.classes] = scores[group.name]
    return out


class GlobalSolver:
    """Exact global-threshold budget solver for one ranking (reusable across many targets; budgets in ``unit``)."""

    def __init__(self, graph: ChannelGraph, cost: CostModel, scores: Mapping[str, np.ndarray], floors: Floors = Floors(),
                 unit: BudgetUnit = "macs"):
        self.graph, self.cost, self.unit, self.measure = graph, cost, unit, cost.of(unit)
        class_score = _class_scores(graph, scores)
        candidates = np.flatnonzero(~np.isnan(class_score))
        order = candidates[np.argsort(class_score[candidates], kind="stable")]
        dims = _producer_dims(graph)
        remaining = np.array([len(d) for d in dims])
        floor = np.array([floors(len(d)) for d in dims])
        dims_of: dict[int, list[int]] = {}
        for i, d in enumerate(dims):
            for c in d.tolist():
                dims_of.setdefault(c, []).append(i)
        removal, ends = [], [0]
        if floors.round_to == 1:  # one channel per step
            for c in order.tolist():
                ds = dims_of.get(c, [])
                if all(remaining[i] > floor[i] for i in ds):
                    remaining[ds] -= 1
                    removal.append(c)
                    ends.append(len(removal))
        else:
            for block in _blocks(graph, class_score, floors.round_to):
                taken = np.bincount([i for c in block.tolist() for i in dims_of.get(c, [])], minlength=len(dims))
                if np.all(remaining - taken >= floor):
                    remaining -= taken
                    removal.extend(block.tolist())
                    ends.append(len(removal))
        self.removal = np.array(removal, dtype=np.int64)
        self.ends = np.array(ends, dtype=np.int64)  # removal step n removes self.removal[:ends[n]]
        self.min_cost = self.cost_after(len(self.ends) - 1)

    def keep_after(self, n: int) -> np.ndarray:
        keep = np.ones(self.graph.num_classes)
        keep[self.removal[:self.ends[n]]] = 0.0
        return keep

    def cost_after(self, n: int) -> float:
        return self.measure(self.keep_after(n))

    def solve(self, target: float) -> np.ndarray:
        if target < self.min_cost:
            raise BudgetError(
                f"target {format_cost(target, self.unit)} is below the smallest reachable "
                f"{format_cost(self.min_cost, self.unit)} ({self.min_cost / self.cost.base(self.unit):.1%} of the "
                "original) with the current floors"
            )
        lo, hi = 0, len(self.ends) - 1  # smallest n with cost_after(n) <= target lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cost_after(mid) <= target:
                hi = mid
            else:
                lo = mid + 1
        return self.keep_after(lo)


def _blocks(graph: ChannelGraph, class_score: np.ndarray, size: int) -> list[np.ndarray]:
    """Removal steps that keep every prunable group's width a multiple of ``size``: per group, its lowest-scored
    ``width % size`` channels first, then ``size`` at a time, lowest first; all groups' steps ordered by the highest
    score they remove (within a group that order is the group's own)."""
    steps: list[tuple[float, int, np.ndarray]] = []
    for group in graph.prunable_groups():
        ranked = group.classes[np.argsort(class_score[group.classes], kind="stable")]
        ends = list(range(len(ranked) % size, len(ranked) + 1, size))
        for a, b in zip([0, *ends], ends):
            if b > a:
                steps.append((float(class_score[ranked[b - 1]]), len(steps), ranked[a:b]))
    return [cls for _, _, cls in sorted(steps, key=lambda s: (s[0], s[1]))]


def uniform_keep(graph: ChannelGraph, scores: Mapping[str, np.ndarray], ratio: float, floors: Floors = Floors()) -> np.ndarray:
    """Keep ``round(ratio * N)`` top-scored filters (at least the floor) in every producer layer (`ratio_keep` with
    one ratio for every group)."""
    return ratio_keep(graph, scores, lambda _: ratio, floors)


def ratio_keep(graph: ChannelGraph, scores: Mapping[str, np.ndarray], ratio: Callable[[str], float],
               floors: Floors = Floors()) -> np.ndarray:
    """Keep ``round(ratio(group) * N)`` top-scored filters (at least the floor) in every producer layer of each
    prunable group (``ratio``: group name -> keep ratio; AMC's per-layer actions): `RatioKeep` once."""
    cut = RatioKeep(graph, scores, floors)
    return cut([ratio(name) for name in cut.names])


class RatioKeep:
    """Per-group keep ratios (in ``graph.prunable_groups()`` order, ``names``) -> keep vector, prepared once for many
    calls. Layers sharing channels (residual chains) are settled from the narrowest to the widest, each topping up
    the channels already kept by narrower ones; a split piece takes the ratio of the group of its first channel."""

    def __init__(self, graph: ChannelGraph, scores: Mapping[str, np.ndarray], floors: Floors = Floors()) -> None:
        self.num_classes, self.floors = graph.num_classes, floors
        self.class_score = _class_scores(graph, scores)
        groups = graph.prunable_groups()
        self.names = [group.name for group in groups]
        group_of = np.full(graph.num_classes, -1, dtype=np.int64)
        for i, group in enumerate(groups):
            group_of[group.classes] = i
        self.dims = [(dim, int(group_of[dim[0]])) for dim in sorted(_producer_dims(graph), key=len)]

    def __call__(self, ratios: Sequence[float]) -> np.ndarray:
        keep = np.ones(self.num_classes)
        decided = np.zeros(self.num_classes, dtype=bool)
        for dim, group in self.dims:
            n = len(dim)
            target = self.floors.width(n, int(round(ratios[group] * n)))
            open_ = dim[~decided[dim]]
            need = max(0, target - int(keep[dim[decided[dim]]].sum()))
            ranked = open_[np.argsort(-self.class_score[open_], kind="stable")]
            keep[ranked[need:]] = 0.0
            decided[dim] = True
        return keep


def solve_uniform(
    graph: ChannelGraph, cost: CostModel, scores: Mapping[str, np.ndarray], target: float,
    floors: Floors = Floors(), tol: float = 1e-4, unit: BudgetUnit = "macs",
) -> tuple[np.ndarray, float]:
    """Largest uniform keep ratio whose network costs at most ``target`` (in ``unit``); returns (keep vector,
    ratio)."""
    measure = cost.of(unit)
    lowest = uniform_keep(graph, scores, 0.0, floors)
    if measure(lowest) > target:
        raise BudgetError(
            f"target {format_cost(target, unit)} is below the smallest uniform network "
            f"({format_cost(measure(lowest), unit)}) with the current floors"
        )
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if measure(uniform_keep(graph, scores, mid, floors)) <= target:
            lo = mid
        else:
            hi = mid
    return uniform_keep(graph, scores, lo, floors), lo


class UniformSolver:
    """`solve_uniform` behind the `BudgetSolver` interface (the keep ratio of the last solve is ``ratio``)."""

    def __init__(self, graph: ChannelGraph, cost: CostModel, scores: Mapping[str, np.ndarray], floors: Floors = Floors(),
                 unit: BudgetUnit = "macs"):
        self.graph, self.cost, self.scores, self.floors, self.unit = graph, cost, scores, floors, unit
        self.min_cost = cost.of(unit)(uniform_keep(graph, scores, 0.0, floors))
        self.ratio: float | None = None

    def solve(self, target: float) -> np.ndarray:
        keep, self.ratio = solve_uniform(self.graph, self.cost, self.scores, target, self.floors, unit=self.unit)
        return keep


class BudgetSolver(Protocol):
    min_cost: float  # the smallest cost it reaches, in its unit

    def solve(self, target: float) -> np.ndarray: ...


# (graph, cost, scores, floors, unit) -> solver of budgets in that unit ("macs" or "params")
SolverFactory = Callable[[ChannelGraph, CostModel, Mapping[str, np.ndarray], Floors, BudgetUnit], BudgetSolver]


class TargetSearch(Protocol):
    """An allocation searched once per target (AMC's agent, `legr.methods.filters.amc`), not learned once for all.

    ``rank(run, scores, floors, unit, fitness)`` searches every target of the run (resumable) and returns the record
    the ranking file stores (its ``search``); ``solver(..., search)`` cuts a searched target from that record (any
    other target is an error naming it); ``prepare_seconds`` estimates the searching left in a run folder.
    ``section``: its run-config section; ``budgets``: the units it meets.
    """

    section: str
    budgets: tuple[BudgetUnit, ...]

    def rank(self, run: Any, scores: Mapping[str, np.ndarray], floors: Floors, unit: BudgetUnit,
             fitness: Callable[[Any, int], float]) -> dict[str, Any]: ...

    def solver(self, graph: ChannelGraph, cost: CostModel, scores: Mapping[str, np.ndarray], floors: Floors,
               unit: BudgetUnit, search: Mapping[str, Any]) -> BudgetSolver: ...

    def prepare_seconds(self, cfg: Any, folder: Any, units: Any) -> float: ...


@dataclass(frozen=True)
class Allocator:
    """How channel scores become a per-layer width for a budget.

    ``search``: which per-layer transform of the criterion is learned before solving (None: the raw criterion;
    "offsets": ``s + kappa``, LCP; "affine": ``alpha * s + kappa``, LeGR). ``per_target``: instead, a search run for
    every target (AMC); its records, not ``solver``, decide the widths.
    """

    name: str
    solver: SolverFactory
    search: Literal["offsets", "affine"] | None
    description: str
    per_target: TargetSearch | None = None

    @property
    def searches(self) -> bool:
        return self.search is not None or self.per_target is not None


ALLOCATORS = Registry[Allocator]("allocator")


def register_allocator(allocator: Allocator) -> Allocator:
    return ALLOCATORS.add(allocator.name, allocator)


register_allocator(Allocator("uniform", UniformSolver, None, "same keep ratio in every layer (Li et al. 2017)"))
register_allocator(Allocator("global", GlobalSolver, None, "raw criterion ranked across all layers"))
register_allocator(Allocator("lcp", GlobalSolver, "offsets", "global ranking + learned per-layer offset (Chin et al. 2018)"))
register_allocator(Allocator("legr", GlobalSolver, "affine", "global ranking + learned per-layer affine transform (LeGR)"))


def random_plans(graph: ChannelGraph, cost: CostModel, count: int, seed: int = 0, floors: Floors = Floors()) -> list[np.ndarray]:
    """``count`` random allocations that respect ``floors``, for measuring what widths cost (the probes of a latency
    model): random filter scores, scaled by a random factor per layer (so widths differ between layers as a learned
    ranking's do), cut globally at a MACs fraction drawn uniformly between the smallest reachable and the whole
    network."""
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(count):
        scores = {g.name: rng.random(g.size) * math.exp(rng.normal(0.0, 1.0)) for g in graph.prunable_groups()}
        solver = GlobalSolver(graph, cost, scores, floors)
        plans.append(solver.solve(rng.uniform(solver.min_cost, cost.base_macs)))
    return plans
