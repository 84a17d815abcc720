"""Filter importance criteria, one registry.

Contract: a criterion is ``fn(graph, module) -> {producer layer name: np.ndarray of one score per output filter}``,
where ``module`` has the parameter names of ``graph.gm`` (the analysed model or a copy). Higher = more important.
`group_scores` turns per-layer scores into one score per channel of every group (the sum over its producers,
optionally after a per-layer transform such as LeGR's affine ``alpha * s + kappa``).
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from legr.errors import LegrError
from legr.graph import ChannelGraph

Criterion = Callable[[ChannelGraph, nn.Module], dict[str, np.ndarray]]
CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
    def deco(fn: Criterion) -> Criterion:
        CRITERIA[name] = fn
        return fn

    return deco


def get_criterion(name: str) -> Criterion:
    if name not in CRITERIA:
        raise LegrError(f"unknown criterion '{name}'; available: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[name]


def _filter_norms(graph: ChannelGraph, module: nn.Module, p: int) -> dict[str, np.ndarray]:
    scores = {}
    with torch.no_grad():
        for name, layer in graph.layers.items():
            if layer.producer_ids is None:
                continue
            weight = module.get_submodule(name).weight.detach().flatten(1).double()
            scores[name] = (weight.abs().sum(1) if p == 1 else weight.pow(2).sum(1)).cpu().numpy()
    return scores


@register_criterion("l1")
def l1_norm(graph: ChannelGraph, module: nn.Module) -> dict[str, np.ndarray]:
    """L1 norm of each output filter (Li et al. 2017)."""
    return _filter_norms(graph, module, 1)


@register_criterion("l2sq")
def squared_l2_norm(graph: ChannelGraph, module: nn.Module) -> dict[str, np.ndarray]:
    """Squared L2 norm of each output filter (LeGR's criterion)."""
    return _filter_norms(graph, module, 2)


Transform = Callable[[str, np.ndarray], np.ndarray]


def group_scores(
    graph: ChannelGraph, layer_scores: Mapping[str, np.ndarray], transform: Transform | None = None
) -> dict[str, np.ndarray]:
    """One score per channel of each prunable group: the sum of its producers' (transformed) filter scores."""
    out = {}
    for group in graph.prunable_groups():
        total = np.zeros(group.size)
        for name in group.producers:
            s = layer_scores[name] if transform is None else transform(name, layer_scores[name])
            np.add.at(total, graph.producer_positions(name), s)
        out[group.name] = total
    return out
