"""RNP's training schedule: the backbone and the agent trained alternately, as the paper does, within the run's
fine-tune recipe.

``rounds`` R (at most the recipe's epochs E) alternations: round r fine-tunes the backbone for its share of the
epochs (E split as evenly as possible, first rounds first; each phase is the recipe with those epochs, so its
learning-rate schedule restarts per phase, and so does its batch order: the run trains with its one seed) with the agent fixed and acting epsilon-greedily (epsilon at the round's
start: the first round's 1.0 draws every action uniformly, so each layer trains with its first groups always, its
last ones seldom computed — the early groups carry the importance, as the paper's ordered groups need); then as many
Q-learning steps as the phase had SGD steps, with the backbone fixed (eval mode): each step runs one training batch
through the network epsilon-greedily (a forward, no backward through the backbone: about a third of a backbone
step), stores its episodes and updates the agent on ``agent_batch`` episodes from the replay. The backbone's SGD
steps are exactly the recipe's; the agent adds forwards of as many batches.

Resumable: a backbone phase resumes from its epoch checkpoints (`legr.training.finetune`; the agent's weights are part
of the network's state, unchanged by SGD: no loss reaches them), an agent phase is redone whole unless its weights
were written (``agent<r>.pt``: its weights and history); the random draws are functions of (seed, round, step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from legr.methods.dynamic.rnp.config import RnpConfig
from legr.methods.dynamic.rnp.network import RnpNetwork
from legr.methods.dynamic.rnp.qlearning import Episodes, Replay, q_update


def round_epochs(epochs: int, rounds: int) -> list[int]:
    """The recipe's epochs split over min(rounds, epochs) backbone phases."""
    r = max(1, min(rounds, epochs))
    return [epochs // r + (i < epochs % r) for i in range(r)]


def generator(*seeds: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(seeds)).generate_state(1)[0]))


def collect(net: RnpNetwork, x: torch.Tensor, y: torch.Tensor, epsilon: float, g: torch.Generator) -> Episodes:
    """Episodes of the images ``x`` (normalized, on the network's device) under epsilon-greedy actions."""
    net.set_policy("explore", epsilon=epsilon, generator=g)
    with torch.no_grad(), net.recording() as trace:
        loss = F.cross_entropy(net(x), y, reduction="none")
    by_layer = sorted(trace, key=lambda t: t[0])
    gates = net.gates
    fractions = torch.stack([gates[i].active(a).float().mean(dim=1) for i, _, a in by_layer], dim=1)
    return Episodes([s for _, s, _ in by_layer], torch.stack([a for _, _, a in by_layer], dim=1), fractions, loss)


def agent_phase(net: RnpNetwork, cfg: RnpConfig, batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
                steps: int, epsilon: Callable[[int], float], seed: int) -> list[dict[str, Any]]:
    """``steps`` Q-learning steps on batches ``batch(step)`` with the backbone fixed; one history row per step."""
    was_training = net.training
    net.eval()
    agent = net.agent
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.agent_lr)
    replay, history = Replay(cfg.replay), []
    for step in range(steps):
        x, y = batch(step)
        episodes = collect(net, x, y, epsilon(step), generator(seed, step, 0))
        replay.push(episodes)
        sample = replay.sample(cfg.agent_batch, generator(seed, step, 1))
        with torch.enable_grad():
            td = q_update(agent, optimizer, sample, cfg.penalties, cfg.loss_weight, cfg.discount)
        history.append({"step": step, "epsilon": epsilon(step), "td_loss": td, "loss": float(episodes.loss.mean()),
                        "fraction": float(episodes.fractions.mean())})
    net.set_policy("full")
    net.train(was_training)
    return history
