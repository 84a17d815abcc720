"""FBS's fast path at batch 1: only the active channels are computed, no multiply by zero.

For each gated pair (conv A -> [batch norm] -> channel-wise ops -> conv B) the predictor runs on A's input (only its
active input channels when A reads another pair's channels: the predictor's columns gathered), the winners with a
non-zero saliency are the active channels ``idx``, A runs with ``weight[idx]`` and B with ``weight[:, idx]`` (a
convolution that reads one pair and is gated by the next takes both: ``weight[idx_out][:, idx_in]``). The batch norm
right after A is folded into A's filters (``BN(conv(x))`` is a convolution with filters ``gamma / sigma * W`` and
bias ``beta - gamma * mu / sigma``, computed once and kept until a parameter changes) and the saliencies scale
whichever is smaller, A's gathered filters or its active outputs (an elementwise multiply, as a batch norm's, not a
multiply-accumulate); a batch norm after an activation is applied on the active channels with the saliencies in its
affine (`FastNorm`). When every channel of a layer is active nothing is gathered.

`build_fast` rewrites the gated network's fx graph so; the result shares every module (parameters and buffers)
with it and computes the same output up to float rounding (`tests/methods/dynamic/test_fbs.py`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.methods.dynamic.fbs import FbsGate, subsample, winners
from legr.methods.dynamic.pairs import GatedPair


class FastSelect(nn.Module):
    """The active channels of one gate for one image: (indices, their saliencies); (None, every saliency) when every
    channel is active (nothing to gather). ``in_idx``: the active input channels when the input is itself gated (the
    input then holds only those; the predictor's rows for them are gathered from its transposed weight, kept until
    the weight changes). ``nonnegative``: the input is >= 0 (an activation's output), so its mean is the paper's
    L1 mean."""

    def __init__(self, gate: FbsGate, nonnegative: bool = False) -> None:
        super().__init__()
        self.gate, self.nonnegative = gate, nonnegative
        self._transposed: tuple[tuple, torch.Tensor] | None = None

    def _rows(self) -> torch.Tensor:
        weight = self.gate.predictor.weight
        key = (weight.data_ptr(), weight._version)
        if self._transposed is None or self._transposed[0] != key:
            self._transposed = (key, weight.detach().t().contiguous())
        return self._transposed[1]

    def forward(self, x: torch.Tensor, in_idx: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor]:
        linear = self.gate.predictor
        s = x.mean(dim=tuple(range(2, x.dim()))) if self.nonnegative else subsample(x)
        if in_idx is None:
            g = F.relu(F.linear(s, linear.weight, linear.bias)).view(-1)
        else:
            g = F.relu(torch.addmm(linear.bias, s, self._rows().index_select(0, in_idx))).view(-1)
        k = winners(self.gate.density, g.shape[0])
        if k == g.shape[0] and float(g.detach().min()) > 0.0:
            return None, g
        values, index = g.topk(k)
        if float(values[-1].detach()) <= 0.0:  # winners of saliency 0: the active ones are a prefix
            n = int((values > 0).sum())
            index, values = index[:n], values[:n]
        return index, values

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_transposed": None}


class Workspace:
    """Reused memory for the gathered filters of one fast path (two slots: the active filters, then their active
    input channels). A fresh multi-megabyte tensor per convolution and image costs its page faults each time (on
    VGG-16 at density 0.75 a third of the forward); the convolutions of one forward run one after the other, so one
    pair of slots serves them all. Used without autograd only (an in-place reuse would corrupt a saved tensor); one
    forward at a time per network."""

    def __init__(self) -> None:
        self.slots: list[torch.Tensor | None] = [None, None]

    def take(self, slot: int, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor | None:
        """A tensor of ``shape`` in slot ``slot`` (None under autograd: the caller allocates)."""
        if torch.is_grad_enabled():
            return None
        n = math.prod(shape)
        held = self.slots[slot]
        if held is None or held.numel() < n or held.dtype != like.dtype or held.device != like.device:
            held = self.slots[slot] = torch.empty(max(n, held.numel() if held is not None else 0), dtype=like.dtype,
                                                  device=like.device)
        return held[:n].view(*shape)


def gather(weight: torch.Tensor, dim: int, idx: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """``weight.index_select(dim, idx)``, into ``out`` when given."""
    if out is None:
        return weight.index_select(dim, idx)
    return torch.index_select(weight, dim, idx, out=out)


class FastConv(nn.Module):
    """A convolution computing only output channels ``out_idx`` from the input channels ``in_idx`` (None: all), its
    output channels times ``scale`` (None: 1), the batch norm ``norm`` (eval mode) folded in when given. No active
    output channel: an empty tensor; no active input channel: the bias alone (torch refuses convolutions without
    channels, and there is nothing to multiply)."""

    def __init__(self, conv: nn.Conv2d, norm: nn.BatchNorm2d | None = None, workspace: Workspace | None = None
                 ) -> None:
        super().__init__()
        self.conv, self.norm, self.workspace = conv, norm, workspace or Workspace()
        self._folded: tuple[tuple, torch.Tensor, torch.Tensor | None] | None = None

    def _filters(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The convolution's weight and bias, with the batch norm folded in (recomputed when a tensor changed)."""
        conv, norm = self.conv, self.norm
        if norm is None:
            return conv.weight, conv.bias
        tensors = (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
        key = tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors) + (norm.eps,)
        if self._folded is None or self._folded[0] != key:
            with torch.no_grad():
                factor = (norm.running_var + norm.eps).rsqrt()
                if norm.weight is not None:
                    factor = factor * norm.weight
                shift = -norm.running_mean * factor
                if conv.bias is not None:
                    shift = shift + conv.bias * factor
                if norm.bias is not None:
                    shift = shift + norm.bias
                weight = conv.weight * factor.view(-1, *([1] * (conv.weight.dim() - 1)))
            self._folded = (key, weight, shift)
        return self._folded[1], self._folded[2]

    def forward(self, x: torch.Tensor, in_idx: torch.Tensor | None, out_idx: torch.Tensor | None,
                scale: torch.Tensor | None = None) -> torch.Tensor:
        weight, bias = self._filters()
        if out_idx is not None:  # the active filters first (contiguous rows), then their active input channels
            shape = (len(out_idx), *weight.shape[1:])
            weight = gather(weight, 0, out_idx, self.workspace.take(0, shape, weight))
        if in_idx is not None:
            shape = (weight.shape[0], len(in_idx), *weight.shape[2:])
            weight = gather(weight, 1, in_idx, self.workspace.take(1, shape, weight))
        if out_idx is not None and bias is not None:
            bias = bias.index_select(0, out_idx)
        size = conv_output_size(self.conv, x.shape[2:])
        if weight.shape[0] == 0 or weight.shape[1] == 0:
            out = x.new_zeros((x.shape[0], weight.shape[0], *size))
            out = out if bias is None else out + bias.view(1, -1, 1, 1)
            return out if scale is None else out * scale.view(1, -1, 1, 1)
        if scale is None:
            return self.conv._conv_forward(x, weight, bias)
        if math.prod(size) <= weight[0].numel():  # the saliencies scale whichever is smaller: outputs or filters
            return self.conv._conv_forward(x, weight, bias).mul_(scale.view(1, -1, *([1] * len(size))))
        weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        return self.conv._conv_forward(x, weight, bias * scale if bias is not None else None)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_folded": None, "workspace": Workspace()}


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
    """A batch norm (eval mode) over channels ``idx`` only (None: all), each scaled by its saliency."""

    def __init__(self, norm: nn.BatchNorm2d) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, y: torch.Tensor, idx: torch.Tensor | None, scale: torch.Tensor | None) -> torch.Tensor:
        n = self.norm
        if idx is not None and idx.numel() == 0:
            return y  # no active channel (torch's batch norm refuses an empty one)
        pick = (lambda t: t) if idx is None else (lambda t: t.index_select(0, idx))  # noqa: E731
        if scale is None:  # (a gate that only selects: RNP's)
            weight, bias = (None if t is None else pick(t) for t in (n.weight, n.bias))
        else:
            weight = scale if n.weight is None else pick(n.weight) * scale
            bias = None if n.bias is None else pick(n.bias) * scale
        return F.batch_norm(y, pick(n.running_mean), pick(n.running_var), weight, bias, False, 0.0, n.eps)


