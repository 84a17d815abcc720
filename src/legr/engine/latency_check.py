"""Latency models against the clock: how far their predictions are from measured latency (`validate`), and cutting
a latency budget so that the *measured* latency meets it (`meet_measured`).

A smooth model of each node's time cannot know everything a kernel library does: on this project's CPU a 3x3
convolution keeping 16 of its filters ran twice as slowly as one keeping 15 (another kernel is chosen;
`benchmarks/conv_widths.py`), and a busy
machine shifts every timing. `meet_measured` closes the loop for the few networks that are kept (the family's
members): cut at the predicted budget, time the cut network against the source network back to back, and cut again
at a budget corrected by the measured ratio, keeping the largest network measured within the target.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from legr.engine.latency import measure_interleaved, measure_latency
from legr.engine.latency_model import LatencyModel, LatencySetting
from legr.engine.surgery import prune
from legr.graph import ChannelGraph


def validate(model: LatencyModel, plans: Sequence[np.ndarray], setting: LatencySetting,
             warmup: int = 1) -> list[tuple[float, float]]:
    """(predicted, measured) ms of each plan, cut physically and timed in interleaved rounds on ``setting``
    (`measure_interleaved`; ``median``: the median of the rounds' medians, ``min``: the fastest forward)."""
    nets = {str(i): setting.deployed(prune(model.graph, keep)) for i, keep in enumerate(plans)}
    timing = {**setting.timing(), "warmup": warmup}
    measured = measure_interleaved(nets, model.graph.input_shape, [setting.batch_size], rounds=setting.rounds,
                                   **timing)
    return [(model.predict(keep), getattr(measured[str(i)][setting.batch_size], f"{setting.statistic}_ms"))
            for i, keep in enumerate(plans)]


class LatencySolver(Protocol):
    """An allocator's budget solver in unit ``latency`` (`legr.methods.filters.allocate.BudgetSolver`)."""

    min_cost: float

    def solve(self, target: float) -> np.ndarray: ...


def measured_ratio(graph: ChannelGraph, keep: np.ndarray, setting: LatencySetting, *, rounds: int = 5,
                   warmup: int = 1) -> tuple[float, float]:
    """The cut network's latency over the source network's, timed back to back in each of ``rounds`` rounds: the
    median of the per-round ratios (a slow spell of the machine slows both networks of a round alike) and their
    spread ((max - min) / median)."""
    nets = (setting.deployed(graph.gm), setting.deployed(prune(graph, keep)))
    timing = {**setting.timing(), "warmup": warmup}
    ratios = []
    for _ in range(rounds):
        source, cut = (getattr(measure_latency(net, graph.input_shape, setting.batch_size, **timing),
                               f"{setting.statistic}_ms") for net in nets)
        ratios.append(cut / source)
    median = statistics.median(ratios)
    return median, (max(ratios) - min(ratios)) / median


def meet_measured(graph: ChannelGraph, solver: LatencySolver, fraction: float, model: LatencyModel,
                  setting: LatencySetting, *, steps: int = 4, tolerance: float = 0.05, rounds: int = 5,
                  warmup: int = 1, floor_ms: float = 0.0) -> tuple[np.ndarray, dict[str, Any]]:
    """The plan for ``fraction`` of the source network's latency, checked by measurement.

    ``solver`` cuts at a predicted budget in ms. Up to ``steps`` times: cut, time the network against the source
    (`measured_ratio`), stop once the ratio lies within ``tolerance`` below ``fraction``, else ask for a budget
    scaled by ``fraction / ratio`` (stopping too when that cuts the same plan again). Returns the largest plan
    measured at or under ``fraction`` (else the smallest measured, marked ``over_target``) and a record of the
    steps. "Largest" and "smallest" go by the model's *predicted* latency, which orders the plans of one solver as
    their size does: a measured ratio that noise pushed up (a busy machine) must not pick a smaller network over a
    larger one that also measured under the target. No budget below ``floor_ms`` is asked: a family's member for a
    higher target is never cut smaller than the one for a lower target (then marked ``over_target`` if it measures
    over its own).
    """
    low = max(solver.min_cost, floor_ms)
    asked, tried = max(fraction * model.base_ms, low), []
    for _ in range(steps):
        keep = solver.solve(asked)
        if tried and np.array_equal(keep, tried[-1]["keep"]):
            break
        ratio, spread = measured_ratio(graph, keep, setting, rounds=rounds, warmup=warmup)
        tried.append({"asked_ms": asked, "predicted_ms": model.predict(keep), "measured_ratio": ratio,
                      "spread": spread, "keep": keep})
        if fraction * (1 - tolerance) <= ratio <= fraction:
            break
        asked = float(np.clip(asked * fraction / ratio, low, model.base_ms))
    within = [t for t in tried if t["measured_ratio"] <= fraction]
    best = max(within, key=lambda t: t["predicted_ms"]) if within else min(tried, key=lambda t: t["predicted_ms"])
    record = {"asked_ms": best["asked_ms"], "measured_ratio": best["measured_ratio"], "over_target": not within,
              "steps": [{k: v for k, v in t.items() if k != "keep"} for t in tried]}
    return best["keep"], record
