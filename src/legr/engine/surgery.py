"""Apply a keep vector to a network: physically (a smaller module) or as masks (zeros, same shapes).

The physical route slices every tied parameter/buffer of a deep copy of the analysed graph module, updates the
module attributes (in/out channels, groups, features) and rewrites channel-dependent literals (e.g. the channel
padding of an option-A shortcut); a module whose rule asks for it is first folded into a plain form (a
weight-standardized convolution into `StandardizedConv2d`). The result is an ordinary `torch.fx.GraphModule` whose
parameter names match the original model's, so it trains, exports and saves like any module.
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.graph import ChannelGraph, compensation

# After slicing, bring a module's attributes in line with its new parameter shapes.
FIXUPS: dict[type, Callable[[nn.Module], None]] = {}


def _fix_conv(m: nn.modules.conv._ConvNd) -> None:
    if m.groups > 1 and m.groups == m.in_channels == m.out_channels:
        m.groups = m.in_channels = m.out_channels = m.weight.shape[0]
    else:
        m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups


def _fix_linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


def _fix_norm(m: nn.modules.batchnorm._NormBase) -> None:
    """A norm with neither affine parameters nor running statistics holds nothing per channel to resize."""
    sized = m.running_mean if m.running_mean is not None else m.weight
    if sized is not None:
        m.num_features = sized.shape[0]


def _fix_group_norm(m: nn.GroupNorm) -> None:
    size = m.num_channels // m.num_groups  # whole groups are removed
    m.num_channels = m.weight.shape[0]
    m.num_groups = m.num_channels // size


FIXUPS.update({nn.GroupNorm: _fix_group_norm, nn.Conv1d: _fix_conv, nn.Conv2d: _fix_conv, nn.Conv3d: _fix_conv,
               nn.Linear: _fix_linear, nn.BatchNorm1d: _fix_norm, nn.BatchNorm2d: _fix_norm, nn.BatchNorm3d: _fix_norm,
               nn.InstanceNorm1d: _fix_norm, nn.InstanceNorm2d: _fix_norm, nn.InstanceNorm3d: _fix_norm})


def _fixup(module: nn.Module) -> None:
    for cls in type(module).__mro__:
        if cls in FIXUPS:
            FIXUPS[cls](module)
            return


class StandardizedConv2d(nn.Conv2d):
    """A weight-standardized convolution folded for pruning: ``weight`` holds the filters as standardized (and
    scaled) over the source's full fan-in, used times the per-filter ``gain`` when the source had one."""

    def __init__(self, source: nn.Conv2d) -> None:
        super().__init__(source.in_channels, source.out_channels, source.kernel_size, source.stride, source.padding,
                         source.dilation, source.groups, source.bias is not None, source.padding_mode,
                         device=source.weight.device, dtype=source.weight.dtype)
        with torch.no_grad():
            w = source.weight
            standardized = F.batch_norm(w.reshape(1, w.shape[0], -1), None, None, training=True, momentum=0.0,
                                        eps=source.eps).reshape_as(w)
            self.weight.copy_(standardized * getattr(source, "scale", 1.0))
            if source.bias is not None:
                self.bias.copy_(source.bias)
        gain = getattr(source, "gain", None)
        self.gain = nn.Parameter(gain.detach().clone()) if gain is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.gain if self.gain is not None else self.weight, self.bias)


# Modules replaced before their parameters are sliced (`Layer.fold` names the rule).
FOLDS: dict[str, Callable[[nn.Module], nn.Module]] = {"weight_standardization": StandardizedConv2d}


def _fold(gm: fx.GraphModule, name: str, rule: str) -> nn.Module:
    parent, _, attr = name.rpartition(".")
    folded = FOLDS[rule](gm.get_submodule(name))
    setattr(gm.get_submodule(parent), attr, folded)
    return folded


