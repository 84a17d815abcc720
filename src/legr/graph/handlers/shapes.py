"""Concatenation, splits, padding, indexing, reshapes, reductions, permutes and metadata queries."""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.graph.channels import ChanMap
from legr.graph.context import Patch, WalkContext
from legr.graph.handlers.base import first_map, register


# --- concatenation, padding, indexing ----------------------------------------------------------------------------
@register(functions=(torch.cat, torch.concat))
def _cat(ctx: WalkContext, node: fx.Node) -> ChanMap | None:
    parts = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    rank = len(ctx.shape(node))
    maps = ctx.val(parts) if isinstance(parts, fx.Node) else [ctx.val(p) for p in parts]  # e.g. cat(x.split(..))
    if maps is None:
        return None
    if not isinstance(maps, (list, tuple)):
        ctx.refuse(node, "it concatenates the slices of one tensor along its first axis")
    if not any(isinstance(m, ChanMap) for m in maps):
        return None
    if not all(isinstance(m, ChanMap) for m in maps):
        ctx.refuse(node, "it concatenates tracked channels with untracked tensors")
    if len({m.axis for m in maps}) != 1:
        ctx.refuse(node, "its inputs have their channels on different axes")
    axis = maps[0].axis
    for m in maps:
        if not m.zero_safe:
            ctx.fix(m.ids, "concatenated after an op that maps 0 to a non-zero value")
    if dim % rank == axis:
        return ChanMap(axis, np.concatenate([m.ids for m in maps]))
    for m in maps[1:]:
        ctx.union(maps[0].ids, m.ids)
    return ChanMap(axis, maps[0].ids)


