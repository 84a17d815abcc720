"""Distillation and int8 (issue 33): do pruned members recover more with the source network as teacher, and what does
int8 in onnxruntime then cost and buy?

Arms (``configs/distill_resnet20_cifar10jpeg.yaml``): one LeGR run per seed with plain cross-entropy fine-tuning
(``ce``), and the same members — the same adapted source network and the same learned ranking, copied from the
seed's ``ce`` folder, so only the fine-tuning differs — fine-tuned with distillation at several (alpha, T)
(``kd-*``), at equal SGD steps; an arm may also change the schedule (the moonshot: one member, a long KD schedule).
Every arm's networks are then quantized (`legr quantize`: ONNX Runtime static int8, calibrated on training images)
and timed in onnxruntime fp32 vs int8. The KD setting reported as "kd" is the arm with the best mean *validation*
top-1 over the targets (the test set chooses nothing).

Pieces (benchmarks/README.md, "Long runs"): ``--seeds S --arms A ...`` runs those (seed, arm) pairs into
``<work>/seed<S>/<arm>`` and writes ``<results>/pieces/seed<S>_<arm>.json``; a seed's ``ce`` piece runs first (the
others reuse its source network and ranking). ``--timing`` times ResNet-50 and MobileNetV2 (random weights: only
time is measured) unpruned and uniformly pruned to 50% MACs, fp32 vs int8 in onnxruntime. ``--merge`` writes
``distill_quantize.json`` / ``.md`` from the pieces there and names the missing ones. Resumable: rerun the command.

    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/distill_quantize.py --seeds 0 --arms ce
    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/distill_quantize.py --seeds 0 --arms kd-a0.9-t4
    python benchmarks/distill_quantize.py --timing
    python benchmarks/distill_quantize.py --merge
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from legr.engine import int8
from legr.engine.cost import CostModel
from legr.engine.export import export_onnx
from legr.engine.latency import measure_interleaved
from legr.engine.surgery import prune
from legr.errors import LegrError
from legr.graph import analyze
from legr.hardware import git_revision, hardware_label
from legr.methods.filters.allocate import UniformSolver
from legr.methods.filters.criteria import compute_scores
from legr.models import build_model
from legr.paths import atomic_write_text
from legr.pipeline.config import parse_config
from legr.pipeline.quantize import quantize_run
from legr.pipeline.steps import Pipeline

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = "ce"


def read_config(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not {"run", "arms", "seeds"} <= set(data):
        raise LegrError(f"{path}: expected the sections run, arms, seeds (and int8)")
    names = [a["name"] for a in data["arms"]]
    if names[0] != REFERENCE or len(set(names)) != len(names):
        raise LegrError(f"{path}: arms need unique names, the first one '{REFERENCE}'")
    for arm in data["arms"]:  # every arm's config is checked before anything runs
        parse_config(data["run"], {**arm.get("set", {}), "seed": 0})
    int8.Int8Settings(**data.get("int8", {}))
    return data


def estimate(cfg: Any, searching: bool) -> str:
    """A rough wall time, printed before a piece starts: SGD steps and forwards of the source network timed on random
    data at the fine-tuning batch size, times the piece's count of each (a member's step scaled by its MACs share)."""
    net = build_model(cfg.model.name).train()
    b = cfg.finetune.batch_size
    x, y = torch.randn(b, *((3, 32, 32) if "cifar" in cfg.data.name else (1, 8, 8))), torch.randint(0, 10, (b,))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def timed(fn, n: int = 3) -> float:
        fn()
        start = time.process_time()
        for _ in range(n):
            fn()
        return (time.process_time() - start) / n

    step = timed(lambda: (opt.zero_grad(), torch.nn.functional.cross_entropy(net(x), y).backward(), opt.step()))
    with torch.no_grad():
        forward = timed(lambda: net(x))
    f = cfg.finetune
    steps = f.epochs * (f.steps_per_epoch or 50_000 // b)
    tune = sum(steps * (step * (0.3 + 0.7 * t) + (forward if f.distill else 0.0)) for t in cfg.targets)
    s = cfg.search
    search = s.restarts * s.evaluations * len(cfg.search_targets) * (s.bn_batches + 1000 / b) * forward * 0.6
    return (f"estimated wall time (rough, one core to itself): fine-tuning {tune / 60:.0f} min"
            + (f", search {search / 60:.0f} min" if searching else "") + ", int8 + timing ~3 min")


def run_piece(cfg_data: dict[str, Any], seed: int, arm: dict[str, Any], work: Path, results: Path) -> Path:
    """One (seed, arm): the LeGR run (reusing the seed's ce source network and ranking), then int8 of its networks."""
    cfg = parse_config(cfg_data["run"], {**arm.get("set", {}), "seed": seed})
    folder = work / f"seed{seed}" / arm["name"]
    if arm["name"] != REFERENCE:
        ref = work / f"seed{seed}" / REFERENCE
        if not (ref / "ranking.json").is_file():
            raise LegrError(f"arm {arm['name']} reuses seed {seed}'s {REFERENCE} ranking: run --arms {REFERENCE} first")
        for part in ("ranking.json", "base"):
            if (ref / part).exists() and not (folder / part).exists():
                folder.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if (ref / part).is_dir() else shutil.copy2)(ref / part, folder / part)
    print(f"piece seed {seed} {arm['name']}: {estimate(cfg, not (folder / 'ranking.json').exists())}", flush=True)
    start = time.perf_counter()
    Pipeline(cfg, folder, log=print).run()
    rows = quantize_run(folder, int8.Int8Settings(**cfg_data.get("int8", {})), clock="cpu", log=print)
    val = {}
    for row in rows[1:]:
        history = json.loads((folder / row["path"] / "finetuned.json").read_text())
        val[row["name"]] = history[-1].get("val_top1") if history else None
    out = {"seed": seed, "arm": arm["name"], "set": arm.get("set", {}), "rows": rows, "val_top1": val,
           "timings": json.loads((folder / "timings.json").read_text()) if (folder / "timings.json").exists() else {},
           "wall_s": time.perf_counter() - start, "hardware": hardware_label(), "git_rev": git_revision(ROOT)}
    path = results / "pieces" / f"seed{seed}_{arm['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(out, indent=1))
    return path


