"""Is a convolution's time smooth in its width? One 3x3 convolution (C -> C channels, stride 1, padding 1) timed at
every width around the multiples of 8 and 16 that pruning with ``round_to`` would keep, on one CPU thread.

The latency model (`legr.engine.latency_model`) fits each node's time as a smooth, non-decreasing function of the
widths it touches; this measures what such a model cannot know: the kernel library picking another implementation
at some widths. Timing: the thread's CPU time, the fastest of ``--repeats`` forwards after warm-up (this shared VM's
wall clock drifts; see benchmarks/README.md).

    python benchmarks/conv_widths.py        # ~1 min -> benchmarks/results/conv_widths.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from legr.hardware import hardware_label
from legr.paths import atomic_write_text

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
CASES = {32: [8, 11, 12, 14, 15, 16, 17, 20, 24], 8: [47, 48, 56, 57, 60, 62, 63, 64]}  # spatial size -> widths


def fastest_ms(width: int, size: int, batch: int, repeats: int) -> float:
    conv = torch.nn.Conv2d(width, width, 3, padding=1, bias=False).eval()
    x = torch.randn(batch, width, size, size)
    with torch.inference_mode():
        for _ in range(3):
            conv(x)
        best = float("inf")
        for _ in range(repeats):
            start = time.thread_time()
            conv(x)
            best = min(best, time.thread_time() - start)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = [{"size": size, "width": w, "batch": b, "ms": fastest_ms(w, size, b, args.repeats if b == 1 else 10)}
            for size, widths in CASES.items() for w in widths for b in (1, 64)]
    result = {"hardware": hardware_label(), "command": "python benchmarks/conv_widths.py", "rows": rows}
    atomic_write_text(args.out / "conv_widths.json", json.dumps(result, indent=1))
    lines = ["# 3x3 convolution time vs width (one CPU thread, fastest forward, thread CPU time)", "",
             f"`{result['command']}`; {result['hardware']}", "",
             "| input | width (in = out) | b1 ms | b64 ms | b64 ms per MAC, relative to the widest |",
             "|---|---:|---:|---:|---:|"]
    for size, widths in CASES.items():
        ms = {(r["width"], r["batch"]): r["ms"] for r in rows if r["size"] == size}
        top = max(widths)
        for w in widths:
            per_mac = (ms[(w, 64)] / w**2) / (ms[(top, 64)] / top**2)
            lines.append(f"| {size}x{size} | {w} | {ms[(w, 1)]:.3f} | {ms[(w, 64)]:.2f} | {per_mac:.2f} |")
    atomic_write_text(args.out / "conv_widths.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
