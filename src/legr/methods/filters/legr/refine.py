"""Per-target refinement of a learned ranking (issue 38): learn once, then polish the family's own members.

LeGR learns one set of per-layer affine transforms for every budget; AMC searches each budget on its own. On
ResNet-20 / CIFAR-10-JPEG (30/47/70% MACs, equal numbers of fitness evaluations) AMC's per-target winners scored
8-9 / 3-14 / 1-3 validation points above the LeGR winner's cuts at the same targets (seeds 0, 1), and fine-tuned
higher at 47% and 70%: one transform cannot be best at every target. Refinement keeps the shared ranking (any budget is still cut from
it: "learn once, cut many") and, for each search target, continues the evolution at that target alone for
``evaluations`` candidates, starting from the shared winner: its first population is the winner, the transform
reproducing the uniform allocation there, the shared search's candidates that scored best *at that target* (up to
half the population: at 30% on ResNet-20 the shared winner's neighbourhood held nothing better, so the refinement
also starts from where the shared search did best there) and mutations of the winner; mutations continue the shared
search's annealing schedule (``offset`` steps already taken), so they are the small steps of a late search. The candidate
scoring best at that target (the shared winner is one of them) becomes that target's transform; a member cut at a
refined target uses it, every other budget the shared ranking. The refinement searches as the shared search does
(``search.optimizer``): with CMA-ES it starts from the best of that first population.

Each target's evolution is resumable like the shared search (its own state and log files beside them:
``<state stem>.refine<k>.json``, ``<log stem>.refine<k>.jsonl``), and its fitness indices are its own
(`refine_index`), so its adaptive-BN batches differ from the shared search's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from legr.methods.filters.legr.affine import AffineSpace, AffineTransform
from legr.methods.filters.legr.evolution import EvolutionConfig
from legr.methods.filters.legr.family import FamilyObjective
from legr.methods.filters.legr.searchers import run_search

REFINE_INDEX = 10**7  # fitness indices of target k's refinement: (k + 1) * REFINE_INDEX + candidate (below REFERENCE_INDEX)


def refine_index(k: int, i: int) -> int:
    return (k + 1) * REFINE_INDEX + i


def refine_path(path: Path | None, k: int) -> Path | None:
    """Target ``k``'s state or log file beside the shared search's ``path``."""
    return None if path is None else Path(path).with_name(f"{Path(path).stem}.refine{k}{Path(path).suffix}")


def refine_config(evaluations: int, search: EvolutionConfig, seed: int) -> EvolutionConfig:
    """A small population (a quarter of the evaluations, at most the shared search's, at least 3: the identity, the
    winner, the uniform transform) sampled as the shared one; ``evaluations`` >= 3."""
    population = max(3, min(search.population, evaluations // 4))
    return EvolutionConfig(population=population, sample=min(search.sample, population), evaluations=evaluations,
                           restarts=1, seed=seed, optimizer=search.optimizer, sigma0=search.sigma0,
                           in_flight=min(search.in_flight, population))


def refinements_left(log_path: Path, evaluations: int, targets: Sequence[float]) -> list[tuple[float, int]]:
    """(target, candidates still to score) of each of a run's ``targets`` (fractions; refined in sorted order), from
    the refinement logs beside the search log ``log_path``; none when ``evaluations`` is 0."""
    out = []
    for k, t in enumerate(sorted(targets) if evaluations else ()):
        log = refine_path(log_path, k)
        out.append((t, max(evaluations - (len(log.read_text().splitlines()) if log.exists() else 0), 0)))
    return out


class _LateSpace:
    """The shared space with mutations at step ``offset + step`` of ``offset + total``: a late search's steps."""

    def __init__(self, space: AffineSpace, offset: int) -> None:
        self.space, self.offset = space, offset
        self.fingerprint = f"{space.fingerprint}+late{offset}"

    def identity(self) -> AffineTransform:
        return self.space.identity()

    def random(self, rng: np.random.Generator) -> AffineTransform:
        return self.space.random(rng)

    def mutate(self, parent: AffineTransform, rng: np.random.Generator, step: int, total: int) -> AffineTransform:
        return self.space.mutate(parent, rng, self.offset + step, self.offset + total)

    def to_json(self, candidate: AffineTransform) -> Any:
        return self.space.to_json(candidate)

    def to_vector(self, candidate: AffineTransform) -> np.ndarray:
        return self.space.to_vector(candidate)

    def from_vector(self, x: np.ndarray) -> AffineTransform:
        return self.space.from_vector(x)

    def from_json(self, obj: Any) -> AffineTransform:
        return self.space.from_json(obj)