def build_fast(masked: fx.GraphModule, pairs: Sequence[GatedPair], select: Callable[..., nn.Module] = FastSelect,
               name: str = "fbs") -> fx.GraphModule:
    """The fast path of a gated network (`fbs.build_masked`'s ``masked``, or any `fbs.insert_gates` network whose
    gates are ``<name>.<i>``), sharing its modules. ``select(gate, nonnegative)`` makes the module that gives a
    gate's (active indices or None, scales or None) from the producer's input and its active input channels."""
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
        modules[f"fbs_fast.select{i}"] = select(masked.get_submodule(f"{name}.{i}"), _nonnegative(masked, a.args[0]))
        with graph.inserting_before(a):
            sel = graph.call_module(f"fbs_fast.select{i}", (a.args[0], in_idx))
            selected[i] = (graph.call_function(operator.getitem, (sel, 0)),
                           graph.call_function(operator.getitem, (sel, 1)))
    # the gate (and the batch norm right after the producer) folded into the producer, else a FastNorm
    folded = {i for i, p in enumerate(pairs)
              if p.norm_node is None or node[p.norm_node].args[0] is node[p.producer_node]}
    for i, p in enumerate(pairs):
        gate = next(n for n in graph.nodes if n.op == "call_module" and n.target == f"{name}.{i}")
        if p.norm_node is not None:
            norm = node[p.norm_node]
            if i in folded:
                norm.replace_all_uses_with(norm.args[0])
            else:
                idx, scale = selected[i]
                modules[f"fbs_fast.norm{i}"] = FastNorm(masked.get_submodule(norm.target))
                with graph.inserting_before(norm):
                    new = graph.call_module(f"fbs_fast.norm{i}", (norm.args[0], idx, scale))
                norm.replace_all_uses_with(new)
            graph.erase_node(norm)
        gate.replace_all_uses_with(gate.args[0])
        graph.erase_node(gate)
    workspace = Workspace()
    by_conv: dict[str, dict[str, int]] = {}
    for i, p in enumerate(pairs):
        by_conv.setdefault(p.producer_node, {})["out"] = i
        by_conv.setdefault(p.consumer_node, {})["in"] = i
    for name, roles in by_conv.items():
        old = node[name]
        target = f"fbs_fast.conv_{name}"
        out = roles.get("out")
        norm = pairs[out].norm if out is not None and out in folded else None
        modules[target] = FastConv(masked.get_submodule(old.target), masked.get_submodule(norm) if norm else None,
                                   workspace)
        in_idx = selected[roles["in"]][0] if "in" in roles else None
        out_idx, scale = selected[out] if out is not None else (None, None)
        with graph.inserting_before(old):
            new = graph.call_module(target, (old.args[0], in_idx, out_idx, scale if out in folded else None))
        old.replace_all_uses_with(new)
        graph.erase_node(old)
    for n in graph.nodes:
        if n.op in ("call_module", "get_attr") and n.target not in modules:
            modules[n.target] = masked.get_submodule(n.target) if n.op == "call_module" else _attr(masked, n.target)
    graph.lint()
    fast = fx.GraphModule(modules, graph)
    return fast.train(masked.training)


def _nonnegative(gm: fx.GraphModule, node: Any) -> bool:
    """Whether the value of ``node`` is >= 0 by construction: a ReLU's output, or a pooling of one."""
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        if isinstance(module, (nn.ReLU, nn.ReLU6)):
            return True
        return isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)) and _nonnegative(gm, node.args[0])
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, F.relu6):
            return True
        return node.target in (F.max_pool2d, F.avg_pool2d) and _nonnegative(gm, node.args[0])
    return node.op == "call_method" and node.target in ("relu", "relu_")


def _attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj
