"""Regularized (aging) evolution (Real et al. 2019), generic over the candidate type and the fitness function.

The initial population is the space's identity, then the caller's ``initial`` candidates (e.g. transforms that
reproduce baseline allocations, so the search starts from them), then random members up to ``population``; then
each step draws ``sample`` members uniformly with replacement, mutates the fittest and replaces the *oldest* member
by the child.
One ``np.random.Generator(PCG64(seed))`` drives every random choice, and the whole state (population, history, RNG
state) is written atomically to ``state_path`` after every evaluated candidate, so a run killed at any moment and
restarted with the same arguments ends exactly like an uninterrupted one. ``evaluate(candidate, index)`` receives the
0-based evaluation number so that any randomness inside it can be seeded per candidate, independently of resuming.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

import numpy as np

from legr.errors import ConfigError
from legr.paths import atomic_write_text
from legr.progress import progress_bar

STATE_VERSION = 1
C = TypeVar("C")


class SearchSpace(Protocol[C]):
    """What a searcher needs from a candidate space. May also carry a ``fingerprint: str`` attribute (checked on
    resume so a state file is never continued with a different space)."""

    def identity(self) -> C: ...

    def random(self, rng: np.random.Generator) -> C: ...

    def mutate(self, parent: C, rng: np.random.Generator, step: int, total: int) -> C: ...

    def to_json(self, candidate: C) -> Any: ...

    def from_json(self, obj: Any) -> C: ...


@dataclass(frozen=True)
class EvolutionConfig:
    """Aging-evolution settings; ``evaluations`` counts every evaluated candidate, initial population included."""

    population: int = 64
    sample: int = 16
    evaluations: int = 400
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("population", "sample", "evaluations", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"EvolutionConfig.{name} must be an int, got {value!r}")
        if self.population < 1:
            raise ConfigError(f"EvolutionConfig.population must be >= 1, got {self.population}")
        if self.sample < 1:
            raise ConfigError(f"EvolutionConfig.sample must be >= 1, got {self.sample}")
        if self.evaluations < self.population:
            raise ConfigError(f"EvolutionConfig.evaluations ({self.evaluations}) must be >= population "
                              f"({self.population})")
        if self.seed < 0:
            raise ConfigError(f"EvolutionConfig.seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class SearchResult(Generic[C]):
    """Outcome of a search: the fittest candidate ever evaluated (ties: earliest) and the (index, fitness) history."""

    best: C
    best_fitness: float
    best_index: int
    history: list[tuple[int, float]]
    evaluations: int
    seconds: float
    population: int

    def summary(self) -> dict[str, Any]:
        """JSON-able digest: best, identity (index 0) fitness and fitness quantiles early vs late."""
        fit = np.array([f for _, f in self.history], dtype=np.float64)
        tail = max(1, math.ceil(0.1 * len(fit)))
        return {
            "evaluations": self.evaluations,
            "population": self.population,
            "best_fitness": self.best_fitness,
            "best_index": self.best_index,
            "identity_fitness": float(fit[0]) if len(fit) else None,
            "initial_population": _quantiles(fit[: self.population]),
            "last_10pct": _quantiles(fit[-tail:]),
            "seconds": round(self.seconds, 3),
        }


def _quantiles(values: np.ndarray) -> dict[str, float] | None:
    if len(values) == 0:
        return None
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {k: float(v) for k, v in zip(("min", "q25", "median", "q75", "max"), q)}


@dataclass
class _Member:
    index: int
    fitness: float
    candidate: Any  # canonical JSON form
    parent: int | None = None
    seconds: float = 0.0


def space_fingerprint(space: Any) -> str | None:
    """The space's optional ``fingerprint`` (attribute, property or zero-argument method), as a string."""
    fp = getattr(space, "fingerprint", None)
    if callable(fp):
        fp = fp()
    return None if fp is None else str(fp)


class _State:
    """Mutable search state; serializes to/from the JSON written after every evaluation."""

    def __init__(self, cfg: EvolutionConfig, fingerprint: str | None) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.rng = np.random.Generator(np.random.PCG64(cfg.seed))
        self.population: list[_Member] = []  # oldest first
        self.history: list[_Member] = []

    def to_json(self) -> str:
        members = lambda ms, full: [  # noqa: E731
            {"index": m.index, "fitness": m.fitness, "candidate": m.candidate,
             **({"parent": m.parent, "seconds": m.seconds} if full else {})} for m in ms]
        return json.dumps({
            "version": STATE_VERSION, "config": asdict(self.cfg), "space": self.fingerprint,
            "rng": self.rng.bit_generator.state,
            "population": members(self.population, False), "history": members(self.history, True),
        })

    def save(self, path: Path | None) -> None:
        if path is not None:
            atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: Path, cfg: EvolutionConfig, fingerprint: str | None) -> "_State":
        hint = "use another state path or delete it to start over"
        try:
            data = json.loads(path.read_text())
            saved_cfg, saved_fp = data["config"], data.get("space")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"search state {path} is unreadable ({exc}); {hint}") from exc
        if data.get("version") != STATE_VERSION or saved_cfg != asdict(cfg):
            raise ConfigError(f"search state {path} was written with config {saved_cfg}, not {asdict(cfg)}; {hint}")
        if saved_fp != fingerprint:
            raise ConfigError(f"search state {path} belongs to another search space ({saved_fp} != {fingerprint}); "
                              f"{hint}")
        state = cls(cfg, fingerprint)
        state.rng.bit_generator.state = data["rng"]
        state.history = [_Member(int(h["index"]), float(h["fitness"]), h["candidate"], h.get("parent"),
                                 float(h.get("seconds", 0.0))) for h in data["history"]]
        by_index = {m.index: m for m in state.history}
        state.population = [by_index[int(p["index"])] for p in data["population"]]
        return state

    def best(self) -> _Member | None:
        best = None
        for m in self.history:  # strict > keeps the earliest on ties
            if best is None or m.fitness > best.fitness:
                best = m
        return best


