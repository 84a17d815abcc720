"""Parametric layers and norms: where channels are produced, consumed and tied."""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.graph.channels import ChanMap, Layer, Tie
from legr.graph.compensation import zero_padded
from legr.graph.context import Patch, WalkContext
from legr.graph.handlers.base import MODULE_HANDLERS, consume, first_map, register


# --- parametric layers -------------------------------------------------------------------------------------------
@register(modules=(nn.Conv1d, nn.Conv2d, nn.Conv3d))
def _conv(ctx: WalkContext, node: fx.Node) -> ChanMap:
    conv = ctx.module(node)
    x = first_map(ctx, node)
    if x.axis != 1 or len(x.ids) != conv.in_channels:
        across = x.axis == len(ctx.shape(node.args[0])) - 1  # ECA: a Conv1d over (N, 1, C)
        ctx.refuse(node, "it convolves along the channel axis (an efficient-channel-attention gate: each channel's "
                         "gate reads its neighbours)" if across else "its input channel axis is not the tracked "
                         "channel axis")
    out_shape = ctx.shape(node)
    coef = math.prod(out_shape[2:]) * math.prod(conv.kernel_size) * ctx.per_image(out_shape)
    layer = Layer(node.target, "conv")
    if conv.groups == 1:
        own = type(conv).__module__.startswith("torch.nn")  # a subclass may pad in its forward (timm's *Same)
        consume(ctx, x, node, (node.target, "bias") if conv.bias is not None else None, 1,
                not own or zero_padded(conv.padding, conv.kernel_size, conv.padding_mode))
        out = ctx.new(conv.out_channels)
        layer.ties = [Tie("weight", 0, out, "out"), Tie("weight", 1, x.ids, "in")]
        layer.macs_coef, layer.macs_dims = coef, [x.ids, out]
    elif conv.groups == conv.in_channels == conv.out_channels:  # depthwise: channel i only reads channel i (masked
        out = x.ids  # with it, so whatever a removed channel holds, it leaves as 0)
        layer.kind = "depthwise"
        layer.ties = [Tie("weight", 0, out, "out")]
        layer.macs_coef, layer.macs_dims = coef, [out]
    else:  # grouped convs keep their width: pruning would have to keep the group structure
        consume(ctx, x)
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


