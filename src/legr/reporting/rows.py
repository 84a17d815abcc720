"""Result rows and their files (results.json / results.csv): the contract every step and benchmark shares.

A result row is a plain dict written by code (`legr eval`) and aggregated by a separate step (`legr report`,
benchmarks); `ResultRow` types it. Required keys: ``name``, ``method`` (`BASELINE` for the source network),
``model``, ``dataset``, ``macs``, ``params``, ``top1``. Common optional keys: ``target`` (a fraction of the source's
cost in ``budget`` units, or None), ``budget``, ``macs_ratio``, ``params_ratio``, ``compression`` (original params /
params), ``top5``, ``loss``, ``test_images`` (how many test images the accuracies count), ``top1_before_ft`` (as
cut), ``top1_after_bn`` (after adaptive BN), ``predicted_ms`` (a latency budget's prediction); a dynamic member's
(FBS) ``macs`` is its average per test image, with ``macs_worst`` (the most one image costs) and ``density``;
``latency_{cpu,cuda}_b{N}_ms``; after `legr quantize`: ``int8_top1`` / ``onnx_top1`` (test top-1 in onnxruntime,
int8 / fp32), ``{int8,onnx}_cpu_b{N}_ms``, ``{int8,onnx}_bytes``; ``seed``, ``config_hash``, ``git_rev``,
``hardware``, ``finetune_epochs``, ``path``.
Unknown keys are allowed and kept.
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

from legr.engine.latency import NOISY_SPREAD, LatencyResult
from legr.errors import LegrError
from legr.paths import atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_CSV = "results.csv"

# CSV column order: identity, then metrics (latency columns are inserted after the accuracy metrics), then any
# unknown keys (first-seen order), then provenance.
IDENTITY_KEYS: tuple[str, ...] = ("name", "method", "criterion", "model", "dataset", "target")
METRIC_KEYS: tuple[str, ...] = (
    "macs", "macs_ratio", "params", "params_ratio", "compression",
    "top1", "top5", "loss", "test_images", "top1_before_ft", "top5_before_ft", "top1_after_bn", "predicted_ms",
)
PROVENANCE_KEYS: tuple[str, ...] = (
    "finetune_epochs", "seed", "config_hash", "git_rev", "hardware", "path",
)

LATENCY_KEY = re.compile(r"^latency_(cpu|cuda)_b(\d+)_ms$")
ONNX_LATENCY = re.compile(r"^(onnx|int8)_cpu_b(\d+)_ms$")  # `legr quantize`: onnxruntime fp32 / int8


class _Required(TypedDict):
    name: str
    method: str  # the method's name, or BASELINE for the source network
    model: str
    dataset: str
    macs: float
    params: float
    top1: float


class ResultRow(_Required, total=False):
    """One evaluated network (the keys every writer knows; rows may carry more, e.g. latency columns)."""

    criterion: str | None
    target: float | None  # fraction of the source's cost in ``budget`` units
    budget: str | None  # "macs", "params" or "latency"; None for the source network
    macs_ratio: float
    params_ratio: float
    compression: float
    top5: float
    loss: float
    test_images: int  # how many test images top1/top5/loss were measured on
    top1_before_ft: float | None
    top1_after_bn: float | None
    predicted_ms: float | None  # a latency budget's prediction (ms, at the budget's batch size and threads)
    finetune_epochs: int | None
    seed: int
    config_hash: str
    git_rev: str
    hardware: str
    path: str


REQUIRED_KEYS: tuple[str, ...] = tuple(_Required.__annotations__)
BASELINE = "baseline"  # the ``method`` (and default ``name``) of the row that describes the source network


def is_baseline(row: Mapping[str, Any]) -> bool:
    """Whether ``row`` describes the source network rather than a compressed one."""
    return row.get("method") == BASELINE


def latency_key(device: str, batch_size: int) -> str:
    """The result-row column of a latency measurement, e.g. ``latency_cpu_b64_ms`` (median milliseconds)."""
    return f"latency_{device}_b{batch_size}_ms"


def latency_columns(device: str, per_batch: Mapping[int, LatencyResult]) -> dict[str, Any]:
    """One network's timings as result-row columns: `latency_key` (the median), ``<key>_spread`` (how far its rounds
    disagree, relative) and, when it stayed noisy after a re-measurement, ``<key>_noisy: True``."""
    out: dict[str, Any] = {}
    for b, r in per_batch.items():
        key = latency_key(device, b)
        out.update({key: r.median_ms, f"{key}_spread": round(r.spread, 4)})
        if r.noisy:
            out[f"{key}_noisy"] = True
    return out


def noisy_latency(row: Mapping[str, Any], key: str) -> bool:
    return bool(row.get(f"{key}_noisy"))


def warn_if_noisy(columns: Mapping[str, Mapping[str, Any]], log: Callable[[str], None]) -> None:
    """Say once that the machine looks busy when any network's `latency_columns` hold a noisy figure."""
    if any(k.endswith("_noisy") and v for cols in columns.values() for k, v in cols.items()):
        log(f"warning: {BUSY_MACHINE}")


BUSY_MACHINE = (f"latencies marked ? disagreed between rounds by more than {NOISY_SPREAD:.0%} even when measured "
                "again: the machine looks busy (other processes, or more threads than free cores); rerun `legr eval` "
                "with fewer threads (eval.threads, or OMP_NUM_THREADS=1)")
_DEVICE_ORDER = {"cpu": 0, "cuda": 1}


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


def latency_sort_key(key: str) -> tuple[int, int]:
    m = LATENCY_KEY.match(key)
    assert m is not None
    return _DEVICE_ORDER.get(m.group(1), 9), int(m.group(2))


def result_columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Union of the rows' keys in a stable order: identity, metrics, latencies, unknown keys, provenance."""
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(str(key), None)
    known = set(IDENTITY_KEYS) | set(METRIC_KEYS) | set(PROVENANCE_KEYS)
    latency = sorted((k for k in seen if LATENCY_KEY.match(k)), key=latency_sort_key)
    extra = [k for k in seen if k not in known and not LATENCY_KEY.match(k)]
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


def as_number(value: Any) -> float | None:
    """A finite float, or None for missing / non-numeric / NaN values."""
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def baseline_row(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The first row that `is_baseline` (else whose name is ``BASELINE``), or None."""
    for key in ("method", "name"):
        for row in rows:
            if row.get(key) == BASELINE:
                return row
    return None
