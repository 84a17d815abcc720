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
    report.html               `legr report`: the results as one offline interactive page (legr.reporting.html)

A comparison folder (`ComparisonFolder`): ``source/`` (the adapted source network's run folder), ``seed<S>/<method>/``
(one run folder per method and seed), ``per_target/<method>-<T>/`` (pipeline-cost searches), ``latency.json``,
``compare.json``, ``summary.md`` and the plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from legr.methods.folders import MemberFolder, MethodFolder, member_name
from legr.reporting import RESULTS_CSV, RESULTS_JSON

__all__ = ["ComparisonFolder", "MemberFolder", "RunFolder", "member_name"]


@dataclass(frozen=True)
class RunFolder(MethodFolder):
    """A run folder: what its method works in (`legr.methods.folders.MethodFolder`) and the results."""

    results_json = property(lambda self: self.root / RESULTS_JSON)  # written last: the run is complete
    results_csv = property(lambda self: self.root / RESULTS_CSV)
    pareto = property(lambda self: self.root / "pareto.png")


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
