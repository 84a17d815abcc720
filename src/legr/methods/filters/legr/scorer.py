"""How a search scores one candidate transform: cut the network it ranks at each budget, score each cut network.

`learn_ranking` scores its candidates with a `CandidateScorer` here, and a worker elsewhere (a Ray task, issue 17)
builds the very same one from the run folder, so a candidate scores alike wherever it runs: the fitness is seeded by
the candidate's index, not by the process."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from legr.engine.cost import BudgetUnit, CostModel
from legr.engine.surgery import prune
from legr.graph import ChannelGraph
from legr.methods.filters.allocate import ALLOCATORS, Floors
from legr.methods.filters.criteria import group_scores
from legr.methods.filters.legr.affine import AffineTransform

NetworkFitness = Callable[[nn.Module, int], float]  # (pruned network, candidate index) -> fitness, higher is better
# [(candidate, fitness index, budgets)] -> each candidate's scores at its budgets, scored elsewhere (e.g. on Ray)
ScoreMany = Callable[[Sequence[tuple[AffineTransform, int, Sequence[float]]]], list[list[float]]]


@dataclass(frozen=True)
class CandidateScorer:
    """``scorer(candidate, i, budgets)``: the fitness of each network the ranking of ``scores`` under ``candidate``
    (one affine transform per layer of ``layers``) cuts at each of ``budgets`` (costs in ``unit``) with
    ``allocator``'s solver; ``fitness(network, i)`` scores a network."""

    graph: ChannelGraph
    cost: CostModel
    scores: Mapping[str, np.ndarray]
    layers: Sequence[str]
    fitness: NetworkFitness
    floors: Floors = Floors()
    unit: BudgetUnit = "macs"
    allocator: str = "legr"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(self.layers)})

    def __call__(self, candidate: AffineTransform, i: int, budgets: Sequence[float]) -> list[float]:
        transformed = group_scores(self.graph, self.scores, lambda name, v: candidate.apply(self._index[name], v))
        solver = ALLOCATORS[self.allocator].solver(self.graph, self.cost, transformed, self.floors, self.unit)
        return [float(self.fitness(prune(self.graph, solver.solve(t)), i)) for t in budgets]
