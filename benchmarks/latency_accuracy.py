"""Accuracy at equal measured latency (issues 14 (d), 29): LeGR under a latency budget vs LeGR under MACs budgets vs
uniform pruning under the latency budget.

Runs the comparison of ``configs/compare_latency_resnet20_cifar10jpeg.yaml`` (`legr.pipeline.compare`: one adapted
source network, the same splits, fine-tuning and seeds for every method) **in pieces** (`legr.pipeline.pieces`; see
benchmarks/README.md, "Long runs"): ``--seeds 0 [--methods ...]`` runs that part in its own work folder
(``<work>/<piece>``) and writes ``<results>/pieces/<piece>.json``; ``--merge`` builds the tables and the plot from
the pieces that exist and names the (seed, method) pairs still missing. Without ``--seeds``/``--methods`` the whole
comparison is one piece, merged at once. Every piece first prints its estimated wall time (`legr.pipeline.estimate`:
one search candidate and a few fine-tuning steps timed on the real data); ``--estimate-only`` stops there.

Equal latency: ``legr-macs`` is searched and cut at MACs targets that span the latency range; its test top-1 is read
at the measured latency of every latency-budget member by linear interpolation between its own members (same seed).
Latencies are compared as **fractions of the source network's latency measured in the same piece** (each piece times
its networks beside the source network in its own interleaved rounds; pieces run at different times or on different
cores see the machine differently, and a ratio to the source timed alongside cancels most of that). The test set
chooses nothing. Resumable: rerun the same command.

    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/latency_accuracy.py --seeds 0
    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/latency_accuracy.py --seeds 1
    python benchmarks/latency_accuracy.py --merge
    python benchmarks/latency_accuracy.py --config /tmp/tiny.yaml --work /tmp/la --results /tmp/la-results   # smoke

Results: ``<results>/`` with ``latency_accuracy.json`` / ``.md``, ``accuracy_vs_latency.png``, the merged
comparison's ``compare.json`` and ``summary.md``, and ``pieces/``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from legr.errors import LegrError
from legr.hardware import LoadMonitor, foreign_load
from legr.paths import atomic_write_text
from legr.pipeline.compare import Comparison, summary_markdown
from legr.pipeline.compare_config import CompareConfig
from legr.pipeline.config_files import load_config, parse_set_options
from legr.pipeline.estimate import estimate_comparison
from legr.pipeline.pieces import merge, piece, piece_config
from legr.reporting import latency_key, save_figure

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "legr-macs"


def _source_latency(result: dict[str, Any], key: str) -> dict[int, float]:
    """Per piece (``piece`` of a merged result's rows; 0 for one comparison): the source network's measured latency."""
    out = {r.get("piece", 0): r.get(key) for r in result["runs"] if r["method"] == "baseline"}
    if not out or any(v is None for v in out.values()):
        raise LegrError(f"the comparison has no {key} timing of the source network (eval.latency off?)")
    return out


def equal_latency(result: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Per member of every method but the reference: its measured latency (ms, and as a fraction of the source
    network's timed in the same piece), its top-1, and the reference family's top-1 interpolated at that fraction
    between the reference's own members of the same seed (None outside their measured range)."""
    source = _source_latency(result, key)
    runs = [{**r, "ratio": r[key] / source[r.get("piece", 0)]} for r in result["runs"] if r["method"] != "baseline"]
    out = []
    for seed in result["seeds"]:
        ref = sorted((r["ratio"], r["top1"]) for r in runs if r["method"] == REFERENCE and r["seed"] == seed)
        xs, ys = [x for x, _ in ref], [y for _, y in ref]
        for r in runs:
            if r["seed"] != seed or r["method"] == REFERENCE:
                continue
            inside = bool(xs) and xs[0] <= r["ratio"] <= xs[-1]
            out.append({"method": r["method"], "seed": seed, "target": r["target"], "latency_ms": r[key],
                        "latency_ratio": r["ratio"], "top1": r["top1"],
                        "reference_top1": float(np.interp(r["ratio"], xs, ys)) if inside else None})
    return out


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def settings(result: dict[str, Any]) -> str:
    """The settings every method ran with (pieces shrink the comparison for all methods alike, never for one)."""
    c = result["config"]
    s, f, b = c["search"], c["finetune"], c["budget"]
    steps = f"{f['epochs']} epochs of {f['steps_per_epoch']} SGD steps" if f.get("steps_per_epoch") \
        else f"{f['epochs']} epochs"
    return (f"Every method alike: search population {s['population']}, sample {s['sample']}, {s['evaluations']} "
            f"candidates x {s['restarts']} restart(s); fine-tuning {steps} per network; latency budget at batch "
            f"{b['batch_size']}, {b['threads']} thread(s), clock {b['clock']}, statistic {b['statistic']}.")


def markdown(rows: list[dict[str, Any]], result: dict[str, Any], key: str) -> str:
    source = _source_latency(result, key)
    pieces = result.get("pieces", 1)
    lines = [f"# Accuracy at equal measured latency: {result['model']}, {result['dataset']}", "",
             f"Seeds {', '.join(map(str, result['seeds']))}; hardware: {result['hardware']}; latency column `{key}` "
             f"(the budget's batch size and threads; median of interleaved rounds), read as a fraction of the source "
             f"network's latency timed in the same piece ({pieces} piece(s); source network "
             f"{statistics.fmean(source.values()):.2f} ms on average). `{REFERENCE}` top-1 is interpolated at each "
             f"member's latency fraction between its own members (same seed). {settings(result)} Test top-1 after "
             "fine-tuning, mean ± std over seeds:"]
    loads = {name: load for name, load in result.get("foreign_load", {}).items() if load is not None}
    if loads:
        lines[-1] += (" Other processes' share of the CPUs while each piece ran (mean / max of 30 s samples): "
                      + ", ".join(f"{n} {v['mean']:.0%} / {v['max']:.0%}" for n, v in loads.items()) + ".")
    if result.get("missing"):
        lines[-1] += " **Missing pieces** (seed, method): " + ", ".join(f"{s} {m}" for s, m in result["missing"]) \
            + "."
    lines += ["", f"| method | latency target | measured latency (% of source) | measured ms | top-1 % | "
                  f"{REFERENCE} at equal latency % | difference (points) |", "|:---|---:|---:|---:|---:|---:|---:|"]
    for (method, target), group in _groups(rows).items():
        paired = [r for r in group if r["reference_top1"] is not None]
        diff = [r["top1"] - r["reference_top1"] for r in paired]
        lines.append(f"| {method} | {target:.0%} | {100 * statistics.fmean(r['latency_ratio'] for r in group):.1f} | "
                     f"{statistics.fmean(r['latency_ms'] for r in group):.2f} | {_mean_std([r['top1'] for r in group])}"
                     f" | {_mean_std([r['reference_top1'] for r in paired])} | {_mean_std(diff)} ({len(paired)}/"
                     f"{len(group)} seeds in range) |")
    ref = [{**r, "ratio": r[key] / source[r.get("piece", 0)]} for r in result["runs"] if r["method"] == REFERENCE]
    if ref:
        lines += ["", f"`{REFERENCE}`'s own members (its MACs targets):", "",
                  "| MACs target | measured latency (% of source) | top-1 % |", "|---:|---:|---:|"]
        for target in sorted({r["target"] for r in ref}):
            group = [r for r in ref if r["target"] == target]
            lines.append(f"| {target:.0%} | {100 * statistics.fmean(r['ratio'] for r in group):.1f} | "
                         f"{_mean_std([r['top1'] for r in group])} |")
    return "\n".join(lines) + "\n"


def _groups(rows: list[dict[str, Any]]) -> dict[tuple[str, float], list[dict[str, Any]]]:
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["target"]), []).append(r)
    return groups