def refine_targets(space: AffineSpace, score: Callable[[AffineTransform, int, int], float],
                   winner: AffineTransform, uniform: Sequence[AffineTransform], targets: Sequence[float],
                   reference: Sequence[float], objective: FamilyObjective, evaluations: int, search: EvolutionConfig,
                   offset: int, *, best_at: Sequence[Sequence[AffineTransform]] | None = None,
                   state_path: Path | None = None, log_path: Path | None = None, progress: bool = True,
                   score_many: Callable[[Sequence[tuple[AffineTransform, int, int]]], list[float]] | None = None,
                   ) -> list[dict[str, Any]]:
    """Refine ``winner`` at each of ``targets`` (costs) in turn; ``score(candidate, k, index)`` is the candidate's
    fitness at target ``k``, ``uniform[k]`` the transform reproducing the uniform allocation there. The fitness of
    a candidate is ``objective`` at that one target against ``reference[k]`` (so the guard still applies);
    ``best_at[k]`` are the shared search's candidates best at target ``k`` first (none: mutations only). Returns one
    record per target: its cost, the refined transform, its fitness and the shared winner's in the same search.
    ``score_many([(candidate, k, index)])`` scores several at once elsewhere (`learn_ranking`'s ``score_many``)."""
    records = []
    for k, target in enumerate(targets):
        cfg = refine_config(evaluations, search, seed=search.seed * 1_000_003 + 7919 * (k + 1))
        late = _LateSpace(space, offset)
        rng = np.random.Generator(np.random.PCG64([cfg.seed, 1]))
        seeds = [winner, uniform[k]]
        room = max(0, min(cfg.population // 2, cfg.population - 1 - len(seeds)))
        seeds += [t for t in (best_at[k] if best_at else ()) if t != winner and t != uniform[k]][:room]
        seeds += [late.mutate(winner, rng, 0, evaluations) for _ in range(cfg.population - 1 - len(seeds))]
        many = None if score_many is None else lambda cs, k=k: [
            objective([s], [reference[k]]) for s in score_many([(c, k, refine_index(k, i)) for c, i in cs])]
        result = run_search(
            late, lambda c, i, k=k: objective([score(c, k, refine_index(k, i))], [reference[k]]), cfg,
            initial=seeds, state_path=refine_path(state_path, k), log_path=refine_path(log_path, k),
            progress=progress, evaluate_many=many)
        winner_fitness = dict(result.history)[1]  # the shared winner is the first candidate after the identity
        records.append({"target": float(target), **space.to_json(result.best), "fitness": result.best_fitness,
                        "shared_fitness": winner_fitness, "best_index": result.best_index,
                        "evaluations": result.evaluations, "population": cfg.population,
                        "seconds": round(result.seconds, 3)})
    return records


def best_at(space: AffineSpace, details: Sequence[tuple[int, Any, Any]], k: int) -> list[AffineTransform]:
    """The search's candidates by their score at its ``k``-th target, best first (ties: earliest), distinct."""
    ranked = sorted((d for d in details if d[2] is not None), key=lambda d: (-float(d[2][k]), d[0]))
    return distinct([space.from_json(c) for _, c, _ in ranked])


def distinct(transforms: Sequence[AffineTransform]) -> list[AffineTransform]:
    """``transforms`` without repeats, in their order."""
    out: list[AffineTransform] = []
    for t in transforms:
        if not any(np.array_equal(t.alpha, o.alpha) and np.array_equal(t.kappa, o.kappa) for o in out):
            out.append(t)
    return out


def refined_transform(records: Sequence[dict[str, Any]], target: float) -> AffineTransform | None:
    """The refined transform of the record whose cost is ``target`` (relative tolerance 1e-9), else None."""
    for r in records:
        if abs(float(r["target"]) - target) <= 1e-9 * max(1.0, abs(target)):
            return AffineTransform(np.asarray(r["alpha"], dtype=np.float64), np.asarray(r["kappa"], dtype=np.float64))
    return None
