"""Concatenation, splits, padding, channel slices, reshapes (and the channel shuffle), reductions and permutes."""

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
    along = dim % rank == axis
    for m in maps:  # along the channels, a removed channel holding a constant keeps it (a consumer may fold it)
        if not m.zero_safe and not (along and m.constant):
            ctx.fix(m.ids, f"concatenated at {ctx.op(node)} after {m.nonzero}, which maps 0 to a non-zero value")
    if along:
        nonzero = next((m.nonzero for m in maps if m.constant), None)
        return ChanMap(axis, np.concatenate([m.ids for m in maps]), nonzero, nonzero is not None)
    for m in maps[1:]:
        ctx.union(maps[0].ids, m.ids)
    return ChanMap(axis, maps[0].ids)


@register(functions=(torch.stack,))
def _stack(ctx: WalkContext, node: fx.Node) -> ChanMap | None:
    """``torch.stack`` of tensors with their channels on the same axis (selective-kernel branches): a new axis, the
    channels of every input merged position by position (a removed channel is removed from each), as a concatenation
    along another axis. A removed channel stays zero in the stack when it is zero in each input."""
    parts = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    maps = ctx.val(parts) if isinstance(parts, fx.Node) else [ctx.val(p) for p in parts]
    if not isinstance(maps, (list, tuple)) or not any(isinstance(m, ChanMap) for m in maps):
        return None
    if not all(isinstance(m, ChanMap) for m in maps) or len({m.axis for m in maps}) != 1 or not isinstance(dim, int):
        ctx.refuse(node, "it stacks tracked channels with untracked tensors, or along a computed or mixed axis")
    if len({len(m.ids) for m in maps}) != 1:
        ctx.refuse(node, "its inputs have different channel counts")
    axis = maps[0].axis
    for m in maps[1:]:
        ctx.union(maps[0].ids, m.ids)
    new_axis = dim % len(ctx.shape(node))
    nonzero = next((m.nonzero for m in maps if not m.zero_safe), None)
    return ChanMap(axis + 1 if new_axis <= axis else axis, maps[0].ids, nonzero)


@register(modules=(nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
                  nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd), functions=(F.pad,))