@register(functions=(F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d))
def _functional_conv(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``F.conv2d`` with one module's own weight and bias (timm's ``Conv2dSame``: the TF "same" padding computed in
    the forward, an ``F.pad`` of the spatial axes, then the functional conv on its weight): the convolution rule,
    the tensors tied through their owner. A depthwise one has its literal group count rewritten to the kept count;
    a grouped one keeps its width. Weights computed in the forward, or owned by several modules, are refused."""
    x = first_map(ctx, node)
    given = _arguments(node, ("weight", "bias", "stride", "padding", "dilation", "groups"))
    owner, attrs = _owned_tensors(ctx, node, {k: given.get(k) for k in ("weight", "bias")})
    groups = given.get("groups", 1)
    if "weight" not in attrs or not isinstance(groups, int):
        ctx.refuse(node, "the convolution's weight is not a module's parameter, or its group count is computed")
    weight = getattr(ctx.gm.get_submodule(owner), attrs["weight"])
    out_channels, in_channels = int(weight.shape[0]), int(weight.shape[1]) * groups
    if x.axis != 1 or len(x.ids) != in_channels:
        ctx.refuse(node, "its input channel axis is not the tracked channel axis")
    out_shape = ctx.shape(node)
    coef = math.prod(out_shape[2:]) * math.prod(weight.shape[2:]) * ctx.per_image(out_shape)
    layer = Layer(owner, "conv")
    if groups == 1:
        consume(ctx, x, node, (owner, attrs["bias"]) if "bias" in attrs else None, 1,
                zero_padded(given.get("padding", 0), tuple(weight.shape[2:])))
        out = ctx.new(out_channels)
        layer.ties = [Tie(attrs["weight"], 0, out, "out"), Tie(attrs["weight"], 1, x.ids, "in")]
        layer.macs_coef, layer.macs_dims = coef, [x.ids, out]
    elif groups == in_channels == out_channels:
        out = x.ids
        layer.kind = "depthwise"
        layer.ties = [Tie(attrs["weight"], 0, out, "out")]
        layer.macs_coef, layer.macs_dims = coef, [out]

        def rewrite(n: fx.Node, kept: Callable[[np.ndarray], int]) -> None:
            if len(n.args) > 6:
                n.args = (*n.args[:6], kept(out), *n.args[7:])
            else:
                n.kwargs = {**n.kwargs, "groups": kept(out)}

        ctx.patches.append(Patch(node.name, rewrite))
    else:
        consume(ctx, x)
        reason = f"grouped convolution at {ctx.op(node)} (groups={groups})"
        ctx.fix(x.ids, reason)
        out = ctx.new(out_channels, fixed=reason)
        layer.kind = "grouped"
        layer.macs_coef = coef * in_channels // groups * out_channels
    if "bias" in attrs:
        layer.ties.append(Tie(attrs["bias"], 0, out, "out"))
    layer.producer_ids = out
    ctx.add_layer(node, layer)
    return ChanMap(1, out)


def register_library_rules() -> None:
    """Register the rules for third-party modules whose library is loaded (a model built from a library has loaded
    it; importing timm here for every analysis would cost half a second): timm's weight-standardized convolutions
    (BiT's StdConv2d, NFNets' ScaledStdConv2d). Called before each trace; registering twice changes nothing."""
    if "timm" not in sys.modules:
        return
    from timm.layers import std_conv

    names = ("StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame")
    classes = tuple(getattr(std_conv, n) for n in names if hasattr(std_conv, n))
    if classes and classes[0] not in MODULE_HANDLERS:
        register(modules=classes, leaf=True)(_standardized_conv)


def _standardized_conv(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """A convolution whose weight is standardized per filter over its fan-in before use. Removing an input channel
    would change every filter's mean and variance, so surgery first folds the module into a plain convolution holding
    the weight as standardized over the full fan-in (exact: `legr.engine.surgery.fold_standardized`), then slices it
    like any convolution; the filters' ``gain`` goes with them. The ``Same``-padding variants (padding computed in
    the forward) are not folded: they keep their input channels."""
    conv = ctx.module(node)
    foldable = type(conv).__name__ in ("StdConv2d", "ScaledStdConv2d")
    if conv.groups == 1 and not foldable:
        ctx.fix(first_map(ctx, node).ids, f"the fan-in of weight-standardized convolution '{node.target}'")
    out = _conv(ctx, node)
    layer = ctx.layers[node.target]
    gain = getattr(conv, "gain", None)
    if layer.kind != "grouped" and isinstance(gain, torch.Tensor) and gain.shape[:1] == (conv.out_channels,):
        layer.ties.append(Tie("gain", 0, out.ids, "out"))
    layer.fold = "weight_standardization" if foldable else None
    return out


@register(modules=(nn.Linear,))
def _linear(ctx: WalkContext, node: fx.Node) -> ChanMap:
    lin = ctx.module(node)
    x = first_map(ctx, node)
    rank = len(ctx.shape(node.args[0]))
    if x.axis != rank - 1 or len(x.ids) != lin.in_features:
        ctx.refuse(node, "the Linear layer does not act on the tracked channel axis")
    consume(ctx, x, node, (node.target, "bias") if lin.bias is not None else None, x.axis, False)
    out = ctx.new(lin.out_features)
    ties = [Tie("weight", 0, out, "out"), Tie("weight", 1, x.ids, "in")]
    if lin.bias is not None:
        ties.append(Tie("bias", 0, out, "out"))
    coef = math.prod(ctx.shape(node)[1:-1]) * ctx.per_image(ctx.shape(node))
    ctx.add_layer(node, Layer(node.target, "linear", ties, coef, [x.ids, out], out))
    return ChanMap(x.axis, out)


@register(modules=(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm1d, nn.InstanceNorm2d,
                   nn.InstanceNorm3d))
def _batchnorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """Batch and instance norm normalize each channel on its own. Zero-safe out when affine (masking zeroes gamma and
    beta: a removed channel leaves as 0 whatever came in); without affine parameters a removed channel leaves as
    ``(x - 0) / sqrt(var + eps)``: zero only if ``x`` is."""
    bn = ctx.module(node)
    x = first_map(ctx, node)
    if x.axis != 1:
        ctx.refuse(node, "batch norm does not act on the tracked channel axis")
    ties = [Tie(name, 0, x.ids, "out") for name in ("weight", "bias", "running_mean") if getattr(bn, name) is not None]
    if bn.running_var is not None:
        ties.append(Tie("running_var", 0, x.ids, "stat"))
    if ties:
        ctx.add_layer(node, Layer(node.target, "norm", ties))
    else:  # nothing to slice (an instance norm without affine parameters): only its width attribute changes

        def rewrite(n: fx.Node, kept: Callable[[np.ndarray], int]) -> None:
            n.graph.owning_module.get_submodule(str(n.target)).num_features = kept(x.ids)

        ctx.patches.append(Patch(node.name, rewrite))
    return _normalized(ctx, node, x, bn.weight is not None and bn.bias is not None)


def _normalized(ctx: WalkContext, node: fx.Node, x: ChanMap, affine: bool) -> ChanMap:
    """A per-channel norm maps a removed channel to 0 when masking zeroes its gamma and beta (affine); without them
    it normalizes what came in, which is non-zero after an op such as a sigmoid (one value if that was one)."""
    if affine or x.zero_safe:
        return ChanMap(1, x.ids)
    return ChanMap(1, x.ids, f"{ctx.op(node)} without affine parameters, after {x.nonzero}", x.constant)


def _owned_tensors(ctx: WalkContext, node: fx.Node, given: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """For a functional layer: the one module owning the non-None tensors ``given`` (role -> argument), and each
    role's attribute name on it. Tensors computed in the forward, or owned by several modules, are refused."""
    owners, attrs = set(), {}
    for role, arg in given.items():
        if arg is None:
            continue
        if not (isinstance(arg, fx.Node) and arg.op == "get_attr"):
            ctx.refuse(node, f"its {role} is computed in the forward, not a module's parameter or buffer")
        owner, _, attrs[role] = str(arg.target).rpartition(".")
        owners.add(owner)
    if len(owners) > 1:
        ctx.refuse(node, f"its per-channel tensors belong to different modules ({', '.join(sorted(owners))})")
    return (owners.pop() if owners else ""), attrs


