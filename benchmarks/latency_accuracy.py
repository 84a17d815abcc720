"""Accuracy at equal measured latency (issue 14 (d)): LeGR under a latency budget vs LeGR under MACs budgets vs
uniform pruning under the latency budget.

Runs the comparison of ``configs/compare_latency_resnet20_cifar10jpeg.yaml`` (`legr.pipeline.compare`: one adapted
source network, the same splits, fine-tuning and seeds for every method; all networks timed together in interleaved
rounds). ``legr-macs`` is searched and cut at MACs targets that span the latency range; its test top-1 is read at
the measured latency of every latency-budget member by linear interpolation between its own members (same seed),
so the methods are compared at equal measured latency. The test set chooses nothing. Resumable (the comparison is).

    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/latency_accuracy.py
    python benchmarks/latency_accuracy.py --config /tmp/tiny.yaml --work /tmp/la --results /tmp/la-results   # smoke

Results: ``<results>/`` with ``latency_accuracy.json`` / ``.md``, ``accuracy_vs_latency.png`` and the comparison's
``compare.json`` and ``summary.md``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from legr.errors import LegrError
from legr.paths import atomic_write_text
from legr.pipeline.compare import Comparison
from legr.pipeline.compare_config import CompareConfig
from legr.pipeline.config_files import load_config, parse_set_options
from legr.reporting import latency_key

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "legr-macs"


def equal_latency(result: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """Per latency-budget member: its measured latency and top-1, and the reference family's top-1 interpolated at
    that latency (None outside the reference's measured range)."""
    runs = [r for r in result["runs"] if r["method"] != "baseline"]
    out = []
    for seed in result["seeds"]:
        ref = sorted((r[key], r["top1"]) for r in runs if r["method"] == REFERENCE and r["seed"] == seed)
        xs, ys = [x for x, _ in ref], [y for _, y in ref]
        for r in runs:
            if r["seed"] != seed or r["method"] == REFERENCE:
                continue
            inside = bool(xs) and xs[0] <= r[key] <= xs[-1]
            out.append({"method": r["method"], "seed": seed, "target": r["target"], "latency_ms": r[key],
                        "top1": r["top1"], "reference_top1": float(np.interp(r[key], xs, ys)) if inside else None})
    return out


def _mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * std:.2f}"


def markdown(rows: list[dict[str, Any]], result: dict[str, Any], key: str) -> str:
    lines = [f"# Accuracy at equal measured latency: {result['model']}, {result['dataset']}", "",
             f"Seeds {', '.join(map(str, result['seeds']))}; hardware: {result['hardware']}; latency column "
             f"`{key}` (the budget's batch size and threads, measured together in interleaved rounds). "
             f"`{REFERENCE}` top-1 is interpolated at each member's measured latency between its own members (same "
             "seed). Test top-1 after fine-tuning, mean ± std over seeds:", "",
             f"| method | latency target | measured ms | top-1 % | {REFERENCE} at equal latency % | difference (points) |",
             "|:---|---:|---:|---:|---:|---:|"]
    for (method, target), group in _groups(rows).items():
        paired = [r for r in group if r["reference_top1"] is not None]
        diff = [r["top1"] - r["reference_top1"] for r in paired]
        lines.append(f"| {method} | {target:.0%} | {statistics.fmean(r['latency_ms'] for r in group):.2f} | "
                     f"{_mean_std([r['top1'] for r in group])} | {_mean_std([r['reference_top1'] for r in paired])} | "
                     f"{_mean_std(diff)} ({len(paired)}/{len(group)} seeds in range) |")
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

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for method in dict.fromkeys(r["method"] for r in result["runs"] if r["method"] != "baseline"):
        for seed in result["seeds"]:
            pts = sorted((r[key], 100 * r["top1"]) for r in result["runs"] if r["method"] == method and r["seed"] == seed)
            ax.plot(*zip(*pts), marker="o", ms=3, lw=1, label=method if seed == result["seeds"][0] else None,
                    color={"legr": "C0", REFERENCE: "C1"}.get(method, "C2"))
    ax.set_xlabel(f"measured latency ({key}, ms)")
    ax.set_ylabel("test top-1 after fine-tuning (%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "compare_latency_resnet20_cifar10jpeg.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "latency_accuracy")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "latency_accuracy")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args()
    try:
        cfg = load_config(args.config, parse_set_options(args.set), schema=CompareConfig)
        if REFERENCE not in [m.name for m in cfg.compare.methods] or cfg.budget_unit != "latency":
            raise LegrError(f"the config needs a latency budget and a method named {REFERENCE} (MACs targets)")
        result = Comparison(cfg, args.work).run()
    except LegrError as exc:
        sys.exit(f"error: {exc}")
    key = latency_key("cpu", cfg.budget.batch_size)
    rows = equal_latency(result, key)
    args.results.mkdir(parents=True, exist_ok=True)
    for name in ("compare.json", "summary.md"):
        shutil.copy2(args.work / name, args.results / name)
    import json

    atomic_write_text(args.results / "latency_accuracy.json", json.dumps({"key": key, "rows": rows}, indent=1))
    atomic_write_text(args.results / "latency_accuracy.md", markdown(rows, result, key))
    plot(result, key, args.results / "accuracy_vs_latency.png")
    print(markdown(rows, result, key))


if __name__ == "__main__":
    main()
