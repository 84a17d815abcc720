#!/usr/bin/env python
"""Latency budgets (issue 14): how well does the latency model predict, do latency-targeted members land on their
target, and do widths rounded to multiples of 8 turn MACs savings into time?

Per model and batch size, on one device setting (default: CPU, 1 thread, thread CPU time; see below):

(a) *Latency model error.* A `LatencyModel` is built from the full network plus ``--probes`` random allocations
    (`random_plans`, seed 1) and checked on ``--plans`` other random allocations (seed 1000) plus the full network,
    each cut physically and timed in interleaved rounds: median / max relative error of predicted vs measured. Also
    the error of the predicted *ratio* to the full network (what a budget given as a fraction of the baseline needs).
(b) *Latency-targeted families.* uniform (L1 norms) and a non-uniform allocator cut at 30/50/70% of the baseline's
    predicted latency, with round_to 1 and 8: measured latency vs target.
(c) *Speed-up efficiency.* The same allocators at 30/50/70% of the MACs, round_to 1 and 8: efficiency = latency
    speed-up / MACs speed-up (1.0: time falls as fast as MACs).
All networks of (b) and (c) and the baseline are timed together in interleaved rounds (`measure_interleaved`), as
deployed: batch norms folded into the convolutions (`fold_batchnorm`, as `legr eval` times them by default).

The non-uniform allocator is LeGR for cifar_resnet56: the ranking learned on CIFAR-10-JPEG
(`results/legr_resnet56_cifar10jpeg/ranking.json`, whose stored criterion scores cut any copy of the architecture).
ResNet-50 and MobileNetV2 have no learned ranking here (no ImageNet), so they use the global L2² ranking of their
random weights, labelled ``global``. Weights do not change timings: every network is random-initialised.

Clock: this machine is a shared VM whose wall clock swings by up to 2x within seconds even for a one-thread forward
(`--clock wall` shows it); the thread's CPU time (`--clock cpu`, one thread only) is stable to a few percent, so it is
the default here. On a dedicated machine use ``--clock wall``.

Results: ``<out>/latency_budget.json`` (every row and the models' fit summaries) and ``.md`` and ``.png``, rewritten
after each (model, batch) part; a rerun skips the parts already in the JSON (delete it to start over).

  nice -n 5 .venv/bin/python benchmarks/latency_budget.py                       # ~1 h on one core
  .venv/bin/python benchmarks/latency_budget.py --models cifar_resnet56 --batch-sizes 1 --plans 10 --out /tmp/lb
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from legr.engine.cost import CostModel
from legr.engine.latency import measure_interleaved, measure_latency
from legr.engine.latency_check import meet_measured, validate
from legr.engine.latency_model import LatencySetting, build_latency_model
from legr.engine.surgery import prune
from legr.errors import BudgetError
from legr.graph import analyze
from legr.hardware import git_revision, hardware_label
from legr.methods.filters.allocate import Floors, GlobalSolver, UniformSolver, random_plans
from legr.methods.filters.criteria import compute_scores, group_scores
from legr.methods.filters.legr import Ranking
from legr.models import build_model
from legr.paths import atomic_write_text
from legr.reporting import save_figure

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
SHAPES = {"cifar_resnet56": ((3, 32, 32), 10), "mobilenet_v2": ((3, 224, 224), 1000), "resnet50": ((3, 224, 224), 1000)}
RANKINGS = {"cifar_resnet56": RESULTS / "legr_resnet56_cifar10jpeg" / "ranking.json"}
TARGETS = (0.3, 0.5, 0.7)


def setting_for(full_ms: float, batch: int, args: argparse.Namespace) -> LatencySetting:
    """Fewer, single forwards per round for networks that take over a second (ResNet-50 at batch 64: ~12 s)."""
    slow = full_ms > 1000
    return LatencySetting(batch_size=batch, threads=args.threads, clock=args.clock, rounds=3 if slow else 5,
                          repeats=1 if slow else 3, min_time_s=0.0 if slow else 0.1, statistic=args.statistic)


def allocators(name: str, graph, model) -> dict[str, dict[str, np.ndarray]]:
    """Group scores of the uniform baseline (L1) and of the non-uniform allocator (see the module doc)."""
    out = {"uniform": group_scores(graph, compute_scores("l1", graph, model))}
    if name in RANKINGS:
        ranking = Ranking.load(RANKINGS[name])
        ranking.check(graph)
        out["legr"] = ranking.group_scores(graph, model)
    else:
        out["global"] = group_scores(graph, compute_scores("l2sq", graph, model))
    return out


def run_part(name: str, batch: int, args: argparse.Namespace, log) -> dict[str, Any]:
    shape, classes = SHAPES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(name, num_classes=classes, pretrained=False).eval()
    graph = analyze(model, shape)
    cost = CostModel(graph)
    full = np.ones(graph.num_classes)
    quick = LatencySetting(batch_size=batch, threads=args.threads, clock=args.clock, rounds=1, repeats=1, min_time_s=0)
    full_ms = rough_ms(graph, quick)
    setting = setting_for(full_ms, batch, args)
    log(f"{name} b{batch}: full network ~{full_ms:.1f} ms; building the latency model ({args.probes} probes, "
        f"{setting.rounds} rounds)")
    model_lat = build_latency_model(graph, setting, [full] + random_plans(graph, cost, args.probes, seed=1),
                                    progress=not args.quiet)
    cost = CostModel(graph, latency=model_lat)
    log(f"  fit on the probes: {model_lat.info['fit']}; checking on {args.plans} new random plans")
    checks = [full] + random_plans(graph, cost, args.plans, seed=1000)
    pairs = validate(model_lat, checks, setting, warmup=checking(setting)["warmup"])
    rows = [{"model": name, "batch_size": batch, "part": "a", "allocator": "random", "unit": None, "target": None,
             "predicted_ms": p, "measured_ms": m, "macs_ratio": cost.macs(k) / cost.base_macs}
            for (p, m), k in zip(pairs, checks)]
    # (b) + (c): families cut by latency and by MACs, with and without round_to 8
    nets, meta, unreachable = {"baseline": setting.deployed(graph.gm)}, {}, []
    for alloc, scores in allocators(name, graph, model).items():
        for unit in ("latency", "macs"):
            for round_to in (1, 8):
                solver = (UniformSolver if alloc == "uniform" else GlobalSolver)(graph, cost, scores,
                                                                                 Floors(round_to=round_to), unit)
                for t in TARGETS:
                    key = f"{alloc}-{unit}-{t:g}-r{round_to}"
                    try:
                        keep = solver.solve(t * cost.base(unit))
                    except BudgetError:  # e.g. 30% of a batch-1 latency: per-op overheads do not shrink
                        unreachable.append({"model": name, "batch_size": batch, "part": "b", "allocator": alloc,
                                            "unit": unit, "target": t, "round_to": round_to, "unreachable": True,
                                            "min_ms": solver.min_cost})
                        continue
                    cuts = {key: (keep, None)}
                    if unit == "latency" and (round_to == 8 or setting.repeats > 1):  # cut against the clock
                        # (what `legr prune` does; for networks over a second, with round_to 8 only)
                        cuts[key + "-measured"] = meet_measured(graph, solver, t, model_lat, setting,
                                                                rounds=min(5, setting.rounds),
                                                                warmup=checking(setting)["warmup"])
                    for k, (plan, record) in cuts.items():
                        nets[k] = setting.deployed(prune(graph, plan))
                        meta[k] = {"allocator": alloc, "unit": unit, "target": t, "round_to": round_to,
                                   "measured_cut": record is not None, "cuts": len(record["steps"]) if record else 0,
                                   "predicted_ms": cost.latency.predict(plan),
                                   "macs_ratio": cost.macs(plan) / cost.base_macs}
    log(f"  timing {len(nets)} networks of the families in {setting.rounds} interleaved rounds")
    measured = measure_interleaved(nets, shape, [batch], rounds=setting.rounds, **checking(setting))
    base_ms = getattr(measured["baseline"][batch], f"{setting.statistic}_ms")
    for key, m in meta.items():
        ms = getattr(measured[key][batch], f"{setting.statistic}_ms")
        rows.append({"model": name, "batch_size": batch, "part": "b" if m["unit"] == "latency" else "c", **m,
                     "measured_ms": ms, "latency_ratio": ms / base_ms, "noisy": measured[key][batch].noisy,
                     "efficiency": m["macs_ratio"] / (ms / base_ms)})
    rows += unreachable
    return {"model": name, "batch_size": batch, "setting": setting.__dict__, "fit": model_lat.info["fit"],
            "baseline_ms": base_ms, "predicted_baseline_ms": model_lat.base_ms, "rows": rows}


def checking(setting: LatencySetting) -> dict[str, Any]:
    """Timing keywords for checks: one warm-up forward per timing, none for a slow network (its first round's cold
    forward is outvoted by the others)."""
    return {**setting.timing(), "warmup": 0 if setting.repeats == 1 else 1}


def rough_ms(graph, setting: LatencySetting) -> float:
    """A rough time of the full network (picks the measurement setting)."""
    timing = {**setting.timing(), "warmup": 1}
    return measure_latency(setting.deployed(graph.gm), graph.input_shape, setting.batch_size, **timing).median_ms


def summarize(part: dict[str, Any]) -> dict[str, Any]:
    a = [r for r in part["rows"] if r["part"] == "a"]
    rel = [abs(r["predicted_ms"] - r["measured_ms"]) / r["measured_ms"] for r in a]
    full_p, full_m = a[0]["predicted_ms"], a[0]["measured_ms"]
    ratio = [abs(r["predicted_ms"] / full_p - r["measured_ms"] / full_m) / (r["measured_ms"] / full_m) for r in a[1:]]
    b = [r for r in part["rows"] if r["part"] == "b" and not r.get("unreachable")]
    land = {how: [r["latency_ratio"] / r["target"] for r in b if r["measured_cut"] == (how == "measured")]
            for how in ("prediction", "measured")}
    return {"plans": len(a), "median_rel_err": statistics.median(rel), "max_rel_err": max(rel),
            "median_ratio_err": statistics.median(ratio), "max_ratio_err": max(ratio),
            "measured_over_target": {how: [min(v), max(v)] for how, v in land.items() if v}}


def markdown(result: dict[str, Any]) -> str:
    lines = ["# Latency budgets: latency model error, latency-targeted families, speed-up efficiency", "",
             f"- generated by `{result['command']}`", f"- {result['date']}, git {result['git']}",
             f"- hardware: {result['hardware']}; clock: {result['clock']}, statistic: {result['statistic']} "
             "(see the script's docstring); networks timed as deployed (batch norms folded)", "",
             "## (a) Latency model: predicted vs measured on random plans not used to fit it", "",
             "| model | batch | probes / rounds | full measured ms | full predicted ms | median err | max err | "
             "median ratio err | max ratio err |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in result["parts"]:
        s = p["summary"]
        lines.append(f"| {p['model']} | {p['batch_size']} | {p['fit']['probes']} / {p['setting']['rounds']} | "
                     f"{p['baseline_ms']:.2f} | {p['predicted_baseline_ms']:.2f} | {s['median_rel_err']:.1%} | "
                     f"{s['max_rel_err']:.1%} | {s['median_ratio_err']:.1%} | {s['max_ratio_err']:.1%} |")
    lines += ["", "ratio err: error of the predicted latency relative to the full network's (what a budget given as a "
              "fraction of the baseline relies on).", "",
              "## (b) Latency-targeted members: measured latency / (target x the baseline's measured latency)", "",
              "Cut by the prediction alone, and cut against the clock (`meet_measured`, what `legr prune` does by "
              "default: cut, time against the source, cut again at a corrected budget).", "",
              "| model | batch | allocator | round_to | target | cut by | predicted ms | measured ms | "
              "measured / target | MACs ratio |", "|---|---:|---|---:|---:|---|---:|---:|---:|---:|"]
    for p in result["parts"]:
        for r in (r for r in p["rows"] if r["part"] == "b"):
            if r.get("unreachable"):
                lines.append(f"| {p['model']} | {p['batch_size']} | {r['allocator']} | {r['round_to']} | "
                             f"{r['target']:.0%} | - | unreachable: the smallest network is predicted at "
                             f"{r['min_ms']:.2f} ms | | | |")
                continue
            how = f"measured ({r['cuts']} cuts)" if r.get("measured_cut") else "prediction"
            lines.append(f"| {p['model']} | {p['batch_size']} | {r['allocator']} | {r['round_to']} | "
                         f"{r['target']:.0%} | {how} | {r['predicted_ms']:.2f} | {r['measured_ms']:.2f}{' ?' if r['noisy'] else ''} | "
                         f"{r['latency_ratio'] / r['target']:.3f} | {r['macs_ratio']:.3f} |")
    lines += ["", "## (c) Speed-up efficiency at MACs targets (latency speed-up / MACs speed-up)", "",
              "| model | batch | allocator | target MACs | efficiency round_to 1 | efficiency round_to 8 | "
              "MACs ratio r1 / r8 |", "|---|---:|---|---:|---:|---:|---:|"]
    for p in result["parts"]:
        c = {(r["allocator"], r["target"], r["round_to"]): r for r in p["rows"] if r["part"] == "c"}
        for (alloc, t, rt), r in c.items():
            if rt != 1:
                continue
            r8 = c[(alloc, t, 8)]
            lines.append(f"| {p['model']} | {p['batch_size']} | {alloc} | {t:.0%} | {r['efficiency']:.2f} | "
                         f"{r8['efficiency']:.2f} | {r['macs_ratio']:.3f} / {r8['macs_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = result["parts"]
    fig, axes = plt.subplots(1, len(parts), figsize=(3.2 * len(parts), 3.2), squeeze=False)
    for ax, p in zip(axes[0], parts):
        a = [r for r in p["rows"] if r["part"] == "a"]
        b = [r for r in p["rows"] if r["part"] == "b" and not r.get("unreachable")]
        ax.scatter([r["measured_ms"] for r in a], [r["predicted_ms"] for r in a], s=10, label="random plans")
        ax.scatter([r["measured_ms"] for r in b], [r["predicted_ms"] for r in b], s=14, marker="x",
                   label="latency-targeted")
        hi = max(r["measured_ms"] for r in a + b) * 1.05
        ax.plot([0, hi], [0, hi], "k--", lw=0.8)
        ax.set_title(f"{p['model']} b{p['batch_size']}", fontsize=9)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--probes", type=int, default=16, help="random plans the model is fitted on (+ the full network)")
    ap.add_argument("--plans", type=int, default=30, help="random plans it is checked on (+ the full network)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--statistic", choices=("min", "median"), default="min",
                    help="what is modelled and measured: the fastest forward (default here) or the median")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    path = args.out / "latency_budget.json"
    result = json.loads(path.read_text()) if path.exists() else {"parts": []}
    result.update({"command": "python benchmarks/latency_budget.py " + shlex.join(argv or sys.argv[1:]),
                   "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                   "git": git_revision(REPO), "hardware": hardware_label(), "clock": args.clock,
                   "statistic": args.statistic})
    done = {(p["model"], p["batch_size"]) for p in result["parts"]}
    for name in args.models:
        for batch in args.batch_sizes:
            if (name, batch) in done:
                continue
            part = run_part(name, batch, args, lambda m: print(m, flush=True))
            part["summary"] = summarize(part)
            print(f"  {part['summary']}", flush=True)
            result["parts"].append(part)
            atomic_write_text(path, json.dumps(result, indent=1))
            atomic_write_text(path.with_suffix(".md"), markdown(result))
            plot(result, path.with_suffix(".png"))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
