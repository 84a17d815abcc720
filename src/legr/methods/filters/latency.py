"""Filter pruning against the clock: a latency-budget member cut by measuring it (`meet_measured`), never smaller than
the family's members for lower targets, kept as cut when its folder already holds that cut."""

from __future__ import annotations

from typing import Any

import numpy as np

from legr.engine.latency_check import meet_measured
from legr.engine.plan import Plan
from legr.methods.base import RunContext
from legr.methods.filters.allocate import BudgetSolver
from legr.methods.folders import MemberFolder


def measured_cut(run: RunContext, solver: BudgetSolver, ranking: str, target: float,
                 member: MemberFolder) -> tuple[np.ndarray, dict[str, Any]]:
    """A latency budget cut against the clock (`meet_measured`); a member already cut that way from the ranking
    fingerprinted ``ranking`` for this target is kept (timings differ between runs: measuring again could cut it
    otherwise). No budget below what the family's members for lower targets were cut at is asked (members are cut
    in ascending targets): on a busy machine the clock can say a larger target needs a smaller network."""
    if member.plan.exists():
        plan = Plan.load(member.plan)
        held = plan.info.get("latency_check") or {}
        if plan.info.get("ranking") == ranking and plan.info.get("target") == target and held:
            keep = solver.solve(held["asked_ms"])
            if np.array_equal(plan.keep_vector(run.graph), keep):
                return keep, held
    floor = max((info["latency_check"]["asked_ms"] for info in _cut_below(member, ranking, target)), default=0.0)
    keep, record = meet_measured(run.graph, solver, target, run.cost.latency, run.cfg.budget.setting(),
                                 floor_ms=floor)
    run.log(f"{member.name}: measured at {record['measured_ratio']:.1%} of the source network's latency "
            f"(target {target:.0%}, {len(record['steps'])} cut(s))")
    if record["over_target"]:
        run.log(f"warning: {member.name} stayed above its latency target after {len(record['steps'])} "
                "measured cuts (a busy machine? see eval's latency spread)")
    return keep, record


def _cut_below(member: MemberFolder, ranking: str, target: float) -> list[dict[str, Any]]:
    """The plan infos of the family's members cut against the clock from the same ranking at lower targets (the
    member folders beside ``member``)."""
    out = []
    for plan_file in member.root.parent.glob("*/plan.json"):
        info = Plan.load(plan_file).info
        if info.get("ranking") == ranking and info.get("latency_check") and info.get("target", 1.0) < target:
            out.append(info)
    return out