def _arguments(node: fx.Node, names: tuple[str, ...]) -> dict[str, Any]:
    """``names`` bound to the node's positional arguments after the input, then its keyword arguments."""
    given = dict(zip(names, node.args[1:1 + len(names)]))
    given.update({k: v for k, v in node.kwargs.items() if k in names})
    return given


@register(functions=(F.batch_norm, torch.batch_norm, F.instance_norm, torch.instance_norm))
def _functional_batchnorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``F.batch_norm`` whose per-channel tensors are attributes of one module (timm's ``BatchNormAct2d`` and other
    norm + activation modules call it with their own weight, bias and running statistics): the same rule as the
    module, the tensors tied through their owner. Per-channel tensors computed in the forward are refused."""
    x = first_map(ctx, node)
    if x.axis != 1:
        ctx.refuse(node, "batch norm does not act on the tracked channel axis")
    names = ("running_mean", "running_var", "weight", "bias")
    if node.target in (torch.batch_norm, torch.instance_norm):  # aten order: input, weight, bias, running_mean, ...
        names = ("weight", "bias", "running_mean", "running_var")
    given = _arguments(node, names)
    owner, attrs = _owned_tensors(ctx, node, given)
    if not attrs:  # nothing per channel: each channel normalized by its own batch statistics
        return _normalized(ctx, node, x, False)
    ties = [Tie(attr, 0, x.ids, "stat" if role == "running_var" else "out") for role, attr in attrs.items()]
    ctx.add_layer(node, Layer(owner, "norm", ties))
    return _normalized(ctx, node, x, "weight" in attrs and "bias" in attrs)


@register(functions=(F.linear,))
def _functional_linear(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``F.linear`` with a module's own weight and bias (timm's ``Linear`` traced through): the Linear rule."""
    x = first_map(ctx, node)
    owner, attrs = _owned_tensors(ctx, node, _arguments(node, ("weight", "bias")))
    weight_shape = ctx.shape(node.args[1] if len(node.args) > 1 else node.kwargs["weight"])
    rank = len(ctx.shape(node.args[0]))
    if "weight" not in attrs or weight_shape is None or x.axis != rank - 1 or len(x.ids) != weight_shape[1]:
        ctx.refuse(node, "the linear op does not act on the tracked channel axis with a module's weight")
    consume(ctx, x, node, (owner, attrs["bias"]) if "bias" in attrs else None, x.axis, False)
    out = ctx.new(weight_shape[0])
    ties = [Tie(attrs["weight"], 0, out, "out"), Tie(attrs["weight"], 1, x.ids, "in")]
    if "bias" in attrs:
        ties.append(Tie(attrs["bias"], 0, out, "out"))
    coef = math.prod(ctx.shape(node)[1:-1]) * ctx.per_image(ctx.shape(node))
    ctx.add_layer(node, Layer(owner, "linear", ties, coef, [x.ids, out], out))
    return ChanMap(x.axis, out)


