"""AMC's section of a run config (``amc:``), read only with ``allocator: amc``; also the library's argument of the
agent (`agent.DDPGAgent`) and the search (`search.search_target`).

Defaults are the official code's (mit-han-lab/amc) except the episode counts: the paper searched ResNet with 100
warm-up + 300 learning episodes, each one a pruned network scored on validation; 20 + 80 is what a CPU finishes
for a family of several targets (each target is searched on its own). Set ``warmup: 100, episodes: 300`` for the
paper's search.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from legr.settings import Settings


class AmcConfig(Settings):
    """DDPG search of per-layer keep ratios (He et al., ECCV 2018), run once per target."""

    warmup: int = Field(20, ge=0, strict=True, description="episodes of random actions before the agent learns "
                                                           "(the paper: 100)")
    episodes: int = Field(80, ge=1, strict=True, description="learning episodes after the warm-up (the paper: 300)")
    reward: Literal["accuracy", "paper"] = Field(
        "accuracy", description="accuracy: the search fitness (validation top-1 after adaptive BN, as LeGR's); "
                                "paper: -error * log(MACs) (error = 1 - top-1, or the loss with search.fitness: loss)")
    noise: float = Field(0.5, gt=0, description="initial sigma of the truncated-normal exploration noise")
    noise_decay: float = Field(0.95, gt=0, le=1, description="sigma *= this after every learning episode")
    replay_size: int = Field(2000, ge=1, strict=True, description="transitions the replay buffer keeps (one per "
                                                                 "prunable group and episode)")
    batch_size: int = Field(64, ge=1, strict=True, description="transitions per DDPG update")
    hidden: int = Field(300, ge=1, strict=True, description="units of each of the two hidden layers (actor, critic)")
    actor_lr: float = Field(1e-4, gt=0)
    critic_lr: float = Field(1e-3, gt=0)
    tau: float = Field(0.01, gt=0, le=1, description="soft update of the target networks")
    discount: float = Field(1.0, ge=0, le=1, description="the reward comes at the episode's end, given to every step")
    baseline: float = Field(0.5, gt=0, le=1, description="moving-average weight of the reward baseline subtracted "
                                                        "from every reward")
