"""AMC's DDPG agent (Lillicrap et al. 2016, as He et al. use it): a deterministic actor state -> keep ratio in (0, 1),
a critic (state, action) -> Q, their target copies tracking them by soft updates, a fixed-size replay buffer and
truncated-normal exploration noise.

Everything random (weight init, noise, warm-up actions, replay minibatches) comes from the agent's seed, and
`DDPGAgent.state_dict` holds all of it (networks, Adam states, buffer, the generator's state, the reward baseline)
as tensors, strings and numbers, so a checkpoint loads with ``torch.load(weights_only=True)`` and a resumed search
continues bit-identically. float64 on the CPU: the networks are tiny, and determinism matters more than speed.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch import nn

from legr.methods.filters.amc.config import AmcConfig

DTYPE = torch.float64


def _mlp(inputs: int, hidden: int, out: nn.Module | None) -> nn.Sequential:
    """inputs -> hidden -> hidden -> 1 (ReLU between), the last layer initialised in +-3e-3 (as DDPG does, so the
    first outputs sit near the middle of the range), then ``out``."""
    last = nn.Linear(hidden, 1)
    nn.init.uniform_(last.weight, -3e-3, 3e-3)
    nn.init.uniform_(last.bias, -3e-3, 3e-3)
    layers = [nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), last]
    return nn.Sequential(*layers, *([out] if out is not None else [])).to(DTYPE)


class Critic(nn.Module):
    """Q(state, action): the concatenation through two hidden layers."""

    def __init__(self, state_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = _mlp(state_dim + 1, hidden, None)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], dim=1))


class ReplayBuffer:
    """The last ``capacity`` transitions (state, action, reward, next state, done) in preallocated tensors."""

    def __init__(self, capacity: int, state_dim: int) -> None:
        self.capacity, self.size, self.position = capacity, 0, 0
        widths = {"state": state_dim, "action": 1, "reward": 1, "next_state": state_dim, "done": 1}
        self.data = {key: torch.zeros(capacity, width, dtype=DTYPE) for key, width in widths.items()}

    def add(self, state: np.ndarray, action: float, reward: float, next_state: np.ndarray, done: bool) -> None:
        row = {"state": state, "action": [action], "reward": [reward], "next_state": next_state, "done": [float(done)]}
        for key, value in row.items():
            self.data[key][self.position] = torch.as_tensor(np.asarray(value, dtype=np.float64))
        self.position = (self.position + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(rng.integers(0, self.size, size=batch))
        return {key: value[index] for key, value in self.data.items()}


class DDPGAgent:
    """Actor, critic, their targets, Adam for each, the replay buffer and the generator, for states of
    ``state_dim`` features; settings from `AmcConfig` (hidden, actor_lr, critic_lr, tau, discount, replay_size,
    batch_size, baseline)."""

    def __init__(self, state_dim: int, cfg: AmcConfig = AmcConfig(), seed: int = 0) -> None:
        self.cfg = cfg
        with torch.random.fork_rng(devices=[]):  # seeded, and the caller's torch generator left untouched
            torch.manual_seed(seed)
            self.actor = _mlp(state_dim, cfg.hidden, nn.Sigmoid())
            self.critic = Critic(state_dim, cfg.hidden)
            self.actor_target = _mlp(state_dim, cfg.hidden, nn.Sigmoid())
            self.critic_target = Critic(state_dim, cfg.hidden)
        self.actor_target.load_state_dict(self.actor.state_dict())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.buffer = ReplayBuffer(cfg.replay_size, state_dim)
        self.rng = np.random.Generator(np.random.PCG64([seed, 34]))
        self.baseline: float | None = None  # moving average of the episodes' rewards

    # --- acting ---------------------------------------------------------------------------------------------
    def policy(self, state: np.ndarray) -> float:
        """The actor's keep ratio for ``state`` (no noise)."""
        with torch.no_grad():
            return float(self.actor(torch.as_tensor(state, dtype=DTYPE)[None])[0, 0])

    def random_action(self) -> float:
        """A warm-up action: uniform in [0, 1]."""
        return float(self.rng.uniform(0.0, 1.0))

    def noisy_action(self, state: np.ndarray, sigma: float) -> float:
        """The actor's action plus noise, drawn from the normal N(action, sigma) truncated to [0, 1] (rejection
        sampling; after 100 rejections, the clipped draw)."""
        mean = self.policy(state)
        for _ in range(100):
            value = self.rng.normal(mean, sigma)
            if 0.0 <= value <= 1.0:
                return float(value)
        return float(np.clip(value, 0.0, 1.0))

    # --- learning ---------------------------------------------------------------------------------------------
    def advantage(self, reward: float) -> float:
        """``reward`` less the moving-average baseline (then updated: baseline += weight * (reward - baseline); the
        first reward starts it)."""
        if self.baseline is None:
            self.baseline = reward
        else:
            self.baseline += self.cfg.baseline * (reward - self.baseline)
        return reward - self.baseline

    def remember(self, state: np.ndarray, action: float, reward: float, next_state: np.ndarray, done: bool) -> None:
        self.buffer.add(state, action, reward, next_state, done)

    def td_error(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared difference between Q(s, a) and r + discount * (1 - done) * Q'(s', mu'(s'))."""
        with torch.no_grad():
            nxt = self.critic_target(batch["next_state"], self.actor_target(batch["next_state"]))
            target = batch["reward"] + self.cfg.discount * (1.0 - batch["done"]) * nxt
        return torch.mean((self.critic(batch["state"], batch["action"]) - target) ** 2)

    def update(self) -> tuple[float, float]:
        """One DDPG step on a minibatch of the buffer: critic to the TD target, actor up the critic's gradient,
        targets soft-updated (tau). Returns (critic loss, actor loss)."""
        batch = self.buffer.sample(self.rng, self.cfg.batch_size)
        critic_loss = self.td_error(batch)
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        actor_loss = -self.critic(batch["state"], self.actor(batch["state"])).mean()
        self.actor_opt.zero_grad()
        actor_loss.backward()
        self.actor_opt.step()
        with torch.no_grad():
            for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                for p, t in zip(net.parameters(), target.parameters()):
                    t.mul_(1.0 - self.cfg.tau).add_(p, alpha=self.cfg.tau)
        return float(critic_loss.detach()), float(actor_loss.detach())

    # --- checkpoint -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything that makes the agent's future: tensors, numbers and a JSON string (``weights_only`` safe)."""
        nets = {name: getattr(self, name).state_dict() for name in
                ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt")}
        return {**nets, "buffer": dict(self.buffer.data), "buffer_size": self.buffer.size,
                "buffer_position": self.buffer.position, "rng": json.dumps(self.rng.bit_generator.state),
                "baseline": self.baseline}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("actor", "critic", "actor_target", "critic_target", "actor_opt", "critic_opt"):
            getattr(self, name).load_state_dict(state[name])
        self.buffer.data = {key: value.clone() for key, value in state["buffer"].items()}
        self.buffer.size, self.buffer.position = int(state["buffer_size"]), int(state["buffer_position"])
        self.rng.bit_generator.state = json.loads(state["rng"])
        self.baseline = None if state["baseline"] is None else float(state["baseline"])
