"""A comparison run in pieces: each piece is some of the seeds and methods of one comparison config, run on its own
(its own work folder, its own `compare.json`), and the pieces that exist are merged into the comparison's result.

A comparison that takes longer than the time at hand is split so that every piece finishes and leaves a result file
that can be committed at once; the merge needs only those files (not the run folders). Pieces run at different times
(or on different cores) time their networks separately, so latency columns come from each piece's own interleaved
rounds, always beside that piece's own timing of the source network (``baseline`` rows, one per piece).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from legr.errors import ConfigError
from legr.hardware import hardware_label
from legr.pipeline.compare import family_times, summarize
from legr.pipeline.compare_config import CompareConfig, entry_method


@dataclass(frozen=True)
class Piece:
    seeds: tuple[int, ...]
    methods: tuple[str, ...]

    @property
    def name(self) -> str:
        """File-safe: ``seed0-1_uniform-l1+legr``."""
        name = f"seed{'-'.join(map(str, self.seeds))}_{'+'.join(self.methods)}"
        return re.sub(r"[^A-Za-z0-9_.+-]", "_", name)


def piece(cfg: CompareConfig, seeds: Sequence[int] | None = None, methods: Sequence[str] | None = None) -> Piece:
    """The piece of ``cfg`` holding ``seeds`` and ``methods`` (default: all of them); unknown ones are refused."""
    spec = cfg.compare
    names = [m.name for m in spec.methods]
    seeds, methods = tuple(seeds or spec.seeds), tuple(methods or names)
    unknown = [m for m in methods if m not in names]
    if unknown:
        raise ConfigError(f"no method named {', '.join(unknown)} in the comparison (it has {', '.join(names)})")
    missing = [s for s in seeds if s not in spec.seeds]
    if missing:
        raise ConfigError(f"seed(s) {missing} are not in compare.seeds {list(spec.seeds)}")
    return Piece(seeds, tuple(m for m in names if m in methods))


def piece_config(cfg: CompareConfig, p: Piece) -> CompareConfig:
    """``cfg`` restricted to the piece (its pipeline-cost run only when the piece holds that method and its first
    seed is the comparison's first)."""
    spec = cfg.compare
    cost = spec.pipeline_cost if spec.pipeline_cost in p.methods and p.seeds[0] == spec.seeds[0] else None
    section = spec.model_copy(update={"seeds": p.seeds, "pipeline_cost": cost,
                                      "methods": tuple(m for m in spec.methods if m.name in p.methods)})
    return cfg.model_copy(update={"compare": section})


def all_pieces(cfg: CompareConfig) -> list[tuple[int, str]]:
    return [(s, m.name) for s in cfg.compare.seeds for m in cfg.compare.methods]


def _differences(held: Any, wanted: Any, where: str = "") -> list[str]:
    """Keys whose values differ (keys only one side has are skipped: a config written before a key existed)."""
    if isinstance(held, dict) and isinstance(wanted, dict):
        return [d for k in held.keys() & wanted.keys() for d in _differences(held[k], wanted[k], f"{where}.{k}")]
    return [] if held == wanted else [f"{where.lstrip('.')}: {held!r} (piece) vs {wanted!r}"]


def _check_settings(cfg: CompareConfig, part: dict[str, Any], i: int) -> None:
    """A piece must have run with the merged config's settings (a piece shrunk with --set must be shrunk for every
    method alike, i.e. every piece run with the same --set): its shared sections and its methods' entries. The search
    settings are compared as each searching method ran them (the shared section changed by its own entries): a
    method that searches nothing does not depend on them."""
    wanted = json.loads(json.dumps(cfg.model_dump(mode="json"), default=float))
    held = part["config"]
    methods = {m["name"]: m for m in wanted["compare"]["methods"]}
    diff = _differences({k: v for k, v in held.items() if k not in ("compare", "search")},
                        {k: v for k, v in wanted.items() if k not in ("compare", "search")})
    for m in held["compare"]["methods"]:
        w = methods.get(m["name"], m)
        where = f"compare.methods.{m['name']}"
        diff += _differences({k: v for k, v in m.items() if k != "search"},
                             {k: v for k, v in w.items() if k != "search"}, where)
        if entry_method(m).searches(m):
            diff += _differences({**held["search"], **m.get("search", {})}, {**wanted["search"], **w.get("search", {})},
                                 f"{where}.search")
    if diff:
        raise ConfigError(f"piece {i} (seeds {part['seeds']}) ran with other settings than the config being merged: "
                          + "; ".join(diff[:3]))


def split(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A comparison's result (`Comparison.run`'s dict, e.g. a run made whole before pieces existed) as one piece per
    method holding all its seeds, keyed by the piece's file name (`Piece.name`), so that one method can be run again
    as pieces (after a change to it) and merged with the other methods' earlier runs. Each piece keeps the method's
    rows with the source network's rows timed in the same run (``baseline``), its searches and widths, its family
    times (per seed where the result has them, else its mean and std) and the pipeline-cost run if it timed that
    method."""
    compare, seeds = result["config"]["compare"], result["seeds"]
    baseline = [r for r in result["runs"] if r["method"] == "baseline"]
    per_seed = result.get("family_time_per_seed") or {}
    out = {}
    for m in compare["methods"]:
        name, cost = m["name"], result.get("pipeline_cost")
        mine = {f"seed{s}/{name}" for s in seeds}
        rows = [r for r in result["runs"] if r.get("run") in mine]
        if not any(r["method"] != "baseline" for r in rows):
            raise ConfigError(f"the result holds no rows of method {name}")
        if not any(r["method"] == "baseline" for r in rows):
            rows += baseline[:1]
        times = ({"family_time_per_seed": {name: per_seed[name]}} if name in per_seed
                 else {"family_time_s": {name: result["family_time_s"][name]}} if name in result.get("family_time_s", {})
                 else {})
        out[Piece(tuple(seeds), (name,)).name] = {
            **{k: result[k] for k in ("model", "dataset", "targets", "hardware", "search_targets")}, "seeds": seeds,
            "config": {**result["config"], "compare": {**compare, "methods": [m],
                                                       "pipeline_cost": compare["pipeline_cost"] if cost and
                                                       cost["method"] == name else None}},
            "runs": [{k: v for k, v in r.items() if k != "piece"} for r in rows], **times,
            "pipeline_cost": cost if cost and cost["method"] == name else None,
            "widths": {**result["widths"], "methods": {k: v for k, v in result["widths"]["methods"].items()
                                                       if k == name}},
            "searches": {k: v for k, v in result.get("searches", {}).items() if k == name},
            "search_cost": {k: v for k, v in result.get("search_cost", {}).items() if k == name},
        }
    return out


def merge(cfg: CompareConfig, parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One comparison result from the pieces' results (`Comparison.run`'s dicts): their runs, the summary over all
    seeds, family times, searches, the widths of the first seed, and ``missing``: the (seed, method) pairs of the
    config that no piece holds. A (seed, method) pair held by two pieces is refused, and so is a piece run with other
    settings than ``cfg`` (its ``config``: the shared sections and its methods' entries; keys it lacks are not
    compared)."""
    if not parts:
        raise ConfigError("no pieces to merge")
    seen: dict[tuple[int, str], int] = {}
    rows: list[dict[str, Any]] = []
    per_seed: dict[str, dict[str, float]] = {m.name: {} for m in cfg.compare.methods}
    searches: dict[str, dict[str, Any]] = {}
    search_cost: dict[str, dict[str, Any]] = {}  # absent from pieces run before it was recorded
    times: dict[str, dict[str, float | None]] = {}  # a split whole run's mean and std, where it had no per-seed times
    for i, part in enumerate(parts):
        _check_settings(cfg, part, i)
        for seed in part["seeds"]:
            for m in part["config"]["compare"]["methods"]:
                if (seed, m["name"]) in seen:
                    raise ConfigError(f"seed {seed} of {m['name']} is in two pieces ({seen[seed, m['name']]} and {i})")
                seen[seed, m["name"]] = i
        for row in part["runs"]:
            rows.append({**row, "piece": i})
        for name, seconds in part.get("family_time_per_seed", {}).items():
            per_seed.setdefault(name, {}).update(seconds)
        if "family_time_per_seed" not in part:
            times.update(part.get("family_time_s", {}))
        for key, merged in (("searches", searches), ("search_cost", search_cost)):
            for name, by_seed in part.get(key, {}).items():
                merged.setdefault(name, {}).update(by_seed)
    targets = sorted(cfg.targets)
    seeds = sorted({s for s, _ in seen})
    first = min(parts, key=lambda p: p["seeds"][0])
    widths = {**first["widths"], "methods": {}}
    for part in sorted(parts, key=lambda p: p["seeds"][0], reverse=True):  # the smallest seed's widths win
        widths["methods"].update(part["widths"]["methods"])
    return {
        "model": parts[0]["model"], "dataset": parts[0]["dataset"], "targets": targets, "seeds": seeds,
        "hardware": "; ".join(dict.fromkeys([p["hardware"] for p in parts] or [hardware_label()])),
        "search_targets": parts[0]["search_targets"], "config": cfg.model_dump(mode="json"),
        "runs": rows, "summary": summarize(rows, cfg.compare.methods, targets),
        "family_time_s": {**family_times(per_seed), **{k: v for k, v in times.items() if not per_seed.get(k)}},
        "family_time_per_seed": per_seed,
        "pipeline_cost": next((p["pipeline_cost"] for p in parts if p.get("pipeline_cost")), None),
        "widths": widths, "searches": searches, "search_cost": search_cost, "pieces": len(parts),
        "missing": [[s, m] for s, m in all_pieces(cfg) if (s, m) not in seen],
    }
