"""How long `legr.graph.analyze` takes on ResNet-50-size models (issue #13's target: under 2 s), and the cost model
built on it: trace + shape propagation + channel rules, median of ``--repeats`` runs after one warm-up.

    python benchmarks/analysis_speed.py [--models resnet50 timm:resnet50 ...] [--repeats 5] [--threads 2]

Writes benchmarks/results/analysis_speed.json (one row per model: input size, groups, parameters, median and max
seconds, ratio to the 2 s target) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from legr.engine.cost import CostModel
from legr.graph import analyze
from legr.hardware import git_revision, hardware_info, hardware_label
from legr.models import build_model, get_model_spec
from legr.paths import atomic_write_text

TARGET_S = 2.0
MODELS = ["resnet50", "timm:resnet50", "timm:convnext_tiny", "timm:efficientnet_b3", "densenet121"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "analysis_speed.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models:
        size = get_model_spec(name).input_size
        model = build_model(name, num_classes=1000)
        analyze(model, size)  # warm-up: imports, allocator, kernels
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            graph = analyze(model, size)
            CostModel(graph)
            seconds.append(time.perf_counter() - start)
        row = {"model": name, "input": list(size), "groups": len(graph.groups),
               "prunable_groups": len(graph.prunable_groups()),
               "params": sum(p.numel() for p in model.parameters()),
               "median_s": statistics.median(seconds), "max_s": max(seconds),
               "ratio_to_target": statistics.median(seconds) / TARGET_S}
        rows.append(row)
        print(f"{name:24s} {str(tuple(size)):16s} {row['params'] / 1e6:6.1f}M params {row['groups']:4d} groups  "
              f"{row['median_s']:.2f} s (max {row['max_s']:.2f})  {row['ratio_to_target']:.2f}x the 2 s target")
    result = {"target_s": TARGET_S, "repeats": args.repeats, "threads": args.threads, "hardware": hardware_label(),
              "hardware_info": hardware_info(), "git": git_revision(), "command": "benchmarks/analysis_speed.py",
              "rows": rows}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
