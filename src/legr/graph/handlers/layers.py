"""Parametric layers and norms: where channels are produced, consumed and tied."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.graph.channels import ChanMap, Layer, Tie
from legr.graph.context import WalkContext
from legr.graph.handlers.base import consume, first_map, register


# --- parametric layers -------------------------------------------------------------------------------------------
@register(modules=(nn.Conv1d, nn.Conv2d, nn.Conv3d))
def _conv(ctx: WalkContext, node: fx.Node) -> ChanMap:
    conv = ctx.module(node)
    x = first_map(ctx, node)
    if x.axis != 1 or len(x.ids) != conv.in_channels:
        ctx.refuse(node, "its input channel axis is not the tracked channel axis")
    consume(ctx, x)
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
    x = first_map(ctx, node)
    rank = len(ctx.shape(node.args[0]))
    if x.axis != rank - 1 or len(x.ids) != lin.in_features:
        ctx.refuse(node, "the Linear layer does not act on the tracked channel axis")
    consume(ctx, x)
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
    x = first_map(ctx, node)
    if x.axis != 1:
        ctx.refuse(node, "batch norm does not act on the tracked channel axis")
    ties = [Tie(name, 0, x.ids, "out") for name in ("weight", "bias", "running_mean") if getattr(bn, name) is not None]
    if bn.running_var is not None:
        ties.append(Tie("running_var", 0, x.ids, "stat"))
    ctx.add_layer(node, Layer(node.target, "norm", ties))
    affine = bn.weight is not None and bn.bias is not None
    return ChanMap(1, x.ids, zero_safe=affine or x.zero_safe)


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


@register(functions=(F.batch_norm, torch.batch_norm))
def _functional_batchnorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``F.batch_norm`` whose per-channel tensors are attributes of one module (timm's ``BatchNormAct2d`` and other
    norm + activation modules call it with their own weight, bias and running statistics): the same rule as the
    module, the tensors tied through their owner. Per-channel tensors computed in the forward are refused."""
    x = first_map(ctx, node)
    if x.axis != 1:
        ctx.refuse(node, "batch norm does not act on the tracked channel axis")
    names = ("running_mean", "running_var", "weight", "bias")
    if node.target is torch.batch_norm:  # aten order: input, weight, bias, running_mean, running_var, ...
        names = ("weight", "bias", "running_mean", "running_var")
    given = _arguments(node, names)
    owner, attrs = _owned_tensors(ctx, node, given)
    if not attrs:  # nothing per channel: each channel normalized by its own batch statistics
        return ChanMap(1, x.ids, zero_safe=x.zero_safe)
    ties = [Tie(attr, 0, x.ids, "stat" if role == "running_var" else "out") for role, attr in attrs.items()]
    ctx.add_layer(node, Layer(owner, "norm", ties))
    affine = "weight" in attrs and "bias" in attrs
    return ChanMap(1, x.ids, zero_safe=affine or x.zero_safe)


@register(functions=(F.linear,))
def _functional_linear(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """``F.linear`` with a module's own weight and bias (timm's ``Linear`` traced through): the Linear rule."""
    x = first_map(ctx, node)
    owner, attrs = _owned_tensors(ctx, node, _arguments(node, ("weight", "bias")))
    weight_shape = ctx.shape(node.args[1] if len(node.args) > 1 else node.kwargs["weight"])
    rank = len(ctx.shape(node.args[0]))
    if "weight" not in attrs or weight_shape is None or x.axis != rank - 1 or len(x.ids) != weight_shape[1]:
        ctx.refuse(node, "the linear op does not act on the tracked channel axis with a module's weight")
    consume(ctx, x)
    out = ctx.new(weight_shape[0])
    ties = [Tie(attrs["weight"], 0, out, "out"), Tie(attrs["weight"], 1, x.ids, "in")]
    if "bias" in attrs:
        ties.append(Tie(attrs["bias"], 0, out, "out"))
    ctx.add_layer(node, Layer(owner, "linear", ties, math.prod(ctx.shape(node)[1:-1]), [x.ids, out], out))
    return ChanMap(x.axis, out)


@register(modules=(nn.GroupNorm, nn.LocalResponseNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d))
def _channel_mixing_norm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    x = first_map(ctx, node)
    module = ctx.module(node)
    if getattr(module, "weight", None) is not None or getattr(module, "running_mean", None) is not None:
        ctx.refuse(node, "normalization layers with per-channel parameters other than BatchNorm are not supported")
    ctx.fix(x.ids, f"normalized together by {type(module).__name__} '{node.target}'")
    return x


@register(modules=(nn.LayerNorm,))
def _layernorm(ctx: WalkContext, node: fx.Node) -> ChanMap:
    """A LayerNorm over trailing non-channel axes maps an all-zero channel to its bias (its parameters are not per
    channel, so masking cannot zero them): zero-safe out only without a bias and with a zero-safe input."""
    x = first_map(ctx, node)
    ln = ctx.module(node)
    rank = len(ctx.shape(node))
    if x.axis >= rank - len(ln.normalized_shape):
        ctx.refuse(node, "LayerNorm normalizes over the channel axis")
    return ChanMap(x.axis, x.ids, zero_safe=x.zero_safe and ln.bias is None)
