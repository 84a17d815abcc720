"""RNP's Q-learning: rewards, the temporal-difference loss, the replay memory and one agent phase.

An episode is one image's pass through the gated layers t = 1..T: the state is what the agent has read so far (the
pooled inputs of layers 1..t, through its recurrent state), the action a_t the number of groups computed. The reward
of a step is ``-p * c_t``, ``c_t`` the fraction of the layer's output channels computed (so of its filters and of the
next convolution's input channels), and the last step adds ``-alpha * L_cls``, the image's classification loss:
Q_p(s_t, a_t) is trained towards ``r_t + gamma * max_a Q_p(s_{t+1}, a)`` (``r_T`` alone at the last layer), squared
error, for every penalty head p at once (Q-learning is off-policy: one behaviour policy feeds every head). The paper
(as far as this session could check it: its full text was not retrievable here, see README "RNP") penalizes each
computed group with -p and the last step with -alpha L_cls; ``c_t = a_t / K`` is that up to the factor K absorbed in
p (and exact MACs fractions when K does not divide C).

The replay keeps whole episodes (the recurrent state is recomputed from the stored pooled inputs with the agent's
current weights at every update, as a recurrent Q-network replays sequences) and no separate target network: the
targets are the current network's values, detached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from legr.methods.dynamic.rnp.agent import RnpAgent


def rewards(fractions: torch.Tensor, loss: torch.Tensor, penalties: torch.Tensor, alpha: float) -> torch.Tensor:
    """(episodes, layers, heads) rewards from the fractions computed (episodes, layers), the classification losses
    (episodes,) and the penalties (heads,)."""
    r = -fractions[:, :, None] * penalties[None, None, :]
    r[:, -1, :] -= alpha * loss[:, None]
    return r


def td_loss(q: torch.Tensor, actions: torch.Tensor, reward: torch.Tensor, gamma: float) -> torch.Tensor:
    """The mean squared TD error of Q-values (episodes, layers, heads, K) at the actions taken (episodes, layers;
    1..K) against ``r_t + gamma * max_a Q(s_{t+1}, a)`` (the last layer: ``r_T``), every head."""
    index = (actions - 1)[:, :, None, None].expand(-1, -1, q.shape[2], 1)
    taken = q.gather(3, index).squeeze(3)
    target = reward.clone()
    target[:, :-1] += gamma * q[:, 1:].detach().max(dim=3).values
    return F.mse_loss(taken, target)


@dataclass
class Episodes:
    """A batch of recorded episodes: pooled inputs per layer (episodes, channels), actions and fractions
    (episodes, layers), classification losses (episodes,)."""

    states: list[torch.Tensor]
    actions: torch.Tensor
    fractions: torch.Tensor
    loss: torch.Tensor

    def __len__(self) -> int:
        return len(self.loss)

    def take(self, index: torch.Tensor) -> Episodes:
        return Episodes([s[index] for s in self.states], self.actions[index], self.fractions[index], self.loss[index])


class Replay:
    """The last ``capacity`` episodes (CPU), sampled uniformly with a given generator."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.held: Episodes | None = None

    def push(self, batch: Episodes) -> None:
        batch = Episodes([s.cpu() for s in batch.states], batch.actions.cpu(), batch.fractions.cpu(), batch.loss.cpu())
        if self.held is None:
            self.held = batch
        else:
            h = self.held
            self.held = Episodes([torch.cat([a, b]) for a, b in zip(h.states, batch.states)],
                                 torch.cat([h.actions, batch.actions]), torch.cat([h.fractions, batch.fractions]),
                                 torch.cat([h.loss, batch.loss]))
        if len(self.held) > self.capacity:
            self.held = self.held.take(torch.arange(len(self.held) - self.capacity, len(self.held)))

    def sample(self, count: int, generator: torch.Generator) -> Episodes:
        assert self.held is not None, "sampling an empty replay"
        return self.held.take(torch.randint(len(self.held), (count,), generator=generator))


def q_update(agent: RnpAgent, optimizer: torch.optim.Optimizer, batch: Episodes, penalties: Sequence[float],
             alpha: float, gamma: float) -> float:
    """One gradient step of the agent on ``batch``; returns the TD loss before it."""
    device = agent.decoder.weight.device
    q = agent.q_values([s.to(device) for s in batch.states])
    p = torch.as_tensor(list(penalties), dtype=q.dtype, device=device)
    r = rewards(batch.fractions.to(device, q.dtype), batch.loss.to(device, q.dtype), p, alpha)
    loss = td_loss(q, batch.actions.to(device), r, gamma)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
