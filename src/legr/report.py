"""Results rows, their files (results.json / results.csv), tables, the Pareto front and the Pareto plot.

A result row is a plain dict written by code (`legr eval`) and aggregated by a separate step (`legr report`,
benchmarks). Required keys: ``name``, ``method``, ``model``, ``dataset``, ``macs``, ``params``, ``top1``.
Common optional keys: ``target`` (MACs fraction or None), ``macs_ratio``, ``params_ratio``, ``compression``
(original params / params), ``top5``, ``loss``, ``top1_before_ft`` (as cut), ``top1_after_bn`` (after adaptive BN),
``latency_{cpu,cuda}_b{N}_ms``, ``seed``,
``config_hash``, ``git_rev``, ``hardware``, ``finetune_epochs``, ``path``. Unknown keys are allowed and kept.
Accuracies are fractions in [0, 1]; tables and plots show them in percent.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from legr.errors import LegrError
from legr.paths import atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"

REQUIRED_KEYS: tuple[str, ...] = ("name", "method", "model", "dataset", "macs", "params", "top1")

# CSV column order: identity, then metrics (latency columns are inserted after the accuracy metrics), then any
# unknown keys (first-seen order), then provenance.
IDENTITY_KEYS: tuple[str, ...] = ("name", "method", "criterion", "model", "dataset", "target")
METRIC_KEYS: tuple[str, ...] = (
    "macs", "macs_ratio", "params", "params_ratio", "compression",
    "top1", "top5", "loss", "top1_before_ft", "top5_before_ft", "top1_after_bn",
)
PROVENANCE_KEYS: tuple[str, ...] = (
    "finetune_epochs", "seed", "config_hash", "git_rev", "hardware", "path",
)

_LATENCY_RE = re.compile(r"^latency_(cpu|cuda)_b(\d+)_ms$")
_DEVICE_ORDER = {"cpu": 0, "cuda": 1}


# --------------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """`json` default hook: numpy scalars/arrays, paths, sets and tuples become plain JSON values."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()  # numpy / torch scalar
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()  # numpy array / torch tensor
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _clean(value: Any) -> Any:
    """Non-finite floats become None, so results.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _row_label(row: Mapping[str, Any], index: int) -> str:
    name = row.get("name") if isinstance(row, Mapping) else None
    return f"row {index}" + (f" ({name!r})" if name is not None else "")


def validate_rows(rows: Any, source: str = "results") -> list[dict[str, Any]]:
    """Check that ``rows`` is a list of dicts holding every required key; return it as a list."""
    if not isinstance(rows, (list, tuple)):
        raise LegrError(f"{source}: expected a list of result rows, got {type(rows).__name__}")
    problems = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise LegrError(f"{source}: row {i} is a {type(row).__name__}, not an object")
        missing = [k for k in REQUIRED_KEYS if k not in row]
        if missing:
            problems.append(f"{_row_label(row, i)} lacks {', '.join(missing)}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more rows" if len(problems) > 5 else "")
        raise LegrError(f"{source}: result rows miss required keys: {shown} (required: {', '.join(REQUIRED_KEYS)})")
    return [dict(row) for row in rows]


def _latency_sort_key(key: str) -> tuple[int, int]:
    m = _LATENCY_RE.match(key)
    assert m is not None
    return _DEVICE_ORDER.get(m.group(1), 9), int(m.group(2))


def result_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Union of the rows' keys in a stable order: identity, metrics, latencies, unknown keys, provenance."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    known = set(IDENTITY_KEYS) | set(METRIC_KEYS) | set(PROVENANCE_KEYS)
    latency = sorted((k for k in seen if _LATENCY_RE.match(k)), key=_latency_sort_key)
    extra = [k for k in seen if k not in known and not _LATENCY_RE.match(k)]
    return ([k for k in IDENTITY_KEYS if k in seen] + [k for k in METRIC_KEYS if k in seen] + latency + extra
            + [k for k in PROVENANCE_KEYS if k in seen])


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, default=_jsonable)


def write_results(rows: Sequence[Mapping[str, Any]], directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``results.json`` (list of rows, indent 1) and ``results.csv`` into ``directory``, each atomically.

    Rows are validated first (required keys); numpy scalars become plain numbers and NaN/inf become null.
    Returns ``(json_path, csv_path)``.
    """
    rows = validate_rows(list(rows), "write_results")
    try:
        rows = json.loads(json.dumps(rows, default=_jsonable))  # plain JSON values only (numpy -> float, ...)
    except (TypeError, ValueError) as exc:
        raise LegrError(f"write_results: a row holds a value that cannot be written as JSON: {exc}") from exc
    rows = _clean(rows)
    directory = Path(directory)
    json_path, csv_path = directory / RESULTS_JSON, directory / RESULTS_CSV
    columns = result_columns(rows)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    atomic_write_text(json_path, json.dumps(rows, indent=1, allow_nan=False) + "\n")
    atomic_write_text(csv_path, buf.getvalue())
    return json_path, csv_path


