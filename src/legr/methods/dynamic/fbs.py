"""Feature Boosting and Suppression (Gao, Zhao, Dudziak, Mullins & Xu, "Dynamic Channel Pruning: Feature Boosting
and Suppression", ICLR 2019) on any network the engine analyses.

For each gated convolution (`pairs.GatedPair`) with input ``x``, a saliency predictor

    s(x) = mean over H, W of |x|          (the paper's subsampling: each channel's L1 norm / HW)
    g(x) = max(0, W s(x) + b)             (one fully connected layer; non-negative saliencies)
    pi(x) = wta_k(g(x)), k = ceil(d * C)  (k-winners-take-all at density d: the k largest kept, the others 0)

multiplies the layer's output channels where the paper does, after the batch norm and before the activation:
``y_c -> pi_c(x) * BN(conv(x))_c``. A kept channel is boosted or damped by its saliency, a suppressed one is zero,
and so is every channel whose saliency is 0 — those need not be computed (`fast`), nor the next convolution's input
channels that read them. Ties in the top-k are broken by ``torch.topk``.

`build_masked` inserts one gate call per pair into the source's fx graph (the gated channels computed and multiplied
by 0: any batch size, trainable); `network.FbsNetwork` runs it, or at batch 1 its fast path (`fast.build_fast`: only
the active channels computed). ``density`` is a run-time setting of every gate: one trained network, many operating
points.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn

from legr.graph import ChannelGraph
from legr.methods.dynamic.pairs import GatedPair


def winners(density: float, channels: int) -> int:
    """k of k-winners-take-all: ceil(density * channels), at least 1 (a density is a fraction of the channels; the
    small tolerance keeps 0.3 * 10 at 3, not 4)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    return max(1, min(channels, math.ceil(density * channels - 1e-9)))


def kwta(saliency: torch.Tensor, k: int) -> torch.Tensor:
    """k-winners-take-all per sample (rows): each row's k largest entries kept, the others set to 0. The choice is
    not differentiated (the kept entries pass their gradient, the paper's straight choice)."""
    index = saliency.topk(k, dim=1).indices
    mask = torch.zeros_like(saliency).scatter_(1, index, 1.0)
    return saliency * mask


def subsample(x: torch.Tensor) -> torch.Tensor:
    """Each channel reduced to the mean of its absolute values (batch, channels)."""
    return x.abs().mean(dim=tuple(range(2, x.dim())))


class FbsGate(nn.Module):
    """The saliency predictor of one gated convolution and its winner-take-all at ``density``; called as
    ``gate(y, x)`` with ``y`` the channels it scales (after the batch norm) and ``x`` the convolution's input.

    Initialized as the reference code does (weights N(0, 0.01), bias 1): every saliency starts near 1, so at
    density 1 the gated network starts as its source. In training mode the last saliencies are kept (``saliency``,
    before the winner-take-all) for the sparsity penalty; with ``record`` a list, each forward appends its active
    channels (boolean, batch x channels: kept and non-zero)."""

    def __init__(self, in_channels: int, out_channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.predictor = nn.Linear(in_channels, out_channels)
        with torch.no_grad():
            self.predictor.weight.normal_(0.0, 0.01, generator=generator)
            self.predictor.bias.fill_(1.0)
        self.density = 1.0
        self.saliency: torch.Tensor | None = None
        self.record: list[torch.Tensor] | None = None

    def saliencies(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.predictor(subsample(x)))

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = self.saliencies(x)
        pi = kwta(g, winners(self.density, g.shape[1]))
        self.saliency = g if self.training else None
        if self.record is not None:
            self.record.append((pi > 0).detach().cpu())
        return y * pi.view(*pi.shape, *([1] * (y.dim() - 2)))

    def extra_repr(self) -> str:
        return f"density={self.density}"


def build_masked(graph: ChannelGraph, pairs: Sequence[GatedPair], seed: int = 0) -> fx.GraphModule:
    """A copy of ``graph.gm`` with the gate of every pair inserted after its batch norm (or producer), as
    ``fbs.<i>``; the predictors are drawn with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return insert_gates(graph, pairs, nn.ModuleList(FbsGate(p.in_channels, p.out_channels, generator) for p in pairs))


def insert_gates(graph: ChannelGraph, pairs: Sequence[GatedPair], gates: nn.ModuleList, name: str = "fbs"
                 ) -> fx.GraphModule:
    """A copy of ``graph.gm`` with ``gates`` as its submodule ``name`` and gate ``i`` called as ``gate(y, x)`` right
    after pair ``i``'s batch norm (or producer), ``y`` that tensor and ``x`` the producer's input (every gated network:
    FBS's, RNP's)."""
    gm = copy.deepcopy(graph.gm)
    param = next(gm.parameters(), None)
    if param is not None:
        gates.to(device=param.device, dtype=param.dtype)
    gm.add_submodule(name, gates)
    nodes = {n.name: n for n in gm.graph.nodes}
    for i, p in enumerate(pairs):
        after, x = nodes[p.gate_after], nodes[p.producer_node].args[0]
        with gm.graph.inserting_after(after):
            gate = gm.graph.call_module(f"{name}.{i}", (after, x))
        after.replace_all_uses_with(gate, delete_user_cb=lambda user, gate=gate: user is not gate)
    gm.graph.lint()
    gm.recompile()
    return gm
