"""How each module type / function / method moves channels. One registry per kind of graph node.

A handler takes ``(ctx, node)`` and returns the node's value: a `ChanMap` for a tensor with tracked channels, a list
of them for tuple outputs, or None. Any op that receives tracked channels and has no handler is refused with an
error naming it, so an unknown op can never produce a silently wrong model.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops import StochasticDepth

from legr.graph.channels import ChanMap, Layer, Tie
from legr.graph.context import Patch, WalkContext

Handler = Callable[[WalkContext, fx.Node], Any]
MODULE_HANDLERS: dict[type, Handler] = {}
FUNCTION_HANDLERS: dict[Any, Handler] = {}
METHOD_HANDLERS: dict[str, Handler] = {}

# Modules kept as leaves while tracing (beyond torch.nn's own), so they keep their train/eval behaviour.
LEAF_MODULES: tuple[type, ...] = (StochasticDepth,)


def register(modules=(), functions=(), methods=()) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for m in modules:
            MODULE_HANDLERS[m] = fn
        for f in functions:
            FUNCTION_HANDLERS[f] = fn
        for m in methods:
            METHOD_HANDLERS[m] = fn
        return fn

    return deco


def module_handler(module: nn.Module) -> Handler | None:
    for cls in type(module).__mro__:
        if cls in MODULE_HANDLERS:
            return MODULE_HANDLERS[cls]
    return None


def _first_map(ctx: WalkContext, node: fx.Node) -> ChanMap:
    return ctx.require_map(node, node.args[0] if node.args else next(iter(node.kwargs.values())))


def _consume(ctx: WalkContext, x: ChanMap) -> None:
    """A layer reads ``x``: channels that would not be zero once removed cannot be removed."""
    if not x.zero_safe:
        ctx.fix(x.ids, "feeds a layer through an op that maps 0 to a non-zero value (e.g. sigmoid)")


# --- parametric layers -------------------------------------------------------------------------------------------
@register(modules=(nn.Conv1d, nn.Conv2d, nn.Conv3d))
def _conv(ctx: WalkContext, node: fx.Node) -> ChanMap:
    conv = ctx.module(node)
    x = _first_map(ctx, node)
    if x.axis != 1 or len(x.ids) != conv.in_channels:
        ctx.refuse(node, "its input channel axis is not the tracked channel axis")
    _consume(ctx, x)
    out_shape = ctx.shape(node)
    coef = math.prod(out_shape[2:]) * math.prod(conv.kernel_size)
    layer = Layer(node.target, "conv")
    if conv.groups == 1:
        out = ctx.new(conv.out_channels)
        layer.ties = [Tie("weight", 0, out, "out"), Tie("weight", 1, x.ids, "in")]
        layer.macs_coef, layer.macs_dims = coef, [x.ids, out]
    elif conv.groups == conv.in_channels == conv.out_channels:  # depthwise: channel i only reads channel i
        out = x.ids
        layer.kind = "depthwise"
        layer.ties = [Tie("weight", 0, out, "out")]
        layer.macs_coef, layer.macs_dims = coef, [out]
    else:  # grouped convs keep their width: pruning would have to keep the group structure
        reason = f"grouped convolution '{node.target}' (groups={conv.groups})"
        ctx.fix(x.ids, reason)
        out = ctx.new(conv.out_channels, fixed=reason)
        layer.kind = "grouped"
        layer.macs_coef = coef * conv.in_channels // conv.groups * conv.out_channels
    if conv.bias is not None:
        layer.ties.append(Tie("bias", 0, out, "out"))
    layer.producer_ids = out
    ctx.add_layer(node, layer)
    return ChanMap(1, out)


@register(modules=(nn.Linear,))
def _linear(ctx: WalkContext, node: fx.Node) -> ChanMap:
    lin = ctx.module(node)
    x = _first_map(ctx, node)
    rank = len(ctx.shape(node.args[0]))
    if x.axis != rank - 1 or len(x.ids) != lin.in_features:
        ctx.refuse(node, "the Linear layer does not act on the tracked channel axis")
    _consume(ctx, x)
    out = ctx.new(lin.out_features)
    ties = [Tie("weight", 0, out, "out"), Tie("weight", 1, x.ids, "in")]
    if lin.bias is not None:
        ties.append(Tie("bias", 0, out, "out"))
    coef = math.prod(ctx.shape(node)[1:-1])
    ctx.add_layer(node, Layer(node.target, "linear", ties, coef, [x.ids, out], out))
    return ChanMap(x.axis, out)


@register(modules=(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
def _batchnorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """Zero-safe out when affine (masking zeroes gamma and beta: a removed channel leaves as 0 whatever came in);
    without affine parameters a removed channel leaves as ``(x - 0) / sqrt(var + eps)``: zero only if ``x`` is."""
    bn = ctx.module(node)
    x = _first_map(ctx, node)
    if x.axis != 1:
        ctx.refuse(node, "batch norm does not act on the tracked channel axis")
    ties = [Tie(name, 0, x.ids, "out") for name in ("weight", "bias", "running_mean") if getattr(bn, name) is not None]
    if bn.running_var is not None:
        ties.append(Tie("running_var", 0, x.ids, "stat"))
    ctx.add_layer(node, Layer(node.target, "norm", ties))
    affine = bn.weight is not None and bn.bias is not None
    return ChanMap(1, x.ids, zero_safe=affine or x.zero_safe)


@register(modules=(nn.GroupNorm, nn.LocalResponseNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d))
def _channel_mixing_norm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = _first_map(ctx, node)
    module = ctx.module(node)
    if getattr(module, "weight", None) is not None or getattr(module, "running_mean", None) is not None:
        ctx.refuse(node, "normalization layers with per-channel parameters other than BatchNorm are not supported")
    ctx.fix(x.ids, f"normalized together by {type(module).__name__} '{node.target}'")
    return x


@register(modules=(nn.LayerNorm,))
def _layernorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """A LayerNorm over trailing non-channel axes maps an all-zero channel to its bias (its parameters are not per
    channel, so masking cannot zero them): zero-safe out only without a bias and with a zero-safe input."""
    x = _first_map(ctx, node)
    ln = ctx.module(node)
    rank = len(ctx.shape(node))
    if x.axis >= rank - len(ln.normalized_shape):
        ctx.refuse(node, "LayerNorm normalizes over the channel axis")
    return ChanMap(x.axis, x.ids, zero_safe=x.zero_safe and ln.bias is None)


# --- elementwise and shape-preserving ops ------------------------------------------------------------------------
ZERO_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Tanh, nn.ELU, nn.Mish, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, StochasticDepth,
)
ZERO_PRESERVING_FUNCTIONS = (
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.silu, F.gelu, F.hardswish, F.elu, F.mish, torch.relu, torch.relu_,
    torch.tanh, F.dropout, torch.clone,
)
# pooling and resizing: how many trailing dims each acts on (None: every dim after the first two, (N, C, *spatial))
SPATIAL_OPS: dict[Any, int | None] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.Upsample: None, F.max_pool1d: 1, F.max_pool2d: 2,
    F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1,
    F.adaptive_avg_pool2d: 2, F.adaptive_max_pool2d: 2, F.interpolate: None,
}
ZERO_PRESERVING_METHODS = ("relu", "relu_", "tanh", "contiguous", "clone", "detach", "float", "to", "type_as")
NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
NONZERO_FUNCTIONS = (torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, torch.exp)
NONZERO_METHODS = ("sigmoid", "sigmoid_", "exp")


def _same_rank(ctx: WalkContext, node: fx.Node, x: ChanMap) -> None:
    if len(ctx.shape(node)) != len(ctx.shape(node.args[0])):
        ctx.refuse(node, "the op changes the tensor rank")


@register(ZERO_PRESERVING_MODULES, ZERO_PRESERVING_FUNCTIONS, ZERO_PRESERVING_METHODS)
def _passthrough(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = _first_map(ctx, node)
    _same_rank(ctx, node, x)
    return x


@register(modules=[k for k in SPATIAL_OPS if isinstance(k, type)],
          functions=[k for k in SPATIAL_OPS if not isinstance(k, type)])
def _spatial(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """Pooling and resizing map zeros to zeros, and pass channels through only when the channel axis is not one of
    the trailing dims they act on (a 1d pool over a flattened ``(N, C)`` tensor would mix the channels)."""
    x = _first_map(ctx, node)
    _same_rank(ctx, node, x)
    rank = len(ctx.shape(node))
    op = type(ctx.module(node)) if node.op == "call_module" else node.target
    dims = next((SPATIAL_OPS[k] for k in getattr(op, "__mro__", (op,)) if k in SPATIAL_OPS), None) or rank - 2
    if x.axis >= rank - dims:
        ctx.refuse(node, "it pools or resizes along the channel axis")
    return x


@register(NONZERO_MODULES, NONZERO_FUNCTIONS, NONZERO_METHODS)
def _passthrough_nonzero(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = _first_map(ctx, node)
    _same_rank(ctx, node, x)
    return ChanMap(x.axis, x.ids, zero_safe=False)


@register(modules=(nn.Softmax, nn.LogSoftmax), functions=(F.softmax, F.log_softmax, torch.softmax), methods=("softmax",))
def _softmax(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = _first_map(ctx, node)
    dim = ctx.module(node).dim if node.op == "call_module" else node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    rank = len(ctx.shape(node))
    if dim is None or dim % rank == x.axis:
        ctx.fix(x.ids, f"normalized together by softmax at '{node.name}'")
    return ChanMap(x.axis, x.ids, zero_safe=False)


# --- broadcasting binary ops -------------------------------------------------------------------------------------
ADD_LIKE = (operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub)
MUL_LIKE = (operator.mul, operator.imul, torch.mul)
DIV_LIKE = (operator.truediv, operator.itruediv, torch.div)


def _operands(node: fx.Node) -> list[Any]:
    return list(node.args[:2]) + [v for k, v in node.kwargs.items() if k in ("other", "input")]


def _binary(ctx: WalkContext, node: fx.Node, kind: str) -> ChanMap | None:
    operands = _operands(node)
    maps = [(a, ctx.val(a)) for a in operands if isinstance(ctx.val(a), ChanMap)]
    if not maps:
        return None
    out_shape = ctx.shape(node)
    rank = len(out_shape)
    axis = {m.axis + rank - len(ctx.shape(a)) for a, m in maps}
    if len(axis) != 1:
        ctx.refuse(node, "its operands have their channels on different axes")
    axis = axis.pop()
    width = out_shape[axis]
    full = [m for _, m in maps if len(m.ids) == width]
    if not full:
        ctx.refuse(node, "the channel axis is broadcast from a single channel")
    out = full[0].ids
    for m in full[1:]:
        ctx.union(out, m.ids)
    # tensors without tracked channels that vary along the channel axis (constants, buffers)
    for a in operands:
        shape = ctx.shape(a)
        if shape is not None and not isinstance(ctx.val(a), ChanMap):
            k = axis - (rank - len(shape))
            if 0 <= k < len(shape) and shape[k] == width and width > 1:
                ctx.fix(out, f"combined with an untracked per-channel tensor at '{node.name}'")
    scalars = [a for a in operands if not isinstance(a, fx.Node) and a not in (0, 0.0, None)]
    # operands that are not the full channel map (untracked tensors, channels broadcast from one) add a non-zero
    # value to a removed channel, so a sum is zero there only when every operand is a full, zero-safe map
    broadcast = [a for a in operands if isinstance(a, fx.Node) and not (
        isinstance(ctx.val(a), ChanMap) and len(ctx.val(a).ids) == width)]
    if kind == "mul":
        zero_safe = any(m.zero_safe for m in full)  # a product with one zero factor is zero
    elif kind == "div":
        numerator = ctx.val(operands[0])
        zero_safe = isinstance(numerator, ChanMap) and numerator.zero_safe
        denominator = ctx.val(operands[1]) if len(operands) > 1 else None
        if isinstance(denominator, ChanMap):
            ctx.fix(out, f"used as a divisor at '{node.name}'")
    else:
        zero_safe = all(m.zero_safe for m in full) and not scalars and not broadcast
    return ChanMap(axis, out, zero_safe)


@register(functions=ADD_LIKE, methods=("add", "add_", "sub", "sub_"))
def _add(ctx: WalkContext, node: fx.Node) -> ChanMap | None:
    return _binary(ctx, node, "add")


@register(functions=MUL_LIKE, methods=("mul", "mul_"))
def _mul(ctx: WalkContext, node: fx.Node) -> ChanMap | None:
    return _binary(ctx, node, "mul")


@register(functions=DIV_LIKE, methods=("div", "div_"))
def _div(ctx: WalkContext, node: fx.Node) -> ChanMap | None:
    return _binary(ctx, node, "div")


# --- concatenation, padding, indexing ----------------------------------------------------------------------------
@register(functions=(torch.cat, torch.concat))
def _cat(ctx: WalkContext, node: fx.Node) -> ChanMap | None:
    parts = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    rank = len(ctx.shape(node))
    maps = [ctx.val(p) for p in parts]
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
    x = _first_map(ctx, node)
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
    return _reshape_value(ctx, node, _first_map(ctx, node))


@register(functions=(torch.mean, torch.sum, torch.amax), methods=("mean", "sum", "amax"))
def _reduce(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = _first_map(ctx, node)
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
    x = _first_map(ctx, node)
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
