"""What the HTML report (`legr.reporting.html`) shows, read from a run folder: one point per network with the
binomial 95% interval of its test top-1, the x axes the run measured (MACs, params, latency), the members' kept widths
per layer against the source network, the search's fitness per candidate, the config and the provenance."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from legr.engine.artifacts import PLAN_FILE, source_graph
from legr.engine.plan import Plan, source_widths
from legr.errors import LegrError
from legr.reporting.plots import front_indices
from legr.reporting.rows import LATENCY_KEY, as_number, read_results

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
CONFIG_FILE, SEARCH_LOG = "config.yaml", "search_log.jsonl"
# a candidate this far below the search's best was penalized (the family guard lowers an infeasible candidate's
# fitness by 1000): drawn at the bottom edge of the fitness chart, its true fitness in the tooltip
OFF_SCALE = 100.0


def binomial_interval(top1: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of an accuracy ``top1`` measured on ``n`` test images: the binomial
    proportion's interval that stays inside [0, 1] and keeps its coverage near 0 and 1, unlike the normal one."""
    if n <= 0:
        raise LegrError(f"binomial_interval needs a positive number of test images, got {n}")
    if not 0.0 <= top1 <= 1.0:
        raise LegrError(f"binomial_interval needs an accuracy in [0, 1], got {top1}")
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (top1 + z2 / (2 * n)) / denom
    half = z * math.sqrt(top1 * (1.0 - top1) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if top1 == 0.0 else max(0.0, centre - half)  # exactly 0 / 1 at the ends (not a rounding error away)
    return lo, 1.0 if top1 == 1.0 else min(1.0, centre + half)


@dataclass(frozen=True)
class XAxis:
    """One x axis of the Pareto chart: the result-row ``key`` it plots, the point ``field`` and its ``title``."""

    key: str
    field: str
    title: str


def x_axes(rows: Sequence[Mapping[str, Any]]) -> list[XAxis]:
    """MACs and params always; one latency axis per ``latency_<device>_b<N>_ms`` column any row holds."""
    axes = [XAxis("macs", "macs_m", "MACs (M)"), XAxis("params", "params_k", "parameters (K)")]
    keys = sorted({k for r in rows for k in r if LATENCY_KEY.match(k) and as_number(r[k]) is not None},
                  key=lambda k: (LATENCY_KEY.match(k)[1], int(LATENCY_KEY.match(k)[2])))
    for key in keys:
        device, batch = LATENCY_KEY.match(key).groups()
        axes.append(XAxis(key, key, f"{device.upper()} latency, batch {batch} (ms)"))
    return axes


def _percent(value: Any) -> float | None:
    number = as_number(value)
    return None if number is None else 100.0 * number


def points(rows: Sequence[Mapping[str, Any]], axes: Sequence[XAxis]) -> list[dict[str, Any]]:
    """One chart point (and table row) per network: figures in display units (MACs in millions, params in
    thousands, accuracies in percent), the 95% interval of top-1 when the row records ``test_images``, and for each
    axis whether the network is on that axis's Pareto front (``front_<key>``)."""
    out = []
    for row in rows:
        top1, n = float(row["top1"]), row.get("test_images")
        lo, hi = binomial_interval(top1, int(n)) if isinstance(n, int) and n > 0 else (None, None)
        point: dict[str, Any] = {
            "name": row["name"], "method": row["method"], "target": row.get("target"),
            "macs_m": float(row["macs"]) / 1e6, "params_k": float(row["params"]) / 1e3,
            "top1": 100.0 * top1, "top1_lo": None if lo is None else 100.0 * lo,
            "top1_hi": None if hi is None else 100.0 * hi, "test_images": n,
            "top1_before_ft": _percent(row.get("top1_before_ft")),
        }
        point["top1_ci"] = "" if lo is None else f"{100 * lo:.2f} to {100 * hi:.2f}"
        for axis in axes[2:]:
            point[axis.field] = as_number(row.get(axis.key))
        out.append(point)
    for axis in axes:
        front = set(front_indices(rows, axis.key, "top1"))
        for i, point in enumerate(out):
            point[f"front_{axis.key}"] = i in front
    return out


def member_widths(run: Path, rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any] | None, str]:
    """``({"layers": [...], "source": {layer: width}, "members": {name: {layer: kept}}}, "")`` from the members'
    plans against the rebuilt source network, or ``(None, why not)``."""
    plans = {}
    for row in rows:
        if row.get("path") and (run / str(row["path"]) / PLAN_FILE).is_file():
            plans[str(row["name"])] = Plan.load(run / str(row["path"]) / PLAN_FILE)
    if not plans:
        return None, "no member of this run has a plan.json (a channel plan)"
    # the architecture only: widths do not depend on the weights (a member re-cut elsewhere names another file)
    sources = {json.dumps({k: v for k, v in p.source.items() if k != "weights"}, sort_keys=True)
               for p in plans.values()}
    if len(sources) > 1:
        return None, "the members' plans describe different source networks"
    try:
        graph = source_graph(next(iter(plans.values())).source)
    except (LegrError, ImportError, ValueError) as exc:  # e.g. the user's factory is not importable here
        return None, f"the source network could not be rebuilt: {exc}"
    source = source_widths(graph)
    return {"layers": list(source), "source": source,
            "members": {name: plan.layer_widths(graph) for name, plan in plans.items()}}, ""


