"""The FBS network (`FbsNetwork`): the gated fx graph (`fbs.build_masked`) and its batch-1 fast path
(`fast.build_fast`) over the same modules, at a run-time density."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import fx, nn

from legr.graph import ChannelGraph
from legr.methods.dynamic.fast import build_fast
from legr.methods.dynamic.fbs import FbsGate, build_masked, winners
from legr.methods.dynamic.pairs import GatedPair


class FbsNetwork(nn.Module):
    """The FBS network: ``masked`` (the source graph with its gates; what trains and what a batch > 1 runs) and, in
    eval mode at batch 1 when ``fast_path`` is set, the fast path over the same modules (built on first use, never
    saved: the state is ``masked``'s)."""

    def __init__(self, masked: fx.GraphModule, pairs: Sequence[GatedPair], fast_path: bool = True) -> None:
        super().__init__()
        self.masked = masked
        self.pairs = list(pairs)
        self.fast_path = fast_path

    @classmethod
    def build(cls, graph: ChannelGraph, pairs: Sequence[GatedPair], seed: int = 0) -> FbsNetwork:
        return cls(build_masked(graph, pairs, seed), pairs)

    @property
    def gates(self) -> list[FbsGate]:
        return list(self.masked.get_submodule("fbs"))

    @property
    def density(self) -> float:
        return self.gates[0].density

    def set_density(self, density: float) -> FbsNetwork:
        winners(density, 1)  # checks the range
        for gate in self.gates:
            gate.density = float(density)
        return self

    @property
    def fast(self) -> fx.GraphModule:
        if "_fast" not in self.__dict__:
            self.__dict__["_fast"] = build_fast(self.masked, self.pairs)
        return self.__dict__["_fast"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_path and not self.training and x.shape[0] == 1:
            return self.fast(x)
        return self.masked(x)

    def sparsity(self) -> torch.Tensor:
        """The paper's sparsity penalty of the last training forward: sum over gated layers of ||g(x)||_1, averaged
        over the batch (the saliencies before the winner-take-all); the kept saliencies are then released."""
        total = None
        for gate in self.gates:
            if gate.saliency is None:
                raise RuntimeError("no saliencies: the penalty follows a training-mode forward")
            term = gate.saliency.abs().sum(dim=1).mean()
            total = term if total is None else total + term
            gate.saliency = None
        return total

    def __getstate__(self) -> dict[str, Any]:  # copies rebuild their fast path over their own modules
        state = dict(self.__dict__)
        state.pop("_fast", None)
        return state