def _pad(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """Padding other axes keeps a removed channel zero unless it pads with a non-zero constant; padding the channel
    axis (zeros only) adds zero elements, whose kept counts rewrite the literal sizes."""
    x = first_map(ctx, node)
    if node.op == "call_module":  # nn.ConstantPad2d, nn.ZeroPad2d, nn.ReflectionPad2d, ...: its padding attribute
        module = ctx.module(node)
        pad, value = list(module.padding), getattr(module, "value", None)
        mode = "constant" if hasattr(module, "value") else "other"
    else:
        pad = list(node.args[1] if len(node.args) > 1 else node.kwargs["pad"])
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
    rank = len(ctx.shape(node.args[0]))
    k = 2 * (rank - 1 - x.axis)  # pads list (before, after) pairs starting from the last dim
    zero_fill = mode != "constant" or value in (None, 0, 0.0)  # reflecting or replicating zeros gives zeros
    if k + 1 >= len(pad) or (pad[k] == 0 and pad[k + 1] == 0):
        if not zero_fill:
            return ChanMap(x.axis, x.ids, f"{ctx.op(node)} padding with {value}")
        # a constant stays one value when the border repeats it (reflect, replicate, circular), not beside zeros
        return x if mode != "constant" or not any(pad) else ChanMap(x.axis, x.ids, x.nonzero)
    if node.op == "call_module":
        ctx.refuse(node, "the padding module pads the channel axis")
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
    spatial = any(p for i, p in enumerate(pad) if i not in (k, k + 1))  # zeros beside a constant: not one value
    return ChanMap(x.axis, np.concatenate([before, x.ids, after]), x.nonzero, x.constant and not spatial)


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
    ctx.segments.extend((p, ctx.op(node)) for p in pieces if len(p))

    def rewrite(n: fx.Node, kept: Callable[[np.ndarray], int]) -> None:
        n.op, n.target = "call_function", torch.split
        n.args, n.kwargs = (n.args[0], [kept(p) for p in pieces], dim), {}

    ctx.patches.append(Patch(node.name, rewrite))
    return [x.with_ids(p) for p in pieces]


def _index_items(index: Any, rank: int) -> list[tuple[Any, int | None]]:
    """The index as one item per axis it touches (``None`` items add an axis), each with its position in ``index``
    (None for the full slices an Ellipsis or a short index stands for)."""
    given = list(index) if isinstance(index, tuple) else [index]
    items: list[tuple[Any, int | None]] = []
    for pos, item in enumerate(given):
        if item is Ellipsis:
            fill = rank - sum(1 for i in given if i is not None and i is not Ellipsis)
            items += [(slice(None), None)] * fill
        else:
            items.append((item, pos))
    return items + [(slice(None), None)] * (rank - sum(1 for i, _ in items if i is not None))


def _channel_slice(ctx: WalkContext, node: fx.Node, value: ChanMap, item: slice, pos: int) -> np.ndarray:
    """``x[:, a:b]``: the channels inside the slice, pruned like any others (the slice never becomes empty: it is a
    segment the budget floors hold for); its literal bounds become the kept counts before them."""
    width = len(value.ids)
    bounds = (item.start, item.stop, item.step)
    if any(b is not None and not isinstance(b, int) for b in bounds) or item.step not in (None, 1):
        ctx.refuse(node, "it slices the channel dimension with a step or with bounds computed in the forward")
    start, stop, _ = item.indices(width)
    stop = max(start, stop)
    ids = value.ids[start:stop]
    if len(ids) == 0:
        ctx.refuse(node, "it takes an empty slice of the channel dimension")
    if len(ids) == width:
        return ids
    ctx.segments.append((ids, ctx.op(node)))
    before, through = value.ids[:start], value.ids[:stop]

    def rewrite(n: fx.Node, kept: Callable[[np.ndarray], int]) -> None:
        new = slice(kept(before), kept(through))
        source, index = n.args
        n.args = (source, tuple(new if k == pos else i for k, i in enumerate(index)) if isinstance(index, tuple)
                  else new)

    ctx.patches.append(Patch(node.name, rewrite))
    return ids


@register(functions=(operator.getitem,))
def _getitem(ctx: WalkContext, node: fx.Node) -> Any:
    source, index = node.args
    value = ctx.val(source)
    if isinstance(value, (list, tuple)):
        return value[index]
    if not isinstance(value, ChanMap):
        return None
    axis_in, axis_out = 0, 0
    for item, pos in _index_items(index, len(ctx.shape(source))):
        if item is None:
            axis_out += 1
            continue
        if axis_in == value.axis:
            if not isinstance(item, slice):
                ctx.refuse(node, "it indexes the channel dimension with fixed positions")
            ids = value.ids if item == slice(None) else _channel_slice(ctx, node, value, item, pos)
            return value.moved(axis_out, ids)
        if isinstance(item, fx.Node) or isinstance(item, (list, tuple, torch.Tensor)):
            ctx.refuse(node, "advanced indexing is not supported on tensors with tracked channels")
        axis_in += 1
        axis_out += 0 if isinstance(item, int) else 1
    ctx.refuse(node, "could not locate the channel axis in the indexing expression")


# --- shape changes -----------------------------------------------------------------------------------------------
def _reshape_value(ctx: WalkContext, node: fx.Node, x: ChanMap) -> Any:
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
                return x.moved(b, np.repeat(x.ids, inner))
    shuffled = _channel_shuffle(ctx, node, x)
    if shuffled is None:
        ctx.refuse(node, f"the reshape {list(in_shape)} -> {list(out_shape)} mixes the channel dimension with others")
    return shuffled


class _Shuffling:
    """The value of a channel shuffle's inner nodes (tracked by the shuffle's rule, usable by nothing else)."""


_SWAPS = ("transpose", "swapaxes", torch.transpose, torch.swapaxes)
_SAME = ("contiguous", "clone")


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _channel_shuffle(ctx: WalkContext, node: fx.Node, x: ChanMap) -> ChanMap | None:
    """ShuffleNet's channel shuffle: view ``(.., C, ..)`` as ``(.., g, C/g, ..)``, swap those two axes, view back.
    It permutes the channels (position ``i * C/g + j`` moves to ``j * g + i``); a pruned network can shuffle the same
    way only if every group keeps the same positions ``j``, so position ``j`` of each group is one element across
    the groups. Returns the value after the shuffle (its inner nodes get theirs ahead), or None for another reshape."""
    in_shape, out_shape = ctx.shape(node.args[0]), ctx.shape(node)
    a = x.axis
    if (len(out_shape) != len(in_shape) + 1 or out_shape[:a] != in_shape[:a] or out_shape[a + 2:] != in_shape[a + 1:]
            or out_shape[a] * out_shape[a + 1] != in_shape[a]):
        return None
    swap = _only_user(node)
    if swap is None or swap.target not in _SWAPS or swap.args[0] is not node:
        return None
    rank, dims = len(out_shape), swap.args[1:3]
    if not all(isinstance(d, int) for d in dims) or sorted(d % rank for d in dims) != [a, a + 1]:
        return None
    inner, back = [node, swap], _only_user(swap)
    while back is not None and back.target in _SAME:
        inner.append(back)
        back = _only_user(back)
    if back is None or back.target not in ("view", "reshape", torch.reshape) or ctx.shape(back) != in_shape:
        return None
    _check_literal_size(ctx, node, a + 1)  # the group width shrinks with pruning; the group count does not
    _check_literal_size(ctx, back, a)
    groups, width = out_shape[a], out_shape[a + 1]
    grid = x.ids.reshape(groups, width)
    for g in range(1, groups):
        ctx.union(grid[0], grid[g])
    for n in inner[1:]:
        ctx.preset[n] = _Shuffling()
    ctx.preset[back] = x.moved(a, grid.T.reshape(-1).copy())
    return _Shuffling()


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
    return x.moved(perm.index(x.axis))  # channels-last blocks: later ops check their axis


@register(methods=("size", "dim", "numel"), functions=(getattr, len))
def _metadata(ctx: WalkContext, node: fx.Node) -> None:
    return None
