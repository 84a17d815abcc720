"""AMC's environment: one episode walks the prunable channel groups in graph order, the agent picks a keep ratio for
each, and the episode's network is brought to the budget exactly from below.

State of group g (He et al. 2018, section 3.2): its index, its type (conv 0, depthwise 1, linear 2), in and out
channels, stride, kernel size (k_h * k_w) and the cost of the layers reading or writing its channels — each
min-max normalised to [0, 1] over the episode's groups — then the cost removed so far and the cost of the groups
still to come (fractions of the source's cost) and the previous action. Costs are in the run's budget unit.

The action space is resource-constrained: an action is clipped so that the budget stays reachable when every
group after this one keeps only its floor (`Floors`), so every episode ends with a network that meets the budget.
At the end the ratios become a keep vector with each group's top-scored channels (`RatioKeep`), and one scale
factor s of all ratios (``ratio * s`` clipped to [0, 1]; ratio 0 keeps the floor) is binary-searched for the largest
network whose cost is <= the target, as every allocator meets its budget.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from legr.engine.cost import BudgetUnit, CostModel, format_cost
from legr.errors import BudgetError
from legr.graph import ChannelGraph
from legr.methods.filters.allocate import Floors, RatioKeep

KINDS = {"conv": 0.0, "depthwise": 1.0, "linear": 2.0}
STATE_DIM = 10
_CLIP_STEPS = 30  # bisection steps for the largest feasible action (widths are whole channels: exact long before)
_SCALE_STEPS = 50  # ... and for the budget's scale factor


def _describe(graph: ChannelGraph, name: str) -> list[float]:
    """[type, in channels, out channels, stride, kernel size] of producer layer ``name`` (0 where it has none)."""
    layer = graph.layers[name]
    try:
        module = graph.gm.get_submodule(name)
    except AttributeError:
        module = None
    stride = getattr(module, "stride", 1)
    kernel = getattr(module, "kernel_size", 1)
    return [KINDS.get(layer.kind, 0.0),
            float(getattr(module, "in_channels", getattr(module, "in_features", 0))),
            float(len(np.unique(graph.classes(layer.producer_ids)))),
            float(np.prod(stride) if isinstance(stride, Sequence) else stride),
            float(np.prod(kernel) if isinstance(kernel, Sequence) else kernel)]


class PruningEnv:
    """Episodes over ``graph``'s prunable groups for one budget ``target`` (a cost in ``unit``), the channels of each
    group chosen by ``scores`` (group name -> per-channel score), floors held."""

    def __init__(self, graph: ChannelGraph, cost: CostModel, scores: Mapping[str, np.ndarray], target: float,
                 floors: Floors = Floors(), unit: BudgetUnit = "macs") -> None:
        self.graph, self.scores, self.floors, self.unit, self.target = graph, scores, floors, unit, target
        self.groups = graph.prunable_groups()
        self._keep = RatioKeep(graph, scores, floors)
        self.measure = cost.of(unit)
        self.base = cost.base(unit)
        self.min_cost = self.measure(self.keep(np.zeros(len(self.groups))))
        if target < self.min_cost:
            raise BudgetError(f"target {format_cost(target, unit)} is below the smallest network AMC can reach "
                              f"({format_cost(self.min_cost, unit)}: every layer at its floor)")
        full = np.ones(graph.num_classes)
        own = []
        for group in self.groups:  # the cost of the layers reading or writing the group's channels
            without = full.copy()
            without[group.classes] = 0.0
            own.append(self.base - self.measure(without))
        static = np.array([[i, *_describe(graph, g.producers[0]), own[i]] for i, g in enumerate(self.groups)])
        span = static.max(axis=0) - static.min(axis=0) if len(static) else np.zeros(7)
        self.static = (static - static.min(axis=0)) / np.where(span > 0, span, 1.0)
        self.rest = [sum(own[i + 1:]) / self.base for i in range(len(self.groups))]
        self.reset()

    # --- ratios -> networks -----------------------------------------------------------------------------------
    def keep(self, ratios: Sequence[float]) -> np.ndarray:
        """The keep vector of per-group ``ratios`` (in group order)."""
        return self._keep(ratios)

    def cost(self, ratios: Sequence[float]) -> float:
        return self.measure(self.keep(ratios))

    # --- an episode -------------------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        """Start an episode; returns the first group's state."""
        self.ratios: list[float] = []
        return self.state()

    @property
    def done(self) -> bool:
        return len(self.ratios) == len(self.groups)

    def state(self) -> np.ndarray:
        """The state of the next group to decide (zeros once every group is decided)."""
        g = len(self.ratios)
        if g == len(self.groups):
            return np.zeros(STATE_DIM)
        removed = (self.base - self.cost([*self.ratios, *[1.0] * (len(self.groups) - g)])) / self.base
        previous = self.ratios[-1] if self.ratios else 0.0
        return np.array([*self.static[g], removed, self.rest[g], previous], dtype=np.float64)

    def upper_bound(self) -> float:
        """The largest ratio of the next group with which the budget stays reachable (later groups at floors)."""
        g, n = len(self.ratios), len(self.groups)
        cost = lambda a: self.cost([*self.ratios, a, *[0.0] * (n - g - 1)])  # noqa: E731
        if cost(1.0) <= self.target:
            return 1.0
        lo, hi = 0.0, 1.0  # cost(0) <= target: the previous step's clip (or the floors network) guarantees it
        for _ in range(_CLIP_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if cost(mid) <= self.target else (lo, mid)
        return lo

    def step(self, action: float) -> tuple[float, np.ndarray]:
        """Decide the next group with ``action`` (a keep ratio), clipped to [0, `upper_bound`]; returns (the ratio
        applied, the next state)."""
        applied = float(min(max(action, 0.0), self.upper_bound()))
        self.ratios.append(applied)
        return applied, self.state()

    def finish(self, ratios: Sequence[float] | None = None) -> tuple[np.ndarray, float]:
        """The episode's (or ``ratios``') network at the budget: (keep vector, scale factor s) for the largest s
        whose network ``keep(min(ratio * s, 1))`` costs <= the target."""
        ratios = np.asarray(self.ratios if ratios is None else ratios, dtype=np.float64)
        scaled = lambda s: np.minimum(ratios * s, 1.0)  # noqa: E731
        positive = ratios[ratios > 0]
        top = 1.0 / positive.min() if len(positive) else 1.0  # every ratio at 1
        if self.cost(scaled(top)) <= self.target:
            return self.keep(scaled(top)), top
        lo, hi = 0.0, top  # s = 0 is the floors network: within the budget (checked when built)
        if self.cost(scaled(1.0)) <= self.target:
            lo = 1.0
        for _ in range(_SCALE_STEPS):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if self.cost(scaled(mid)) <= self.target else (lo, mid)
        return self.keep(scaled(lo)), lo

    def widths(self, keep: np.ndarray) -> dict[str, int]:
        """Channels each group keeps."""
        return {g.name: int(keep[g.classes].sum()) for g in self.groups}
