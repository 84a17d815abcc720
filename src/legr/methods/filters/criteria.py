"""Filter importance criteria, one registry.

Contract: a criterion is ``fn(graph, module, context) -> {producer layer name: np.ndarray of one score per output
filter}``, where ``module`` has the parameter names of ``graph.gm`` (the analysed model or a copy) and ``context`` a
`CriterionContext` (seed, and training batches for data-dependent criteria). Higher = more important. Use
`compute_scores` to call one by name. `group_scores` turns per-layer scores into one score per channel of every group
(the sum over its producers, optionally after a per-layer transform such as LeGR's affine ``alpha * s + kappa``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.errors import LegrError
from legr.graph import ChannelGraph
from legr.registry import Registry

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]


@dataclass(frozen=True)
class CriterionContext:
    """What a criterion may use besides the weights: a seed (``random``) and a factory of normalized training
    batches ``(x, y)`` on the model's device (``taylor``; None where no data is at hand)."""

    seed: int = 0
    batches: Batches | None = None


Criterion = Callable[[ChannelGraph, nn.Module, CriterionContext], dict[str, np.ndarray]]


@dataclass(frozen=True)
class CriterionSpec:
    fn: Criterion
    summary: str  # one line, for `legr methods`


CRITERIA = Registry[CriterionSpec]("criterion")


def register_criterion(name: str, summary: str) -> Callable[[Criterion], Criterion]:
    def deco(fn: Criterion) -> Criterion:
        CRITERIA.add(name, CriterionSpec(fn, summary))
        return fn

    return deco


def compute_scores(name: str, graph: ChannelGraph, module: nn.Module,
                   context: CriterionContext = CriterionContext()) -> dict[str, np.ndarray]:
    """Per-filter scores of every producer layer under the registered criterion ``name``."""
    return CRITERIA[name].fn(graph, module, context)


def _per_filter(graph: ChannelGraph, module: nn.Module, score: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, np.ndarray]:
    """``score`` of every producer layer's weight, flattened to one float64 row per output filter."""
    scores = {}
    with torch.no_grad():
        for name, layer in graph.layers.items():
            if layer.producer_ids is None:
                continue
            weight = module.get_submodule(name).weight.detach().flatten(1).double()
            scores[name] = score(weight).cpu().numpy()
    return scores


@register_criterion("l1", "L1 norm of the filter (Li et al. 2017)")
def l1_norm(graph: ChannelGraph, module: nn.Module, context: CriterionContext) -> dict[str, np.ndarray]:
    """L1 norm of each output filter (Li et al. 2017)."""
    return _per_filter(graph, module, lambda w: w.abs().sum(1))


@register_criterion("l2sq", "squared L2 norm of the filter (LeGR)")
def squared_l2_norm(graph: ChannelGraph, module: nn.Module, context: CriterionContext) -> dict[str, np.ndarray]:
    """Squared L2 norm of each output filter (LeGR's criterion)."""
    return _per_filter(graph, module, lambda w: w.pow(2).sum(1))


def _scored_producers(graph: ChannelGraph) -> list[str]:
    """Producer layers whose channels can be removed (the only ones whose scores matter)."""
    return [name for g in graph.prunable_groups() for name in g.producers]


def _norm_after(graph: ChannelGraph) -> dict[str, str]:
    """``{producer layer: batch norm module}`` for every batch norm applied directly to a layer's output."""
    out = {}
    for node in graph.gm.graph.nodes:
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], fx.Node):
            continue
        src = node.args[0]
        if isinstance(graph.gm.get_submodule(node.target), nn.modules.batchnorm._BatchNorm) and src.op == "call_module" \
                and src.target in graph.layers:
            out[src.target] = node.target
    return out


@register_criterion("bn_scale", "|gamma| of the following batch norm (network slimming, Liu et al. 2017)")
def bn_scale(graph: ChannelGraph, module: nn.Module, context: CriterionContext) -> dict[str, np.ndarray]:
    """|gamma| of the batch norm right after each producer (network slimming, Liu et al. 2017)."""
    norms = _norm_after(graph)
    producers = _scored_producers(graph)
    missing = [name for name in producers if name not in norms]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise LegrError(f"criterion 'bn_scale' needs a batch norm right after every prunable producer layer; "
                        f"none after {', '.join(missing[:3])}{more}")
    with torch.no_grad():
        return {name: module.get_submodule(norms[name]).weight.detach().abs().double().cpu().numpy()
                for name in producers}


@register_criterion("fpgm", "distance to the layer's other filters (FPGM, He et al. 2019)")
def geometric_median_distance(graph: ChannelGraph, module: nn.Module, context: CriterionContext) -> dict[str, np.ndarray]:
    """Sum of Euclidean distances from each filter to the other filters of its layer (FPGM, He et al. 2019):
    filters near the layer's geometric median are the most replaceable, so they score lowest."""
    return _per_filter(graph, module, lambda w: torch.cdist(w, w).sum(1))


@register_criterion("random", "seeded uniform random scores (control)")
def random_scores(graph: ChannelGraph, module: nn.Module, context: CriterionContext) -> dict[str, np.ndarray]:
    """Uniform random scores from ``context.seed`` (the control every criterion should beat)."""
    rng = np.random.default_rng(context.seed)
    return {name: rng.random(len(graph.layers[name].producer_ids)) for name in graph.layers
            if graph.layers[name].producer_ids is not None}


