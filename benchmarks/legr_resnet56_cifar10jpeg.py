"""LeGR end to end on the akamaster ResNet-56 with CIFAR-10-JPEG, at a budget that fits a 2-core CPU.

Adapts the checkpoint to the JPEG images, learns the ranking at 47% MACs (as the paper does), cuts it at
30/47/70%, fine-tunes each network briefly, evaluates on the 10,000 JPEG test images and copies the small result
files into benchmarks/results/legr_resnet56_cifar10jpeg/. Resumable: rerun the same command after an interruption.

    LEGR_DATA=../shared/data LEGR_WEIGHTS=../shared/weights python benchmarks/legr_resnet56_cifar10jpeg.py
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from legr.errors import LegrError
from legr.paths import atomic_write_text
from legr.pipeline.config_files import load_config, parse_set_options
from legr.pipeline.steps import Pipeline
from legr.reporting import markdown_table, read_results

ROOT = Path(__file__).resolve().parents[1]
KEEP = ["config.yaml", "ranking.json", "search_log.jsonl", "results.json", "results.csv", "pareto.png"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "resnet56_cifar10jpeg.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "legr_resnet56_cifar10jpeg")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "legr_resnet56_cifar10jpeg")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set eval.threads=1 (eval.* may change on a finished run)")
    parser.add_argument("--note", default="", help="a sentence for the results README, e.g. where training ran")
    args = parser.parse_args()
    start = time.time()
    try:
        pipeline = Pipeline(load_config(args.config, parse_set_options(args.set)), args.work)
        print(pipeline.run())
    except LegrError as exc:
        sys.exit(f"error: {exc}")
    args.results.mkdir(parents=True, exist_ok=True)
    for name in KEEP:
        shutil.copy2(args.work / name, args.results / name)
    rows = read_results(args.work)
    cfg = pipeline.cfg
    atomic_write_text(args.results / "README.md", "\n".join([
        "# LeGR, ResNet-56 (akamaster, option A), CIFAR-10-JPEG",
        "",
        f"Written by `benchmarks/legr_resnet56_cifar10jpeg.py` (config `{args.config.resolve().relative_to(ROOT)}`); "
        f"this run's wall time {(time.time() - start) / 60:.1f} min (a resumed run counts only its last part).",
        "",
        f"Budget: source adapted {cfg.base_training.epochs} epochs on the JPEG training images; search "
        f"{cfg.search.evaluations} candidates (population {cfg.search.population}, sample {cfg.search.sample}, "
        f"tau {cfg.search.tau}, adaptive-BN batches {cfg.search.bn_batches}) at "
        f"{', '.join(f'{t:.0%}' for t in cfg.search_targets)} MACs with fitness = {cfg.search.fitness} on "
        f"{cfg.data.val_size} held-out training images; {cfg.finetune.epochs} fine-tuning epochs per network; seed {cfg.seed}. "
        f"Test set: the 10,000 CIFAR-10-JPEG test images (used for nothing but these figures). "
        f"Hardware (evaluation and latency): {rows[0]['hardware']}. Top-1 before fine-tuning is in results.csv."
        + (f" {args.note}" if args.note else ""),
        "",
        markdown_table(rows),
        "",
        "![pareto](pareto.png)",
        "",
    ]))


if __name__ == "__main__":
    main()
