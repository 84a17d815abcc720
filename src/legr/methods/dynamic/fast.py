"""FBS's fast path at batch 1: only the active channels are computed, no multiply by zero.

For each gated pair (conv A -> [batch norm] -> channel-wise ops -> conv B) the predictor runs on A's input (only its
active input channels when A reads another pair's channels: the predictor's columns gathered), the winners with a
non-zero saliency are the active channels ``idx`` (sorted), A runs with ``weight[idx]`` (and its bias's entries),
the batch norm with those channels' statistics and the saliencies folded into its affine (``pi * BN(y)`` is a batch
norm with weight ``gamma * pi`` and bias ``beta * pi``: the boost costs nothing), the channel-wise ops on the narrow
tensor, and B with ``weight[:, idx]``. A convolution that reads one pair and is gated by the next takes both:
``weight[idx_out][:, idx_in]``.

`build_fast` rewrites the gated network's fx graph so; the result shares every module (parameters and buffers)
with it and computes the same output up to float rounding (`tests/methods/dynamic/test_fbs.py`).
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.methods.dynamic.fbs import FbsGate, subsample, winners
from legr.methods.dynamic.pairs import GatedPair


class FastSelect(nn.Module):
    """The active channels of one gate for one image: (sorted indices, their saliencies). ``in_idx``: the active
    input channels when the input is itself gated (the input then holds only those)."""

    def __init__(self, gate: FbsGate) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: torch.Tensor, in_idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        linear = self.gate.predictor
        weight = linear.weight if in_idx is None else linear.weight.index_select(1, in_idx)
        g = F.relu(F.linear(subsample(x), weight, linear.bias))[0]
        values, index = g.topk(winners(self.gate.density, g.shape[0]))
        active = values > 0
        index, values = index[active], values[active]
        order = index.argsort()
        return index[order], values[order]


class FastConv(nn.Module):
    """A convolution computing only output channels ``out_idx`` from the input channels ``in_idx`` (None: all).
    No active output channel: an empty tensor; no active input channel: the bias alone (torch refuses convolutions
    without channels, and there is nothing to multiply)."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, in_idx: torch.Tensor | None, out_idx: torch.Tensor | None) -> torch.Tensor:
        weight, bias = self.conv.weight, self.conv.bias
        if out_idx is not None:
            weight = weight.index_select(0, out_idx)
            bias = bias.index_select(0, out_idx) if bias is not None else None
        if in_idx is not None:
            weight = weight.index_select(1, in_idx)
        if weight.shape[0] == 0 or weight.shape[1] == 0:
            out = x.new_zeros((x.shape[0], weight.shape[0], *conv_output_size(self.conv, x.shape[2:])))
            return out if bias is None else out + bias.view(1, -1, 1, 1)
        return self.conv._conv_forward(x, weight, bias)


def conv_output_size(conv: nn.Conv2d, size: Sequence[int]) -> list[int]:
    """The spatial size of ``conv``'s output for an input of spatial ``size``."""
    out = []
    for i, n in enumerate(size):
        k, s, d = conv.kernel_size[i], conv.stride[i], conv.dilation[i]
        if conv.padding == "same":
            out.append(n)
            continue
        p = 0 if conv.padding == "valid" else conv.padding[i]
        out.append((n + 2 * p - d * (k - 1) - 1) // s + 1)
    return out


class FastNorm(nn.Module):
    """A batch norm (eval mode) over channels ``idx`` only, each scaled by its saliency."""

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, y: torch.Tensor, idx: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        n = self.norm
        if idx.numel() == 0:
            return y  # no active channel (torch's batch norm refuses an empty one)
        weight = scale if n.weight is None else n.weight.index_select(0, idx) * scale
        bias = None if n.bias is None else n.bias.index_select(0, idx) * scale
        return F.batch_norm(y, n.running_mean.index_select(0, idx), n.running_var.index_select(0, idx), weight, bias,
                            False, 0.0, n.eps)


def scale_channels(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``y``'s channels times ``scale`` (the gate of a convolution without a batch norm)."""
    return y * scale.view(1, -1, *([1] * (y.dim() - 2)))


def build_fast(masked: fx.GraphModule, pairs: Sequence[GatedPair]) -> fx.GraphModule:
    """The fast path of a gated network (`fbs.build_masked`'s ``masked``), sharing its modules."""
    graph = fx.Graph()
    val_map: dict[fx.Node, fx.Node] = {}
    graph.output(graph.graph_copy(masked.graph, val_map))
    node = {old.name: new for old, new in val_map.items()}
    modules: dict[str, Any] = {}
    selected: dict[int, tuple[fx.Node, fx.Node]] = {}  # pair -> (idx, scale) nodes
    order = {n.name: i for i, n in enumerate(masked.graph.nodes)}
    for i in sorted(range(len(pairs)), key=lambda i: order[pairs[i].producer_node]):
        p = pairs[i]
        a = node[p.producer_node]
        in_idx = selected[p.source][0] if p.source is not None else None
        modules[f"fbs_fast.select{i}"] = FastSelect(masked.get_submodule(f"fbs.{i}"))
        with graph.inserting_before(a):
            sel = graph.call_module(f"fbs_fast.select{i}", (a.args[0], in_idx))
            selected[i] = (graph.call_function(operator.getitem, (sel, 0)),
                           graph.call_function(operator.getitem, (sel, 1)))
    by_conv: dict[str, dict[str, int]] = {}
    for i, p in enumerate(pairs):
        by_conv.setdefault(p.producer_node, {})["out"] = i
        by_conv.setdefault(p.consumer_node, {})["in"] = i
    for name, roles in by_conv.items():
        old = node[name]
        target = f"fbs_fast.conv_{name}"
        modules[target] = FastConv(masked.get_submodule(old.target))
        in_idx = selected[roles["in"]][0] if "in" in roles else None
        out_idx = selected[roles["out"]][0] if "out" in roles else None
        with graph.inserting_before(old):
            new = graph.call_module(target, (old.args[0], in_idx, out_idx))
        old.replace_all_uses_with(new)
        graph.erase_node(old)
    for i, p in enumerate(pairs):
        idx, scale = selected[i]
        gate = next(n for n in graph.nodes if n.op == "call_module" and n.target == f"fbs.{i}")
        y = gate.args[0]
        if p.norm_node is not None:
            old = node[p.norm_node]
            target = f"fbs_fast.norm{i}"
            modules[target] = FastNorm(masked.get_submodule(old.target))
            with graph.inserting_before(old):
                new = graph.call_module(target, (old.args[0], idx, scale))
            old.replace_all_uses_with(new)
            graph.erase_node(old)
            y = new
            gate.replace_all_uses_with(y)
        else:
            with graph.inserting_before(gate):
                scaled = graph.call_function(scale_channels, (y, scale))
            gate.replace_all_uses_with(scaled)
        graph.erase_node(gate)
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr") and n.target not in modules:
            modules[n.target] = masked.get_submodule(n.target) if n.op == "call_module" else _attr(masked, n.target)
    graph.lint()
    fast = fx.GraphModule(modules, graph)
    return fast.train(masked.training)


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
