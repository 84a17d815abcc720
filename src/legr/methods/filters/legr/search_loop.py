"""The loop every LeGR searcher shares (aging evolution, CMA-ES): one candidate at a time, each restart's state
written atomically after every evaluated candidate and its log rebuilt on resume, so that a run killed at any moment
and restarted with the same arguments ends exactly like an uninterrupted one; the result is the fittest candidate
of all restarts. A searcher supplies a *proposer* per restart: the next candidate (and its parent's index); a
proposer that knows several next candidates before their results (CMA-ES: the rest of a generation) lists them with
``ready()``, and with ``evaluate_many`` the loop scores those together (e.g. on Ray workers), then records them one by
one exactly as if each had been scored alone. A proposer with ``in_flight`` = N > 1 (aging evolution as
asynchronous workers) is always asked for N candidates ahead of their results; with ``evaluate_many`` those are
scored concurrently, one call each, and recorded in their order."""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Protocol, Sequence, TypeVar

import numpy as np

from legr.errors import ConfigError
from legr.methods.filters.legr.flight import Flight
from legr.paths import atomic_write_text
from legr.progress import progress_bar

STATE_VERSION = 1
C = TypeVar("C")


class LoopConfig(Protocol):
    """What the loop reads of a searcher's settings (`legr.methods.filters.legr.evolution.EvolutionConfig`)."""

    population: int
    sample: int
    evaluations: int
    restarts: int
    seed: int
    in_flight: int

class SearchSpace(Protocol[C]):
    """What a searcher needs from a candidate space. May also carry a ``fingerprint: str`` attribute (checked on
    resume so a state file is never continued with a different space)."""

    def identity(self) -> C: ...

    def random(self, rng: np.random.Generator) -> C: ...

    def mutate(self, parent: C, rng: np.random.Generator, step: int, total: int) -> C: ...

    def to_json(self, candidate: C) -> Any: ...

    def from_json(self, obj: Any) -> C: ...


@dataclass(frozen=True)
class SearchResult(Generic[C]):
    """Outcome of a search: the fittest candidate ever evaluated (ties: earliest) and the (index, fitness) history,
    indexed over all restarts (restart r's candidates are ``r * evaluations ...``)."""

    best: C
    best_fitness: float
    best_index: int
    history: list[tuple[int, float]]
    evaluations: int
    seconds: float
    population: int
    restarts: int = 1
    details: list[tuple[int, Any, Any]] = field(default_factory=list)  # (index, candidate JSON, details) when given

    def summary(self) -> dict[str, Any]:
        """JSON-able digest: best, identity (index 0) fitness, fitness quantiles early vs late (the first restart) and
        each restart's best fitness."""
        fit = np.array([f for _, f in self.history], dtype=np.float64)
        per = self.evaluations // self.restarts
        first = fit[:per]
        tail = max(1, math.ceil(0.1 * len(first)))
        return {
            "evaluations": self.evaluations,
            "population": self.population,
            "best_fitness": self.best_fitness,
            "best_index": self.best_index,
            "identity_fitness": float(fit[0]) if len(fit) else None,
            "initial_population": _quantiles(first[: self.population]),
            "last_10pct": _quantiles(first[-tail:]),
            "restarts": self.restarts,
            "restart_best": [float(fit[r * per:(r + 1) * per].max()) for r in range(self.restarts)],
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
    details: Any = None


def space_fingerprint(space: Any) -> str | None:
    """The space's optional ``fingerprint`` (attribute, property or zero-argument method), as a string."""
    fp = getattr(space, "fingerprint", None)
    if callable(fp):
        fp = fp()
    return None if fp is None else str(fp)


class _State:
    """Mutable state of one restart; serializes to/from the JSON written after every evaluation."""

    def __init__(self, cfg: LoopConfig, fingerprint: str | None, restart: int = 0) -> None:
        self.cfg = cfg
        self.restart = restart
        self.fingerprint = fingerprint
        self.rng = np.random.Generator(np.random.PCG64(cfg.seed if restart == 0 else [cfg.seed, restart]))
        self.population: list[_Member] = []  # oldest first
        self.history: list[_Member] = []
        self.pending: list[tuple[Any, int | None]] = []  # bred, not recorded yet: (canonical JSON, parent index)

    def to_json(self) -> str:
        members = lambda ms, full: [  # noqa: E731
            {"index": m.index, "fitness": m.fitness, "candidate": m.candidate,
             **({"parent": m.parent, "seconds": m.seconds} if full else {}),
             **({"details": m.details} if full and m.details is not None else {})} for m in ms]
        return json.dumps({
            "version": STATE_VERSION, "config": self.config_json(), "space": self.fingerprint,
            "rng": self.rng.bit_generator.state,
            "population": members(self.population, False), "history": members(self.history, True),
            **({"pending": [{"candidate": c, "parent": p} for c, p in self.pending]} if self.pending else {}),
        })

    def config_json(self) -> dict[str, int]:
        """What the state file records of the config: one restart's settings (as before restarts existed, so a
        one-restart state of an earlier version still resumes), plus the restart number after the first."""
        c = self.cfg
        out = {"population": c.population, "sample": c.sample, "evaluations": c.evaluations, "seed": c.seed,
               **({"in_flight": c.in_flight} if getattr(c, "in_flight", 1) != 1 else {})}
        return {**out, "restart": self.restart} if self.restart else out

    def save(self, path: Path | None) -> None:
        if path is not None:
            atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: Path, cfg: LoopConfig, fingerprint: str | None, restart: int = 0) -> "_State":
        hint = "use another state path or delete it to start over"
        try:
            data = json.loads(path.read_text())
            saved_cfg, saved_fp = data["config"], data.get("space")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"search state {path} is unreadable ({exc}); {hint}") from exc
        state = cls(cfg, fingerprint, restart)
        if data.get("version") != STATE_VERSION or saved_cfg != state.config_json():
            raise ConfigError(f"search state {path} was written with config {saved_cfg}, not {state.config_json()}; "
                              f"{hint}")
        if saved_fp != fingerprint:
            raise ConfigError(f"search state {path} belongs to another search space ({saved_fp} != {fingerprint}); "
                              f"{hint}")
        state.rng.bit_generator.state = data["rng"]
        state.history = [_Member(int(h["index"]), float(h["fitness"]), h["candidate"], h.get("parent"),
                                 float(h.get("seconds", 0.0)), h.get("details")) for h in data["history"]]
        by_index = {m.index: m for m in state.history}
        state.population = [by_index[int(p["index"])] for p in data["population"]]
        state.pending = [(p["candidate"], p.get("parent")) for p in data.get("pending", [])]
        return state


def _canonical(space: SearchSpace[C], candidate: C) -> tuple[C, Any]:
    """Round-trip a candidate through JSON so a resumed run sees bit-identical candidates."""
    obj = json.loads(json.dumps(space.to_json(candidate)))
    return space.from_json(obj), obj


def _fitness(value: Any) -> float:
    f = float(value)
    return -math.inf if math.isnan(f) else f  # a diverged candidate (NaN) is the worst, not incomparable


def _log_line(m: _Member, offset: int, restart: int, best: tuple[int, _Member]) -> str:
    return json.dumps({"index": offset + m.index, "fitness": m.fitness, "best_fitness": best[1].fitness,
                       "best_index": best[0], "seconds": round(m.seconds, 6),
                       "parent": None if m.parent is None else offset + m.parent, "restart": restart}) + "\n"


def _ranked(states: Sequence[_State]) -> list[tuple[int, int, _Member]]:
    """(global index, restart, member) of every evaluated candidate, restart by restart."""
    return [(s.restart * s.cfg.evaluations + m.index, s.restart, m) for s in states for m in s.history]


def _best(states: Sequence[_State]) -> tuple[int, _Member] | None:
    best = None
    for index, _, m in _ranked(states):  # strict > keeps the earliest on ties
        if best is None or m.fitness > best[1].fitness:
            best = (index, m)
    return best


def _rewrite_log(path: Path, states: Sequence[_State]) -> None:
    """Rebuild the log from the states' histories: no duplicated or missing lines whenever the last run died."""
    lines, best = [], None
    for index, restart, m in _ranked(states):
        best = (index, m) if best is None or m.fitness > best[1].fitness else best
        lines.append(_log_line(m, index - m.index, restart, best))
    atomic_write_text(path, "".join(lines))


def restart_state_path(state_path: Path, restart: int) -> Path:
    """Restart ``restart``'s state file: ``state_path`` itself for the first, ``<stem>.restart<r><suffix>`` after."""
    name = f"{state_path.stem}.restart{restart}{state_path.suffix}"
    return state_path if restart == 0 else state_path.with_name(name)


Proposer = Callable[[], tuple[Any, "int | None"]]  # the restart's next candidate and its parent's index


EvaluateMany = Callable[[Sequence[tuple[Any, int]]], list[Any]]  # [(candidate, index)] -> what evaluate returns


def drive(space: SearchSpace[C], evaluate: Callable[[C, int], Any], cfg: LoopConfig, initial: Sequence[Any],
          state_path: Path | None, log_path: Path | None, progress: bool, label: str,
          proposer: Callable[[_State], Proposer], tag: str = "",
          recorded: Callable[[_State], None] | None = None,
          evaluate_many: EvaluateMany | None = None) -> SearchResult[C]:
    """The loop every searcher shares: load or start each restart's state (``initial``: canonical JSON candidates,
    digested into the state's fingerprint with ``tag``, so a state is only resumed by the same search), then until
    each restart holds ``cfg.evaluations`` candidates ask its ``proposer(state)`` for the next candidate, evaluate,
    record, tell ``recorded(state)``, save the state, log and advance the progress bar. With ``evaluate_many``, the
    candidates the proposer has ``ready()`` are scored together first, or those in flight concurrently (module
    docstring)."""
    fingerprint = space_fingerprint(space)
    if (initial or tag) and fingerprint is not None:
        digest = hashlib.sha256(json.dumps(initial, sort_keys=True).encode()).hexdigest()[:16] if initial else ""
        fingerprint = "+".join(x for x in (fingerprint, digest, tag) if x)
    state_path = Path(state_path) if state_path is not None else None
    log_path = Path(log_path) if log_path is not None else None
    paths = [restart_state_path(state_path, r) if state_path is not None else None for r in range(cfg.restarts)]
    states = [_State.load(path, cfg, fingerprint, r) if path is not None and path.exists()
              else _State(cfg, fingerprint, r) for r, path in enumerate(paths)]
    if log_path is not None:
        _rewrite_log(log_path, states)
    total = cfg.evaluations * cfg.restarts
    with progress_bar(label, total, done=sum(len(s.history) for s in states), text=_best_text(_best(states)),
                      enabled=progress) as advance, Flight(space, evaluate_many) as flight:
        for state, path in zip(states, paths):
            offset = state.restart * cfg.evaluations
            propose = proposer(state)
            lag = getattr(propose, "in_flight", 1)
            ahead: dict[int, tuple[Any, Any, float]] = {}
            while len(state.history) < cfg.evaluations:
                if evaluate_many is not None and lag == 1 and not ahead:
                    ahead = _score_ahead(space, propose, state, offset, evaluate_many)
                while len(state.pending) < lag and len(state.history) + len(state.pending) < cfg.evaluations:
                    candidate, parent = propose()
                    state.pending.append((_canonical(space, candidate)[1], parent))
                index = len(state.history)
                if lag > 1 and evaluate_many is not None:
                    ahead = {index: flight.take(state.pending, offset + index)}
                obj, parent = state.pending.pop(0)
                record(space, state, space.from_json(obj), parent, lambda c, i: evaluate(c, offset + i), ahead)
                if recorded is not None:
                    recorded(state)
                state.save(path)
                best = _best(states)
                if log_path is not None:
                    with open(log_path, "a") as fh:
                        fh.write(_log_line(state.history[-1], offset, state.restart, best))
                advance(_best_text(best))
    return _result(space, states)


def _score_ahead(space: SearchSpace[C], propose: Proposer, state: _State, offset: int,
                 evaluate_many: EvaluateMany) -> dict[int, tuple[Any, Any, float]]:
    """{index: (canonical JSON, value, seconds each)} of the candidates ``propose`` has ready (at least two), scored
    together; empty when it has fewer."""
    ready = list(getattr(propose, "ready", lambda: [])())[: state.cfg.evaluations - len(state.history)]
    if len(ready) < 2:
        return {}
    start, first = time.perf_counter(), len(state.history)
    values = evaluate_many([(c, offset + first + j) for j, c in enumerate(ready)])
    each = (time.perf_counter() - start) / len(ready)
    return {first + j: (_canonical(space, c)[1], v, each) for j, (c, v) in enumerate(zip(ready, values))}


def record(space: SearchSpace[C], state: _State, candidate: C, parent: int | None,
           evaluate: Callable[[C, int], Any], ahead: dict[int, tuple[Any, Any, float]] | None = None) -> None:
    """Evaluate ``candidate`` as the restart's next member (or take its value from ``ahead``, scored before, when
    it is the candidate scored there) and insert it (the oldest member dies past ``population``)."""
    index = len(state.history)
    candidate, obj = _canonical(space, candidate)
    known = (ahead or {}).pop(index, None)
    if known is not None and known[0] == obj:
        value, seconds = known[1], known[2]
    else:
        start = time.perf_counter()
        value = evaluate(candidate, index)
        seconds = time.perf_counter() - start
    value, details = value if isinstance(value, tuple) else (value, None)
    member = _Member(index, _fitness(value), obj, parent, seconds,
                     None if details is None else json.loads(json.dumps(details)))  # as a resumed state holds them
    state.history.append(member)
    state.population.append(member)
    if len(state.population) > state.cfg.population:
        state.population.pop(0)  # aging: the oldest member dies, whatever its fitness


def _result(space: SearchSpace[C], states: Sequence[_State]) -> SearchResult[C]:
    best = _best(states)
    assert best is not None
    ranked = _ranked(states)
    return SearchResult(best=space.from_json(best[1].candidate), best_fitness=best[1].fitness, best_index=best[0],
                        history=[(i, m.fitness) for i, _, m in ranked], evaluations=len(ranked),
                        seconds=sum(m.seconds for _, _, m in ranked), population=states[0].cfg.population,
                        restarts=len(states),
                        details=[(i, m.candidate, m.details) for i, _, m in ranked if m.details is not None])


def _best_text(best: tuple[int, _Member] | None) -> str:
    return "best -" if best is None else f"best {best[1].fitness:.5g} (#{best[0]})"