def plot(result: dict[str, Any], key: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source = _source_latency(result, key)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in dict.fromkeys(r["method"] for r in result["runs"] if r["method"] != "baseline"):
        for seed in result["seeds"]:
            pts = sorted((100 * r[key] / source[r.get("piece", 0)], 100 * r["top1"]) for r in result["runs"]
                         if r["method"] == method and r["seed"] == seed)
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, lw=1, label=method if seed == result["seeds"][0] else None,
                        color={"legr": "C0", REFERENCE: "C1"}.get(method, "C2"))
    ax.set_xlabel(f"measured latency, % of the source network ({key})")
    ax.set_ylabel("test top-1 after fine-tuning (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def write_merged(cfg: CompareConfig, results: Path) -> dict[str, Any]:
    """Merge ``<results>/pieces/*.json`` and write the comparison's and the equal-latency tables and the plot."""
    files = sorted((results / "pieces").glob("*.json"))
    loaded = [json.loads(f.read_text()) for f in files]
    result = merge(cfg, loaded)
    result["foreign_load"] = {f.stem: p.get("foreign_load") for f, p in zip(files, loaded)}
    key = latency_key("cpu", cfg.budget.batch_size)
    rows = equal_latency(result, key)
    atomic_write_text(results / "compare.json", json.dumps(result, indent=1, default=float))
    atomic_write_text(results / "summary.md", summary_markdown(result))
    atomic_write_text(results / "latency_accuracy.json", json.dumps(
        {"key": key, "rows": rows, "pieces": [f.stem for f in files], "missing": result["missing"]}, indent=1))
    atomic_write_text(results / "latency_accuracy.md", markdown(rows, result, key))
    plot(result, key, results / "accuracy_vs_latency.png")
    return result


BUSY = 0.15  # other processes' share of the CPUs above which a piece is refused (one other job on 2 cores: ~0.5)


def check_quiet(allow_busy: bool) -> None:
    """Refuse to start a piece while other processes take more than `BUSY` of the machine: this comparison cuts its
    members against the clock and reads them at measured latency, and a timing taken beside another job measures that
    job too (seed 0's first piece, run beside two other jobs, came out with latencies off by up to 30%)."""
    load = foreign_load(3.0)
    if load is None or load <= BUSY:
        return
    if not allow_busy:
        raise LegrError(f"the machine is busy: other processes use {load:.0%} of its CPUs; this benchmark times "
                        "networks against the clock: run it alone (benchmarks/README.md, \"Long runs\"), or pass "
                        "--allow-busy (the piece records the load it ran under)")
    print(f"warning: other processes use {load:.0%} of the CPUs; the piece records the load it ran under")


def main() -> None:
    if hasattr(sys.stdout, "reconfigure"):  # a log written through nohup shows each line as it comes
        sys.stdout.reconfigure(line_buffering=True)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "compare_latency_resnet20_cifar10jpeg.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "latency_accuracy")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "latency_accuracy")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--seeds", type=int, nargs="+", help="run these seeds only (a piece)")
    parser.add_argument("--methods", nargs="+", help="run these methods only (a piece)")
    parser.add_argument("--merge", action="store_true", help="merge <results>/pieces/*.json into the results")
    parser.add_argument("--estimate-only", action="store_true", help="print the piece's estimated wall time and stop")
    parser.add_argument("--allow-busy", action="store_true",
                        help=f"run a piece although other processes use more than {BUSY:.0%} of the CPUs")
    args = parser.parse_args()
    try:
        cfg = load_config(args.config, parse_set_options(args.set), schema=CompareConfig)
        if REFERENCE not in [m.name for m in cfg.compare.methods] or cfg.budget_unit != "latency":
            raise LegrError(f"the config needs a latency budget and a method named {REFERENCE} (MACs targets)")
        if not args.merge:
            p = piece(cfg, args.seeds, args.methods)
            pcfg, work = piece_config(cfg, p), args.work / p.name
            estimate = estimate_comparison(pcfg, work)
            print(estimate.line(f"piece {p.name}"))
            if estimate.warning():
                print(estimate.warning())
            if args.estimate_only:
                return
            check_quiet(args.allow_busy)
            with LoadMonitor() as load:
                Comparison(pcfg, work).run()
            (args.results / "pieces").mkdir(parents=True, exist_ok=True)
            done = json.loads((work / "compare.json").read_text())
            atomic_write_text(args.results / "pieces" / f"{p.name}.json",
                              json.dumps({**done, "foreign_load": load.summary()}, indent=1, default=float))
            print(f"piece {p.name} written: {args.results / 'pieces' / f'{p.name}.json'} (commit it)")
            if args.seeds or args.methods:
                print((work / "summary.md").read_text())
                return
        result = write_merged(cfg, args.results)
    except LegrError as exc:
        sys.exit(f"error: {exc}")
    print((args.results / "latency_accuracy.md").read_text())
    if result["missing"]:
        print("missing pieces (seed, method): " + ", ".join(f"{s} {m}" for s, m in result["missing"]))


if __name__ == "__main__":
    main()
