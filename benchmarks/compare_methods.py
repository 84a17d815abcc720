"""Pruning methods under equal budgets: does LeGR's learned ranking beat uniform, global, LCP, Taylor and random?

Every method prunes the same adapted source network to the same MACs targets with the same splits, fine-tuning
budget and seeds (see `legr.pipeline.compare`); all networks are then timed together. Writes the tables, plots and raw
figures into benchmarks/results/compare_<config name>/. Resumable: rerun the same command after an interruption.

    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/compare_methods.py          # 2-core CPU
    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/compare_methods.py --full   # GPU

In pieces (each finishes within the time at hand and leaves a result file to commit; see benchmarks/README.md,
"Long runs"): ``--seeds 0 --methods legr`` runs that part only (work folder ``<work>/<piece>``) and writes
``<results>/pieces/<piece>.json``; ``--merge`` builds the tables and plots from the pieces that exist and names the
missing ones. ``--split`` turns a comparison run whole (``<results>/compare.json``) into one piece per method, so that
one method can be run again in pieces after a change to it (delete its piece file, run its pieces, merge).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from legr.errors import LegrError
from legr.paths import atomic_write_text
from legr.pipeline.compare import Comparison, summary_markdown, write_result
from legr.pipeline.folder import ComparisonFolder
from legr.pipeline.estimate import estimate_comparison
from legr.pipeline.pieces import merge, piece, piece_config, split
from legr.pipeline.compare_config import CompareConfig
from legr.pipeline.config_files import load_config, parse_set_options

ROOT = Path(__file__).resolve().parents[1]
KEEP = ["compare.json", "summary.md", "accuracy_vs_macs.png", "widths.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "compare_resnet20_cifar10jpeg.yaml")
    parser.add_argument("--full", action="store_true",
                        help="the paper's schedules on ResNet-56 (configs/compare_resnet56_cifar10jpeg_full.yaml)")
    parser.add_argument("--work", type=Path, help="run folder (default: runs/compare_<config name>)")
    parser.add_argument("--results", type=Path, help="default: benchmarks/results/compare_<config name>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--note", default="", help="a sentence for the results README, e.g. where training ran")
    parser.add_argument("--seeds", type=int, nargs="+", help="run these seeds only (a piece)")
    parser.add_argument("--methods", nargs="+", help="run these methods only (a piece)")
    parser.add_argument("--merge", action="store_true", help="merge <results>/pieces/*.json into the results")
    parser.add_argument("--split", action="store_true",
                        help="write <results>/compare.json (a whole run) as <results>/pieces/, one piece per method")
    parser.add_argument("--estimate-only", action="store_true", help="print the estimated wall time and stop")
    args = parser.parse_args()
    config = ROOT / "configs" / "compare_resnet56_cifar10jpeg_full.yaml" if args.full else args.config
    name = config.stem.removeprefix("compare_")
    work = args.work or ROOT / "runs" / f"compare_{name}"
    results = args.results or ROOT / "benchmarks" / "results" / f"compare_{name}"
    start = time.time()
    try:
        cfg = load_config(config, parse_set_options(args.set), schema=CompareConfig)
        if args.split:
            pieces = results / "pieces"
            held = sorted(p.name for p in pieces.glob("*.json"))
            if held:
                raise LegrError(f"{pieces} already holds pieces ({', '.join(held)}): nothing was split")
            pieces.mkdir(parents=True, exist_ok=True)
            for name, part in split(json.loads((results / "compare.json").read_text())).items():
                atomic_write_text(pieces / f"{name}.json", json.dumps(part, indent=1))
                print(f"wrote {pieces / name}.json")
            return
        if not args.merge:  # the wall time, before any work: a piece that cannot finish is not started
            p = piece(cfg, args.seeds, args.methods)
            partial = bool(args.seeds or args.methods)
            estimate = estimate_comparison(piece_config(cfg, p) if partial else cfg, work / p.name if partial else work)
            print(estimate.line(f"piece {p.name}" if partial else "this run"), flush=True)
            if estimate.warning():
                print(estimate.warning(), flush=True)
            if args.estimate_only:
                return
        if args.merge:
            parts = [json.loads(p.read_text()) for p in sorted((results / "pieces").glob("*.json"))]
            result = merge(cfg, parts)
            write_result(result, ComparisonFolder(results))
            if result["missing"]:
                print("missing pieces (seed, method): " + ", ".join(f"{s} {m}" for s, m in result["missing"]))
        elif args.seeds or args.methods:
            p = piece(cfg, args.seeds, args.methods)
            result = Comparison(piece_config(cfg, p), work / p.name).run()
            (results / "pieces").mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / p.name / "compare.json", results / "pieces" / f"{p.name}.json")
            print((work / p.name / "summary.md").read_text())
            return
        else:
            result = Comparison(cfg, work).run()
            results.mkdir(parents=True, exist_ok=True)
            for file in KEEP:
                shutil.copy2(work / file, results / file)
    except LegrError as exc:
        sys.exit(f"error: {exc}")
    atomic_write_text(results / "README.md", results_readme(result, config, time.time() - start, args.note))
    print((results / "summary.md").read_text())


def _shown(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def results_readme(result: dict, config: Path, seconds: float, note: str) -> str:
    c = result["config"]
    s, f = c["search"], c["finetune"]
    steps = f["epochs"] * f["steps_per_epoch"] if f.get("steps_per_epoch") else None
    return "\n".join([
        f"# Methods under equal budgets: {result['model']}, {result['dataset']}",
        "",
        f"Written by `benchmarks/compare_methods.py` (config `{_shown(config)}`); " + (
            f"merged from {result['pieces']} pieces (`pieces/`, one per seed and method group, each run on its own)"
            + (f"; **missing** (seed, method): {', '.join(f'{s} {m}' for s, m in result['missing'])}"
               if result["missing"] else "") + "."
            if "pieces" in result else
            f"this invocation's wall time {seconds / 60:.1f} min (a resumed run counts only its last part)."),
        "",
        f"Same for every method: the source network (akamaster checkpoint adapted {c['base_training']['epochs']} "
        f"epochs to the JPEG images), the splits ({c['data']['val_size']} training images held out for search "
        f"fitness), targets {', '.join(f'{t:.0%}' for t in result['targets'])} of the source MACs, fine-tuning "
        f"{f['epochs']} epochs" + (f" of {f['steps_per_epoch']} steps ({steps} SGD steps)" if steps else "")
        + f" per network, seeds {', '.join(map(str, result['seeds']))}. lcp and legr search with population "
        f"{s['population']}, sample {s['sample']}, {s['evaluations']} candidates; fitness = "
        f"{s['fitness']} on the held-out images after adaptive BN on {s['bn_batches']} training batches and "
        f"{s['tau']} SGD steps, averaged over {', '.join(f'{t:.0%}' for t in result['search_targets'])} MACs, first "
        "population seeded with the global and uniform allocations"
        + "".join(f"; {m['name']} changes {m['search']}" for m in c["compare"]["methods"] if m.get("search"))
        + "".join(f"; {m['name']} changes the floors {m['floors']}" for m in c["compare"]["methods"] if m.get("floors"))
        + ". Every pruned network's BN statistics are re-estimated on "
        f"{c['bn_batches']} training batches before it is reported or fine-tuned. Test set: the CIFAR-10-JPEG test images, used for nothing "
        f"but these figures. Hardware: {result['hardware']}; latency on the CPU with "
        f"{c['eval']['threads'] or 'all'} thread(s), median of interleaved rounds." + (f" {note}" if note else ""),
        "",
        summary_markdown(result),
        "![accuracy vs MACs](accuracy_vs_macs.png)",
        "",
        "![per-layer widths](widths.png)",
        "",
    ])


if __name__ == "__main__":
    main()
