"""Regularized (aging) evolution (Real et al. 2019), generic over the candidate type and the fitness function.

The initial population is the space's identity, then the caller's ``initial`` candidates (e.g. transforms that
reproduce baseline allocations, so the search starts from them), then random members up to ``population``; then
each step draws ``sample`` members uniformly with replacement, mutates the fittest and replaces the *oldest* member
by the child. ``restarts`` > 1 runs that many independent searches one after the other (each with its own initial
population and random stream) and returns the fittest candidate of all: a population that collapsed into one basin
early cannot take the whole result with it.
One ``np.random.Generator`` per restart drives every random choice (``PCG64(seed)`` for the first, so a one-restart
search is unchanged; ``PCG64([seed, r])`` for restart r), and each restart's state (population, history, RNG state)
is written atomically to its own state file after every evaluated candidate (``state_path``, then
``<stem>.restart<r>.json``), so a run killed at any moment and restarted with the same arguments ends exactly like
an uninterrupted one. ``evaluate(candidate, index)`` receives the 0-based evaluation number over all restarts, so
that any randomness inside it can be seeded per candidate, independently of resuming. It returns the fitness, or
``(fitness, details)`` with JSON-able details (e.g. the scores the fitness combines) kept in the state beside it and
returned in `SearchResult.details`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from pydantic import Field, model_validator

from legr.errors import ConfigError
from legr.methods.filters.legr.search_loop import C, EvaluateMany, SearchResult, SearchSpace, _canonical, _State, drive
from legr.settings import Settings



class EvolutionConfig(Settings):
    """Aging-evolution settings; ``evaluations`` counts every evaluated candidate of one restart, initial population
    included (a search evaluates ``evaluations * restarts`` candidates). Positional arguments are taken in the order
    population, sample, evaluations, seed, restarts. ``seed`` is the library's argument: a run's ``search`` section
    (`search_config.SearchConfig`, this class plus the fitness settings) is seeded by the run's
    top-level ``seed`` and never dumps it."""

    population: int = Field(64, ge=1, strict=True)
    sample: int = Field(16, ge=1, strict=True)
    evaluations: int = Field(400, ge=1, strict=True, description="candidates per restart (the initial population "
                                                                 "included)")
    restarts: int = Field(1, ge=1, strict=True)
    seed: int = Field(0, ge=0, strict=True, exclude=True)
    optimizer: Literal["evolution", "cma"] = Field(
        "evolution", description="evolution (aging evolution, the paper) or cma (separable CMA-ES: every layer moves "
                                 "at each step, along directions that paid off; population = CMA's lambda, sample "
                                 "unused; legr.methods.filters.legr.cmaes)")
    sigma0: float = Field(0.3, gt=0, description="cma: the first step size, in units of a random member's spread "
                                                  "(log alpha, kappa over the layer's score std)")
    in_flight: int = Field(1, ge=1, strict=True, description="evolution: children bred before the earlier ones' "
                                                             "fitness is known, as Real et al.'s asynchronous workers "
                                                             "(scored at once on Ray: set it to the workers); child i "
                                                             "is bred from the population as it stood when child "
                                                             "i - in_flight was recorded, so the search is the same "
                                                             "wherever and however fast it runs (1: the paper's "
                                                             "sequential search). cma: unused (a generation is "
                                                             "scored at once)")

    def __init__(self, *args: int, **kwargs: Any) -> None:
        names = ("population", "sample", "evaluations", "seed", "restarts")
        if len(args) > len(names):
            raise ConfigError(f"EvolutionConfig takes at most {len(names)} positional arguments ({', '.join(names)})")
        super().__init__(**dict(zip(names, args)), **kwargs)

    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]  # nested validation bypasses it

    @model_validator(mode="after")
    def _enough_evaluations(self) -> "EvolutionConfig":
        if self.evaluations < self.population:
            raise ValueError(f"evaluations ({self.evaluations}) must be >= population ({self.population})")
        if self.in_flight > self.population:
            raise ValueError(f"in_flight ({self.in_flight}) must be <= population ({self.population}): a child is "
                             "bred from members already scored")
        return self

    def evolution(self, seed: int) -> "EvolutionConfig":
        """The plain aging-evolution settings of this (possibly larger) section, seeded with ``seed``."""
        return EvolutionConfig(population=self.population, sample=self.sample, evaluations=self.evaluations,
                               restarts=self.restarts, seed=seed, optimizer=self.optimizer, sigma0=self.sigma0,
                               in_flight=self.in_flight)


def aging_evolution(space: SearchSpace[C], evaluate: Callable[[C, int], float | tuple[float, Any]],
                    cfg: EvolutionConfig, *,
                    initial: Sequence[C] = (), state_path: Path | None = None, log_path: Path | None = None,
                    progress: bool = True, evaluate_many: EvaluateMany | None = None) -> SearchResult[C]:
    """Run (or resume from ``state_path``) aging evolution, ``cfg.restarts`` independent times; ``evaluate(candidate,
    index)`` returns fitness (higher is better). ``initial`` candidates join every restart's first population right
    after the identity (at most ``population - 1`` of them). KeyboardInterrupt propagates after the last finished
    candidate is on disk: rerun to resume. With ``cfg.in_flight`` = N > 1, N candidates are always bred ahead of
    their results (the state file holds those not recorded yet, so a resumed run breeds nothing twice), and with
    ``evaluate_many`` they are scored concurrently, each by one call of it, as N asynchronous workers would (Real et
    al. 2019): the history is the same whether they are scored there or here one by one."""
    initial_json = [_canonical(space, c)[1] for c in initial]
    if len(initial_json) >= cfg.population:
        raise ConfigError(f"{len(initial_json)} initial candidates need a population of at least "
                          f"{len(initial_json) + 1}, got {cfg.population}")

    def proposer(state: _State) -> Callable[[], tuple[C, int | None]]:
        propose = lambda: _propose(space, cfg, state, initial_json)  # noqa: E731
        propose.in_flight = cfg.in_flight  # type: ignore[attr-defined]
        return propose

    return drive(space, evaluate, cfg, initial_json, state_path, log_path, progress, "evolution", proposer,
                 evaluate_many=evaluate_many)


def _propose(space: SearchSpace[C], cfg: EvolutionConfig, state: _State,
             initial: Sequence[Any]) -> tuple[C, int | None]:
    """Aging evolution's next candidate (all RNG use happens here, before evaluation), bred after the candidates
    still pending."""
    index = len(state.history) + len(state.pending)
    if index == 0:
        return space.identity(), None
    if index <= len(initial):
        return space.from_json(initial[index - 1]), None
    if index < cfg.population:
        return space.random(state.rng), None
    picks = state.rng.integers(0, len(state.population), size=cfg.sample)
    parent = max((state.population[i] for i in picks), key=lambda m: m.fitness)  # first max on ties
    return space.mutate(space.from_json(parent.candidate), state.rng, index, cfg.evaluations), parent.index

