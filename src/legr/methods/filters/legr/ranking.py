"""LeGR's learned global ranking: per-layer affine transforms of a filter criterion, stored as a JSON artifact.

A channel's global score is ``sum over its producer layers l of (alpha_l * s_f + kappa_l)``, where ``s_f`` is the
criterion score of the producing filter (squared L2 norm in the paper). With alpha = 1 and kappa = 0 everywhere this
is the plain global ranking. One ranking serves every FLOPs budget: `Ranking.solver` cuts it for any target with
the ranking's allocator (see `allocate.ALLOCATORS`: ``uniform``/``global`` use the raw criterion, ``lcp``/``legr``
a learned transform). The artifact stores the criterion scores it was made from, so data-dependent criteria
(``taylor``) and seeded ones (``random``) cut the same way every time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from legr.engine.cost import BudgetUnit, CostModel
from legr.engine.surgery import prune
from legr.errors import LegrError
from legr.graph import ChannelGraph
from legr.methods.filters.allocate import ALLOCATORS, BudgetSolver, Floors, solve_uniform
from legr.methods.filters.criteria import compute_scores, group_scores
from legr.methods.filters.legr.affine import AffineSpace, AffineTransform
from legr.methods.filters.legr.evolution import EvolutionConfig
from legr.methods.filters.legr.family import FamilyObjective
from legr.methods.filters.legr.refine import best_at, distinct, refine_targets, refined_transform
from legr.methods.filters.legr.scorer import CandidateScorer, NetworkFitness, ScoreMany
from legr.methods.filters.legr.searchers import run_search
from legr.paths import atomic_write_text

RANKING_VERSION = 2  # 2 adds the allocator and the stored criterion scores


def model_fingerprint(model: nn.Module) -> str:
    """sha256 (16 hex) over parameter/buffer names, shapes and values: identifies the exact source network."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes() if tensor.dtype != torch.bfloat16 else b"")
    return h.hexdigest()[:16]


def ranked_layers(graph: ChannelGraph) -> list[str]:
    """The layers LeGR learns a transform for: every producer of a prunable group, in graph order."""
    prunable = {name for g in graph.prunable_groups() for name in g.producers}
    return [name for name in graph.layers if name in prunable]


@dataclass(frozen=True)
class Ranking:
    """Per-layer ``alpha``/``kappa`` for ``layers``, the criterion (and its per-filter ``scores`` when stored), the
    allocator that cuts it, and the fingerprint of the source network."""

    layers: tuple[str, ...]
    alpha: tuple[float, ...]
    kappa: tuple[float, ...]
    criterion: str = "l2sq"
    fingerprint: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    allocator: str = "legr"
    scores: dict[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def identity(cls, layers: Sequence[str], **kw: Any) -> "Ranking":
        return cls(tuple(layers), (1.0,) * len(layers), (0.0,) * len(layers), **kw)

    def transform(self, layer: str, scores: np.ndarray) -> np.ndarray:
        i = self._index[layer]
        return self.alpha[i] * scores + self.kappa[i]

    @property
    def _index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.layers)}

    def check(self, graph: ChannelGraph, fingerprint: str | None = None) -> None:
        """Raise if this ranking was learned on another network."""
        if fingerprint is not None and self.fingerprint and fingerprint != self.fingerprint:
            raise LegrError(
                f"ranking was learned on a network with fingerprint {self.fingerprint}, but this network's is "
                f"{fingerprint} (different architecture or weights)"
            )
        expected = ranked_layers(graph)
        if list(self.layers) != expected:
            missing = sorted(set(expected) - set(self.layers))[:3]
            raise LegrError(f"ranking does not fit this model: its layers differ (e.g. missing {missing or '-'})")

    def layer_scores(self, graph: ChannelGraph, model: nn.Module) -> dict[str, np.ndarray]:
        """The stored criterion scores (recomputed from the weights for a version-1 file, which stores none)."""
        if self.scores:
            return {name: np.asarray(v, dtype=np.float64) for name, v in self.scores.items()}
        return compute_scores(self.criterion, graph, model)

    def group_scores(self, graph: ChannelGraph, model: nn.Module) -> dict[str, np.ndarray]:
        return group_scores(graph, self.layer_scores(graph, model), self.transform)

    def at(self, target: float) -> "Ranking":
        """The ranking a member cut at ``target`` (a cost in the search's unit) uses: the per-target refinement's
        transform where the search refined that target (`refine`), else this one."""
        refined = refined_transform(self.search.get("refined", ()), target)
        if refined is None or ALLOCATORS[self.allocator].search is None:  # a fallback to uniform has no transform
            return self
        return replace(self, alpha=tuple(float(a) for a in refined.alpha), kappa=tuple(float(k) for k in refined.kappa))

    def solver(self, graph: ChannelGraph, cost: CostModel, model: nn.Module, floors: Floors = Floors(),
               unit: BudgetUnit = "macs") -> BudgetSolver:
        """The ranking's allocator cutting it (a per-target search, AMC, cuts its stored records: ``search``)."""
        spec, scores = ALLOCATORS[self.allocator], self.group_scores(graph, model)
        if spec.per_target is not None:
            return spec.per_target.solver(graph, cost, scores, floors, unit, self.search)
        return spec.solver(graph, cost, scores, floors, unit)

    # --- JSON artifact ---------------------------------------------------------------------------------------
    def to_json(self) -> str:
        layers = [{"name": n, "alpha": a, "kappa": k, **({"scores": list(self.scores[n])} if n in self.scores else {})}
                  for n, a, k in zip(self.layers, self.alpha, self.kappa)]
        data = {"version": RANKING_VERSION, "criterion": self.criterion, "allocator": self.allocator,
                "fingerprint": self.fingerprint, "source": self.source, "search": self.search, "layers": layers}
        return json.dumps(data, indent=1)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Ranking":
        path = Path(path)
        if not path.is_file():
            raise LegrError(f"ranking file not found: {path}")
        try:
            data = json.loads(path.read_text())
            layers = data["layers"]
            ranking = cls(
                tuple(str(x["name"]) for x in layers), tuple(float(x["alpha"]) for x in layers),
                tuple(float(x["kappa"]) for x in layers), str(data.get("criterion", "l2sq")),
                str(data.get("fingerprint", "")), dict(data.get("source", {})), dict(data.get("search", {})),
                str(data.get("allocator", data.get("search", {}).get("method", "legr"))),
                {str(x["name"]): tuple(float(v) for v in x["scores"]) for x in layers if "scores" in x},
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise LegrError(f"{path} is not a valid ranking file ({type(exc).__name__}: {exc})") from exc
        ALLOCATORS[ranking.allocator]
        return ranking


def layer_score_std(scores: Mapping[str, np.ndarray], layers: Sequence[str]) -> list[float]:
    """Standard deviation of each layer's filter scores (the scale of LeGR's kappa)."""
    return [float(np.std(scores[name])) if len(scores[name]) > 1 else float(abs(scores[name]).mean()) for name in layers]


def uniform_transform(graph: ChannelGraph, cost: CostModel, scores: Mapping[str, np.ndarray], target: float,
                      floors: Floors = Floors(), unit: BudgetUnit = "macs") -> tuple[np.ndarray, np.ndarray]:
    """Per-layer ``(alpha, kappa)`` (in `ranked_layers` order) whose global cut at ``target`` (in ``unit``) reproduces the
    uniform allocation (`solve_uniform`) of the raw ``scores``, within one channel per layer.

    alpha is 1 everywhere (so LCP's offset-only space holds it too); kappa shifts each layer so that, in every set of
    channels produced by the same layers, the first channel uniform removes lands at ``-margin`` and the last one it
    keeps above zero (``margin`` is half the smallest score gap at those boundaries). The global solver then removes
    everything uniform removes, those boundary channels last: at most one per channel set can remain.
    """
    layers = ranked_layers(graph)
    index = {name: i for i, name in enumerate(layers)}
    group_raw = group_scores(graph, scores)
    keep, _ = solve_uniform(graph, cost, group_raw, target, floors, unit=unit)
    rows, offsets, gaps = [], [], []  # one row per channel set: its producers' coverage and its kappa sum
    for group in graph.prunable_groups():
        cover: dict[int, set[str]] = {}
        for name in group.producers:
            for pos in np.unique(graph.producer_positions(name)).tolist():
                cover.setdefault(pos, set()).add(name)
        sets: dict[frozenset[str], list[int]] = {}
        for pos, names in cover.items():
            sets.setdefault(frozenset(names), []).append(pos)
        for names, positions in sets.items():
            values = group_raw[group.name][positions]
            kept = keep[group.classes[positions]] > 0
            row = np.zeros(len(layers))
            row[[index[n] for n in names]] = 1.0
            rows.append(row)
            if kept.all():  # nothing removed here: lift the weakest channel above every removed one
                offsets.append(("keep", values.min()))
            else:
                first_removed = values[~kept].max()
                offsets.append(("cut", first_removed))
                if kept.any():
                    gaps.append(values[kept].min() - first_removed)
    positive = [g for g in gaps if g > 0]
    margin = 0.5 * min(positive) if positive else 1.0
    rhs = np.array([-v - margin if kind == "cut" else -v + margin for kind, v in offsets])
    kappa, *_ = np.linalg.lstsq(np.array(rows), rhs, rcond=None)
    return np.ones(len(layers)), kappa


REFERENCE_INDEX = 10**9  # fitness index of the uniform references (candidates count from 0)


def learn_ranking(
    model: nn.Module,
    graph: ChannelGraph,
    fitness: NetworkFitness,
    target_macs: float | Sequence[float],
    *,
    unit: BudgetUnit = "macs",
    cost: CostModel | None = None,
    criterion: str = "l2sq",
    scores: Mapping[str, np.ndarray] | None = None,
    allocator: str = "legr",
    floors: Floors = Floors(),
    search: EvolutionConfig = EvolutionConfig(),
    objective: FamilyObjective = FamilyObjective(),
    mutate_fraction: float = 0.1,
    mutation_scale: float = 1.0,
    seed_uniform: bool = True,
    refine: int = 0,
    refine_at: Sequence[float] | None = None,
    fallback: bool = True,
    state_path: Path | None = None,
    log_path: Path | None = None,
    progress: bool = True,
    score_many: ScoreMany | None = None,
) -> Ranking:
    """Learn LeGR's per-layer affine transform by CMA-ES or aging evolution (``search.optimizer``).

    Each candidate ranking prunes ``model`` (weights restored from memory) to each of ``target_macs`` (costs in
    ``unit``: MACs, parameters with ``unit="params"``, predicted ms with ``unit="latency"`` and a ``cost`` model that
    holds a latency model); ``fitness(pruned_network, candidate_index)`` scores each network (higher is better, e.g.
    validation top-1 after `recalibrate_bn`), and ``objective`` (`family`) turns the scores into the
    candidate's fitness against the uniform allocation of the raw ``scores`` cut and scored the same way at each
    target (the reference, scored once). ``scores`` are the criterion's per-filter scores (default: computed from the
    weights); ``allocator`` "lcp" learns only the offsets. The first population holds the identity (the plain global
    ranking) and, with ``seed_uniform``, the transforms that reproduce the uniform allocation at each target
    (`uniform_transform`), so the search starts from both baselines. The winner's per-target scores and margins over
    the reference are in ``ranking.search["margins"]``; when ``objective.guard`` holds and no candidate stays within
    the tolerance of the reference at every target, the uniform allocation itself is returned
    (``search["fallback"] == "uniform"``) — unless ``fallback`` is False: the caller guards each member against
    uniform at its own target (the method ``filters`` does), so the winner is returned with the targets it loses in
    ``search["infeasible_targets"]`` (a ranking far better at four targets of five is not thrown away for the fifth:
    issue 38, ResNet-20 seed 0, validation margins -4.2 / +1.1 / +10.9 / +12.3 / +9.0 points at 35 / 20 / 50 / 65 /
    80% MACs). With ``refine`` > 0, the search then continues at each of ``refine_at`` (costs; default: the search
    targets) alone for ``refine`` candidates from the winner (`refine`; a target the search did not score gets its
    uniform reference scored first): ``search["refined"]`` holds each one's transform, which `Ranking.at` gives a
    member cut there. Resumable through ``state_path``. ``score_many`` scores several candidates at once elsewhere
    (`scorer.ScoreMany`, e.g. Ray workers each holding this search's `CandidateScorer`): CMA-ES hands it each
    generation, and the search ends as it would here.
    """
    spec = ALLOCATORS[allocator]
    if spec.search is None:
        raise LegrError(f"allocator '{allocator}' learns nothing; use `Ranking.identity` for it")
    targets = [float(target_macs)] if np.isscalar(target_macs) else [float(t) for t in target_macs]
    if not targets:
        raise LegrError("learn_ranking needs at least one target")
    cost = cost or CostModel(graph)
    layers = ranked_layers(graph)
    scores = dict(scores) if scores is not None else compute_scores(criterion, graph, model)
    space = AffineSpace(layers, layer_score_std(scores, layers), mutate_fraction=mutate_fraction,
                        learn_alpha=spec.search == "affine", mutation_scale=mutation_scale)
    raw = group_scores(graph, scores)
    raw_solver = spec.solver(graph, cost, raw, floors, unit)
    for t in targets:
        raw_solver.solve(t)  # fail early if unreachable
    def uniform_score(t: float, k: int) -> float:
        return fitness(prune(graph, solve_uniform(graph, cost, raw, t, floors, unit=unit)[0]), REFERENCE_INDEX + k)

    reference = [uniform_score(t, k) for k, t in enumerate(targets)]
    uniform = [AffineTransform(*uniform_transform(graph, cost, scores, t, floors, unit)) for t in targets]
    initial = distinct(uniform)[: search.population - 1] if seed_uniform else []

    scorer = CandidateScorer(graph, cost, scores, layers, fitness, floors, unit, allocator)

    def per_target(candidate, i: int, at: Sequence[float] = targets) -> list[float]:
        return scorer(candidate, i, at)

    def scored(scores: list[float]) -> tuple[float, list[float]]:  # the per-target scores kept: refinement seeds
        return objective(scores, reference), scores

    many = None if score_many is None else (lambda cs: [scored(s) for s in score_many([(c, i, targets) for c, i in cs])])
    result = run_search(space, lambda c, i: scored(per_target(c, i)), search, initial=initial,
                        state_path=state_path, log_path=log_path, progress=progress, evaluate_many=many)
    chosen, chosen_index = result.best, result.best_index
    pick = objective.choose(result.details, reference) if objective.guard_weight is not None else None
    if objective.guard and pick is not None:  # a soft guard steered the search; the choice is the hard guard's
        chosen_index, chosen = pick[0], space.from_json(pick[1])
    best = per_target(chosen, chosen_index)  # the same index: the same batches, the same scores
    summary = {**result.summary(), "target_macs": targets[0] if len(targets) == 1 else targets, "budget": unit,
               "aggregate": objective.aggregate, "guard": objective.guard, "reference": reference,
               "margins": objective.margins(targets, best, reference), "chosen_index": chosen_index,
               "infeasible": objective.infeasible(result.details, reference, result.restarts),
               **({"guard_weight": objective.guard_weight} if objective.guard_weight is not None else {})}
    if refine:
        at = [float(t) for t in refine_at] if refine_at is not None else targets
        known = {t: (reference[k], uniform[k]) for k, t in enumerate(targets)}
        extra = [t for t in dict.fromkeys(at) if t not in known]  # a member's target the search did not score
        for j, t in enumerate(extra):
            known[t] = (uniform_score(t, len(targets) + j),
                        AffineTransform(*uniform_transform(graph, cost, scores, t, floors, unit)))
        summary["refined"] = refine_targets(
            space, lambda c, k, i: per_target(c, i, [at[k]])[0], chosen, [known[t][1] for t in at], at,
            [known[t][0] for t in at], objective, refine, search, search.evaluations,
            best_at=[best_at(space, result.details, targets.index(t)) if t in targets else [] for t in at],
            state_path=state_path, log_path=log_path, progress=progress,
            score_many=None if score_many is None else lambda cs: [s[0] for s in score_many(
                [(c, i, [at[k]]) for c, k, i in cs])])
        summary["refine_references"] = len(extra)
    ranking = Ranking(
        tuple(layers), tuple(float(a) for a in chosen.alpha), tuple(float(k) for k in chosen.kappa),
        criterion, model_fingerprint(model), search=summary, allocator=allocator, scores=stored_scores(scores, layers),
    )
    if objective.guard and not objective.feasible(best, reference):
        if not fallback:
            lost = [t for t, m in zip(targets, summary["margins"]) if m["margin"] < -m["tolerance"]]
            return replace(ranking, search={**summary, "infeasible_targets": lost})
        return replace(Ranking.identity(layers, criterion=criterion, fingerprint=ranking.fingerprint,
                                        allocator="uniform", scores=ranking.scores),
                       search={**summary, "fallback": "uniform"})
    return ranking


def stored_scores(scores: Mapping[str, np.ndarray], layers: Sequence[str]) -> dict[str, tuple[float, ...]]:
    return {name: tuple(float(v) for v in scores[name]) for name in layers}


def fitness_evaluations(ranking_path: Path, log_path: Path) -> int:
    """The networks a ranking's search scored: a learned ranking's logged candidates (every restart) plus the uniform
    references and the winner, each at every search target; a per-target search's episodes (``amc``: its records);
    0 for an allocator that searches nothing."""
    search = json.loads(Path(ranking_path).read_text()).get("search", {})
    if "amc" in search:
        return sum(int(r["fitness_evaluations"]) for r in search["amc"].get("searched", []))
    if "evaluations" not in search:
        return 0
    targets = search.get("targets") or [search.get("target")]
    logged = len(Path(log_path).read_text().splitlines()) if Path(log_path).exists() else 0
    refined = sum(int(r["evaluations"]) for r in search.get("refined", [])) + int(search.get("refine_references", 0))
    return (logged + 2) * len(targets) + refined