def read_results(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Rows of a results.json, given the file or the folder holding it; LegrError if missing, corrupt or invalid."""
    path = Path(path)
    file = path / RESULTS_JSON if path.is_dir() else path
    if not file.is_file():
        where = f"folder {path}" if path.is_dir() else str(file)
        raise LegrError(f"no results file at {where} (run `legr eval` first to write {RESULTS_JSON})")
    try:
        rows = json.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise LegrError(f"{file} is not a UTF-8 text file: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise LegrError(f"{file} is corrupt (invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc
    except OSError as exc:
        raise LegrError(f"cannot read {file}: {exc}") from exc
    return validate_rows(rows, str(file))


def config_hash(obj: Any) -> str:
    """First 12 hex characters of the sha256 of ``obj`` as canonical JSON (sorted keys, no spaces)."""
    try:
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_jsonable)
    except (TypeError, ValueError) as exc:
        raise LegrError(f"config_hash: cannot hash the configuration: {exc}") from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------------------
# numbers
# --------------------------------------------------------------------------------------------------------------
def _num(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def baseline_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first row whose method is "baseline" (else whose name is "baseline"), or None."""
    for key in ("method", "name"):
        for row in rows:
            if row.get(key) == "baseline":
                return row
    return None


def _ratio(row: Mapping[str, Any], base: Mapping[str, Any] | None, key: str) -> float | None:
    """``row[key] / baseline[key]``, else the row's own ``{key}_ratio``."""
    value = _num(row.get(key))
    ref = _num(base.get(key)) if base is not None else None
    if value is not None and ref:
        return value / ref
    return _num(row.get(f"{key}_ratio"))


# --------------------------------------------------------------------------------------------------------------
# tables
# --------------------------------------------------------------------------------------------------------------
def _fmt(value: float | None, decimals: int, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.{decimals}f}{suffix}"


def _fmt_sig(value: float | None) -> str:
    """At least three significant digits, at most two decimals for large values (40.55, 0.118, 4111.51)."""
    if value is None:
        return "-"
    if value == 0 or abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.{min(6, 2 - math.floor(math.log10(abs(value))))}f}"


def _latency_keys(rows: Sequence[Mapping[str, Any]], device: str | None = None) -> list[str]:
    keys = {k for row in rows for k in row if _LATENCY_RE.match(str(k)) and _num(row.get(k)) is not None}
    if device is not None:
        keys = {k for k in keys if _LATENCY_RE.match(k).group(1) == device}
    return sorted(keys, key=_latency_sort_key)


