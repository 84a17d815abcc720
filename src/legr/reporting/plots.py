"""The Pareto front of result rows and the plots (accuracy vs MACs / latency, method curves, per-layer widths)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from legr.errors import LegrError
from legr.paths import atomic_file
from legr.reporting.rows import BASELINE, ONNX_LATENCY, as_number, is_baseline, latency_key


def pareto_front(rows: Sequence[Mapping[str, Any]], x: str = "macs", y: str = "top1") -> list[dict[str, Any]]:
    """Rows that no other row dominates (lower ``x`` and higher ``y`` are better), sorted by ``x``.

    A row is dominated when another has ``x`` <= and ``y`` >= with at least one strict; exact ties are all kept.
    Rows lacking a finite ``x`` or ``y`` are ignored.
    """
    return [dict(rows[k]) for k in front_indices(rows, x, y)]


def front_indices(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> list[int]:
    points = [(xv, yv, i) for i, r in enumerate(rows)
              if (xv := as_number(r.get(x))) is not None and (yv := as_number(r.get(y))) is not None]
    points.sort(key=lambda p: (p[0], -p[1], p[2]))
    front: list[int] = []
    best = -math.inf  # best y among rows with strictly smaller x
    i = 0
    while i < len(points):
        j = i
        while j < len(points) and points[j][0] == points[i][0]:
            j += 1
        top = points[i][1]  # max y at this x (sorted by -y)
        if top > best:
            front += [p[2] for p in points[i:j] if p[1] == top]
            best = top
        i = j
    return front


_MARKERS = "osD^v<>ph*"
_MAX_LINE_POINTS = 12  # a method with more points (e.g. search samples) gets markers + a line through its front


def _title(rows: Sequence[Mapping[str, Any]], title: str | None) -> str:
    if title:
        return title
    models = sorted({str(r.get("model")) for r in rows if r.get("model") is not None})
    datasets = sorted({str(r.get("dataset")) for r in rows if r.get("dataset") is not None})
    return f"{', '.join(models) or 'model'} on {', '.join(datasets) or 'dataset'}"


def _panel(ax, rows: Sequence[Mapping[str, Any]], xkey: str, xscale: float, xlabel: str,
           styles: dict[str, tuple[str, str]], annotate: bool) -> None:
    """Accuracy (y, %) against ``xkey`` / ``xscale`` (x) on one axis."""
    pts = [r for r in rows if as_number(r.get(xkey)) is not None and as_number(r.get("top1")) is not None]
    X = lambda r: as_number(r[xkey]) / xscale  # noqa: E731
    Y = lambda r: 100 * as_number(r["top1"])  # noqa: E731

    front_idx = front_indices(pts, xkey, "top1")
    front = [pts[k] for k in front_idx]
    if front:
        fx, fy = [X(r) for r in front], [Y(r) for r in front]
        ax.step(fx, fy, where="post", color="#f2b134", lw=7, alpha=0.35, solid_capstyle="round", zorder=1,
                label="Pareto front")
        ax.scatter(fx, fy, s=190, facecolors="none", edgecolors="#e09b00", linewidths=1.6, zorder=4)

    base = [r for r in pts if is_baseline(r)]
    for method, (color, marker) in styles.items():
        if method == BASELINE:
            continue
        mine = sorted((r for r in pts if r.get("method") == method), key=X)
        if not mine:
            continue
        if len(mine) <= _MAX_LINE_POINTS:
            ax.plot([X(r) for r in mine], [Y(r) for r in mine], marker=marker, color=color, lw=1.6, ms=6.5,
                    zorder=3, label=method)
        else:  # a cloud of samples: markers, and the line through this method's own non-dominated points
            ax.scatter([X(r) for r in mine], [Y(r) for r in mine], marker=marker, color=color, s=22, alpha=0.6,
                       zorder=3, label=method)
            own = [mine[k] for k in front_indices(mine, xkey, "top1")]
            ax.plot([X(r) for r in own], [Y(r) for r in own], color=color, lw=1.6, zorder=3)
    for i, r in enumerate(base):
        ax.axhline(Y(r), color="0.35", ls="--", lw=1, zorder=2)
        ax.scatter([X(r)], [Y(r)], marker="*", s=300, color="#d62728", edgecolors="black", linewidths=0.7,
                   zorder=5, label=f"baseline ({Y(r):.2f}% top-1)" if i == 0 else None)

    for k, r in enumerate(pts):
        if annotate or k in front_idx or is_baseline(r):
            ax.annotate(str(r.get("name", "")), (X(r), Y(r)), xytext=(5, -11), textcoords="offset points",
                        fontsize=7.5, color="0.2", zorder=6)

    ax.set_xlabel(xlabel)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(True, color="0.9", lw=0.8)
    ax.set_axisbelow(True)
    if pts:
        xs = [X(r) for r in pts]
        span = (max(xs) - min(xs)) or max(abs(max(xs)), 1e-9)
        ax.set_xlim(max(0.0, min(xs) - 0.06 * span), max(xs) + 0.12 * span)  # room for the labels on the right
        ys = [Y(r) for r in pts]
        yspan = (max(ys) - min(ys)) or 1.0
        ax.set_ylim(min(ys) - 0.12 * yspan, max(ys) + 0.08 * yspan)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def plot_pareto(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str | None = None) -> Path:
    """Draw top-1 vs MACs (and top-1 vs CPU batch-1 latency when measured) into one PNG at ``path``.

    One colour/marker and line per ``method`` (points sorted by x; a method with more than 12 points is drawn as
    markers with a line through its own non-dominated points only), the baseline as a star with a dashed line at
    its accuracy, the Pareto front highlighted, points labelled with their name (only front and baseline points
    when there are many). Renders with Agg (no display, no pyplot state) and replaces ``path`` atomically.
    """
    rows = [r for r in rows if as_number(r.get("top1")) is not None and as_number(r.get("macs")) is not None]
    if not rows:
        raise LegrError("plot_pareto: no result row has both top1 and macs to plot")

    methods = list(dict.fromkeys(str(r.get("method")) for r in rows))
    styles: dict[str, tuple[str, str]] = {}
    for m in methods:
        if m != BASELINE:
            k = len(styles)
            styles[m] = (_PALETTE[k % len(_PALETTE)], _MARKERS[k % len(_MARKERS)])
    styles[BASELINE] = ("#d62728", "*")

    lat_key = latency_key("cpu", 1)
    has_latency = any(as_number(r.get(lat_key)) is not None for r in rows)
    deployed = onnx_rows(rows)
    for m in dict.fromkeys(str(r["method"]) for r in deployed):
        k = len(styles) - 1
        styles.setdefault(m, (_PALETTE[k % len(_PALETTE)], _MARKERS[k % len(_MARKERS)]))
    ncols = 1 + has_latency + bool(deployed)
    fig = figure(6.4 * ncols, 5.0)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    annotate = len(rows) <= 25
    macs = [as_number(r["macs"]) for r in rows]
    if max(macs) >= 1e9:
        scale, unit = 1e9, "GMACs"
    elif max(macs) >= 1e6:
        scale, unit = 1e6, "MMACs"
    else:
        scale, unit = 1e3, "KMACs"
    _panel(axes[0], rows, "macs", scale, f"multiply-accumulates per image ({unit})", styles, annotate)
    axes[0].set_title("accuracy vs. compute", fontsize=10)
    if has_latency:
        _panel(axes[1], rows, lat_key, 1.0, "measured CPU latency, batch 1 (ms)", styles, annotate)
        hw = sorted({str(r["hardware"]) for r in rows if r.get("hardware") and as_number(r.get(lat_key)) is not None})
        sub = f"\n{hw[0]}" if len(hw) == 1 else ""
        axes[1].set_title(f"accuracy vs. measured latency{sub}", fontsize=10 if not sub else 9)
    if deployed:
        _panel(axes[-1], deployed, ONNX_X, 1.0, f"onnxruntime CPU latency, batch {deployed[0]['onnx_batch']} (ms)",
               styles, annotate)
        axes[-1].set_title("deployed in onnxruntime: fp32 and int8", fontsize=10)
        axes[-1].legend(loc="best", fontsize=8, frameon=True, framealpha=0.9)
    axes[0].legend(loc="best", fontsize=8, frameon=True, framealpha=0.9)
    fig.suptitle(_title(rows, title), fontsize=12, fontweight="bold")

    return save_figure(fig, path)


ONNX_X = "onnx_ms"


def onnx_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Two points per network quantized by `legr quantize`: its fp32 and its int8 onnxruntime figures (top-1 on the
    test split, latency at the smallest batch measured), as rows of methods ``<method> fp32`` / ``<method> int8``."""
    batches = sorted({int(m.group(2)) for r in rows for k in r if (m := ONNX_LATENCY.match(str(k)))})
    if not batches:
        return []
    b = batches[0]
    out = []
    for r in rows:
        for kind, top1 in (("fp32", "onnx_top1"), ("int8", "int8_top1")):
            ms = as_number(r.get(f"{'onnx' if kind == 'fp32' else 'int8'}_cpu_b{b}_ms"))
            if ms is not None and as_number(r.get(top1)) is not None:
                out.append({**r, "method": f"{r.get('method')} {kind}", "top1": r[top1], ONNX_X: ms, "onnx_batch": b,
                            "name": f"{r.get('name')} {kind}"})
    return out


def figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike[str], dpi: float | None = None) -> Path:
    """Render ``fig`` (at ``dpi``, else its own) to PNG at ``path`` atomically: never half an image."""
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", facecolor="white", dpi=dpi or "figure")
    return Path(path)


_PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2", "#7f7f7f", "#bcbd22"]


def plot_method_curves(summary: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Top-1 (mean, error bar = std over seeds) against MACs, one curve per method: after fine-tuning (left) and
    before it (right: after adaptive BN when the rows have ``top1_after_bn``, else as cut); the baseline as a dashed
    line. ``summary`` rows: method, macs, top1, top1_std, top1_before_ft(_std), top1_after_bn(_std) (as
    `legr.pipeline.compare` writes them)."""
    rows = [r for r in summary if as_number(r.get("top1")) is not None and as_number(r.get("macs")) is not None]
    if not rows:
        raise LegrError("plot_method_curves: no summary row has both top1 and macs to plot")
    fig = figure(12.8, 5.0)
    axes = fig.subplots(1, 2)
    methods = [m for m in dict.fromkeys(str(r["method"]) for r in rows) if m != BASELINE]
    before = ("top1_after_bn", "before fine-tuning, after adaptive BN") \
        if any(as_number(r.get("top1_after_bn")) is not None for r in rows) else ("top1_before_ft", "right after pruning")
    for ax, (key, label) in zip(axes, (("top1", "after fine-tuning"), before)):
        for k, method in enumerate(methods):
            mine = sorted((r for r in rows if r["method"] == method and as_number(r.get(key)) is not None),
                          key=lambda r: r["macs"])
            if mine:
                ax.errorbar([r["macs"] / 1e6 for r in mine], [100 * r[key] for r in mine],
                            yerr=[100 * (r.get(f"{key}_std") or 0.0) for r in mine], color=_PALETTE[k % len(_PALETTE)],
                            marker=_MARKERS[k % len(_MARKERS)], lw=1.6, ms=6, capsize=3, label=method)
        for r in rows:
            if is_baseline(r):
                ax.axhline(100 * r["top1"], color="0.35", ls="--", lw=1, label=f"baseline ({100 * r['top1']:.2f}%)")
        ax.set_xlabel("multiply-accumulates per image (MMACs)")
        ax.set_ylabel("test top-1 (%), mean ± std over seeds")
        ax.set_title(label, fontsize=10)
        ax.grid(True, color="0.9", lw=0.8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].legend(loc="best", fontsize=8, framealpha=0.9)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    return save_figure(fig, path)


def plot_widths(layers: Sequence[str], original: Mapping[str, int], methods: Mapping[str, Mapping[str, int]],
                path: str | os.PathLike[str], title: str = "") -> Path:
    """Channels kept per prunable layer (x: layers in graph order), one line per method, the original widths grey."""
    if not methods:
        raise LegrError("plot_widths: no method has a plan at the width target")
    fig = figure(max(8.0, 0.22 * len(layers) + 3), 4.8)
    ax = fig.subplots()
    x = list(range(len(layers)))
    ax.bar(x, [original[n] for n in layers], color="0.88", label="original", zorder=1)
    for k, (name, widths) in enumerate(methods.items()):
        ax.plot(x, [widths[n] for n in layers], color=_PALETTE[k % len(_PALETTE)], marker=_MARKERS[k % len(_MARKERS)],
                ms=3.5, lw=1.3, label=name, zorder=2)
    ax.set_xticks(x, layers, rotation=90, fontsize=6.5)
    ax.set_ylabel("output channels kept")
    ax.grid(True, axis="y", color="0.9", lw=0.8)
    ax.legend(loc="upper left", fontsize=8, framealpha=0.9)
    ax.set_title(title, fontsize=11)
    return save_figure(fig, path)
