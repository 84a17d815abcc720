"""How fast one learned ranking becomes pruned architectures: time to build the solver and to solve 7 targets.

    LEGR_WEIGHTS=../shared/weights python benchmarks/solver_speed.py [--model cifar_resnet56] [--repeats 20]

Writes benchmarks/results/solver_speed.json. "Solver + 7 targets" is what one new ranking costs (score the filters,
order all removals once, then one binary search per target). The targets are met exactly: MACs <= target, and putting back the last
removed channel would exceed it (printed as the gap to the target in units of that channel's MACs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from legr.engine.cost import CostModel
from legr.graph import analyze
from legr.hardware import git_revision, hardware_label
from legr.methods.filters.legr.ranking import Ranking, ranked_layers
from legr.models import build_model, get_model_spec
from legr.paths import atomic_write_text

TARGETS = (0.3, 0.4, 0.47, 0.5, 0.6, 0.7, 0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cifar_resnet56")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "solver_speed.json")
    args = parser.parse_args()
    model = build_model(args.model, pretrained=get_model_spec(args.model).pretrained is not None)
    start = time.perf_counter()
    graph = analyze(model, get_model_spec(args.model).input_size)
    cost = CostModel(graph)
    analysis_s = time.perf_counter() - start
    ranking = Ranking.identity(ranked_layers(graph))
    times, build_times = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        solver = ranking.solver(graph, cost, model)
        t1 = time.perf_counter()
        keeps = [solver.solve(t * cost.base_macs) for t in TARGETS]
        build_times.append(t1 - t0)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(1000):
        cost.macs(keeps[0])
    eval_us = (time.perf_counter() - t0) * 1000
    rows = []
    for t, keep in zip(TARGETS, keeps):
        removed = int((keep == 0).sum())
        macs, one_less = cost.macs(keep), solver.cost_after(removed - 1)
        rows.append({"target": t, "macs_ratio": macs / cost.base_macs, "removed_channels": removed,
                     "slack_in_channel_steps": (t * cost.base_macs - macs) / (one_less - macs)})
    result = {
        "model": args.model, "base_macs": cost.base_macs, "analysis_s": analysis_s,
        "seven_targets_median_s": statistics.median(times), "seven_targets_max_s": max(times),
        "solver_build_median_s": statistics.median(build_times),
        "solve_only_median_s": statistics.median(t - b for t, b in zip(times, build_times)),
        "cost_eval_us": eval_us, "targets": rows, "hardware": hardware_label(), "git_rev": git_revision(),
        "command": " ".join(sys.argv),
    }
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"{args.model}: analysis {analysis_s:.2f} s; solver + 7 targets: median {result['seven_targets_median_s'] * 1e3:.1f} ms "
          f"(max {result['seven_targets_max_s'] * 1e3:.1f} ms; building the solver "
          f"{result['solver_build_median_s'] * 1e3:.1f} ms, the 7 solves {result['solve_only_median_s'] * 1e3:.1f} ms); "
          f"one MACs evaluation {eval_us:.1f} us")
    for r in rows:
        print(f"  target {r['target']:.2f}: MACs {r['macs_ratio']:.4f}, slack {r['slack_in_channel_steps']:.2f} channel steps")


if __name__ == "__main__":
    main()
