"""Removed channels that hold a constant: folded into the next layer's bias instead of freezing the channels.

A learnable scalar affine after an activation (timm's ``LearnableAffineBlock``, ``x * s + b``: PP-HGNetV2) maps a
removed channel's 0 to ``b``. Masking then leaves a constant in that channel, which the next layer reads, so the
physically pruned network must add what that constant contributed. For an affine layer (a dense convolution or a
linear layer) reading a channel that holds one input-independent value at every position (`ChanMap.constant`) the
contribution is one value per output channel, exactly when nothing pads the input with zeros (a padded 3x3
convolution reads the constant inside the image and zeros at its border: not a per-channel shift). It is added to
the layer's bias, or, when the layer has none and its only reader is a batch norm, subtracted from that norm's
running mean (in training mode the batch mean absorbs it). A torch.nn convolution or linear layer with neither is
given a bias holding it (a plan that removes such channels adds the layer's kept output count to the parameters:
`legr.engine.cost`). Anything else (a functional conv or linear op without a bias) keeps the channels.

The analysis records each such layer (`consumer`); surgery asks `shifts` for the values, measured on the masked
network (one forward pass on a random input, the removed channels' part of the layer's input run through the layer
alone), and adds them before slicing. A shift that is not one value per output channel is refused (`LegrError`),
never applied.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.errors import LegrError
from legr.graph.channels import ChanMap, Compensation, Layer, Tie
from legr.graph.context import WalkContext

_FUNCTIONAL_BN = (F.batch_norm, torch.batch_norm)
_GIVEN_A_BIAS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # their forward adds ``self.bias`` once it is set


def consumer(ctx: WalkContext, node: fx.Node, x: ChanMap, bias: tuple[str, str] | None, out_axis: int,
             padded: bool) -> bool:
    """The affine layer ``node`` reads ``x``, whose removed channels hold a constant: record a compensation and
    return True when it is exact (no zero padding; a bias, a batch norm alone after the layer, or a bias the layer
    is given, to take it)."""
    if not x.constant or padded:
        return False
    target = (bias[0], bias[1], 1.0) if bias is not None else _batch_norm_after(node)
    created = target is None and node.op == "call_module" and type(ctx.module(node)) in _GIVEN_A_BIAS
    if created:
        target = (str(node.target), "bias", 1.0)
    if target is None:
        return False
    ctx.compensations.append(Compensation(node.name, x.ids, x.axis, out_axis, *target, created))
    return True


def bias_ties(layer: Layer) -> list[Tie]:
    """The ties of the bias a compensation gives ``layer`` (`Compensation.created`): its filters' output channels."""
    return [Tie("bias", 0, t.ids, "out") for t in layer.ties if t.param == "weight" and t.dim == 0]


def _batch_norm_after(node: fx.Node) -> tuple[str, str, float] | None:
    """(module, "running_mean", -1) of the batch norm that alone reads ``node`` along axis 1, ("", "", 0) when it
    normalizes with batch statistics only, None when there is none."""
    users = list(node.users)
    if len(users) != 1 or not users[0].args or users[0].args[0] is not node:
        return None
    user = users[0]
    if user.op == "call_module":
        module = user.graph.owning_module.get_submodule(str(user.target))
        if not isinstance(module, nn.modules.batchnorm._BatchNorm):
            return None
        return (str(user.target), "running_mean", -1.0) if module.running_mean is not None else ("", "", 0.0)
    if user.op == "call_function" and user.target in _FUNCTIONAL_BN:
        index = 1 if user.target is F.batch_norm else 3  # torch.batch_norm: input, weight, bias, running_mean, ..
        mean = user.args[index] if len(user.args) > index else user.kwargs.get("running_mean")
        if mean is None:
            return "", "", 0.0
        if isinstance(mean, fx.Node) and mean.op == "get_attr":
            owner, _, attr = str(mean.target).rpartition(".")
            return owner, attr, -1.0
    return None


def zero_padded(padding: Any, kernel: tuple[int, ...], mode: str = "zeros") -> bool:
    """Whether a convolution with these settings reads zeros beyond its input's border."""
    if mode != "zeros":
        return False  # reflect / replicate / circular padding repeats the constant
    if isinstance(padding, str):
        return padding != "valid" and any(k > 1 for k in kernel)
    return any(int(p) != 0 for p in (padding if isinstance(padding, (list, tuple)) else [padding]))


class _Capture(fx.Interpreter):
    """Runs the masked network and, at each compensated layer, its removed inputs' contribution to its output."""

    def __init__(self, gm: fx.GraphModule, graph: Any, keep: np.ndarray, todo: list[Compensation]) -> None:
        super().__init__(gm)
        self.channels, self.keep = graph, keep
        self.todo = {c.node: c for c in todo}
        self.found: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node) -> Any:
        comp = self.todo.get(n.name)
        if comp is not None:  # before the node runs: an in-place op later must not change what it read
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            call: Callable = self.module.get_submodule(str(n.target)) if n.op == "call_module" else n.target
            x = args[0]
            removed = self.keep[self.channels.classes(comp.in_ids)] == 0
            removed = torch.as_tensor(removed, dtype=x.dtype, device=x.device)
            shape = [1] * x.dim()
            shape[comp.in_axis] = -1
            part = x * removed.view(shape)
            self.found[n.name] = call(part, *args[1:], **kwargs) - call(torch.zeros_like(part), *args[1:], **kwargs)
        return super().run_node(n)


def shifts(graph: Any, keep: np.ndarray, masked: Callable[[], fx.GraphModule]) -> list[tuple[str, str, torch.Tensor]]:
    """``(module, tensor, value)`` to add to each compensating tensor before the plan ``keep`` is sliced, measured on
    ``masked()`` (the masked network, built only when some compensated layer loses an input channel)."""
    todo = [c for c in graph.compensations if c.module and (keep[graph.classes(c.in_ids)] == 0).any()]
    if not todo:
        return []
    net = masked().eval()
    param = next(net.parameters(), None)
    x = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(0))
    x = x.to(dtype=getattr(param, "dtype", None), device=getattr(param, "device", None))
    capture = _Capture(net, graph, keep, todo)
    with torch.no_grad():
        capture.run(x)
    out = []
    for comp in todo:
        d = capture.found[comp.node]
        d = d.movedim(comp.out_axis, 0).reshape(d.shape[comp.out_axis], -1)
        value = d[:, 0]
        if (d - value[:, None]).abs().max().item() > 1e-4 * (1.0 + d.abs().max().item()):
            raise LegrError(f"internal error: the removed channels read at node '{comp.node}' do not contribute one "
                            "value per output channel; nothing was pruned (please report this model)")
        out.append((comp.module, comp.tensor, comp.sign * value))
    return out
