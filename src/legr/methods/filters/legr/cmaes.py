"""CMA-ES over a search space with unit coordinates: LeGR's search with ``search.optimizer: cma``.

Why: aging evolution mutates ``max(1, int(0.1 * L))`` layers per child, one layer on ResNet-20 (19 layers), so a
restart of 60 candidates moves each layer about twice; on ResNet-20 / CIFAR-10-JPEG no mutation beat the best of the
first population in any of seed 1's three restarts, and AMC's per-target winners scored 2-6 validation points above
the LeGR winner's cuts at equal evaluations (issue 38). CMA-ES (Hansen 2016; the field's implementation, pycma) moves
every coordinate at each step along the directions that paid off, and adapts its step size.

How: a restart first scores the space's identity and the caller's ``initial`` candidates (as aging evolution does),
then runs separable (diagonal-covariance) CMA-ES from the fittest of them, with step size ``cfg.sigma0`` in the
space's unit coordinates (``to_vector``/``from_vector``; for `AffineSpace` log alpha and kappa over its random
spread, where a random member is a standard normal) and ``cfg.population`` candidates per generation (lambda;
``sample`` is unused): in 2L = 38 dimensions and about a dozen generations the full covariance matrix would learn
nothing. The last generation may be cut short by ``cfg.evaluations``. ``restarts`` > 1 runs independent restarts
(random stream ``[seed, r, 1]``) and the fittest candidate of all wins.

Resuming: pycma's state is not stored. The optimizer is rebuilt by replaying the recorded fitness values through
ask/tell, and every replayed candidate must equal the recorded one: the random stream is the restart's own
``np.random.Generator``, so nothing outside the search can shift it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import cma
import numpy as np

from legr.errors import ConfigError
from legr.methods.filters.legr.evolution import EvolutionConfig
from legr.methods.filters.legr.search_loop import (C, EvaluateMany, SearchResult, SearchSpace, _canonical, _Member,
                                                  _State, drive)

WORST = 1e12  # what CMA minimizes for a candidate of fitness -inf (a diverged network)


class _Restart:
    """One restart's CMA-ES: proposes the next candidate, learns from each recorded member."""

    def __init__(self, space: Any, cfg: EvolutionConfig, state: _State, initial: Sequence[Any]) -> None:
        self.space, self.cfg, self.state, self.initial = space, cfg, state, initial
        self.rng = np.random.Generator(np.random.PCG64([cfg.seed, state.restart, 1]))
        self.es: cma.CMAEvolutionStrategy | None = None
        self.asked: list[np.ndarray] = []
        self.told: list[tuple[np.ndarray, float]] = []
        recorded, state.history = state.history, []
        for member in recorded:
            candidate, _ = self()
            if _canonical(space, candidate)[1] != member.candidate:
                raise ConfigError(f"the CMA-ES state of restart {state.restart} does not replay (candidate "
                                  f"{member.index} differs): it was written by another version or search; delete it "
                                  "to start over")
            state.history.append(member)
            self.learn(member)

    def __call__(self) -> tuple[Any, None]:
        index = len(self.state.history)
        if index == 0:
            return self.space.identity(), None
        if index <= len(self.initial):
            return self.space.from_json(self.initial[index - 1]), None
        if self.es is None:
            start = max(self.state.history, key=lambda m: m.fitness)  # first max on ties
            x0 = self.space.to_vector(self.space.from_json(start.candidate))
            self.es = cma.CMAEvolutionStrategy(x0, self.cfg.sigma0, {
                "seed": math.nan, "randn": lambda *shape: self.rng.standard_normal(shape),
                "popsize": self.cfg.population, "CMA_diagonal": True,
                "verbose": -9, "verb_log": 0, "verb_disp": 0})
        if not self.asked:
            self.asked = [np.asarray(x) for x in self.es.ask()]
        return self.space.from_vector(self.asked[len(self.told)]), None

    def ready(self) -> list[Any]:
        """The candidates proposed next that need no result first: the identity and the initial candidates not
        scored yet, or the rest of the current generation."""
        index = len(self.state.history)
        if index <= len(self.initial):
            first = [self.space.identity()] if index == 0 else []
            return first + [self.space.from_json(c) for c in self.initial[max(index - 1, 0):]]
        self()  # asks the generation when none is open
        return [self.space.from_vector(x) for x in self.asked[len(self.told):]]

    def learn(self, member: _Member) -> None:
        if member.index <= len(self.initial):
            return
        f = -member.fitness if math.isfinite(member.fitness) else WORST
        self.told.append((self.asked[len(self.told)], f))
        if len(self.told) == len(self.asked):
            assert self.es is not None
            self.es.tell([x for x, _ in self.told], [f for _, f in self.told])
            self.asked, self.told = [], []


def cma_es(space: SearchSpace[C], evaluate: Callable[[C, int], float | tuple[float, Any]], cfg: EvolutionConfig, *,
           initial: Sequence[C] = (), state_path: Path | None = None, log_path: Path | None = None,
           progress: bool = True, evaluate_many: EvaluateMany | None = None) -> SearchResult[C]:
    """Run (or resume from ``state_path``) CMA-ES ``cfg.restarts`` times (module docstring); the arguments, state and
    log files and the result are `aging_evolution`'s. With ``evaluate_many``, each generation (and the first
    candidates) is scored by one call of it: the candidates, their order and the result are the same."""
    if not (hasattr(space, "to_vector") and hasattr(space, "from_vector")):
        raise ConfigError(f"{type(space).__name__} has no unit coordinates (to_vector/from_vector): CMA-ES cannot "
                          "search it; use optimizer evolution")
    initial_json = [_canonical(space, c)[1] for c in initial]
    if len(initial_json) + 1 >= cfg.evaluations:
        raise ConfigError(f"CMA-ES needs more evaluations ({cfg.evaluations}) than the identity and the "
                          f"{len(initial_json)} initial candidates")
    restarts: dict[int, _Restart] = {}

    def proposer(state: _State) -> Callable[[], tuple[Any, None]]:
        restarts[state.restart] = _Restart(space, cfg, state, initial_json)
        return restarts[state.restart]

    return drive(space, evaluate, cfg, initial_json, state_path, log_path, progress, "cma-es", proposer, tag="cma",
                 recorded=lambda state: restarts[state.restart].learn(state.history[-1]), evaluate_many=evaluate_many)
