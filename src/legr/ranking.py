"""LeGR's learned global ranking: per-layer affine transforms of a filter criterion, stored as a JSON artifact.

A channel's global score is ``sum over its producer layers l of (alpha_l * s_f + kappa_l)``, where ``s_f`` is the
criterion score of the producing filter (squared L2 norm in the paper). With alpha = 1 and kappa = 0 everywhere this
is the plain global ranking. One ranking serves every FLOPs budget: `Ranking.solver` cuts it for any target with
the ranking's allocator (see `legr.allocate.ALLOCATORS`: ``uniform``/``global`` use the raw criterion, ``lcp``/``legr``
a learned transform). The artifact stores the criterion scores it was made from, so data-dependent criteria
(``taylor``) and seeded ones (``random``) cut the same way every time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from legr.allocate import BudgetSolver, Floors, get_allocator
from legr.cost import CostModel
from legr.criteria import compute_scores, group_scores
from legr.errors import LegrError
from legr.graph import ChannelGraph
from legr.paths import atomic_write_text
from legr.search import AffineSpace, EvolutionConfig, aging_evolution
from legr.surgery import prune

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

    def solver(self, graph: ChannelGraph, cost: CostModel, model: nn.Module, floors: Floors = Floors()) -> BudgetSolver:
        return get_allocator(self.allocator).solver(graph, cost, self.group_scores(graph, model), floors)

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
        get_allocator(ranking.allocator)
        return ranking


def layer_score_std(scores: Mapping[str, np.ndarray], layers: Sequence[str]) -> list[float]:
    """Standard deviation of each layer's filter scores (the scale of LeGR's kappa)."""
    return [float(np.std(scores[name])) if len(scores[name]) > 1 else float(abs(scores[name]).mean()) for name in layers]


NetworkFitness = Callable[[nn.Module, int], float]


def learn_ranking(
    model: nn.Module,
    graph: ChannelGraph,
    fitness: NetworkFitness,
    target_macs: float,
    *,
    criterion: str = "l2sq",
    scores: Mapping[str, np.ndarray] | None = None,
    allocator: str = "legr",
    floors: Floors = Floors(),
    search: EvolutionConfig = EvolutionConfig(),
    mutate_fraction: float = 0.1,
    state_path: Path | None = None,
    log_path: Path | None = None,
    progress: bool = True,
) -> Ranking:
    """Learn LeGR's per-layer affine transform by aging evolution.

    Each candidate ranking prunes ``model`` (weights restored from memory) to ``target_macs`` and is scored by
    ``fitness(pruned_network, candidate_index)`` (higher is better; LeGR: minus the validation loss after tau
    fine-tuning steps). ``scores`` are the criterion's per-filter scores (default: computed from the weights);
    ``allocator`` "lcp" learns only the offsets. Resumable through ``state_path``.
    """
    spec = get_allocator(allocator)
    if spec.search is None:
        raise LegrError(f"allocator '{allocator}' learns nothing; use `Ranking.identity` for it")
    cost = CostModel(graph)
    layers = ranked_layers(graph)
    scores = dict(scores) if scores is not None else compute_scores(criterion, graph, model)
    space = AffineSpace(layers, layer_score_std(scores, layers), mutate_fraction=mutate_fraction,
                        learn_alpha=spec.search == "affine")
    index = {name: i for i, name in enumerate(layers)}
    spec.solver(graph, cost, group_scores(graph, scores), floors).solve(target_macs)  # fail early if unreachable

    def evaluate(candidate, i: int) -> float:
        transformed = group_scores(graph, scores, lambda name, v: candidate.apply(index[name], v))
        return fitness(prune(graph, spec.solver(graph, cost, transformed, floors).solve(target_macs)), i)

    result = aging_evolution(space, evaluate, search, state_path=state_path, log_path=log_path, progress=progress)
    return Ranking(
        tuple(layers), tuple(float(a) for a in result.best.alpha), tuple(float(k) for k in result.best.kappa),
        criterion, model_fingerprint(model), search={**result.summary(), "target_macs": target_macs},
        allocator=allocator, scores=stored_scores(scores, layers),
    )


def stored_scores(scores: Mapping[str, np.ndarray], layers: Sequence[str]) -> dict[str, tuple[float, ...]]:
    return {name: tuple(float(v) for v in scores[name]) for name in layers}