@register(functions=(F.pad,))
def _pad(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """Padding other axes keeps a removed channel zero unless it pads with a non-zero constant; padding the channel
    axis (zeros only) adds zero elements, whose kept counts rewrite the literal sizes."""
    x = first_map(ctx, node)
    pad = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
    rank = len(ctx.shape(node.args[0]))
    k = 2 * (rank - 1 - x.axis)  # F.pad lists (before, after) pairs starting from the last dim
    mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
    value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    zero_fill = mode != "constant" or value in (None, 0, 0.0)
    if k + 1 >= len(pad) or (pad[k] == 0 and pad[k + 1] == 0):
        return ChanMap(x.axis, x.ids, x.zero_safe and zero_fill)
    if any(isinstance(p, fx.Node) for p in pad[k : k + 2]) or mode != "constant" or not zero_fill:
        ctx.refuse(node, "channel padding must be constant zeros with literal sizes")
    before = ctx.new(pad[k])
    after = ctx.new(pad[k + 1])

    def rewrite(n: fx.Node, kept: Callable[[np.ndarray], int]) -> None:
        new = list(n.args[1] if len(n.args) > 1 else n.kwargs["pad"])
        new[k], new[k + 1] = kept(before), kept(after)
        if len(n.args) > 1:
            n.args = (n.args[0], tuple(new), *n.args[2:])
        else:
            n.kwargs = {**n.kwargs, "pad": tuple(new)}

    ctx.patches.append(Patch(node.name, rewrite))
    return ChanMap(x.axis, np.concatenate([before, x.ids, after]), x.zero_safe)


@register(functions=(torch.split, torch.chunk, torch.tensor_split), methods=("split", "chunk", "tensor_split"))
def _split(ctx: WalkContext, node: fx.Node) -> list[ChanMap]:
    """Pieces of a tensor. Along the channel axis each piece holds its slice of the channels, pruned independently
    but never emptied (each piece is a segment the budget floors hold for); the op becomes ``torch.split`` with the
    pieces' kept counts. Along another axis every piece holds all the channels."""
    x = first_map(ctx, node)
    metas = node.meta.get("tensor_meta")
    rank = len(ctx.shape(node.args[0]))
    dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
    if not isinstance(dim, int) or not isinstance(metas, (list, tuple)):
        ctx.refuse(node, "its dimension or its pieces are not known when tracing")
    if dim % rank != x.axis:
        return [x.with_ids(x.ids) for _ in metas]
    ends = np.cumsum([int(m.shape[x.axis]) for m in metas])
    pieces = [x.ids[a:b] for a, b in zip([0, *ends[:-1]], ends)]
    ctx.segments.extend(p for p in pieces if len(p))

    def rewrite(n: fx.Node, kept: Callable[[np.ndarray], int]) -> None:
        n.op, n.target = "call_function", torch.split
        n.args, n.kwargs = (n.args[0], [kept(p) for p in pieces], dim), {}

    ctx.patches.append(Patch(node.name, rewrite))
    return [x.with_ids(p) for p in pieces]


def _index_items(index: Any, rank: int) -> list[Any]:
    items = list(index) if isinstance(index, tuple) else [index]
    if any(i is Ellipsis for i in items):
        at = items.index(Ellipsis)
        fill = rank - sum(1 for i in items if i is not None and i is not Ellipsis)
        items = items[:at] + [slice(None)] * fill + items[at + 1 :]
    return items + [slice(None)] * (rank - sum(1 for i in items if i is not None))


@register(functions=(operator.getitem,))
def _getitem(ctx: WalkContext, node: fx.Node) -> Any:
    source, index = node.args
    value = ctx.val(source)
    if isinstance(value, (list, tuple)):
        return value[index]
    if not isinstance(value, ChanMap):
        return None
    axis_in, axis_out = 0, 0
    for item in _index_items(index, len(ctx.shape(source))):
        if item is None:
            axis_out += 1
            continue
        if axis_in == value.axis:
            if item != slice(None):
                ctx.refuse(node, "it indexes the channel dimension with fixed positions")
            return ChanMap(axis_out, value.ids, value.zero_safe)
        if isinstance(item, fx.Node) or isinstance(item, (list, tuple, torch.Tensor)):
            ctx.refuse(node, "advanced indexing is not supported on tensors with tracked channels")
        axis_in += 1
        axis_out += 0 if isinstance(item, int) else 1
    ctx.refuse(node, "could not locate the channel axis in the indexing expression")


# --- shape changes -----------------------------------------------------------------------------------------------
def _reshape_value(ctx: WalkContext, node: fx.Node, x: ChanMap) -> ChanMap:
    """Follow the channel axis through a reshape; channels may merge with the dims after them (flatten)."""
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.shape(node)
    width = in_shape[x.axis]
    before = math.prod(in_shape[: x.axis])
    for b in range(len(out_shape)):
        if math.prod(out_shape[:b]) != before or out_shape[b] % width:
            continue
        inner = out_shape[b] // width
        for m in range(len(in_shape) - x.axis):
            if math.prod(in_shape[x.axis + 1 : x.axis + 1 + m]) == inner:
                _check_literal_size(ctx, node, b)
                return ChanMap(b, np.repeat(x.ids, inner), x.zero_safe)
    ctx.refuse(node, f"the reshape {list(in_shape)} -> {list(out_shape)} mixes the channel dimension with others")


def _check_literal_size(ctx: WalkContext, node: fx.Node, axis: int) -> None:
    if node.target not in ("view", "reshape", torch.reshape):
        return
    sizes = node.args[1:] if node.op == "call_method" else node.args[1:2]
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = sizes[0]
    if axis < len(sizes) and isinstance(sizes[axis], int) and sizes[axis] != -1:
        ctx.refuse(node, "the reshape hard-codes the channel size; use -1 or torch.flatten")


@register(
    modules=(nn.Flatten, nn.Unflatten),
    functions=(torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze),
    methods=("view", "reshape", "flatten", "squeeze", "unsqueeze"),
)
def _reshape(ctx: WalkContext, node: fx.Node) -> ChanMap:
    return _reshape_value(ctx, node, first_map(ctx, node))


@register(functions=(torch.mean, torch.sum, torch.amax), methods=("mean", "sum", "amax"))
def _reduce(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = first_map(ctx, node)
    rank = len(ctx.shape(node.args[0]))
    dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dims is None:
        ctx.refuse(node, "it reduces over all dims, including channels")
    dims = [d % rank for d in ([dims] if isinstance(dims, int) else dims)]
    if x.axis in dims:
        ctx.refuse(node, "it reduces over the channel axis")
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    axis = x.axis if keepdim else x.axis - sum(d < x.axis for d in dims)
    return ChanMap(axis, x.ids, x.zero_safe)


@register(functions=(torch.permute, torch.transpose, torch.swapaxes), methods=("permute", "transpose", "swapaxes"))
def _permute(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = first_map(ctx, node)
    rank = len(ctx.shape(node))
    args = node.args[1:]
    if node.target in ("transpose", "swapaxes", torch.transpose, torch.swapaxes):
        a, b = (d % rank for d in args[:2])
        perm = list(range(rank))
        perm[a], perm[b] = b, a
    else:
        perm = [d % rank for d in (args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args)]
    if perm[x.axis] != x.axis:
        ctx.refuse(node, "it moves the channel axis (channels-last layouts are not supported)")
    return x


@register(methods=("size", "dim", "numel"), functions=(getattr, len))
def _metadata(ctx: WalkContext, node: fx.Node) -> None:
    return None