@register_criterion("taylor", "first-order Taylor: (activation x gradient)^2 on training batches (Molchanov 2019)")
def taylor(graph: ChannelGraph, module: nn.Module, context: CriterionContext) -> dict[str, np.ndarray]:
    """First-order Taylor importance (Molchanov et al. 2019): per batch, the squared sum over the batch and positions of
    activation x gradient of the loss, at the batch norm right after a producer (else at its output), averaged over
    the batches of ``context.batches``. This is the first-order estimate of the loss change when the channel is
    zeroed; it is computed as ``(sum over the channel's parameters of theta * dL/dtheta)^2``, which is equal."""
    return taylor_saliency(graph, module, context, "taylor", lambda t: t.pow(2))


@register_criterion("taylor_abs", "first-order Taylor: |activation x gradient| on training batches (GDP, Lin 2018)")
def taylor_abs(graph: ChannelGraph, module: nn.Module, context: CriterionContext) -> dict[str, np.ndarray]:
    """GDP's global discriminative function (Lin et al. 2018): per batch, ``|sum over the channel's parameters of
    theta * dL/dtheta|`` (at the batch norm right after a producer, else at its filter and bias), averaged over the
    batches of ``context.batches``. GDP's reference code scores VGG-16's convolutions, which have no batch norm; after
    a batch norm in training mode a filter's own ``W * dL/dW`` sums to zero (the norm undoes any scaling of the
    filter), so the norm's affine parameters carry the channel's first-order term, as in ``taylor``."""
    return taylor_saliency(graph, module, context, "taylor_abs", torch.abs)


def taylor_saliency(graph: ChannelGraph, module: nn.Module, context: CriterionContext, name: str,
                    reduce: Callable[[torch.Tensor], torch.Tensor], batch_norms: bool = False) -> dict[str, np.ndarray]:
    """Per producer filter, the mean over ``context.batches`` of ``reduce(sum of theta * dL/dtheta)`` over the
    channel's parameters at its gate (the batch norm right after the producer when it has affine parameters, else
    the producer's weight and bias), with the module in eval mode (the gradients computed with
    `torch.autograd.grad`: nothing is accumulated in ``.grad``). ``batch_norms``: the batch norms normalize with
    the batch's statistics, as in training (for a network whose running statistics are stale, e.g. of channels that
    were masked: GDP); either way no running buffer changes."""
    if context.batches is None:
        raise LegrError(f"criterion '{name}' needs training batches (it scores filters by activation x gradient)")
    norms = _norm_after(graph)
    producers = [name for name in graph.layers if graph.layers[name].producer_ids is not None]

    def gate(name: str) -> nn.Module:  # the batch norm after the layer when it has affine parameters, else the layer
        norm = module.get_submodule(norms[name]) if name in norms else None
        return norm if norm is not None and norm.weight is not None else module.get_submodule(name)

    params = {name: [p for p in (gate(name).weight, getattr(gate(name), "bias", None)) if p is not None]
              for name in producers}
    flat = [p for ps in params.values() for p in ps]
    totals = {name: np.zeros(len(graph.layers[name].producer_ids)) for name in producers}
    modes = {m: m.training for m in module.modules()}
    module.eval()  # batch statistics and running buffers stay as they are
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if batch_norms else []
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:  # training-mode normalization; momentum 0 keeps the running statistics exactly as they are
        m.train()
        m.momentum = 0.0
    n = 0
    try:
        for x, y in context.batches():
            grads = torch.autograd.grad(F.cross_entropy(module(x), y), flat, allow_unused=True, materialize_grads=True)
            grad_of = dict(zip(map(id, flat), grads))
            with torch.no_grad():
                for layer, ps in params.items():
                    total = sum((p * grad_of[id(p)]).reshape(p.shape[0], -1).sum(1) for p in ps)
                    totals[layer] += reduce(total.double()).cpu().numpy()
            n += 1
    finally:
        for m, mode in modes.items():
            m.training = mode
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
    if n == 0:
        raise LegrError(f"criterion '{name}' got no training batches")
    return {layer: t / n for layer, t in totals.items()}


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


def within_layer_ranks(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each layer's scores replaced by their quantiles within the layer, ``(rank + 0.5) / n`` (ties broken by
    position): the same order inside every layer, one scale across layers."""
    out = {}
    for name, values in scores.items():
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        out[name] = (np.argsort(np.argsort(v, kind="stable"), kind="stable") + 0.5) / max(v.size, 1)
    return out


def producer_counts(graph: ChannelGraph) -> dict[str, np.ndarray]:
    """For each producer layer, per filter: how many layers produce the channel that filter writes (a residual
    stream's channel is written by every block's last convolution)."""
    out = {}
    for group in graph.prunable_groups():
        count = np.zeros(group.size)
        for name in group.producers:
            np.add.at(count, graph.producer_positions(name), 1.0)
        for name in group.producers:
            out[name] = count[graph.producer_positions(name)]
    return out


NORMALIZATIONS = ("none", "rank", "rank-mean")


def normalized_scores(kind: str, graph: ChannelGraph, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LeGR's per-layer scores before its affine transform (``search.normalize``). ``none``: the criterion's values
    (the paper). ``rank``: `within_layer_ranks`. ``rank-mean``: those quantiles divided by `producer_counts`, so that a
    channel's group score (`group_scores`: the sum over its producers) is its producers' mean quantile, in (0, 1) for
    a residual stream as for a block's inner layer (with ``rank`` the stream of ResNet-20, written by 10 layers, sums
    ten quantiles and is cut last)."""
    if kind not in NORMALIZATIONS:
        raise LegrError(f"unknown score normalization '{kind}' (known: {', '.join(NORMALIZATIONS)})")
    if kind == "none":
        return dict(scores)
    ranks = within_layer_ranks(scores)
    if kind == "rank":
        return ranks
    counts = producer_counts(graph)
    return {name: q / counts.get(name, 1.0) for name, q in ranks.items()}  # layers of no prunable group: as rank