def timing_piece(results: Path, repeats: int = 3) -> Path:
    """ResNet-50 and MobileNetV2 (torchvision, random weights, 224x224): unpruned and uniform-L1 at 50% MACs, fp32 vs
    int8 in onnxruntime, one thread, batch 1 and 64 (thread CPU time, interleaved rounds)."""
    rows = []
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((8, 3, 224, 224)).astype(np.float32) for _ in range(2)]
    for name in ("resnet50", "mobilenet_v2"):
        model = build_model(name).eval()
        graph = analyze(model, (3, 224, 224))
        cost = CostModel(graph)
        keep = UniformSolver(graph, cost, compute_scores("l1", graph, graph.gm)).solve(0.5 * cost.base_macs)
        for variant, net in (("unpruned", graph.gm), ("uniform-50", prune(graph, keep))):
            with tempfile.TemporaryDirectory() as tmp:
                exported = export_onnx(net, (3, 224, 224), Path(tmp) / "e.onnx")
                fp32 = int8.preprocess(exported["path"], Path(tmp) / "fp32.onnx")
                q8 = Path(tmp) / "int8.onnx"
                int8.quantize(fp32, q8, calib)
                nets = {"fp32": int8.OnnxModule(fp32), "int8": int8.OnnxModule(q8)}
                timed = measure_interleaved(nets, (3, 224, 224), (1, 64), threads=1, clock="cpu", warmup=1,
                                            repeats=repeats, rounds=3)
                row = {"model": name, "variant": variant, "macs": cost.macs(keep) if variant != "unpruned"
                       else cost.base_macs, "fp32_bytes": fp32.stat().st_size, "int8_bytes": q8.stat().st_size}
                for kind, per_batch in timed.items():
                    row.update({f"{kind}_b{b}_ms": r.median_ms for b, r in per_batch.items()})
                rows.append(row)
                print(json.dumps(row))
    path = results / "pieces" / "timing.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"rows": rows, "hardware": hardware_label(), "git_rev": git_revision(ROOT)},
                                          indent=1))
    return path


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def merge(cfg_data: dict[str, Any], results: Path) -> dict[str, Any]:
    pieces = [json.loads(p.read_text()) for p in sorted((results / "pieces").glob("seed*_*.json"))]
    have = {(p["seed"], p["arm"]) for p in pieces}
    missing = [(s, a["name"]) for s in cfg_data["seeds"] for a in cfg_data["arms"] if (s, a["name"]) not in have]
    table: dict[str, dict[float, dict[str, list[float]]]] = {}
    for p in pieces:
        for row in p["rows"][1:]:
            cell = table.setdefault(p["arm"], {}).setdefault(row["target"], {})
            for key in ("top1", "int8_top1", "onnx_cpu_b1_ms", "int8_cpu_b1_ms", "onnx_cpu_b64_ms", "int8_cpu_b64_ms"):
                if row.get(key) is not None:
                    cell.setdefault(key, []).append(row[key])
            cell.setdefault("val", []).append(p["val_top1"].get(row["name"]))
            cell.setdefault("seeds", []).append(p["seed"])
    kd = [a for a in table if a.startswith("kd-") and all(len(c["val"]) for c in table[a].values())]
    chosen = max(kd, key=lambda a: statistics.fmean(v for c in table[a].values() for v in c["val"] if v is not None),
                 default=None)
    timing = results / "pieces" / "timing.json"
    return {"missing": missing, "chosen_kd": chosen, "hardware": sorted({p["hardware"] for p in pieces}),
            "arms": {a: {str(t): {k: _mean_std(v) if k != "seeds" else v for k, v in c.items() if k != "val"}
                         | {"val": _mean_std([v for v in c["val"] if v is not None] or [float("nan")])}
                         for t, c in sorted(cells.items())} for a, cells in table.items()},
            "timing": json.loads(timing.read_text()) if timing.exists() else None}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| arm | target | seeds | val top-1 % | test top-1 % | int8 top-1 % (ORT) | ORT fp32 / int8 b1 ms | "
             "ORT fp32 / int8 b64 ms |", "|:---|---:|---:|---:|---:|---:|---:|---:|"]
    pct = lambda v: f"{100 * v[0]:.2f} ± {100 * v[1]:.2f}"  # noqa: E731
    ms = lambda c, a, b: f"{c[a][0]:.3g} / {c[b][0]:.3g}" if a in c and b in c else "-"  # noqa: E731
    for arm, cells in result["arms"].items():
        for t, c in cells.items():
            lines.append(f"| {arm}{' (chosen on val)' if arm == result['chosen_kd'] else ''} | {float(t):.0%} | "
                         f"{len(c['seeds'])} | {pct(c['val'])} | {pct(c['top1'])} | "
                         f"{pct(c['int8_top1']) if 'int8_top1' in c else '-'} | "
                         f"{ms(c, 'onnx_cpu_b1_ms', 'int8_cpu_b1_ms')} | {ms(c, 'onnx_cpu_b64_ms', 'int8_cpu_b64_ms')} |")
    if result["timing"]:
        lines += ["", "| model | variant | MACs (G) | ORT fp32 / int8 b1 ms | ORT fp32 / int8 b64 ms | int8 speedup b64 |",
                  "|:---|:---|---:|---:|---:|---:|"]
        for r in result["timing"]["rows"]:
            lines.append(f"| {r['model']} | {r['variant']} | {r['macs'] / 1e9:.2f} | {r['fp32_b1_ms']:.1f} / "
                         f"{r['int8_b1_ms']:.1f} | {r['fp32_b64_ms']:.0f} / {r['int8_b64_ms']:.0f} | "
                         f"{r['fp32_b64_ms'] / r['int8_b64_ms']:.2f}x |")
    if result["missing"]:
        lines += ["", "**Missing pieces** (seed, arm): " + ", ".join(f"{s} {a}" for s, a in result["missing"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "distill_resnet20_cifar10jpeg.yaml")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "distill_quantize")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "distill_quantize")
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--arms", nargs="+")
    ap.add_argument("--timing", action="store_true", help="ResNet-50 / MobileNetV2 fp32 vs int8 in onnxruntime")
    ap.add_argument("--merge", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        cfg = read_config(args.config)
        if args.timing:
            print(f"wrote {timing_piece(args.results)}")
        arms = {a["name"]: a for a in cfg["arms"]}
        for seed in args.seeds or []:
            for name in args.arms or list(arms):
                if name not in arms:
                    raise LegrError(f"unknown arm {name!r} (the config's: {', '.join(arms)})")
                print(f"wrote {run_piece(cfg, seed, arms[name], args.work, args.results)}")
        if args.merge:
            result = merge(cfg, args.results)
            atomic_write_text(args.results / "distill_quantize.json", json.dumps(result, indent=1))
            atomic_write_text(args.results / "distill_quantize.md", markdown(result))
            print(markdown(result))
    except LegrError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
