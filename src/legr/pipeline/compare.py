"""Pruning methods compared under equal budgets.

Every method (a criterion cut by an allocator, see `legr.methods.filters`, or another
registered method such as Han et al.'s ``magnitude``) prunes the same source network to the same targets (fractions of
each method's budget unit: MACs for filter pruning, parameters for magnitude pruning; the tables say which), with the
same train/validation/test splits and the same fine-tuning budget, once per seed; each (method, seed) is an ordinary resumable `Pipeline` run folder. Afterwards all networks are timed together
(interleaved rounds), and the per-run rows are aggregated into mean +- std over seeds. The folder's layout:
`legr.pipeline.folder.ComparisonFolder`.

The seed changes the search, the fine-tuning order, the ``random`` scores and the ``taylor`` batches; the source
network and the splits are the same for every run. The test split is only used to report accuracy.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from torch import nn

from legr.engine.latency import measure_interleaved
from legr.engine.surgery import fold_batchnorm
from legr.engine.plan import Plan, source_widths
from legr.hardware import hardware_label
from legr.methods.stages import MEMBER_FILE
from legr.paths import atomic_write_text
from legr.pipeline.compare_config import CompareConfig, MethodConfig, entry_method
from legr.pipeline.config import LatencyBudget, RunConfig
from legr.pipeline.folder import ComparisonFolder, RunFolder, member_name
from legr.pipeline.steps import Pipeline
from legr.reporting import (
    BASELINE,
    LATENCY_KEY,
    comparison_markdown,
    is_baseline,
    latency_columns,
    plot_method_curves,
    plot_widths,
    read_results,
    warn_if_noisy,
)


@dataclass(frozen=True)
class RunRef:
    method: MethodConfig
    seed: int
    folder: RunFolder


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class Comparison:
    def __init__(self, cfg: CompareConfig, out: str | Path, *, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.cfg, self.spec, self.out, self.progress, self.log = cfg, cfg.compare, Path(out), progress, log
        self.folder = ComparisonFolder(self.out)
        self.shared = cfg.run_config()
        self.targets = sorted(self.shared.targets)

    # --- runs -----------------------------------------------------------------------------------------------
    def _source(self) -> RunConfig:
        """The shared settings with the source network fixed: adapted once (in ``source/``) when base training is on."""
        if self.shared.base_training.epochs == 0:
            return self.shared
        pipeline = Pipeline(self.shared.source_only(), self.folder.source.root, progress=self.progress, log=self.log)
        pipeline.base  # trains (or loads) and saves source/base/model.safetensors
        weights = str(self.folder.source.base_weights.resolve())
        model = self.shared.model.model_copy(update={"weights": weights})
        return self.shared.model_copy(update={"model": model, "base_training": self.shared.base_training.model_copy(
            update={"epochs": 0})})

    def _config(self, source: RunConfig, method: MethodConfig, seed: int, **search: Any) -> RunConfig:
        own: dict[str, Any] = {} if method.targets is None else {"targets": method.targets}
        if method.budget is not None:  # "latency": the shared latency section (its defaults if there is none)
            shared = source.budget if isinstance(source.budget, LatencyBudget) else LatencyBudget()
            own["budget"] = shared if method.budget == "latency" else method.budget
        settings = self.cfg.entry_settings(method)
        if search:  # the pipeline-cost searches: the entry's search at one target
            settings["search"] = settings["search"].model_copy(update=search)
        return source.model_copy(update={
            "method": method.method, **settings, "seed": seed,
            "eval": source.eval.model_copy(update={"latency": False}), **own})

    def runs(self) -> list[RunRef]:
        return [RunRef(m, s, self.folder.run(s, m.name)) for s in self.spec.seeds for m in self.spec.methods]

    def _pipeline(self, cfg: RunConfig, folder: RunFolder) -> Pipeline:
        return Pipeline(cfg, folder.root, progress=self.progress, log=self.log)

    def run(self) -> dict[str, Any]:
        source = self._source()
        rows, pipelines = [], []
        for ref in self.runs():
            criterion, allocator = entry_method(ref.method.model_dump()).entry_label(ref.method.model_dump())
            what = allocator if criterion == "-" else f"{criterion} + {allocator}"
            self.log(f"[seed {ref.seed}] {ref.method.name} ({what})")
            pipeline = self._pipeline(self._config(source, ref.method, ref.seed), ref.folder)
            pipelines.append(pipeline)
            evaluated = ref.folder.results_json.exists()  # written last, so the run folder is complete
            for row in read_results(ref.folder.root) if evaluated else pipeline.evaluate(baseline=not rows):
                if not is_baseline(row):
                    row = {**row, "method": ref.method.name, "allocator": row["method"],
                           "budget": row.get("budget") or "macs"}
                rows.append({**row, "run": str(ref.folder.root.relative_to(self.out))})
        pipeline_cost = self._pipeline_cost(source)
        first = pipelines[0]
        latency = self._latency(pipelines)
        for row in rows:
            row.update(latency.get(self._net_id(row), {}))
        result = {
            "model": self.shared.model.name, "dataset": self.shared.data.name, "targets": self.targets,
            "seeds": list(self.spec.seeds), "hardware": hardware_label(),
            "search_targets": list(self.shared.search_targets),  # the shared search's (a method may change them)
            "config": self.cfg.model_dump(mode="json"),
            "runs": rows, "summary": summarize(rows, self.spec.methods, self.targets),
            "family_time_s": family_times(per_seed := self._family_seconds()), "family_time_per_seed": per_seed,
            "pipeline_cost": pipeline_cost, "widths": self._widths(first), "searches": self._searches(),
            "search_cost": self._search_costs(),
        }
        write_result(result, self.folder)
        from legr.reporting.html import write_report_html  # altair: imported when a report is written

        write_report_html(self.out)
        return result

    def _searches(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per searching method and seed: the winner's validation fitness, each restart's best, how many of its
        candidates the guard found infeasible and the winner's score at each search target (ranking.json)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for ref in self.runs():
            search = json.loads(ref.folder.ranking.read_text()).get("search", {}) if ref.folder.ranking.exists() else {}
            if "best_fitness" in search:
                out.setdefault(ref.method.name, {})[str(ref.seed)] = {
                    "best_fitness": search["best_fitness"], "restart_best": search.get("restart_best",
                                                                                       [search["best_fitness"]]),
                    **({"infeasible": search["infeasible"]} if "infeasible" in search else {}),
                    **({"winner": [m["score"] for m in search["margins"]]} if "margins" in search else {})}
        return out

    def _search_costs(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Per method and seed: the seconds of its one-time work (``rank`` in timings.json: a search, a sensitivity
        analysis ...) and what the method reports of it (`Method.search_cost`: e.g. the fitness evaluations)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for ref in self.runs():
            if ref.folder.timings.exists():
                seconds = json.loads(ref.folder.timings.read_text()).get("rank")
                cost = entry_method(ref.method.model_dump()).search_cost(ref.folder)
                out.setdefault(ref.method.name, {})[str(ref.seed)] = {"rank_s": seconds, **cost}
        return out

    @staticmethod
    def _net_id(row: dict[str, Any]) -> str:
        return BASELINE if is_baseline(row) else f"{row['run']}/{row['path']}"

    # --- pipeline cost: learn once vs. search per target -----------------------------------------------------
    def _pipeline_cost(self, source: RunConfig) -> dict[str, Any] | None:
        name = self.spec.pipeline_cost
        if name is None:
            return None
        method = next(m for m in self.spec.methods if m.name == name)
        seed = self.spec.seeds[0]
        timings = json.loads(self.folder.run(seed, name).timings.read_text())
        own = self._config(source, method, seed).search_targets
        searches = {}
        for t in self.targets:
            if len(own) == 1 and abs(t - own[0]) < 1e-9:
                searches[t] = timings["rank"]  # the family's own search is exactly this target's search
                continue
            folder = self.folder.per_target(name, t)
            cfg = self._config(source, method, seed, target=t, targets=None).model_copy(update={"targets": (t,)})
            self.log(f"[pipeline cost] {name}: searching separately at {t:.0%}")
            pipeline = self._pipeline(cfg, folder)
            pipeline.rank()
            searches[t] = json.loads(folder.timings.read_text())["rank"]
        per_network = timings.get("prune", 0.0) + timings.get("finetune", 0.0)
        once, separate = timings["rank"], sum(searches.values())
        return {
            "method": name, "seed": seed, "targets": self.targets, "search_targets": list(own),
            "search_s": {str(t): s for t, s in searches.items()}, "prune_and_finetune_s": per_network,
            "learn_once_s": once + per_network, "search_per_target_s": separate + per_network,
            "search_ratio": separate / once, "pipeline_ratio": (separate + per_network) / (once + per_network),
        }

    # --- latency ---------------------------------------------------------------------------------------------
    def _latency(self, pipelines: list[Pipeline]) -> dict[str, dict[str, float]]:
        path = self.folder.latency
        e = self.shared.eval
        if not e.latency:
            return {}
        shapes = {}  # per member as its chain leaves it: what its timing depends on (its architecture, its stages)
        for p in pipelines:
            for m in p.members():
                last = m.root.joinpath(*p.cfg.chain[1:])
                stages = [last / MEMBER_FILE] if last != m.root else []
                shapes[str(last.relative_to(self.out))] = _digest(*p.method.member_files(p.folder, m), *stages)
        if path.exists():
            held = json.loads(path.read_text())
            if held.get("networks") == shapes:  # else a member was cut again since: time them all again
                return held["timings"]
        first = pipelines[0]
        nets: dict[str, nn.Module] = {BASELINE: first.graph.gm}
        for pipeline in pipelines:
            for member in pipeline.members():
                last, folder = pipeline.load(member)
                nets[str(folder.root.relative_to(self.out))] = last.net
        if e.fold_bn:
            nets = {name: fold_batchnorm(net) for name, net in nets.items()}
        self.log(f"timing {len(nets)} networks on the CPU ({e.latency_rounds} interleaved rounds)")
        threads, batches = self.shared.latency_timing()
        timings = measure_interleaved(nets, first.data.input_size, batches, device="cpu",
                                      rounds=e.latency_rounds, threads=threads, warmup=e.latency_warmup,
                                      repeats=e.latency_repeats)
        out = {name: latency_columns("cpu", per) for name, per in timings.items()}
        warn_if_noisy(out, self.log)
        atomic_write_text(path, json.dumps({"networks": shapes, "timings": out}, indent=1))
        return out

    def _family_seconds(self) -> dict[str, dict[str, float]]:
        """Per method and seed: wall seconds to produce its whole family (rank + prune + fine-tune)."""
        out: dict[str, dict[str, float]] = {m.name: {} for m in self.spec.methods}
        for m in self.spec.methods:
            for s in self.spec.seeds:
                path = self.folder.run(s, m.name).timings
                if path.exists():
                    t = json.loads(path.read_text())
                    out[m.name][str(s)] = sum(t.get(k, 0.0) for k in ("rank", "prune", "finetune"))
        return out

    def _widths(self, first: Pipeline) -> dict[str, Any]:
        """Channels kept per prunable producer layer at the width target, per method (first seed)."""
        target = self.spec.width_target or self.targets[len(self.targets) // 2]
        graph = first.graph
        original = source_widths(graph)  # every producer of a prunable group, in graph order
        layers = list(original)
        per_method = {}
        for m in self.spec.methods:
            method = entry_method(m.model_dump())
            prefix = method.member_prefix(m.model_dump())
            plan_path = self.folder.run(self.spec.seeds[0], m.name).member(member_name(prefix, target)).plan
            if not method.channel_plans or not plan_path.exists():
                continue
            per_method[m.name] = Plan.load(plan_path).layer_widths(graph)
        return {"target": target, "budget": self.shared.budget_unit or "macs", "seed": self.spec.seeds[0],
                "layers": layers, "original": original, "methods": per_method}

    # --- outputs ---------------------------------------------------------------------------------------------
def write_result(result: dict[str, Any], folder: ComparisonFolder) -> None:
    """``compare.json``, ``summary.md`` and the two plots of a comparison result into ``folder`` (the widths plot when
    a method cut channels)."""
    atomic_write_text(folder.compare_json, json.dumps(result, indent=1, default=float))
    atomic_write_text(folder.summary, summary_markdown(result))
    title = f"{result['model']} on {result['dataset']}, {len(result['seeds'])} seeds"
    plot_method_curves(result["summary"], folder.accuracy_plot, title=title)
    w = result["widths"]
    if w["methods"]:  # a comparison (or piece) of methods that cut no channels (low rank, Han et al.) has no widths
        plot_widths(w["layers"], w["original"], w["methods"], folder.widths_plot,
                    title=f"channels kept per layer at {w['target']:.0%} "
                          f"{w.get('budget', 'macs').replace('macs', 'MACs')} ({result['model']}, seed {w['seed']})")


def summarize(rows: list[dict[str, Any]], methods: Sequence[MethodConfig],
              targets: Sequence[float]) -> list[dict[str, Any]]:
    """One row per (method, target): means over seeds, and std of the accuracies."""
    out = []
    keys = sorted({k for r in rows for k in r if LATENCY_KEY.match(k)})
    own = {m.name: sorted(m.targets) for m in methods if m.targets is not None}
    for name in [BASELINE] + [m.name for m in methods]:
        for target in ([None] if name == BASELINE else own.get(name, targets)):
            mine = [r for r in rows if r["method"] == name and (name == BASELINE or r["target"] == target)]
            if not mine:
                continue
            entry: dict[str, Any] = {"method": name, "target": target, "n": len(mine),
                                     "criterion": mine[0].get("criterion"), "allocator": mine[0].get("allocator"),
                                     "budget": mine[0].get("budget")}
            for key in ["macs", "params", "macs_ratio", "params_ratio", *keys]:
                entry[key] = _mean_std([r.get(key) for r in mine])[0]
            for key in ["top1", "top1_before_ft", "top1_after_bn"]:
                entry[key], entry[f"{key}_std"] = _mean_std([r.get(key) for r in mine])
            out.append(entry)
    return out


def family_times(per_seed: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Per method: mean and std over seeds of the family wall time."""
    out = {}
    for name, seconds in per_seed.items():
        mean, std = _mean_std(list(seconds.values()))
        out[name] = {"mean_s": mean, "std_s": std}
    return out


def summary_markdown(result: dict[str, Any]) -> str:
    """The comparison's ``summary.md`` (`legr.reporting.comparison_markdown`), each entry labelled by its method."""
    labels = {m["name"]: entry_method(m).entry_label(m)
              for m in result["config"]["compare"]["methods"]}
    return comparison_markdown(result, labels)


def _digest(*paths: Path) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()[:16]
