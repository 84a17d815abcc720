"""Elementwise, pooling/resizing, softmax and broadcasting binary ops: channels pass through or merge."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops import StochasticDepth

from legr.graph.channels import ChanMap, Layer, Tie
from legr.graph.context import WalkContext
from legr.graph.handlers.base import first_map, register

# --- elementwise and shape-preserving ops ------------------------------------------------------------------------
ZERO_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.GELU, nn.Hardswish, nn.Tanh, nn.ELU, nn.Mish, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, StochasticDepth,
)
ZERO_PRESERVING_FUNCTIONS = (
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.silu, F.gelu, F.hardswish, F.elu, F.mish, torch.relu, torch.relu_,
    torch.tanh, F.dropout, torch.clone, torch.abs, torch.neg, torch.sqrt, torch.square,
)
# pooling and resizing: how many trailing dims each acts on (None: every dim after the first two, (N, C, *spatial))
SPATIAL_OPS: dict[Any, int | None] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3, nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3, nn.AdaptiveMaxPool1d: 1,
    nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3, nn.Upsample: None, F.max_pool1d: 1, F.max_pool2d: 2,
    F.max_pool3d: 3, F.avg_pool1d: 1, F.avg_pool2d: 2, F.avg_pool3d: 3, F.adaptive_avg_pool1d: 1,
    F.adaptive_avg_pool2d: 2, F.adaptive_max_pool2d: 2, F.interpolate: None,
}
ZERO_PRESERVING_METHODS = ("relu", "relu_", "tanh", "contiguous", "clone", "detach", "float", "to", "type_as", "abs",
                           "neg", "sqrt", "square")
NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
NONZERO_FUNCTIONS = (torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, torch.exp)
NONZERO_METHODS = ("sigmoid", "sigmoid_", "exp")


def _same_rank(ctx: WalkContext, node: fx.Node, x: ChanMap) -> None:
    if len(ctx.shape(node)) != len(ctx.shape(node.args[0])):
        ctx.refuse(node, "the op changes the tensor rank")


@register(ZERO_PRESERVING_MODULES, ZERO_PRESERVING_FUNCTIONS, ZERO_PRESERVING_METHODS)
def _passthrough(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = first_map(ctx, node)
    _same_rank(ctx, node, x)
    return x


@register(modules=[k for k in SPATIAL_OPS if isinstance(k, type)],
          functions=[k for k in SPATIAL_OPS if not isinstance(k, type)])
def _spatial(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """Pooling and resizing map zeros to zeros, and pass channels through only when the channel axis is not one of
    the trailing dims they act on (a 1d pool over a flattened ``(N, C)`` tensor would mix the channels)."""
    x = first_map(ctx, node)
    _same_rank(ctx, node, x)
    rank = len(ctx.shape(node))
    op = type(ctx.module(node)) if node.op == "call_module" else node.target
    dims = next((SPATIAL_OPS[k] for k in getattr(op, "__mro__", (op,)) if k in SPATIAL_OPS), None) or rank - 2
    if x.axis >= rank - dims:
        ctx.refuse(node, "it pools or resizes along the channel axis")
    if x.constant and _averages_padding(ctx, node, op):  # a constant averaged with zeros at the border
        return ChanMap(x.axis, x.ids, x.nonzero)
    return x


_AVG_POOLS = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)


def _averages_padding(ctx: WalkContext, node: fx.Node, op: Any) -> bool:
    """An average pool that counts zero padding, or divides by a fixed count: a constant is not one value after it
    (max pools pad with -inf, adaptive pools and resizes keep a constant)."""
    if not any(k in _AVG_POOLS for k in getattr(op, "__mro__", (op,))):
        return False
    if node.op == "call_module":
        module = ctx.module(node)
        padding, divisor = module.padding, getattr(module, "divisor_override", None)
    else:
        padding = node.kwargs.get("padding", node.args[3] if len(node.args) > 3 else 0)
        divisor = node.kwargs.get("divisor_override", node.args[6] if len(node.args) > 6 else None)
    paddings = padding if isinstance(padding, (list, tuple)) else [padding]
    return divisor is not None or any(not isinstance(p, int) or p != 0 for p in paddings)


@register(functions=(torch.pow, operator.pow), methods=("pow", "pow_"))
def _pow(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``x ** p`` with a positive number ``p`` known when tracing (StarReLU's ``relu(x) ** 2``, RMS norms' ``x ** 2``):
    0 stays 0, one value stays one value."""
    exponent = node.args[1] if len(node.args) > 1 else node.kwargs.get("exponent")
    if isinstance(exponent, bool) or not isinstance(exponent, (int, float)) or exponent <= 0:
        ctx.refuse(node, "its exponent is not a positive number known when tracing")
    x = first_map(ctx, node)
    _same_rank(ctx, node, x)
    return x


