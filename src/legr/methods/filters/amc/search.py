"""AMC's search for one target: ``warmup`` episodes of random actions, then ``episodes`` episodes of the DDPG agent
with decaying exploration noise; every episode's network is scored once (a fitness evaluation) and its reward
given to every step of the episode, less a moving-average baseline. The best episode (highest reward; ties: the
earliest) is the target's allocation.

Resumable after a kill at any moment: after every episode the agent (networks, Adam states, replay buffer,
generator), the episode log and the best so far are written atomically to ``state_path`` (tensors, numbers and
strings only: read back with ``torch.load(weights_only=True)``), and the log as JSON lines to ``log_path``; a
rerun with the same arguments continues after the last finished episode and ends exactly as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from legr.errors import ConfigError
from legr.methods.filters.amc.agent import DDPGAgent
from legr.methods.filters.amc.config import AmcConfig
from legr.methods.filters.amc.env import STATE_DIM, PruningEnv
from legr.paths import atomic_write_bytes, atomic_write_text
from legr.progress import progress_bar

STATE_VERSION = 1
# (keep vector, episode index) -> (reward, fitness score): how an episode's network is scored
Score = Callable[[np.ndarray, int], tuple[float, float]]


def reward_function(kind: str, fitness: Callable[[np.ndarray, int], float], macs: Callable[[np.ndarray], float],
                    metric: str = "accuracy") -> Score:
    """The episode's reward from ``fitness(keep, episode)``: ``accuracy`` takes the fitness itself; ``paper`` is
    He et al.'s ``-error * log(MACs)`` (error: 1 - top-1 for an accuracy fitness, the loss for a ``-loss`` one)."""
    def score(keep: np.ndarray, episode: int) -> tuple[float, float]:
        value = float(fitness(keep, episode))
        if kind == "accuracy":
            return value, value
        error = 1.0 - value if metric == "accuracy" else -value
        return -error * math.log(macs(keep)), value
    return score


@dataclass(frozen=True)
class TargetResult:
    """The outcome of one target's search: the best episode's ratios (as the agent chose them, clipped) and the scale
    factor that brought them to the budget, its reward and fitness, and what the search cost."""

    target: float
    ratios: dict[str, float]
    scale: float
    widths: dict[str, int]
    best_reward: float
    best_score: float
    best_episode: int
    episodes: int
    warmup: int
    fitness_evaluations: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _identity(env: PruningEnv, cfg: AmcConfig, seed: int, target: float) -> str:
    """What a state file must match to be resumed: the settings, the seed, the target and the groups' scores."""
    h = hashlib.sha256(json.dumps({"cfg": cfg.model_dump(mode="json"), "seed": seed, "target": target,
                                   "unit": env.unit}, sort_keys=True).encode())
    for group in env.groups:
        h.update(group.name.encode())
        h.update(np.asarray(env.scores[group.name], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


def _save(path: Path, agent: DDPGAgent, identity: str, log: list[dict[str, Any]]) -> None:
    buffer = io.BytesIO()
    torch.save({"version": STATE_VERSION, "identity": identity, "agent": agent.state_dict(),
                "log": json.dumps(log)}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path, agent: DDPGAgent, identity: str) -> list[dict[str, Any]]:
    hint = "use another output folder or delete it to start the search over"
    try:
        state = torch.load(path, weights_only=True)
        version, held = state["version"], state["identity"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line answer
        raise ConfigError(f"AMC search state {path} is unreadable ({type(exc).__name__}); {hint}") from None
    if version != STATE_VERSION or held != identity:
        raise ConfigError(f"AMC search state {path} belongs to another search (settings, seed, target or scores "
                          f"differ); {hint}")
    agent.load_state_dict(state["agent"])
    return json.loads(state["log"])


def _best(log: list[dict[str, Any]]) -> dict[str, Any] | None:
    best = None
    for entry in log:  # strict > keeps the earliest on ties
        if best is None or entry["reward"] > best["reward"]:
            best = entry
    return best


def search_target(env: PruningEnv, score: Score, cfg: AmcConfig = AmcConfig(), *, seed: int = 0, fraction: float = 0.0,
                  state_path: Path | None = None, log_path: Path | None = None, progress: bool = True,
                  label: str = "amc") -> TargetResult:
    """Run (or resume) the search for ``env``'s target; ``score(keep, episode)`` -> (reward, fitness) of an
    episode's network (`reward_function`). ``fraction``: the target as a fraction of the source's cost (recorded)."""
    agent = DDPGAgent(STATE_DIM, cfg, seed)
    identity = _identity(env, cfg, seed, env.target)
    state_path = Path(state_path) if state_path is not None else None
    log: list[dict[str, Any]] = []
    if state_path is not None and state_path.exists():
        log = _load(state_path, agent, identity)
    total = cfg.warmup + cfg.episodes
    if log_path is not None:
        atomic_write_text(log_path, "".join(json.dumps(e) + "\n" for e in log))
    with progress_bar(label, total, done=len(log), text=_best_text(_best(log)), enabled=progress) as advance:
        while len(log) < total:
            log.append(_episode(env, agent, score, cfg, len(log)))
            if state_path is not None:
                _save(state_path, agent, identity, log)
            if log_path is not None:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(log[-1]) + "\n")
            advance(_best_text(_best(log)))
    best = _best(log)
    assert best is not None
    keep, scale = env.finish(best["ratios"])
    return TargetResult(fraction, dict(zip([g.name for g in env.groups], best["ratios"])), scale, env.widths(keep),
                        best["reward"], best["score"], best["episode"], len(log), cfg.warmup, len(log),
                        round(sum(e["seconds"] for e in log), 3))


def _episode(env: PruningEnv, agent: DDPGAgent, score: Score, cfg: AmcConfig, episode: int) -> dict[str, Any]:
    """One episode: act on every group, score the network, store the transitions, learn (after the warm-up)."""
    start = time.perf_counter()
    learning = episode >= cfg.warmup
    sigma = cfg.noise * cfg.noise_decay ** (episode - cfg.warmup) if learning else None
    state = env.reset()
    steps = []
    while not env.done:
        action = agent.noisy_action(state, sigma) if learning else agent.random_action()
        applied, nxt = env.step(action)
        steps.append((state, applied, nxt))
        state = nxt
    keep, scale = env.finish()
    reward, value = score(keep, episode)
    advantage = agent.advantage(reward)
    for i, (s, a, s2) in enumerate(steps):
        agent.remember(s, a, advantage, s2, i == len(steps) - 1)
    losses = [agent.update() for _ in steps] if learning else []
    return {"episode": episode, "reward": reward, "score": value, "ratios": list(env.ratios), "scale": scale,
            "cost": env.measure(keep), "sigma": sigma,
            "critic_loss": float(np.mean([c for c, _ in losses])) if losses else None,
            "seconds": round(time.perf_counter() - start, 6)}


def _best_text(best: dict[str, Any] | None) -> str:
    return "best -" if best is None else f"best reward {best['reward']:.5g} (#{best['episode']})"
