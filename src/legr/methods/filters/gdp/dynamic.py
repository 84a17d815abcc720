"""GDP's dynamic phase: the hook `legr.training.finetune` calls before every SGD step (``before_step``). At each mask
decision (``updates`` of them, evenly spaced, the first at step 0) every mask is set back to one, the global
discriminative function (``taylor_abs``: |sum of theta dL/dtheta| per channel, averaged over ``scoring_batches``
training batches; the method's scorer) scores every channel of every layer, and the masks keep the top of that
one global ranking under the budget: the same solver and floors as the filter allocators' (`GlobalSolver`: the
cheapest channels of the ranking's tail removed until the budget holds, from below). A channel masked at one
decision comes back at the next when its score ranks it in again (the weights it had are still there). Between
decisions the masked network trains (`masks.DynamicMasks`).

The reference code keeps a fraction beta of all filters; here the kept set is whatever the budget (MACs or
parameters) admits, so a layer whose channels cost more gives up more of them for the same score.

Each decision is recorded (``gdp_updates.json`` in the member folder): its step, channels kept and masked, how many
came back since the previous decision and how many were newly masked, the mask's MACs and parameters. A resumed run
(its masks restored from the training checkpoint) recomputes the decisions after the checkpoint, identically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.nn.utils import parametrize

from legr.engine.cost import BudgetUnit, CostModel
from legr.graph import ChannelGraph
from legr.methods.filters.allocate import Floors, GlobalSolver
from legr.methods.filters.criteria import group_scores
from legr.methods.filters.gdp.masks import DynamicMasks
from legr.paths import atomic_write_text

Scorer = Callable[[nn.Module, int], Mapping[str, np.ndarray]]  # (network, decision index) -> per-producer scores


def decision_steps(total_steps: int, updates: int) -> list[int]:
    """The steps (of ``total_steps``) before which the masks are re-chosen: ``updates`` evenly spaced from 0."""
    every = max(1, total_steps // updates)
    return [k * every for k in range(updates) if k * every < total_steps]


class DynamicPruning:
    """The ``before_step`` hook of GDP's dynamic phase on ``net`` (a copy of ``graph.gm``, masked in place)."""

    def __init__(self, net: nn.Module, graph: ChannelGraph, cost: CostModel, floors: Floors, unit: BudgetUnit,
                 budget: float, score: Scorer, steps: list[int], log_path: Path,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.net, self.graph, self.cost, self.floors, self.unit = net, graph, cost, floors, unit
        self.budget, self.score, self.steps, self.path, self.log = budget, score, steps, Path(log_path), log
        self.masks = DynamicMasks(net, graph)
        self.records: list[dict[str, Any]] = json.loads(self.path.read_text()) if self.path.exists() else []

    @property
    def keep(self) -> np.ndarray:
        """The masks of the last decision (all ones before the first)."""
        return np.asarray(self.records[-1]["keep"], dtype=float) if self.records else np.ones(self.graph.num_classes)

    def __call__(self, step: int) -> None:
        if step not in self.steps:
            return
        start = time.perf_counter()
        self.records = [r for r in self.records if r["step"] < step]  # a resumed run redoes the later ones
        previous = self.keep
        self.masks.set(np.ones(self.graph.num_classes))
        with parametrize.cached():  # one tensor per masked weight during the scoring's forward and backward passes
            scores = self.score(self.net, self.steps.index(step))
        solver = GlobalSolver(self.graph, self.cost, group_scores(self.graph, scores), self.floors, self.unit)
        keep = solver.solve(max(self.budget, solver.min_cost))
        self.masks.set(keep)
        macs, params = self.cost.costs(keep)
        prunable = np.zeros(self.graph.num_classes, dtype=bool)
        for g in self.graph.prunable_groups():
            prunable[g.classes] = True
        record = {"step": step, "kept": int(keep[prunable].sum()), "masked": int((keep[prunable] == 0).sum()),
                  "recovered": int(((previous == 0) & (keep == 1)).sum()),
                  "newly_masked": int(((previous == 1) & (keep == 0)).sum()), "macs": macs, "params": params,
                  "seconds": time.perf_counter() - start, "keep": keep.astype(int).tolist()}
        self.records.append(record)
        atomic_write_text(self.path, json.dumps(self.records))
        self.log(f"GDP decision {len(self.records)}/{len(self.steps)} at step {step}: {record['masked']} channels "
                 f"masked, {record['recovered']} came back, {record['newly_masked']} newly masked, "
                 f"{macs / self.cost.base_macs:.1%} of the MACs")

    def finish(self) -> tuple[nn.Module, np.ndarray]:
        """The trained network with its masks taken off (the masked channels still hold their weights) and the last
        decision's keep vector."""
        if not self.records:
            raise RuntimeError("the dynamic phase made no mask decision")
        return self.masks.remove(), self.keep