def prune(graph: ChannelGraph, keep: np.ndarray) -> fx.GraphModule:
    """Return a physically smaller copy of ``graph.gm`` keeping the channels where ``keep`` is 1.

    ``keep`` is checked against the analysis first (`ChannelGraph.check_keep`): a vector that removes a channel of a
    group the analysis fixed, or leaves a layer or a split piece without channels, raises `LegrError`.
    """
    keep = graph.check_keep(keep)
    shifts = compensation.shifts(graph, keep, lambda: masked_copy(graph, keep))  # removed channels' constants
    gm = copy.deepcopy(graph.gm)
    given: set[str] = set()  # layers given a bias to hold the shift
    with torch.no_grad():
        for module, tensor, value in shifts:  # folded into the next layer's bias (`legr.graph.compensation`)
            owner = gm.get_submodule(module)
            if getattr(owner, tensor) is None:
                setattr(owner, tensor, nn.Parameter(value.to(owner.weight).clone()))
                given.add(module)
            else:
                getattr(owner, tensor).add_(value.to(getattr(owner, tensor)))
        for layer in graph.layers.values():
            module = _fold(gm, layer.name, layer.fold) if layer.fold else gm.get_submodule(layer.name)
            ties = layer.ties + compensation.bias_ties(layer) if layer.name in given else layer.ties
            for param in {t.param for t in ties}:
                tensor = getattr(module, param)
                new = tensor.detach()
                for t in (t for t in ties if t.param == param):
                    index = torch.as_tensor(graph.kept_positions(t.ids, keep), device=new.device)
                    new = new.index_select(t.dim, index)
                if new.shape == tensor.shape:  # nothing removed: the tensor stays as it is (and tied, if it was)
                    continue
                if isinstance(tensor, nn.Parameter):
                    setattr(module, param, nn.Parameter(new.clone(), requires_grad=tensor.requires_grad))
                else:
                    setattr(module, param, new.clone())
            _fixup(module)
    nodes = {n.name: n for n in gm.graph.nodes}
    kept = lambda ids: int((keep[graph.classes(ids)] > 0).sum())  # noqa: E731
    for patch in graph.patches:
        patch.rewrite(nodes[patch.node_name], kept)
    gm.recompile()
    return gm


def fold_batchnorm(net: nn.Module) -> nn.Module:
    """The network as deployed: a copy in eval mode with every batch norm that is a convolution's only reader folded
    into it (`torch.fx.experimental.optimization.fuse`; equal outputs up to float rounding). ``net`` is unchanged; a
    network that is not a `torch.fx.GraphModule` (pruning always returns one) is returned as it is."""
    from torch.fx.experimental.optimization import fuse

    if not isinstance(net, fx.GraphModule):
        return net
    was_training = net.training
    try:
        return fuse(net.eval())
    except Exception as exc:  # a graph torch's pass cannot fold is timed as it is (still a valid deployment form)
        warnings.warn(f"batch norms not folded ({type(exc).__name__}: {exc}); timing the network as it is")
        return net
    finally:
        net.train(was_training)


def apply_masks_(module: nn.Module, graph: ChannelGraph, keep: np.ndarray) -> nn.Module:
    """Zero, in place, every producer weight, bias and batch-norm affine/mean entry of removed channels.

    ``module`` must have the parameter names of ``graph.gm`` (the original model, a copy of it, or graph.gm).
    In eval mode the result computes what the physically pruned network computes. ``keep`` is checked like
    `prune`'s before anything is zeroed.
    """
    keep = graph.check_keep(keep)
    with torch.no_grad():
        for layer in graph.layers.values():
            sub = module.get_submodule(layer.name)
            for t in layer.ties:
                if t.role != "out":
                    continue
                tensor = getattr(sub, t.param)
                mask = torch.as_tensor(keep[graph.classes(t.ids)], dtype=tensor.dtype, device=tensor.device)
                shape = [1] * tensor.dim()
                shape[t.dim] = -1
                tensor.mul_(mask.view(shape))
    return module


def masked_copy(graph: ChannelGraph, keep: np.ndarray) -> fx.GraphModule:
    """`apply_masks_` on a copy of ``graph.gm`` (``keep`` is checked before anything is copied)."""
    return apply_masks_(copy.deepcopy(graph.gm), graph, graph.check_keep(keep))