def _table_columns(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[bool], list[list[str]]]:
    """Headers, right-alignment flags and cell strings shared by `format_table` and `markdown_table`."""
    base = baseline_row(rows)
    params = [p for p in (_num(r.get("params")) for r in rows) if p is not None]
    big = bool(params) and max(params) >= 1e6
    p_div, p_unit = (1e6, "M") if big else (1e3, "K")

    columns: list[tuple[str, bool, Any]] = [
        ("name", False, lambda r: str(r.get("name", ""))),
        ("MACs (M)", True, lambda r: _fmt_sig(None if _num(r.get("macs")) is None else _num(r["macs"]) / 1e6)),
        ("MACs %", True, lambda r: _fmt(None if (v := _ratio(r, base, "macs")) is None else 100 * v, 1)),
        (f"params ({p_unit})", True,
         lambda r: _fmt_sig(None if _num(r.get("params")) is None else _num(r["params"]) / p_div)),
        ("params %", True, lambda r: _fmt(None if (v := _ratio(r, base, "params")) is None else 100 * v, 1)),
        ("top-1 %", True, lambda r: _fmt(None if _num(r.get("top1")) is None else 100 * _num(r["top1"]), 2)),
    ]
    if any(_num(r.get("top1_after_bn")) is not None for r in rows):  # before fine-tuning, BN statistics re-estimated
        columns.append(("before FT %", True, lambda r: _fmt(None if _num(r.get("top1_after_bn")) is None
                                                            else 100 * _num(r["top1_after_bn"]), 2)))
    if any(_num(r.get("top5")) is not None for r in rows):
        columns.append(("top-5 %", True, lambda r: _fmt(None if _num(r.get("top5")) is None else 100 * _num(r["top5"]), 2)))
    for key in _latency_keys(rows):
        device, bs = _LATENCY_RE.match(key).groups()
        columns.append((f"{device.upper()} b{bs} ms", True, lambda r, k=key: _fmt_sig(_num(r.get(k)))))
    # speedup vs baseline on the CPU at the smallest measured batch size (batch 1 normally)
    cpu = [k for k in _latency_keys(rows, "cpu") if base is not None and _num(base.get(k))]
    if cpu:
        key = cpu[0]
        bs = _LATENCY_RE.match(key).group(2)
        ref = _num(base[key])

        def speedup(r: Mapping[str, Any], key: str = key, ref: float = ref) -> str:
            v = _num(r.get(key))
            return "-" if not v else f"{ref / v:.2f}x"

        columns.append((f"speedup (CPU b{bs})", True, speedup))
    headers = [c[0] for c in columns]
    right = [c[1] for c in columns]
    cells = [[c[2](r) for c in columns] for r in rows]
    return headers, right, cells


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Fixed-width text table, one line per row (input order): MACs, params, accuracy, CPU/CUDA latency, speedup.

    Optional columns (top-5, each latency, speedup) appear only when some row has them. Percentages of MACs and
    params are relative to the baseline row (else the rows' ``*_ratio``); speedup is baseline / row latency.
    """
    rows = list(rows)
    if not rows:
        return "(no results)"
    headers, right, cells = _table_columns(rows)
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(c) for c in cells])


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """GitHub markdown table with the columns of `format_table`: header, alignment line, one line per row."""
    rows = list(rows)
    headers, right, cells = _table_columns(rows) if rows else (["name"], [False], [])

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(esc(h) for h in headers) + " |",
           "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    out += ["| " + " | ".join(esc(c) for c in cell) + " |" for cell in cells]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# Pareto front
# --------------------------------------------------------------------------------------------------------------
def pareto_front(rows: Sequence[Mapping[str, Any]], x: str = "macs", y: str = "top1") -> list[dict[str, Any]]:
    """Rows that no other row dominates (lower ``x`` and higher ``y`` are better), sorted by ``x``.

    A row is dominated when another has ``x`` <= and ``y`` >= with at least one strict; exact ties are all kept.
    Rows lacking a finite ``x`` or ``y`` are ignored.
    """
    return [dict(rows[k]) for k in _front_indices(rows, x, y)]


def _front_indices(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> list[int]:
    points = [(xv, yv, i) for i, r in enumerate(rows)
              if (xv := _num(r.get(x))) is not None and (yv := _num(r.get(y))) is not None]
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


# --------------------------------------------------------------------------------------------------------------
# plot
# --------------------------------------------------------------------------------------------------------------
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
    pts = [r for r in rows if _num(r.get(xkey)) is not None and _num(r.get("top1")) is not None]
    X = lambda r: _num(r[xkey]) / xscale  # noqa: E731
    Y = lambda r: 100 * _num(r["top1"])  # noqa: E731

    front_idx = _front_indices(pts, xkey, "top1")
    front = [pts[k] for k in front_idx]
    if front:
        fx, fy = [X(r) for r in front], [Y(r) for r in front]
        ax.step(fx, fy, where="post", color="#f2b134", lw=7, alpha=0.35, solid_capstyle="round", zorder=1,
                label="Pareto front")
        ax.scatter(fx, fy, s=190, facecolors="none", edgecolors="#e09b00", linewidths=1.6, zorder=4)

    base = [r for r in pts if r.get("method") == "baseline"]
    for method, (color, marker) in styles.items():
        if method == "baseline":
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
            own = [mine[k] for k in _front_indices(mine, xkey, "top1")]
            ax.plot([X(r) for r in own], [Y(r) for r in own], color=color, lw=1.6, zorder=3)
    for i, r in enumerate(base):
        ax.axhline(Y(r), color="0.35", ls="--", lw=1, zorder=2)
        ax.scatter([X(r)], [Y(r)], marker="*", s=300, color="#d62728", edgecolors="black", linewidths=0.7,
                   zorder=5, label=f"baseline ({Y(r):.2f}% top-1)" if i == 0 else None)

    for k, r in enumerate(pts):
        if annotate or k in front_idx or r.get("method") == "baseline":
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
    rows = [r for r in rows if _num(r.get("top1")) is not None and _num(r.get("macs")) is not None]
    if not rows:
        raise LegrError("plot_pareto: no result row has both top1 and macs to plot")

    methods = list(dict.fromkeys(str(r.get("method")) for r in rows))
    styles: dict[str, tuple[str, str]] = {}
    for m in methods:
        if m != "baseline":
            k = len(styles)
            styles[m] = (_PALETTE[k % len(_PALETTE)], _MARKERS[k % len(_MARKERS)])
    styles["baseline"] = ("#d62728", "*")

    lat_key = "latency_cpu_b1_ms"
    has_latency = any(_num(r.get(lat_key)) is not None for r in rows)
    ncols = 2 if has_latency else 1
    fig = _figure(6.4 * ncols, 5.0)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    annotate = len(rows) <= 25
    macs = [_num(r["macs"]) for r in rows]
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
        hw = sorted({str(r["hardware"]) for r in rows if r.get("hardware") and _num(r.get(lat_key)) is not None})
        sub = f"\n{hw[0]}" if len(hw) == 1 else ""
        axes[1].set_title(f"accuracy vs. measured latency{sub}", fontsize=10 if not sub else 9)
    axes[0].legend(loc="best", fontsize=8, frameon=True, framealpha=0.9)
    fig.suptitle(_title(rows, title), fontsize=12, fontweight="bold")

    return _save_figure(fig, path)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=130, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_figure(fig, path: str | os.PathLike[str]) -> Path:
    """Render ``fig`` to PNG at ``path`` atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format="png", facecolor="white")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