def _canonical(space: SearchSpace[C], candidate: C) -> tuple[C, Any]:
    """Round-trip a candidate through JSON so a resumed run sees bit-identical candidates."""
    obj = json.loads(json.dumps(space.to_json(candidate)))
    return space.from_json(obj), obj


def _fitness(value: Any) -> float:
    f = float(value)
    return -math.inf if math.isnan(f) else f  # a diverged candidate (NaN) is the worst, not incomparable


def _log_line(m: _Member, best: _Member) -> str:
    return json.dumps({"index": m.index, "fitness": m.fitness, "best_fitness": best.fitness,
                       "best_index": best.index, "seconds": round(m.seconds, 6), "parent": m.parent}) + "\n"


def _rewrite_log(path: Path, history: list[_Member]) -> None:
    """Rebuild the log from the state's history: no duplicated or missing lines whenever the last run died."""
    lines, best = [], None
    for m in history:
        best = m if best is None or m.fitness > best.fitness else best
        lines.append(_log_line(m, best))
    atomic_write_text(path, "".join(lines))


def aging_evolution(space: SearchSpace[C], evaluate: Callable[[C, int], float], cfg: EvolutionConfig, *,
                    initial: Sequence[C] = (), state_path: Path | None = None, log_path: Path | None = None,
                    progress: bool = True) -> SearchResult[C]:
    """Run (or resume from ``state_path``) aging evolution; ``evaluate(candidate, index)`` returns fitness (higher is
    better). ``initial`` candidates join the first population right after the identity (at most ``population - 1``
    of them). KeyboardInterrupt propagates after the last finished candidate is on disk: rerun to resume."""
    initial = [_canonical(space, c)[1] for c in initial]
    if len(initial) >= cfg.population:
        raise ConfigError(f"{len(initial)} initial candidates need a population of at least {len(initial) + 1}, "
                          f"got {cfg.population}")
    fingerprint = space_fingerprint(space)
    if initial and fingerprint is not None:  # a state is only resumed with the same starting candidates
        digest = hashlib.sha256(json.dumps(initial, sort_keys=True).encode()).hexdigest()[:16]
        fingerprint = f"{fingerprint}+{digest}"
    state_path = Path(state_path) if state_path is not None else None
    log_path = Path(log_path) if log_path is not None else None
    if state_path is not None and state_path.exists():
        state = _State.load(state_path, cfg, fingerprint)
    else:
        state = _State(cfg, fingerprint)
    if log_path is not None:
        _rewrite_log(log_path, state.history)
    with progress_bar("evolution", cfg.evaluations, done=len(state.history), text=_best_text(state.best()),
                      enabled=progress) as advance:
        while len(state.history) < cfg.evaluations:
            _step(space, evaluate, cfg, state, initial)
            state.save(state_path)
            best = state.best()
            if log_path is not None:
                with open(log_path, "a") as fh:
                    fh.write(_log_line(state.history[-1], best))
            advance(_best_text(best))
    return _result(space, state)


def _step(space: SearchSpace[C], evaluate: Callable[[C, int], float], cfg: EvolutionConfig, state: _State,
          initial: Sequence[Any]) -> None:
    """Produce, evaluate and insert the next candidate (all RNG use happens here, before evaluation)."""
    index, parent = len(state.history), None
    if index == 0:
        candidate = space.identity()
    elif index <= len(initial):
        candidate = space.from_json(initial[index - 1])
    elif index < cfg.population:
        candidate = space.random(state.rng)
    else:
        picks = state.rng.integers(0, len(state.population), size=cfg.sample)
        parent_m = max((state.population[i] for i in picks), key=lambda m: m.fitness)  # first max on ties
        parent = parent_m.index
        candidate = space.mutate(space.from_json(parent_m.candidate), state.rng, index, cfg.evaluations)
    candidate, obj = _canonical(space, candidate)
    start = time.perf_counter()
    fitness = _fitness(evaluate(candidate, index))
    member = _Member(index, fitness, obj, parent, time.perf_counter() - start)
    state.history.append(member)
    state.population.append(member)
    if len(state.population) > cfg.population:
        state.population.pop(0)  # aging: the oldest member dies, whatever its fitness


def _result(space: SearchSpace[C], state: _State) -> SearchResult[C]:
    best = state.best()
    assert best is not None
    return SearchResult(best=space.from_json(best.candidate), best_fitness=best.fitness, best_index=best.index,
                        history=[(m.index, m.fitness) for m in state.history], evaluations=len(state.history),
                        seconds=sum(m.seconds for m in state.history), population=state.cfg.population)


def _best_text(best: _Member | None) -> str:
    return "best -" if best is None else f"best {best.fitness:.5g} (#{best.index})"
