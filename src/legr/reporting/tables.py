"""Text tables of result rows (terminal and Markdown): sizes and latencies relative to the baseline row."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from legr.reporting.rows import (BUSY_MACHINE, LATENCY_KEY, ONNX_LATENCY, as_number, baseline_row, latency_sort_key,
                                 noisy_latency)


def _ratio(row: Mapping[str, Any], base: Mapping[str, Any] | None, key: str) -> float | None:
    """``row[key] / baseline[key]``, else the row's own ``{key}_ratio``."""
    value = as_number(row.get(key))
    ref = as_number(base.get(key)) if base is not None else None
    if value is not None and ref:
        return value / ref
    return as_number(row.get(f"{key}_ratio"))


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
    keys = {k for row in rows for k in row if LATENCY_KEY.match(str(k)) and as_number(row.get(k)) is not None}
    if device is not None:
        keys = {k for k in keys if LATENCY_KEY.match(k).group(1) == device}
    return sorted(keys, key=latency_sort_key)


def _table_columns(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[bool], list[list[str]]]:
    """Headers, right-alignment flags and cell strings shared by `format_table` and `markdown_table`."""
    base = baseline_row(rows)
    params = [p for p in (as_number(r.get("params")) for r in rows) if p is not None]
    big = bool(params) and max(params) >= 1e6
    p_div, p_unit = (1e6, "M") if big else (1e3, "K")

    columns: list[tuple[str, bool, Any]] = [
        ("name", False, lambda r: str(r.get("name", ""))),
        ("MACs (M)", True, lambda r: _fmt_sig(None if as_number(r.get("macs")) is None else as_number(r["macs"]) / 1e6)),
        ("MACs %", True, lambda r: _fmt(None if (v := _ratio(r, base, "macs")) is None else 100 * v, 1)),
        (f"params ({p_unit})", True,
         lambda r: _fmt_sig(None if as_number(r.get("params")) is None else as_number(r["params"]) / p_div)),
        ("params %", True, lambda r: _fmt(None if (v := _ratio(r, base, "params")) is None else 100 * v, 1)),
        ("top-1 %", True, lambda r: _fmt(None if as_number(r.get("top1")) is None else 100 * as_number(r["top1"]), 2)),
    ]
    if any(as_number(r.get("top1_after_bn")) is not None for r in rows):  # before fine-tuning, BN statistics re-estimated
        columns.append(("before FT %", True, lambda r: _fmt(None if as_number(r.get("top1_after_bn")) is None
                                                            else 100 * as_number(r["top1_after_bn"]), 2)))
    if any(as_number(r.get("top5")) is not None for r in rows):
        columns.append(("top-5 %", True, lambda r: _fmt(None if as_number(r.get("top5")) is None else 100 * as_number(r["top5"]), 2)))
    if any(as_number(r.get("predicted_ms")) is not None for r in rows):  # a latency budget's prediction
        columns.append(("predicted ms", True, lambda r: _fmt_sig(as_number(r.get("predicted_ms")))))
    for key in _latency_keys(rows):
        device, bs = LATENCY_KEY.match(key).groups()
        columns.append((f"{device.upper()} b{bs} ms", True,
                        lambda r, k=key: _fmt_sig(as_number(r.get(k))) + ("?" if noisy_latency(r, k) else "")))
    if any(as_number(r.get("int8_top1")) is not None for r in rows):  # `legr quantize`: measured in onnxruntime
        columns.append(("int8 top-1 %", True, lambda r: _fmt(None if as_number(r.get("int8_top1")) is None
                                                             else 100 * as_number(r["int8_top1"]), 2)))
    onnx_keys = sorted({k for r in rows for k in r if ONNX_LATENCY.match(str(k)) and as_number(r.get(k)) is not None},
                       key=lambda k: (int(ONNX_LATENCY.match(k).group(2)), not k.startswith("onnx")))
    for key in onnx_keys:
        kind, bs = ONNX_LATENCY.match(key).groups()
        columns.append((f"ORT {'fp32' if kind == 'onnx' else 'int8'} b{bs} ms", True,
                        lambda r, k=key: _fmt_sig(as_number(r.get(k)))))
    # speedup vs baseline on the CPU at the smallest measured batch size (batch 1 normally)
    cpu = [k for k in _latency_keys(rows, "cpu") if base is not None and as_number(base.get(k))]
    if cpu:
        key = cpu[0]
        bs = LATENCY_KEY.match(key).group(2)
        ref = as_number(base[key])

        def speedup(r: Mapping[str, Any], key: str = key, ref: float = ref) -> str:
            v = as_number(r.get(key))
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

    return "\n".join([line(headers), "  ".join("-" * w for w in widths)] + [line(c) for c in cells] + _footer(rows))


def _footer(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    noisy = any(noisy_latency(r, k) for r in rows for k in _latency_keys(rows))
    return [BUSY_MACHINE] if noisy else []


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """GitHub markdown table with the columns of `format_table`: header, alignment line, one line per row."""
    rows = list(rows)
    headers, right, cells = _table_columns(rows) if rows else (["name"], [False], [])

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(esc(h) for h in headers) + " |",
           "|" + "|".join("---:" if r else ":---" for r in right) + "|"]
    out += ["| " + " | ".join(esc(c) for c in cell) + " |" for cell in cells]
    return "\n".join(out + [f"\n{line}" for line in _footer(rows)])
