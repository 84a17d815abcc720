"""RNP's decision network (the agent) and its policies.

The paper's agent reads, at each gated layer t, the feature map entering it: global pooling, then a fully connected
*encoder* (one per layer: their widths differ) into a recurrent network shared across the layers, whose state a
*decoder* maps to Q-values over the K actions (compute the first 1..K channel groups). Here the recurrent network is
a GRU cell written out with `F.linear` (every multiply-accumulate it does is a matmul torch's `FlopCounterMode`
counts, `agent_macs`), and the decoder has one K-wide head per penalty of ``rnp.penalties`` (the paper trains one
agent per penalty; Q-learning is off-policy, so every head learns from the same episodes, each with its own
rewards — one training gives the whole family).

A policy is a plain setting of the agent (`Policy`), not part of its state: ``greedy`` (a head's argmax, capped
at ``cap`` groups: the members), ``explore`` (epsilon-greedy over a head drawn per image: training), ``fixed``
(given actions per layer: tests) or ``full`` (every group: the dense network). With ``trace`` a list, each gated
layer appends (layer, pooled input, actions) per forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


def group_ends(channels: int, groups: int) -> list[int]:
    """The channels computed by actions 1..K: ``ceil(a * C / K)``, at least 1 (groups of equal size when K divides
    C; with C < K some actions compute the same channels)."""
    return [max(1, -(-a * channels // groups)) for a in range(1, groups + 1)]


@dataclass
class Policy:
    mode: str = "full"  # full | greedy | explore | fixed
    head: int = 0
    cap: int | None = None
    epsilon: float = 0.0
    generator: torch.Generator | None = None
    fixed: Sequence[torch.Tensor] = ()
    trace: list | None = field(default=None, repr=False)


class RnpAgent(nn.Module):
    """Encoders (one per gated layer, input: that layer's input channels), a GRU cell, a decoder of ``heads x
    groups`` Q-values."""

    def __init__(self, in_channels: Sequence[int], groups: int, heads: int, hidden: int,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.groups, self.heads, self.hidden = groups, heads, hidden
        self.encoders = nn.ModuleList(nn.Linear(c, hidden) for c in in_channels)
        self.ih, self.hh = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, 3 * hidden)
        self.decoder = nn.Linear(hidden, heads * groups)
        with torch.no_grad():  # drawn with the run's seed (torch's default init draws from the global generator)
            for layer in [*self.encoders, self.ih, self.hh, self.decoder]:
                bound = layer.in_features ** -0.5
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
        self.policy = Policy()
        self._h: torch.Tensor | None = None

    def begin(self) -> None:
        """A new episode (a forward of the network): the recurrent state starts at zero."""
        self._h = None

    def cell(self, layer: int, s: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """The GRU state after layer ``layer`` with pooled input ``s``; ``s`` may hold only the first channels of
        the layer's input (the others inactive, zero: the fast path), their encoder columns are used."""
        enc = self.encoders[layer]
        e = F.relu(F.linear(s, enc.weight[:, :s.shape[1]], enc.bias))
        if h is None:
            h = s.new_zeros(s.shape[0], self.hidden)
        gi, gh = F.linear(e, self.ih.weight, self.ih.bias), F.linear(h, self.hh.weight, self.hh.bias)
        ir, iz, inn = gi.chunk(3, dim=1)
        hr, hz, hn = gh.chunk(3, dim=1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        return (1 - z) * torch.tanh(inn + r * hn) + z * h

    def head_q(self, h: torch.Tensor, head: int) -> torch.Tensor:
        """Q-values of one head (batch, K): only its rows of the decoder are computed."""
        rows = slice(head * self.groups, (head + 1) * self.groups)
        return F.linear(h, self.decoder.weight[rows], self.decoder.bias[rows])

    def all_q(self, h: torch.Tensor) -> torch.Tensor:
        """Q-values of every head (batch, heads, K)."""
        return self.decoder(h).view(-1, self.heads, self.groups)

    def act(self, layer: int, s: torch.Tensor) -> torch.Tensor:
        """The actions (batch,), 1..K, of gated layer ``layer`` for pooled inputs ``s`` under the current policy."""
        pol, n = self.policy, s.shape[0]
        if pol.mode == "full":
            actions = torch.full((n,), self.groups, dtype=torch.long, device=s.device)
        elif pol.mode == "fixed":
            actions = pol.fixed[layer].to(s.device)
        else:
            with torch.no_grad():
                self._h = self.cell(layer, s, self._h)
                if pol.mode == "greedy":
                    actions = self.head_q(self._h, pol.head).argmax(dim=1) + 1
                    if pol.cap is not None:
                        actions = actions.clamp(max=pol.cap)
                elif pol.mode == "explore":
                    actions = self._explore(self.all_q(self._h))
                else:
                    raise ValueError(f"unknown policy mode {pol.mode!r}")
        if pol.trace is not None:
            pol.trace.append((layer, s.detach(), actions.detach()))
        return actions

    def _explore(self, q: torch.Tensor) -> torch.Tensor:
        """Epsilon-greedy per image over a head drawn uniformly per image (``policy.generator``, on the CPU)."""
        pol, n = self.policy, q.shape[0]
        g = pol.generator
        heads = torch.randint(self.heads, (n,), generator=g)
        random = torch.randint(1, self.groups + 1, (n,), generator=g)
        explore = torch.rand(n, generator=g) < pol.epsilon
        greedy = q[torch.arange(n), heads.to(q.device)].argmax(dim=1).cpu() + 1
        return torch.where(explore, random, greedy).to(q.device)

    def q_values(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Q-values of every head at every layer of recorded episodes (batch, layers, heads, K), differentiable:
        ``states[t]`` the pooled inputs of gated layer t (batch, its input channels)."""
        h, out = None, []
        for layer, s in enumerate(states):
            h = self.cell(layer, s, h)
            out.append(self.all_q(h))
        return torch.stack(out, dim=1)

    def macs(self, inputs: float) -> float:
        """The multiply-accumulates of one greedy step reading ``inputs`` pooled channels: encoder, GRU, one head."""
        k = self.hidden
        return inputs * k + 6 * k * k + k * self.groups
