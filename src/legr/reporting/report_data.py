"""What the HTML report (`legr.reporting.html`) shows, read from a run folder: one point per network with the
binomial 95% interval of its test top-1, the x axes the run measured (MACs, params, latency), the members' kept widths
per layer against the source network, the search's fitness per candidate, the config and the provenance."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from legr.engine.artifacts import PLAN_FILE, source_graph
from legr.engine.plan import Plan, source_widths
from legr.errors import LegrError
from legr.reporting.plots import front_indices
from legr.reporting.rows import LATENCY_KEY, as_number, read_results

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
CONFIG_FILE, SEARCH_LOG, COMPARE_FILE = "config.yaml", "search_log.jsonl", "compare.json"
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
    _mark_fronts(out, rows, axes, lambda axis: axis.key)
    return out


def _mark_fronts(items: Sequence[dict[str, Any]], rows: Sequence[Mapping[str, Any]], axes: Sequence[XAxis],
                 key: Any) -> None:
    """Set ``front_<axis key>`` on each of ``items``: whether its row in ``rows`` (``key(axis)``: the x value's
    name there) is on that axis's Pareto front of top-1."""
    for axis in axes:
        front = set(front_indices(rows, key(axis), "top1"))
        for i, item in enumerate(items):
            item[f"front_{axis.key}"] = i in front


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


def search_candidates(run: Path, series: str | None = None) -> list[dict[str, Any]]:
    """The search's candidates (``search_log.jsonl``, one JSON line each), numbered across restarts; ``penalized``
    marks a fitness more than `OFF_SCALE` below the best; ``series``: the restart, or the label given (a comparison
    draws one series per run). Empty when the run did not search."""
    path = run / SEARCH_LOG
    if not path.is_file():
        return []
    out: list[dict[str, Any]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LegrError(f"{path} line {number} is not JSON: {exc}") from exc
        if not isinstance(entry, dict) or "fitness" not in entry:
            raise LegrError(f"{path} line {number} has no 'fitness'")
        restart = int(entry.get("restart") or 0)
        out.append({"candidate": len(out), "index": entry.get("index"), "restart": restart,
                    "series": series or str(restart), "fitness": as_number(entry["fitness"]),
                    "best_fitness": as_number(entry.get("best_fitness"))})
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
    means: list[dict[str, Any]] | None = None  # a comparison's: per method and target, the mean over its seeds


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


def seed_means(points_: Sequence[Mapping[str, Any]], axes: Sequence[XAxis]) -> list[dict[str, Any]]:
    """Per method and target of a comparison's seed points: every axis and top-1 averaged over the seeds, top-1's
    sample std (0 for one seed) and its mean ± std as the bar, and per axis whether the mean is on the Pareto front."""
    groups: dict[tuple[str, float], list[Mapping[str, Any]]] = {}
    for p in points_:
        if p.get("seed") is not None:
            groups.setdefault((p["method"], p["target"]), []).append(p)
    out = []
    for (method, target), group in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0)):
        top1 = [p["top1"] for p in group]
        std = statistics.stdev(top1) if len(top1) > 1 else 0.0
        mean: dict[str, Any] = {"method": method, "target": target, "seeds": len(group), "top1": statistics.fmean(top1),
                                "top1_std": std}
        mean.update(top1_lo=mean["top1"] - std, top1_hi=mean["top1"] + std)
        for axis in axes:
            values = [p[axis.field] for p in group if p.get(axis.field) is not None]
            mean[axis.field] = statistics.fmean(values) if len(values) == len(group) else None
        out.append(mean)
    _mark_fronts(out, out, axes, lambda axis: axis.field)
    return out


def comparison_data(folder: str | Path) -> ReportData:
    """Read a comparison folder (``compare.json`` of `legr compare` or a merged benchmark): every seed's member as a
    point (with its interval), the source network once, the seed means per method and target, the width-target
    widths per method, the search logs of the run folders still present, the config."""
    folder = Path(folder)
    path = folder / COMPARE_FILE
    if not path.is_file():
        raise LegrError(f"{folder}: no {COMPARE_FILE} (run `legr compare` first)")
    try:
        result = json.loads(path.read_text())
        rows, config = result["runs"], result["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise LegrError(f"{path} is not a comparison result: {exc}") from None
    source = next((r for r in rows if r["method"] == "baseline"), None)
    members = [r for r in rows if r["method"] != "baseline"]
    if not members:
        raise LegrError(f"{path} holds no compressed network")
    shown = ([{**source, "name": "source network", "seed": None}] if source else []) + [
        {**r, "name": f"{r['name']} (seed {r['seed']})"} for r in members]
    axes = x_axes(shown)
    pts = [{**p, "seed": r.get("seed")} for p, r in zip(points(shown, axes), shown)]
    widths, note = None, "the comparison recorded no channel widths"
    w = result.get("widths") or {}
    if w.get("methods"):
        widths = {"layers": w["layers"], "source": w["original"], "members": w["methods"]}
    elif "widths" in result:
        note = "no method of the comparison cuts channels"
    runs = sorted({(str(r["run"]), str(r["method"]), str(r["seed"])) for r in members if r.get("run")})
    search = [c for run, method, seed in runs for c in search_candidates(folder / run, f"{method}, seed {seed}")]
    return ReportData(
        title=f"{result.get('model', '?')} on {result.get('dataset', '?')}: methods compared", axes=axes, points=pts,
        widths=widths, widths_note=note, search=search, config_text=yaml.safe_dump(config, sort_keys=False),
        hardware=_distinct(rows, "hardware"), git_revs=_distinct(rows, "git_rev"),
        test_images=sorted({r["test_images"] for r in rows if isinstance(r.get("test_images"), int)}),
        means=seed_means(pts, axes))
