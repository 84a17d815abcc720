#!/usr/bin/env python
"""Does uniform L1-norm pruning turn MACs savings into CPU latency savings?

For every model and MACs target: uniform L1-norm pruning (`legr.methods.filters.allocate.solve_uniform`, Li et al.
2017), physical
surgery (`legr.engine.surgery.prune`), then CPU latency of the original and the pruned networks at a fixed thread count,
eval mode, `torch.inference_mode`, median of timed forwards after warm-up (`legr.engine.latency.measure_latency`).

``--methods uniform enc-model`` also times, at every target, the network decomposed by SVD at ENC-Model's ranks
for the same MACs (`legr.methods.lowrank`; ranks from the checkpoint's singular values, no data needed; ``enc-map``:
ENC-Map's), in the same interleaved rounds: does a decomposed network's MACs saving become time as a pruned one's
does (issue 15)?

Reported per model, method and target (ratios are compressed / original):
  MACs ratio, params ratio, latency ratio per batch size, and
  speedup efficiency = (t_orig / t_pruned) / (macs_orig / macs_pruned) = MACs ratio / latency ratio
  (1.0: latency falls exactly as fast as MACs; < 1: the MACs saving is only partly realised).

Timing policy (the machine may be shared, so it is built to resist other jobs):
- each network is warmed up (>= --warmup-time seconds of forwards, at least 2) once per batch size;
- measurements are interleaved: --rounds rounds, each timing every network of the model once in turn
  (original, then the pruned ones), so slow drifts in machine load hit all of them alike;
- one timing = `measure_latency(repeats >= --min-repeats, until >= --min-time seconds)`; cheap batches get many
  repeats, resnet50 at batch 64 gets the minimum;
- during each timing the CPU time used by other processes is read from /proc/stat; a timing during which others
  took more than --max-foreign of the machine is retried (up to --attempts times, after waiting up to
  --quiet-wait seconds for the machine to go quiet); the least-disturbed attempt is kept and all are recorded;
- the reported latency is the median over rounds of the per-round medians;
- each timing also records this process's CPU time per forward. With --threads 1 that is the forward's compute time,
  which other processes cannot inflate by preempting it (only through shared caches and memory bandwidth), and the
  markdown adds a CPU-time table: on a busy machine run with --threads 1 and read that table. With several threads
  a busy machine wrecks wall-clock timings (an OpenMP thread that is preempted stalls the others at every barrier;
  100-200x slowdowns of batch-1 forwards were seen here) and the CPU time counts spin-waiting, so neither is usable.

Results: <out>/<stem>.json (everything, including per-round timings and contention) and <out>/<stem>.md (tables),
both written atomically, rewritten after every model so an interrupted run keeps what it measured.

Examples:
  LEGR_WEIGHTS=/work/shared/weights nice -n 5 .venv/bin/python benchmarks/latency_uniform.py
  .venv/bin/python benchmarks/latency_uniform.py --quick
  nice -n 5 .venv/bin/python benchmarks/latency_uniform.py --threads 1 --attempts 1 --no-pre-wait --stem latency_uniform_t1
  .venv/bin/python benchmarks/latency_uniform.py --models resnet50 --targets 0.5 --batch-sizes 1 64 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from legr.engine.cost import CostModel, count_params, counted_macs
from legr.engine.latency import measure_latency
from legr.engine.surgery import prune
from legr.graph import analyze
from legr.hardware import LoadProbe, git_revision, hardware_info, hardware_label
from legr.methods.filters.allocate import solve_uniform
from legr.methods.filters.criteria import compute_scores, group_scores
from legr.models import build_model, get_model_spec
from legr.paths import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ("cifar_resnet56", "resnet50", "mobilenet_v2")
DEFAULT_TARGETS = (0.25, 0.50, 0.75)
DEFAULT_BATCHES = (1, 64)


# --------------------------------------------------------------------------------------------------------------
# Machine load: CPU time taken by other processes while we time.
# --------------------------------------------------------------------------------------------------------------
def _n_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def wait_until_quiet(max_foreign: float, max_wait_s: float, window_s: float = 0.5) -> tuple[float, float | None]:
    """Sleep in windows until others use <= max_foreign of the machine (or max_wait_s passes); (waited s, last load)."""
    t0 = time.perf_counter()
    load = None
    while True:
        probe = LoadProbe()
        time.sleep(window_s)
        load = probe.foreign()
        waited = time.perf_counter() - t0
        if load is None or load <= max_foreign or waited >= max_wait_s:
            return waited, load


# --------------------------------------------------------------------------------------------------------------
# Pruning
# --------------------------------------------------------------------------------------------------------------
def producer_widths(graph, keep: np.ndarray) -> list[tuple[str, int, int]]:
    """(layer, original filters, kept filters) for every producer layer (convs/linears that create channels)."""
    rows = []
    for name, layer in graph.layers.items():
        if layer.producer_ids is None:
            continue
        ids = layer.producer_ids
        rows.append((name, int(len(ids)), int((keep[graph.classes(ids)] > 0).sum())))
    return rows


# --------------------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------------------
def warm_up(model: torch.nn.Module, input_size, batch: int, threads: int, warmup_time: float) -> dict[str, Any]:
    """Forwards until >= warmup_time seconds and >= 2 forwards; returns what was done (and the last forward's ms)."""
    n, t0, last = 0, time.perf_counter(), float("nan")
    while n < 2 or time.perf_counter() - t0 < warmup_time:
        last = measure_latency(model, input_size, batch, threads=threads, warmup=0, repeats=1).median_ms
        n += 1
    return {"forwards": n, "seconds": time.perf_counter() - t0, "last_ms": last}


class WaitBudget:
    """Total seconds the run may spend waiting for a quiet machine (after that: no more waits or retries)."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds
        self.spent = 0.0

    def wait(self, max_foreign: float, max_wait: float) -> tuple[float, float | None]:
        if self.left <= 0:
            return 0.0, None
        waited, load = wait_until_quiet(max_foreign, min(max_wait, self.left))
        self.left -= waited
        self.spent += waited
        return waited, load


def timed(model, input_size, batch: int, round_warmup: int, args, budget: WaitBudget) -> dict[str, Any]:
    """One contention-checked timing (see module docstring); the least-disturbed of up to args.attempts tries.

    Besides `measure_latency`'s wall-clock figures it records this process's CPU time per forward (warm-up forwards
    included): with --threads 1 that is the forward's compute time, which other processes cannot inflate by
    preempting it; with more threads it also counts OpenMP spin-waiting, so it is only a diagnostic.
    """
    tries = []
    for attempt in range(args.attempts):
        waited, _ = budget.wait(args.max_foreign, args.quiet_wait) if attempt > 0 or args.pre_wait else (0.0, None)
        probe = LoadProbe()
        cpu0 = time.process_time()
        res = measure_latency(
            model, input_size, batch, threads=args.threads, warmup=round_warmup,
            repeats=args.min_repeats, min_time_s=args.min_time,
        )
        cpu_ms = (time.process_time() - cpu0) * 1e3 / (res.repeats + round_warmup)
        foreign = probe.foreign()
        tries.append({**res.to_dict(), "cpu_ms_per_forward": cpu_ms, "foreign_load": foreign, "waited_s": waited})
        if foreign is None or foreign <= args.max_foreign or budget.left <= 0:
            break
    best = min(tries, key=lambda t: (t["foreign_load"] or 0.0, t["median_ms"]))
    return {**best, "attempts": len(tries), "all_attempts": [(t["median_ms"], t["foreign_load"]) for t in tries]}


def measure_model(variants: dict[str, torch.nn.Module], input_size, batch: int, args, budget: WaitBudget, log) -> dict[str, dict]:
    """Interleaved rounds over all variants of one model at one batch size."""
    round_warmup = {}
    for key, model in variants.items():
        w = warm_up(model, input_size, batch, args.threads, args.warmup_time)
        # one untimed forward before each timing, unless a forward is so long that its own warm-up is enough
        round_warmup[key] = args.round_warmup if args.round_warmup >= 0 else int(w["last_ms"] < 1000)
        log(f"    warm-up b{batch} {key}: {w['forwards']} forwards, last {w['last_ms']:.1f} ms")
    rounds: dict[str, list[dict]] = {k: [] for k in variants}
    for r in range(args.rounds):
        for key, model in variants.items():
            rounds[key].append(timed(model, input_size, batch, round_warmup[key], args, budget))
        log(f"    round {r + 1}/{args.rounds} b{batch}: " + ", ".join(
            f"{k} {v[-1]['median_ms']:.1f}ms"
            + (f" (load {v[-1]['foreign_load']:.2f})" if (v[-1]["foreign_load"] or 0) > args.max_foreign else "")
            for k, v in rounds.items()))
    out = {}
    for key, rs in rounds.items():
        loads = [x["foreign_load"] for x in rs if x["foreign_load"] is not None]
        out[key] = {
            "median_ms": statistics.median(x["median_ms"] for x in rs),
            "round_medians_ms": [x["median_ms"] for x in rs],
            "cpu_ms_per_forward": statistics.median(x["cpu_ms_per_forward"] for x in rs),
            "min_ms": min(x["min_ms"] for x in rs),
            "repeats": sum(x["repeats"] for x in rs),
            "rounds": len(rs),
            "round_warmup": round_warmup[key],
            "retries": sum(x["attempts"] - 1 for x in rs),
            "max_foreign_load": max(loads) if loads else None,
            "mean_foreign_load": statistics.fmean(loads) if loads else None,
            "rounds_detail": rs,
        }
    return out


# --------------------------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(result: dict[str, Any]) -> str:
    batches = result["settings"]["batch_sizes"]
    lines = [
        "# " + (" vs ".join({"uniform": "Uniform L1-norm pruning", "enc-model": "ENC-Model SVD decomposition",
                              "enc-map": "ENC-Map SVD decomposition"}[m] for m in result["settings"].get("methods",
                                                                                                ["uniform"]))
                + ": MACs vs measured CPU latency"),
        "",
        f"- generated by `{result['command']}`",
        f"- {result['created']}, git {result['git_revision']}",
        f"- hardware: {result['hardware_label']}; timed with {result['settings']['threads']} threads",
        f"- policy: {result['settings']['rounds']} interleaved rounds x (>= {result['settings']['min_repeats']} repeats and"
        f" >= {result['settings']['min_time_s']} s) per network and batch size, after >= {result['settings']['warmup_time_s']} s"
        " warm-up; latency = median over rounds of per-round medians",
        f"- other processes' share of the CPU during timings: mean {_fmt(result['machine_load']['mean_foreign_load'], '.2f')},"
        f" max {_fmt(result['machine_load']['max_foreign_load'], '.2f')}; {result['machine_load']['retries']} timings retried"
        f" (threshold {result['settings']['max_foreign']}); {result['machine_load']['note']}",
        "- efficiency = latency speedup / MACs speedup = MACs ratio / latency ratio (1.0 = latency falls as fast as MACs)",
    ]
    load = result["machine_load"].get("mean_foreign_load")
    if load is not None and load > result["settings"]["max_foreign"]:
        lines.append(
            f"- **WARNING: other processes used {load:.0%} of the CPU on average while this ran: the wall-clock figures"
            " are disturbed" + (" (with several threads badly: OpenMP threads wait on each other when one is preempted)"
                                if result["settings"]["threads"] > 1 else
                                "; the CPU-time table below is the trustworthy one") + ".**")
    lines += [
        "",
        "## Unpruned baselines",
        "",
        "| model | input | weights | MACs (M) | params (M) | " + " | ".join(f"b{b} ms" for b in batches) + " |",
        "|---|---|---|---:|---:|" + "---:|" * len(batches),
    ]
    for m in result["models"]:
        lat = m["baseline"]["latency"]
        lines.append(
            f"| {m['model']} | {'x'.join(map(str, m['input_size']))} | {'pretrained' if m['pretrained'] else 'random'} | "
            f"{m['base_macs'] / 1e6:.1f} | {m['base_params'] / 1e6:.3f} | "
            + " | ".join(_fmt(lat[str(b)]["median_ms"], ".1f") for b in batches) + " |"
        )
    lines += [
        "",
        "## Pruned / original",
        "",
        "| model | method | target | keep ratio | MACs ratio | params ratio | "
        + " | ".join(f"latency ratio b{b}" for b in batches) + " | "
        + " | ".join(f"efficiency b{b}" for b in batches) + " | max load |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * (2 * len(batches) + 1),
    ]
    for m in result["models"]:
        for t in m["targets"]:
            loads = [x for b in batches for x in (t["latency"][str(b)]["max_foreign_load"],
                                                  m["baseline"]["latency"][str(b)]["max_foreign_load"]) if x is not None]
            lines.append(
                f"| {m['model']} | {t.get('method', 'uniform')} | {t['target']:.2f} | {_fmt(t.get('keep_ratio'))} | "
                f"{t['macs_ratio']:.3f} | {t['params_ratio']:.3f} | "
                + " | ".join(_fmt(t["latency_ratio"][str(b)]) for b in batches) + " | "
                + " | ".join(_fmt(t["efficiency"][str(b)], ".2f") for b in batches)
                + f" | {_fmt(max(loads) if loads else None, '.2f')} |"
            )
    lines += [
        "",
        "max load: the largest share of the machine's CPU that other processes used during any timing behind the row"
        " (original and pruned, all batch sizes); above ~0.1 the wall-clock figures are disturbed.",
    ]
    if result["settings"]["threads"] == 1:
        lines += [
            "",
            "## CPU-time ratio (pruned / original; single thread: not inflated by preemption, still by shared cache and memory bandwidth)",
            "",
            "Unpruned CPU ms per forward: " + "; ".join(
                f"{m['model']} " + ", ".join(f"b{b} {m['baseline']['latency'][str(b)]['cpu_ms_per_forward']:.1f}" for b in batches)
                for m in result["models"]) + ".",
            "",
            "| model | method | target | MACs ratio | " + " | ".join(f"CPU-time ratio b{b}" for b in batches) + " | "
            + " | ".join(f"CPU-time efficiency b{b}" for b in batches) + " |",
            "|---|---|---:|---:|" + "---:|" * (2 * len(batches)),
        ]
        for m in result["models"]:
            for t in m["targets"]:
                ratios = [t["cpu_time_ratio"][str(b)] for b in batches]
                lines.append(
                    f"| {m['model']} | {t.get('method', 'uniform')} | {t['target']:.2f} | {t['macs_ratio']:.3f} | "
                    + " | ".join(_fmt(r) for r in ratios)
                    + " | " + " | ".join(_fmt(t["macs_ratio"] / r, ".2f") for r in ratios) + " |"
                )
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------------------
def _key(method: str, target: float) -> str:
    return f"{target:g}" if method == "uniform" else f"{method}@{target:g}"


_SVD: dict[str, Any] = {}


def _decomposed(selection: str):
    """A builder of the network decomposed at ENC's ranks (``selection``: map or model) for a MACs target."""
    def build(model: torch.nn.Module, input_size, cost: CostModel, target: float):
        from legr.methods.lowrank.analysis import analyze as analyze_svd
        from legr.methods.lowrank.decompose import apply_ranks
        from legr.methods.lowrank.select import RankRules, Selector

        if _SVD.get("model") is not model:  # one analysis (the SVDs) per model, for every target
            _SVD.update(model=model, analysis=analyze_svd(model, input_size, {"macs": cost.base_macs,
                                                                              "params": cost.base_params}))
        analysis = _SVD["analysis"]
        selector = Selector(analysis, RankRules(), "macs")
        budget = target * analysis.base["macs"]
        idx = selector.select_map(budget) if selection == "map" else selector.model_candidates(budget)[0]
        ranks = selector.ranks(idx)
        net = apply_ranks(copy.deepcopy(model), ranks).eval()
        return net, analysis.cost(ranks, "macs"), analysis.cost(ranks, "params")
    return build


METHODS = {"uniform": None, "enc-model": _decomposed("model"), "enc-map": _decomposed("map")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", nargs="+", default=None, help=f"model names (default: {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--targets", nargs="+", type=float, default=None,
                   help="MACs targets as fractions of the original (default: 0.25 0.5 0.75)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="batch sizes (default: 1 64)")
    p.add_argument("--threads", type=int, default=_n_cpus(), help="torch intra-op threads (default: all usable cores)")
    p.add_argument("--criterion", default="l1", help="filter criterion (default: l1)")
    p.add_argument("--methods", nargs="+", default=["uniform"], choices=sorted(METHODS),
                   help="what is timed at every target: uniform (pruning), enc-model / enc-map (SVD decomposition; "
                        "default: uniform)")
    p.add_argument("--no-pretrained", action="store_true",
                   help="random init everywhere (default: load the published checkpoint where the model has one)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default: 3)")
    p.add_argument("--min-repeats", type=int, default=2, help="timed forwards per round, at least (default: 2)")
    p.add_argument("--min-time", type=float, default=1.5,
                   help="seconds of timed forwards per round, at least (default: 1.5); cheap batches repeat more")
    p.add_argument("--warmup-time", type=float, default=1.0, help="seconds of warm-up per network and batch (default: 1)")
    p.add_argument("--round-warmup", type=int, default=-1,
                   help="untimed forwards at the start of every timing (default -1: 1 if a forward takes < 1 s, else 0)")
    p.add_argument("--max-foreign", type=float, default=0.10,
                   help="retry a timing if other processes used more than this share of the CPU (default: 0.10)")
    p.add_argument("--attempts", type=int, default=3, help="tries per timing, at most (default: 3)")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="seconds to wait, at most, for a quiet machine before a timing (default: 20)")
    p.add_argument("--max-total-wait", type=float, default=600.0,
                   help="seconds the whole run may spend waiting for a quiet machine; then no more waits/retries (default: 600)")
    p.add_argument("--no-pre-wait", dest="pre_wait", action="store_false",
                   help="do not wait for a quiet machine before the first try of each timing (only before retries)")
    p.add_argument("--seed", type=int, default=0, help="seed for random-init models (default: 0)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: cifar_resnet56, batches 1 and 8, 1 round, short timings; writes <stem>_quick.*")
    p.add_argument("--out-dir", type=Path, default=REPO / "benchmarks" / "results", help="where results go")
    p.add_argument("--stem", default=None, help="results file name without suffix (default: latency_uniform[_quick])")
    args = p.parse_args(argv)
    if args.quick:
        args.models = args.models or ["cifar_resnet56"]
        args.batch_sizes = args.batch_sizes or [1, 8]
        args.rounds, args.min_repeats, args.min_time, args.warmup_time = 1, 3, 0.2, 0.2
        args.quiet_wait, args.max_total_wait = min(args.quiet_wait, 2.0), min(args.max_total_wait, 10.0)
    args.models = args.models or list(DEFAULT_MODELS)
    args.targets = args.targets or list(DEFAULT_TARGETS)
    args.batch_sizes = args.batch_sizes or list(DEFAULT_BATCHES)
    args.stem = args.stem or ("latency_uniform_quick" if args.quick else "latency_uniform")
    if any(not 0 < t <= 1 for t in args.targets):
        p.error("targets must be in (0, 1]")
    if args.threads < 1 or args.rounds < 1 or args.min_repeats < 1 or args.attempts < 1:
        p.error("--threads, --rounds, --min-repeats and --attempts must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = lambda msg: print(msg, flush=True)  # noqa: E731
    started = time.perf_counter()
    command = shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None else shlex.join(["latency_uniform.py", *argv])
    result: dict[str, Any] = {
        "benchmark": "latency_uniform",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "git_revision": git_revision(REPO),
        "hardware_label": None,
        "hardware": None,
        "settings": {
            "models": args.models, "targets": args.targets, "batch_sizes": args.batch_sizes, "threads": args.threads,
            "criterion": args.criterion, "methods": args.methods, "allocation":
                "uniform (legr.methods.filters.allocate.solve_uniform, default floors)",
            "rounds": args.rounds, "min_repeats": args.min_repeats, "min_time_s": args.min_time,
            "warmup_time_s": args.warmup_time, "round_warmup": args.round_warmup, "max_foreign": args.max_foreign,
            "attempts": args.attempts, "quiet_wait_s": args.quiet_wait, "max_total_wait_s": args.max_total_wait,
            "pre_wait": args.pre_wait, "seed": args.seed, "quick": args.quick,
            "nice": os.nice(0) if hasattr(os, "nice") else None,
            "mode": "eval, torch.inference_mode, fp32, CPU, contiguous NCHW",
        },
        "machine_load": {},
        "models": [],
        "complete": False,
    }
    # torch_threads in hardware_info() reflects the thread count in force: stamp it with the timing setting.
    torch.set_num_threads(args.threads)
    result["hardware_label"], result["hardware"] = hardware_label(), hardware_info()
    log(f"{result['hardware_label']} | threads {args.threads} | nice {result['settings']['nice']} | git {result['git_revision']}")

    out_json = args.out_dir / f"{args.stem}.json"
    out_md = args.out_dir / f"{args.stem}.md"

    def save() -> None:
        loads = [x["mean_foreign_load"] for m in result["models"] for x in _all_latencies(m)
                 if x.get("mean_foreign_load") is not None]
        maxes = [x["max_foreign_load"] for m in result["models"] for x in _all_latencies(m) if x.get("max_foreign_load") is not None]
        retries = sum(x["retries"] for m in result["models"] for x in _all_latencies(m))
        result["machine_load"] = {
            "mean_foreign_load": statistics.fmean(loads) if loads else None,
            "max_foreign_load": max(maxes) if maxes else None,
            "retries": retries,
            "waited_for_quiet_s": budget.spent,
            "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "note": ("the machine was shared with other jobs; timings were interleaved and contention-checked "
                     "(see module docstring); per-round values and loads are in the JSON"),
        }
        result["elapsed_s"] = time.perf_counter() - started
        atomic_write_text(out_json, json.dumps(result, indent=1) + "\n")
        atomic_write_text(out_md, markdown(result))

    budget = WaitBudget(args.max_total_wait)
    for name in args.models:
        spec = get_model_spec(name)
        pretrained = bool(spec.pretrained) and not args.no_pretrained
        torch.manual_seed(args.seed)
        model = build_model(name, pretrained=pretrained).eval()
        input_size = tuple(spec.input_size)
        graph = analyze(model, input_size)
        cost = CostModel(graph)
        scores = group_scores(graph, compute_scores(args.criterion, graph, graph.gm))
        base_params_counted = count_params(graph.gm)
        log(f"\n== {name} ({'pretrained' if pretrained else 'random init'}, input {input_size}, {spec.num_classes} classes):"
            f" {cost.base_macs / 1e6:.1f}M MACs, {cost.base_params / 1e6:.3f}M params")
        variants: dict[str, torch.nn.Module] = {"original": graph.gm}
        entry: dict[str, Any] = {
            "model": name, "pretrained": pretrained, "input_size": list(input_size), "num_classes": spec.num_classes,
            "base_macs": cost.base_macs, "base_params": cost.base_params, "base_params_counted": base_params_counted,
            "base_macs_flop_counter": counted_macs(graph.gm, torch.zeros(1, *input_size)), "baseline": {}, "targets": [],
        }
        for target in args.targets:
            if "uniform" in args.methods:
                keep, ratio = solve_uniform(graph, cost, scores, target * cost.base_macs)
                pruned = prune(graph, keep).eval()
                macs, params = cost.costs(keep)
                widths = producer_widths(graph, keep)
                changed = [(n, k) for _, n, k in widths if k != n]
                entry["targets"].append({
                    "method": "uniform", "target": target, "keep_ratio": ratio, "macs": macs, "params": params,
                    "macs_ratio": macs / cost.base_macs, "params_ratio": params / cost.base_params,
                    "params_counted": count_params(pruned), "macs_flop_counter": counted_macs(pruned, torch.zeros(1, *input_size)),
                    "pruned_layers": len(changed),
                    "kept_widths_multiple_of_8": sum(k % 8 == 0 for _, k in changed),
                    "widths": [{"layer": ln, "filters": n, "kept": k} for ln, n, k in widths],
                    "latency": {}, "latency_ratio": {}, "efficiency": {},
                })
                variants[_key("uniform", target)] = pruned
                log(f"  target {target:.2f}: keep ratio {ratio:.3f}, MACs {macs / cost.base_macs:.3f}, "
                    f"params {params / cost.base_params:.3f}, {len(changed)} pruned layers, "
                    f"{entry['targets'][-1]['kept_widths_multiple_of_8']} of them at a multiple of 8")
            for method in (m for m in args.methods if m != "uniform"):
                net, macs, params = METHODS[method](model, input_size, cost, target)
                entry["targets"].append({
                    "method": method, "target": target, "macs": macs, "params": params,
                    "macs_ratio": macs / cost.base_macs, "params_ratio": params / cost.base_params,
                    "params_counted": count_params(net), "macs_flop_counter": counted_macs(net, torch.zeros(1, *input_size)),
                    "latency": {}, "latency_ratio": {}, "efficiency": {},
                })
                variants[_key(method, target)] = net
                log(f"  {method} {target:.2f}: MACs {macs / cost.base_macs:.3f}, params {params / cost.base_params:.3f}")
        for batch in args.batch_sizes:
            lat = measure_model(variants, input_size, batch, args, budget, log)
            entry["baseline"].setdefault("latency", {})[str(batch)] = lat["original"]
            t0 = lat["original"]["median_ms"]
            for t in entry["targets"]:
                tp = lat[_key(t.get("method", "uniform"), t["target"])]
                t["latency"][str(batch)] = tp
                t["latency_ratio"][str(batch)] = tp["median_ms"] / t0
                t["efficiency"][str(batch)] = (t0 / tp["median_ms"]) / (cost.base_macs / t["macs"])
                t.setdefault("cpu_time_ratio", {})[str(batch)] = tp["cpu_ms_per_forward"] / lat["original"]["cpu_ms_per_forward"]
        result["models"].append(entry)
        save()
        log("  baseline: " + ", ".join(f"b{b} {entry['baseline']['latency'][str(b)]['median_ms']:.1f} ms" for b in args.batch_sizes))
        for t in entry["targets"]:
            log(f"  target {t['target']:.2f}: MACs ratio {t['macs_ratio']:.3f}, params ratio {t['params_ratio']:.3f}, "
                + ", ".join(f"b{b} latency ratio {t['latency_ratio'][str(b)]:.3f} (eff {t['efficiency'][str(b)]:.2f})"
                            for b in args.batch_sizes))
        del variants, graph, model
    result["complete"] = True
    save()
    log(f"\nwrote {out_json} and {out_md} ({time.perf_counter() - started:.0f} s)")
    log("\n" + markdown(result))
    return 0


def _all_latencies(model_entry: dict[str, Any]) -> list[dict[str, Any]]:
    lats = list(model_entry["baseline"].get("latency", {}).values())
    for t in model_entry["targets"]:
        lats += list(t["latency"].values())
    return lats


if __name__ == "__main__":
    sys.exit(main())