def _group_norm_rule(ctx: WalkContext, node: fx.Node, x: ChanMap, groups: int, owner: str,
                     attrs: dict[str, str]) -> ChanMap:
    """Group norm with per-channel ``weight``/``bias`` (timm's ``GroupNormAct``, BiT): the channels of a group are
    normalized together, so a group is removed whole (its channels are one element) and the others are unchanged;
    the group count becomes the kept count over the group size."""
    if x.axis != 1 or len(x.ids) % groups:
        ctx.refuse(node, "group norm does not act on the tracked channel axis")
    size = len(x.ids) // groups
    grid = x.ids.reshape(groups, size)
    for k in range(1, size):
        ctx.union(grid[:, 0], grid[:, k])
    ctx.add_layer(node, Layer(owner, "norm", [Tie(attr, 0, x.ids, "out") for attr in attrs.values()]))
    return _normalized(ctx, node, x, "weight" in attrs and "bias" in attrs)


@register(functions=(F.group_norm, torch.group_norm))
def _functional_groupnorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = first_map(ctx, node)
    given = _arguments(node, ("num_groups", "weight", "bias"))
    groups = given.pop("num_groups", None)
    if not isinstance(groups, int):
        ctx.refuse(node, "its group count is not known when tracing")
    owner, attrs = _owned_tensors(ctx, node, given)
    if not attrs:
        ctx.fix(x.ids, f"normalized together by the group norm at '{node.name}'")
        return x
    out = _group_norm_rule(ctx, node, x, groups, owner, attrs)
    size = len(x.ids) // groups

    def rewrite(n: fx.Node, kept: Callable[[np.ndarray], int]) -> None:
        if len(n.args) > 1:
            n.args = (n.args[0], kept(x.ids) // size, *n.args[2:])
        else:
            n.kwargs = {**n.kwargs, "num_groups": kept(x.ids) // size}

    ctx.patches.append(Patch(node.name, rewrite))
    return out


@register(modules=(nn.GroupNorm,))
def _groupnorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    module = ctx.module(node)
    if module.weight is None:
        return _channel_mixing_norm(ctx, node)
    attrs = {"weight": "weight", "bias": "bias"} if module.bias is not None else {"weight": "weight"}
    return _group_norm_rule(ctx, node, first_map(ctx, node), module.num_groups, node.target, attrs)


@register(modules=(nn.LocalResponseNorm,))
def _channel_mixing_norm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = first_map(ctx, node)
    module = ctx.module(node)
    if getattr(module, "weight", None) is not None or getattr(module, "running_mean", None) is not None:
        ctx.refuse(node, "normalization layers with per-channel parameters other than BatchNorm are not supported")
    ctx.fix(x.ids, f"normalized together by {type(module).__name__} '{node.target}'")
    return x


def _layer_norm_rule(ctx: WalkContext, node: fx.Node, x: ChanMap, dims: int, bias: bool) -> ChanMap:
    """A layer norm over the last ``dims`` axes. Over the channel axis (ConvNeXt's LayerNorm2d, channels-last
    blocks) it normalizes the channels together, so none of them can be removed without changing the others.
    Over other axes it maps an all-zero channel to its bias (its parameters are not per channel, so masking cannot
    zero them): zero-safe out only without a bias and with a zero-safe input."""
    if x.axis >= len(ctx.shape(node)) - dims:
        ctx.fix(x.ids, f"normalized together over the channel axis by the layer norm {ctx.op(node)}")
        return ChanMap(x.axis, x.ids, ctx.op(node))
    if bias:  # the bias varies along the normalized axes
        return ChanMap(x.axis, x.ids, f"{ctx.op(node)} over a non-channel axis with a bias")
    return x  # a removed channel normalized over other axes: zero if it was zero, one value (0) if it was one


@register(modules=(nn.LayerNorm,))
def _layernorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    ln = ctx.module(node)
    return _layer_norm_rule(ctx, node, first_map(ctx, node), len(ln.normalized_shape), ln.bias is not None)


@register(functions=(F.layer_norm, torch.layer_norm))
def _functional_layernorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``F.layer_norm`` (timm's and torchvision's ``LayerNorm2d``): the LayerNorm rule."""
    given = _arguments(node, ("normalized_shape", "weight", "bias"))
    shape = given.get("normalized_shape")
    if not isinstance(shape, (list, tuple, int)):
        ctx.refuse(node, "its normalized shape is not known when tracing")
    dims = 1 if isinstance(shape, int) else len(shape)
    return _layer_norm_rule(ctx, node, first_map(ctx, node), dims, given.get("bias") is not None)