@register(functions=(torch.rsqrt, torch.reciprocal), methods=("rsqrt", "reciprocal"))
def _inverse(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``1 / sqrt(x)``, ``1 / x``: a removed channel would be infinite (and 0 * inf is not 0), so only channels that
    are never removed pass (an RMS norm's ``rsqrt(mean(x ** 2 over the channels) + eps)``: one fixed channel)."""
    x = first_map(ctx, node)
    _same_rank(ctx, node, x)
    fixed = {ctx.uf.find(e) for e in ctx.fixed}
    if any(ctx.uf.find(e) not in fixed for e in x.ids.tolist()):
        ctx.refuse(node, "it maps a removed channel's 0 to infinity")
    return ChanMap(x.axis, x.ids, ctx.op(node))


@register(NONZERO_MODULES, NONZERO_FUNCTIONS, NONZERO_METHODS)
def _passthrough_nonzero(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = first_map(ctx, node)
    _same_rank(ctx, node, x)
    return ChanMap(x.axis, x.ids, ctx.op(node), x.uniform)  # f(one value) is one value


@register(modules=(nn.Softmax, nn.LogSoftmax), functions=(F.softmax, F.log_softmax, torch.softmax), methods=("softmax",))
def _softmax(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = first_map(ctx, node)
    dim = ctx.module(node).dim if node.op == "call_module" else node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    rank = len(ctx.shape(node))
    if dim is None or dim % rank == x.axis:
        ctx.fix(x.ids, f"normalized together by the softmax {ctx.op(node)}")
        return ChanMap(x.axis, x.ids, ctx.op(node))
    return ChanMap(x.axis, x.ids, ctx.op(node), x.uniform)  # one value along the axis: 1 / its length


# --- broadcasting binary ops -------------------------------------------------------------------------------------
ADD_LIKE = (operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub)
MUL_LIKE = (operator.mul, operator.imul, torch.mul)
DIV_LIKE = (operator.truediv, operator.itruediv, torch.div)


def _operands(node: fx.Node) -> list[Any]:
    return list(node.args[:2]) + [v for k, v in node.kwargs.items() if k in ("other", "input")]


def merge_operands(ctx: WalkContext, node: fx.Node, operands: list[Any]) -> tuple[int, int, list[ChanMap]] | None:
    """The channels of a broadcasting op's operands merged: (channel axis of the output, output rank, the operands'
    maps that hold every channel, now one set); None when no operand has tracked channels. Refused when the operands
    have their channels on different axes, or every map is a single channel broadcast over the axis."""
    maps = [(a, ctx.val(a)) for a in operands if isinstance(ctx.val(a), ChanMap)]
    if not maps:
        return None
    out_shape = ctx.shape(node)
    rank = len(out_shape)
    axes = {m.axis + rank - len(ctx.shape(a)) for a, m in maps}
    if len(axes) != 1:
        ctx.refuse(node, "its operands have their channels on different axes")
    axis = axes.pop()
    full = [m for _, m in maps if len(m.ids) == out_shape[axis]]
    if not full:
        ctx.refuse(node, "the channel axis is broadcast from a single channel")
    for m in full[1:]:
        ctx.union(full[0].ids, m.ids)
    return axis, rank, full


def _binary(ctx: WalkContext, node: fx.Node, kind: str) -> ChanMap | None:
    operands = _operands(node)
    merged = merge_operands(ctx, node, operands)
    if merged is None:
        return None
    axis, rank, full = merged
    out = full[0].ids
    width = len(out)
    # tensors without tracked channels that vary along the channel axis: a module's per-channel parameter (a layer
    # scale ``gamma * x``, a bias ``x + beta``) is sliced with the channels; anything else keeps them
    scaled = []
    for a in operands:
        shape = ctx.shape(a)
        if shape is not None and not isinstance(ctx.val(a), ChanMap):
            k = axis - (rank - len(shape))
            if 0 <= k < len(shape) and shape[k] == width and width > 1:
                if kind == "div" or not tie_channel_parameter(ctx, a, out):
                    ctx.fix(out, f"combined with the per-channel tensor '{_tensor_name(a)}' (not pruned with the "
                                 f"channels) at {ctx.op(node)}")
                else:
                    scaled.append(a)
    scalars = [a for a in operands if not isinstance(a, fx.Node) and a not in (0, 0.0, None)]
    # operands that are not the full channel map (untracked tensors, channels broadcast from one) add a non-zero
    # value to a removed channel, so a sum is zero there only when every operand is a full, zero-safe map
    broadcast = [a for a in operands if isinstance(a, fx.Node) and a not in scaled and not (
        isinstance(ctx.val(a), ChanMap) and len(ctx.val(a).ids) == width)]
    inherited = next((m.nonzero for m in full if not m.zero_safe), None)
    # a removed channel holds one input-independent value after the op when every operand does: full maps that
    # hold one (`ChanMap.uniform`), Python numbers, parameters and constants with one value along every other axis
    constant = all(m.uniform for m in full) and all(_one_value(ctx, a, axis, rank) for a in broadcast)
    if kind == "mul":  # a product with one zero factor is zero
        nonzero = None if any(m.zero_safe for m in full) or scaled else inherited
    elif kind == "div":
        numerator = ctx.val(operands[0])
        nonzero = numerator.nonzero if isinstance(numerator, ChanMap) else f"{ctx.op(node)} with a constant numerator"
        denominator = ctx.val(operands[1]) if len(operands) > 1 else None
        if isinstance(denominator, ChanMap) and len(denominator.ids) == width:  # one shared channel: unchanged
            ctx.fix(out, f"used as a divisor at {ctx.op(node)}")
        constant = constant and isinstance(numerator, ChanMap)
    elif scalars or broadcast:
        nonzero = f"{ctx.op(node)} with a {'constant term' if scalars else 'term broadcast over the channels'}"
    else:
        nonzero = inherited
    return ChanMap(axis, out, nonzero, constant and nonzero is not None)


def _one_value(ctx: WalkContext, arg: fx.Node, axis: int, rank: int) -> bool:
    """An operand without tracked channels (a parameter, a constant, a number computed from shapes) that has one
    value along every axis but the channel axis; False for tracked channels broadcast from one (they vary with the
    input)."""
    shape = ctx.shape(arg)
    if shape is None:
        return not isinstance(ctx.val(arg), (ChanMap, list, tuple))
    if any(n != 1 for k, n in enumerate(shape) if k + rank - len(shape) != axis):
        return False
    stack, seen = [arg], set()
    while stack:  # parameters and constants only: nothing computed from a tensor of the input
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder" or ctx.val(n) is not None:
            return False
        stack.extend(n.all_input_nodes)
    return True


def _tensor_name(arg: fx.Node) -> str:
    """A tensor operand as the user knows it: the attribute it reads (``shift``, ``a.bias``) or its node's name."""
    while arg.op != "get_attr" and arg.target in _SHAPE_ONLY and len(arg.all_input_nodes) == 1:
        arg = arg.all_input_nodes[0]
    return str(arg.target) if arg.op == "get_attr" else arg.name


_SHAPE_ONLY = ("view", "reshape", "unsqueeze", "squeeze", "flatten", torch.reshape, torch.unsqueeze, torch.squeeze)


def tie_channel_parameter(ctx: WalkContext, arg: fx.Node, ids) -> bool:
    """Tie a per-channel parameter reached through shape-only ops (``gamma.reshape(1, -1, 1, 1)``) to ``ids``, as a
    producer tensor of its owner module (masked and sliced with the channels); False if ``arg`` is anything else."""
    node = arg
    while node.op != "get_attr":
        if node.target not in _SHAPE_ONLY or len(node.all_input_nodes) != 1:
            return False
        node = node.all_input_nodes[0]
    owner, _, attr = str(node.target).rpartition(".")
    param = getattr(ctx.gm.get_submodule(owner), attr)
    dims = [d for d, n in enumerate(param.shape) if n != 1]
    if not isinstance(param, nn.Parameter) or len(dims) != 1 or param.shape[dims[0]] != len(ids):
        return False
    layer = ctx.layers.get(owner)
    if layer is None:
        layer = ctx.add_layer(node, Layer(owner, "scale"))
    elif layer.kind != "scale" or any(t.param == attr for t in layer.ties):
        return False  # the owner is another kind of layer, or this parameter scales several tensors
    layer.ties.append(Tie(attr, dims[0], ids, "out"))
    return True


@register(functions=ADD_LIKE, methods=("add", "add_", "sub", "sub_"))
def _add(ctx: WalkContext, node: fx.Node) -> ChanMap | None:
    return _binary(ctx, node, "add")


@register(functions=MUL_LIKE, methods=("mul", "mul_"))
def _mul(ctx: WalkContext, node: fx.Node) -> ChanMap | None:
    return _binary(ctx, node, "mul")


@register(functions=DIV_LIKE, methods=("div", "div_"))
def _div(ctx: WalkContext, node: fx.Node) -> ChanMap | None:
    return _binary(ctx, node, "div")
