"""Channel masks that can change while a network trains (GDP's global mask ``m``): every parameter that creates a
channel (a producer's filters and bias, a norm's affine parameters: the ``out`` ties of the analysis) is used as
``W * m`` through `torch.nn.utils.parametrize`, so a masked channel outputs zeros, its weights stay as they were (no
gradient reaches them; weight decay still shrinks them a little, as in GDP's reference code) and a mask set back to
one brings the channel back with them. Running statistics are left unmasked: a norm without affine parameters turns a
masked channel's zeros into a constant in eval mode (exact in training mode, and the member is pruned physically).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from legr.graph import ChannelGraph


class ChannelMask(nn.Module):
    """The parametrization ``W -> W * mask`` (``mask``: a buffer, broadcast over the masked dims; saved with the
    network's state, so a resumed training run has the masks it stopped with)."""

    def __init__(self, shape: list[int], device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("mask", torch.ones(shape, device=device, dtype=dtype))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


class DynamicMasks:
    """Masks over the channel classes of ``graph`` on ``net`` (a network with the parameter names of ``graph.gm``,
    e.g. a copy of it), set from keep vectors with `set`; `remove` leaves the unmasked weights."""

    def __init__(self, net: nn.Module, graph: ChannelGraph) -> None:
        self.net, self.graph = net, graph
        self.entries: list[tuple[nn.Module, str, ChannelMask, list]] = []
        for layer in graph.layers.values():
            module = net.get_submodule(layer.name)
            for param in dict.fromkeys(t.param for t in layer.ties if t.role == "out"):
                tensor = getattr(module, param)
                if not isinstance(tensor, nn.Parameter):
                    continue  # a running statistic (see the module doc)
                ties = [t for t in layer.ties if t.role == "out" and t.param == param]
                shape = [tensor.shape[d] if any(t.dim == d for t in ties) else 1 for d in range(tensor.dim())]
                mask = ChannelMask(shape, tensor.device, tensor.dtype)
                parametrize.register_parametrization(module, param, mask)
                self.entries.append((module, param, mask, ties))

    def set(self, keep: np.ndarray) -> None:
        """Mask the channels where ``keep`` is 0 (and unmask the others)."""
        with torch.no_grad():
            for _, _, mask, ties in self.entries:
                values = torch.ones_like(mask.mask)
                for t in ties:
                    view = [1] * values.dim()
                    view[t.dim] = -1
                    values = values * torch.as_tensor(keep[self.graph.classes(t.ids)], dtype=values.dtype,
                                                      device=values.device).view(view)
                mask.mask.copy_(values)

    def remove(self) -> nn.Module:
        """Take the parametrizations off: the network holds its weights unmasked (masked channels as they were)."""
        for module, param, _, _ in self.entries:
            parametrize.remove_parametrizations(module, param, leave_parametrized=False)
        self.entries = []
        return self.net
