"""Where everything of a run lives: one object per folder kind, owning every path (nothing else joins file names).

A run folder (`RunFolder`)::

    config.yaml               resolved configuration (a different config is refused once the run has started)
    base/model.safetensors    the trained/adapted source network (only when base_training.epochs > 0); base/train.pt
    search_state.json         evolution state after every candidate (search_state.restart<r>.json: restart r);
    search_log.jsonl          one line per candidate, every restart
    ranking.json              the ranking: criterion scores + per-layer alpha, kappa (learned for lcp/legr)
    sensitivity.json          method magnitude: each layer's validation top-1 at each pruned fraction
    latency_model.json        budget latency: the latency model the members were cut with (cached per device too)
    timings.json              wall seconds of each step that ran (rank, prune, finetune), for pipeline-cost figures
    members/<name>/           plan.json + model.safetensors (+ finetuned.json once fine-tuned; finetune.pt meanwhile);
                              method magnitude: its rounds' files and model.sparse.safetensors (+ finetuned.json)
    results.json / .csv       one row per network;  pareto.png: accuracy vs MACs and vs latency

A comparison folder (`ComparisonFolder`): ``source/`` (the adapted source network's run folder), ``seed<S>/<method>/``
(one run folder per method and seed), ``per_target/<method>-<T>/`` (pipeline-cost searches), ``latency.json``,
``compare.json``, ``summary.md`` and the plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from legr.engine.artifacts import PLAN_FILE, WEIGHTS_FILE
from legr.reporting import RESULTS_CSV, RESULTS_JSON


def member_name(prefix: str, target: float) -> str:
    """A family member's folder name, e.g. ``legr-47`` for the 47% MACs target of allocator legr."""
    return f"{prefix}-{round(target * 100)}"


@dataclass(frozen=True)
class MemberFolder:
    """One pruned network of a family."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    plan = property(lambda self: self.root / PLAN_FILE)
    weights = property(lambda self: self.root / WEIGHTS_FILE)
    finetuned = property(lambda self: self.root / "finetuned.json")  # written last: the fine-tune is complete
    finetune_checkpoint = property(lambda self: self.root / "finetune.pt")


@dataclass(frozen=True)
class RunFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    config = property(lambda self: self.root / "config.yaml")
    latency_model = property(lambda self: self.root / "latency_model.json")
    base_weights = property(lambda self: self.root / "base" / "model.safetensors")
    base_checkpoint = property(lambda self: self.root / "base" / "train.pt")
    timings = property(lambda self: self.root / "timings.json")
    ranking = property(lambda self: self.root / "ranking.json")
    sensitivity = property(lambda self: self.root / "sensitivity.json")
    search_state = property(lambda self: self.root / "search_state.json")
    search_log = property(lambda self: self.root / "search_log.jsonl")
    members = property(lambda self: self.root / "members")
    results_json = property(lambda self: self.root / RESULTS_JSON)  # written last: the run is complete
    results_csv = property(lambda self: self.root / RESULTS_CSV)
    pareto = property(lambda self: self.root / "pareto.png")

    def member(self, name: str) -> MemberFolder:
        return MemberFolder(self.members / name)

    def saved_members(self) -> list[MemberFolder]:
        """The members on disk, by name."""
        return [MemberFolder(p) for p in sorted(self.members.iterdir())] if self.members.is_dir() else []


@dataclass(frozen=True)
class ComparisonFolder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    source = property(lambda self: RunFolder(self.root / "source"))
    latency = property(lambda self: self.root / "latency.json")
    compare_json = property(lambda self: self.root / "compare.json")
    summary = property(lambda self: self.root / "summary.md")
    accuracy_plot = property(lambda self: self.root / "accuracy_vs_macs.png")
    widths_plot = property(lambda self: self.root / "widths.png")

    def run(self, seed: int, method: str) -> RunFolder:
        return RunFolder(self.root / f"seed{seed}" / method)

    def per_target(self, method: str, target: float) -> RunFolder:
        return RunFolder(self.root / "per_target" / member_name(method, target))
