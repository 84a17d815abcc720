"""The RNP network (`RnpNetwork`): the source graph with a gate after every gated pair's batch norm (`RnpGate`:
the agent's action keeps the first groups of the layer's output channels, the others are zero), the agent as its
submodule ``rnp_agent``, and the batch-1 fast path FBS's code builds (`fast.build_fast`) with RNP's selection
(`RnpSelect`: the chosen groups are a prefix of the channels, so only they are computed, and the next convolution
reads only them)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import fx, nn

from legr.graph import ChannelGraph
from legr.methods.dynamic.fast import build_fast
from legr.methods.dynamic.fbs import insert_gates
from legr.methods.dynamic.pairs import GatedPair
from legr.methods.dynamic.rnp.agent import Policy, RnpAgent, group_ends


class RnpGate(nn.Module):
    """Gated layer ``index``: asks the agent for each image's action from the pooled input ``x`` of the layer (the
    paper's global pooling of the feature map) and multiplies the channels beyond the chosen groups by 0."""

    def __init__(self, index: int, channels: int, groups: int) -> None:
        super().__init__()
        self.index, self.channels = index, channels
        self.ends = group_ends(channels, groups)

    def bind(self, agent: RnpAgent) -> None:
        object.__setattr__(self, "agent", agent)  # a reference, not a submodule (its state is the network's once)

    def active(self, actions: torch.Tensor) -> torch.Tensor:
        """(batch, channels) booleans: the first ``ends[a - 1]`` channels of each image."""
        ends = torch.as_tensor(self.ends, device=actions.device)[actions - 1]
        return torch.arange(self.channels, device=actions.device) < ends[:, None]

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        actions = self.agent.act(self.index, x.mean(dim=tuple(range(2, x.dim()))))
        mask = self.active(actions).to(y.dtype)
        return y * mask.view(*mask.shape, *([1] * (y.dim() - 2)))


class RnpSelect(nn.Module):
    """The fast path's selection for one gate at batch 1: (the active channels ``0..n-1``, or None when all are,
    no scales)."""

    def __init__(self, gate: RnpGate, nonnegative: bool = False) -> None:
        super().__init__()
        self.gate = gate

    def forward(self, x: torch.Tensor, in_idx: torch.Tensor | None) -> tuple[torch.Tensor | None, None]:
        gate = self.gate
        action = int(gate.agent.act(gate.index, x.mean(dim=tuple(range(2, x.dim()))))[0])
        n = gate.ends[action - 1]
        return (None if n == gate.channels else torch.arange(n, device=x.device)), None


class RnpNetwork(nn.Module):
    """``masked`` (every channel computed, the skipped ones multiplied by 0: training, batches > 1) and, in eval
    mode at batch 1 with ``fast_path``, the fast path over the same modules (built on first use, never saved)."""

    def __init__(self, masked: fx.GraphModule, pairs: Sequence[GatedPair], fast_path: bool = True) -> None:
        super().__init__()
        self.masked, self.pairs, self.fast_path = masked, list(pairs), fast_path

    @classmethod
    def build(cls, graph: ChannelGraph, pairs: Sequence[GatedPair], groups: int, heads: int, hidden: int,
              seed: int = 0) -> RnpNetwork:
        generator = torch.Generator().manual_seed(seed)
        agent = RnpAgent([p.in_channels for p in pairs], groups, heads, hidden, generator)
        gates = nn.ModuleList(RnpGate(i, p.out_channels, groups) for i, p in enumerate(pairs))
        masked = insert_gates(graph, pairs, gates, "rnp")
        param = next(masked.parameters(), None)
        masked.add_submodule("rnp_agent", agent.to(param.device) if param is not None else agent)
        for gate in gates:
            gate.bind(agent)
        return cls(masked, pairs)

    @property
    def agent(self) -> RnpAgent:
        return self.masked.get_submodule("rnp_agent")

    @property
    def gates(self) -> list[RnpGate]:
        return list(self.masked.get_submodule("rnp"))

    def set_policy(self, mode: str, **settings: Any) -> RnpNetwork:
        trace = self.agent.policy.trace
        self.agent.policy = Policy(mode, **settings, trace=trace)
        return self

    @property
    def fast(self) -> fx.GraphModule:
        if "_fast" not in self.__dict__:
            self.__dict__["_fast"] = build_fast(self.masked, self.pairs, select=RnpSelect, name="rnp")
        return self.__dict__["_fast"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.agent.begin()
        if self.fast_path and not self.training and x.shape[0] == 1:
            return self.fast(x)
        return self.masked(x)

    @contextmanager
    def recording(self) -> Iterator[list[tuple[int, torch.Tensor, torch.Tensor]]]:
        """While the block runs (on the masked network, every batch), every gated layer appends (layer, pooled
        input, actions) per forward to the yielded list."""
        agent, fast = self.agent, self.fast_path
        agent.policy.trace, self.fast_path = [], False
        try:
            yield agent.policy.trace
        finally:
            agent.policy.trace, self.fast_path = None, fast

    def active(self, trace: Sequence[tuple[int, torch.Tensor, torch.Tensor]]) -> list[np.ndarray]:
        """Per gated layer, (images, channels) booleans of the channels the recorded forwards computed."""
        gates = self.gates
        per_layer: list[list[np.ndarray]] = [[] for _ in gates]
        for i, _, actions in trace:
            per_layer[i].append(gates[i].active(actions).cpu().numpy())
        return [np.concatenate(a) if a else np.zeros((0, g.channels), dtype=bool) for a, g in zip(per_layer, gates)]

    def __getstate__(self) -> dict[str, Any]:  # copies rebuild their fast path over their own modules
        state = dict(self.__dict__)
        state.pop("_fast", None)
        return state