def search_candidates(run: Path) -> list[dict[str, Any]]:
    """The search's candidates (``search_log.jsonl``, one JSON line each), numbered across restarts; ``penalized``
    marks a fitness more than `OFF_SCALE` below the best. Empty when the run did not search."""
    path = run / SEARCH_LOG
    if not path.is_file():
        return []
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LegrError(f"{path} line {number} is not JSON: {exc}") from exc
        if not isinstance(entry, dict) or "fitness" not in entry:
            raise LegrError(f"{path} line {number} has no 'fitness'")
        out.append({"candidate": len(out), "index": entry.get("index"), "restart": int(entry.get("restart") or 0),
                    "fitness": as_number(entry["fitness"]), "best_fitness": as_number(entry.get("best_fitness"))})
    best = max((c["fitness"] for c in out if c["fitness"] is not None), default=0.0)
    for c in out:  # a fitness that is not a finite number (a diverged candidate) counts as penalized
        c["penalized"] = c["fitness"] is None or c["fitness"] < best - OFF_SCALE
    return out


def _distinct(rows: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    return sorted({str(r[key]) for r in rows if r.get(key) not in (None, "")})


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows (`report_data`)."""

    title: str
    axes: list[XAxis]
    points: list[dict[str, Any]]
    widths: dict[str, Any] | None
    widths_note: str
    search: list[dict[str, Any]]
    config_text: str
    hardware: list[str] = field(default_factory=list)
    git_revs: list[str] = field(default_factory=list)
    test_images: list[int] = field(default_factory=list)


def report_data(run: str | Path) -> ReportData:
    """Read a finished run folder (``results.json`` required; plans, search log and config when present)."""
    run = Path(run)
    rows = read_results(run)
    if not rows:
        raise LegrError(f"{run}: results.json holds no rows")
    axes = x_axes(rows)
    widths, note = member_widths(run, rows)
    config = run / CONFIG_FILE
    return ReportData(
        title=f"{', '.join(_distinct(rows, 'model'))} on {', '.join(_distinct(rows, 'dataset'))}", axes=axes,
        points=points(rows, axes), widths=widths, widths_note=note, search=search_candidates(run),
        config_text=config.read_text() if config.is_file() else "", hardware=_distinct(rows, "hardware"),
        git_revs=_distinct(rows, "git_rev"),
        test_images=sorted({r["test_images"] for r in rows if isinstance(r.get("test_images"), int)}))
