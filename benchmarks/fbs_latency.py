"""FBS (issue 16): does the fast path turn FBS's MACs savings into CPU latency at batch 1?

CIFAR ResNet-20 (akamaster weights when ``$LEGR_WEIGHTS`` has them) gated at its 9 gateable convolutions (each basic
block's first; the residual stream stays dense: MACs fall about linearly with the density) and CIFAR VGG-16-BN (random
weights: timings do not depend on them) at 12 of its 13 (chained: each gated convolution also reads gated channels,
so MACs fall about quadratically), predictors at their initialization (every saliency near 1, so every winner is
active: each image costs its density's worst case). At each density, timed in interleaved rounds on one CPU thread,
batch 1:

- ``dense``: the source network;
- ``masked``: the gated network computing every channel and multiplying the suppressed ones by 0 (FBS as trained);
- ``fast``: the fast path, computing only the active channels (predictor, top-k, gathered weights);
- ``static``: the same widths pruned physically (the first k filters of each gated convolution, no predictor): what
  the fast path would cost without its per-image selection and gathers.

Ratios are to ``dense``; the MACs ratio counts the predictors. Seconds to a minute::

    OMP_NUM_THREADS=1 LEGR_WEIGHTS=../shared/weights python benchmarks/fbs_latency.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from legr.engine.cost import CostModel
from legr.engine.latency import measure_interleaved
from legr.engine.surgery import prune
from legr.errors import LegrError
from legr.graph import analyze
from legr.hardware import git_revision, hardware_label
from legr.methods.dynamic import DynamicCost, FbsNetwork, find_pairs, winners
from legr.models import build_model
from legr.paths import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"


def measure(name: str, densities: list[float], args: argparse.Namespace) -> dict:
    """One model's dense, masked, fast and static networks at every density, timed together."""
    size = (3, 32, 32)
    try:
        model, weights = build_model(name, pretrained=True), "pretrained"
    except LegrError:  # no checkpoint registered or found: random weights (timings do not depend on them)
        model, weights = build_model(name), "random"
    graph = analyze(model.eval(), size)
    cost = CostModel(graph)
    pairs, _ = find_pairs(graph)
    dynamic = DynamicCost(cost, pairs)
    nets, macs = {"dense": graph.gm}, {"dense": cost.base_macs}
    for d in densities:
        gated = FbsNetwork.build(graph, pairs).set_density(d)
        nets[f"masked@{d:g}"] = FbsNetwork(gated.masked, pairs, fast_path=False).set_density(d)
        nets[f"fast@{d:g}"] = gated
        keep = np.ones(graph.num_classes)
        for p in pairs:
            keep[p.classes[winners(d, p.out_channels):]] = 0.0
        nets[f"static@{d:g}"] = prune(graph, keep)
        macs[f"masked@{d:g}"] = cost.base_macs + sum(p.in_channels * p.out_channels for p in pairs)
        macs[f"fast@{d:g}"] = dynamic.worst(d)
        macs[f"static@{d:g}"] = cost.macs(keep)
    timed = measure_interleaved(nets, size, (1,), rounds=args.rounds, threads=1, clock=args.clock,
                                repeats=args.repeats, warmup=5)
    ms = {n: per[1].median_ms for n, per in timed.items()}
    rows = []
    for d in densities:
        row = {"density": d}
        for kind in ("masked", "fast", "static"):
            key = f"{kind}@{d:g}"
            row.update({f"{kind}_ms": ms[key], f"{kind}_latency_ratio": ms[key] / ms["dense"],
                        f"{kind}_macs_ratio": macs[key] / macs["dense"]})
        row["fast_over_static"] = ms[f"fast@{d:g}"] / ms[f"static@{d:g}"]
        rows.append(row)
    return {"model": name, "weights": weights, "input": list(size), "dense_ms": ms["dense"],
            "dense_macs": cost.base_macs, "gated": [p.producer for p in pairs], "rows": rows,
            "noisy": sorted(n for n, per in timed.items() if per[1].noisy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cifar_resnet20", "cifar_vgg16_bn"])
    parser.add_argument("--densities", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: the thread's CPU time (a shared machine cannot inflate it)")
    parser.add_argument("--stem", default="fbs_latency")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = [measure(name, args.densities, args) for name in args.models]
    result = {"batch": 1, "threads": 1, "clock": args.clock, "rounds": args.rounds, "repeats": args.repeats,
              "hardware": hardware_label(), "git_rev": git_revision(), "torch": torch.__version__, "models": models}
    lines = [f"FBS at batch 1, 1 thread, clock {args.clock}, {hardware_label()} "
             f"(`python benchmarks/fbs_latency.py`): latency and MACs as ratios to the dense network", ""]
    for m in models:
        lines += [f"**{m['model']}** ({m['weights']} weights, {len(m['gated'])} gated convolutions), dense "
                  f"{m['dense_ms']:.2f} ms, {m['dense_macs'] / 1e6:.1f}M MACs", "",
                  "| density | MACs (fast, predictors included) | fast path | masked | static, same widths | "
                  "fast / static |", "|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['density']:g} | {r['fast_macs_ratio']:.3f} | {r['fast_latency_ratio']:.3f} | "
                  f"{r['masked_latency_ratio']:.3f} | {r['static_latency_ratio']:.3f} | {r['fast_over_static']:.2f} |"
                  for r in m["rows"]]
        lines.append("")
    lines.append("fast path: only the active channels computed; masked: every channel computed, the suppressed "
                 "multiplied by 0; static: the same per-layer widths pruned physically, no predictor.")
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / f"{args.stem}.json", json.dumps(result, indent=1))
    atomic_write_text(RESULTS / f"{args.stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    noisy = [f"{m['model']}: {', '.join(m['noisy'])}" for m in models if m["noisy"]]
    if noisy:
        print(f"warning: rounds disagreed by more than 15% ({'; '.join(noisy)}): a busy machine?")


if __name__ == "__main__":
    main()
