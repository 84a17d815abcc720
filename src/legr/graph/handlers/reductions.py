"""Reductions (mean, sum, amax, p-norms) and the other ops of global response norm (addcmul, expand_as).

Over other axes a reduction keeps each channel on its own. Over the channel axis (ConvNeXt-V2's global response norm:
``x_g / x_g.mean(dim=channels)``) a sum or a p-norm (p > 0) is exact when a removed channel is zero there (it adds
nothing), and a mean becomes the sum over the kept channels divided by the original count; the result is one fixed
channel (``keepdim``), never pruned. A max over the channels, or a reduction dropping the channel axis, is refused.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import torch
from torch import fx

from legr.graph.channels import ChanMap
from legr.graph.context import Patch, WalkContext
from legr.graph.handlers.base import first_map, register
from legr.graph.handlers.elementwise import merge_operands, tie_channel_parameter

_NORMS = ("norm", torch.norm, torch.linalg.vector_norm)


def channel_mean(x: torch.Tensor, dim: tuple[int, ...], keepdim: bool, count: int) -> torch.Tensor:
    """A mean over the channel axis in a pruned network: the sum over the kept channels divided by the unpruned
    count (the removed channels were zeros)."""
    return torch.sum(x, dim, keepdim=keepdim) / count


def _bind(node: fx.Node) -> dict[str, Any]:
    if node.target in _NORMS:
        names = ("ord", "dim", "keepdim") if node.target is torch.linalg.vector_norm else ("p", "dim", "keepdim")
    else:
        names = ("dim", "keepdim")
    given = dict(zip(names, node.args[1:]))
    given.update({k: v for k, v in node.kwargs.items() if k in names})
    given["p"] = given.pop("ord", given.get("p", 2))
    return given


@register(functions=(torch.mean, torch.sum, torch.amax, torch.norm, torch.linalg.vector_norm),
          methods=("mean", "sum", "amax", "norm"))
def _reduce(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = first_map(ctx, node)
    in_shape = ctx.shape(node.args[0])
    rank = len(in_shape)
    given = _bind(node)
    dims, keepdim, p = given.get("dim"), bool(given.get("keepdim", False)), given.get("p", 2)
    kind = "norm" if node.target in _NORMS else str(getattr(node.target, "__name__", node.target))
    if kind == "norm" and not (p in ("fro", None) or (isinstance(p, (int, float)) and p > 0)):
        ctx.refuse(node, f"a norm with p={p!r} is not a sum of the channels' own terms")
    if dims is None or not all(isinstance(d, int) for d in ([dims] if isinstance(dims, int) else dims)):
        ctx.refuse(node, "it reduces over all dims, including channels, or over dims computed in the forward")
    dims = [d % rank for d in ([dims] if isinstance(dims, int) else dims)]
    if x.axis not in dims:
        return x.moved(x.axis if keepdim else x.axis - sum(d < x.axis for d in dims))  # a constant: one value again
    if kind == "amax" or not keepdim:
        ctx.refuse(node, "it reduces over the channel axis (a max, or without keepdim)")
    if not x.zero_safe:
        ctx.fix(x.ids, f"reduced over the channel axis at {ctx.op(node)} after {x.nonzero}, which maps 0 to a "
                       "non-zero value")
    if kind == "mean":
        count = math.prod(in_shape[d] for d in dims)

        def rewrite(n: fx.Node, kept: Callable[[np.ndarray], int]) -> None:
            n.op, n.target = "call_function", channel_mean
            n.args, n.kwargs = (n.args[0], tuple(dims), True, count), {}

        ctx.patches.append(Patch(node.name, rewrite))
    return ChanMap(x.axis, ctx.new(1, fixed=f"the reduction over the channel axis at {ctx.op(node)}"))


@register(methods=("expand_as",))
def _expand_as(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``gate.expand_as(x)`` (a broadcast made explicit): the gate's channels are those of ``x`` on the same axis."""
    x, other = first_map(ctx, node), ctx.val(node.args[1])
    offset = len(ctx.shape(node)) - len(ctx.shape(node.args[0]))
    if not isinstance(other, ChanMap) or other.axis != x.axis + offset or len(other.ids) != len(x.ids):
        ctx.refuse(node, "it expands the channel axis, or to a tensor whose channels are not tracked on that axis")
    reasons = [ctx.fixed.get(e) for e in x.ids.tolist()]
    if all(reasons):  # fixed gate channels (a barrier's output): those of ``x`` are fixed too, never merged
        ctx.fix(other.ids, reasons[0])
        return x.moved(x.axis + offset, other.ids)
    ctx.union(x.ids, other.ids)
    return x.moved(x.axis + offset)


@register(functions=(torch.addcmul,), methods=("addcmul",))
def _addcmul(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``input + value * t1 * t2`` (global response norm: ``addcmul(beta, gamma, x * x_n)``): the channels of the
    full-width maps merge; per-channel parameters are pruned with them (masked: zero for a removed channel). A
    removed channel is zero after it when the input term and one factor of the product are."""
    operands = [node.args[0], *node.args[1:3]] if node.op == "call_function" else list(node.args[:3])
    merged = merge_operands(ctx, node, operands) if len(operands) == 3 else None
    if merged is None:
        ctx.refuse(node, "legr follows it with three positional operands, one with tracked channels")
    axis, rank, full = merged
    out = full[0].ids
    zero = []
    for a in operands:
        value, shape = ctx.val(a), ctx.shape(a)
        if isinstance(value, ChanMap):
            zero.append(len(value.ids) == len(out) and value.zero_safe)
            continue
        k = axis - (rank - len(shape)) if shape is not None else -1
        per_channel = shape is not None and 0 <= k < len(shape) and shape[k] == len(out) > 1
        tied = per_channel and tie_channel_parameter(ctx, a, out)
        if per_channel and not tied:
            ctx.fix(out, f"combined with a per-channel tensor not pruned with the channels at {ctx.op(node)}")
        zero.append(tied or a in (0, 0.0))
    safe = zero[0] and (zero[1] or zero[2])
    return ChanMap(axis, out, None if safe else f"{ctx.op(node)} with a term that is not zero for a removed channel")