_PALETTE = ["#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2", "#7f7f7f", "#bcbd22"]


def plot_method_curves(summary: Sequence[Mapping[str, Any]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Top-1 (mean, error bar = std over seeds) against MACs, one curve per method: after fine-tuning (left) and
    before it (right: after adaptive BN when the rows have ``top1_after_bn``, else as cut); the baseline as a dashed
    line. ``summary`` rows: method, macs, top1, top1_std, top1_before_ft(_std), top1_after_bn(_std) (as
    `legr.compare` writes them)."""
    rows = [r for r in summary if _num(r.get("top1")) is not None and _num(r.get("macs")) is not None]
    if not rows:
        raise LegrError("plot_method_curves: no summary row has both top1 and macs to plot")
    fig = _figure(12.8, 5.0)
    axes = fig.subplots(1, 2)
    methods = [m for m in dict.fromkeys(str(r["method"]) for r in rows) if m != "baseline"]
    before = ("top1_after_bn", "before fine-tuning, after adaptive BN") \
        if any(_num(r.get("top1_after_bn")) is not None for r in rows) else ("top1_before_ft", "right after pruning")
    for ax, (key, label) in zip(axes, (("top1", "after fine-tuning"), before)):
        for k, method in enumerate(methods):
            mine = sorted((r for r in rows if r["method"] == method and _num(r.get(key)) is not None),
                          key=lambda r: r["macs"])
            if mine:
                ax.errorbar([r["macs"] / 1e6 for r in mine], [100 * r[key] for r in mine],
                            yerr=[100 * (r.get(f"{key}_std") or 0.0) for r in mine], color=_PALETTE[k % len(_PALETTE)],
                            marker=_MARKERS[k % len(_MARKERS)], lw=1.6, ms=6, capsize=3, label=method)
        for r in rows:
            if r["method"] == "baseline":
                ax.axhline(100 * r["top1"], color="0.35", ls="--", lw=1, label=f"baseline ({100 * r['top1']:.2f}%)")
        ax.set_xlabel("multiply-accumulates per image (MMACs)")
        ax.set_ylabel("test top-1 (%), mean ± std over seeds")
        ax.set_title(label, fontsize=10)
        ax.grid(True, color="0.9", lw=0.8)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    axes[0].legend(loc="best", fontsize=8, framealpha=0.9)
    fig.suptitle(title, fontsize=12, fontweight="bold")
    return _save_figure(fig, path)


def plot_widths(layers: Sequence[str], original: Mapping[str, int], methods: Mapping[str, Mapping[str, int]],
                path: str | os.PathLike[str], title: str = "") -> Path:
    """Channels kept per prunable layer (x: layers in graph order), one line per method, the original widths grey."""
    if not methods:
        raise LegrError("plot_widths: no method has a plan at the width target")
    fig = _figure(max(8.0, 0.22 * len(layers) + 3), 4.8)
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
    return _save_figure(fig, path)
