"""RNP's section of a run config (``rnp:``), read by the method ``rnp`` (`method.RuntimePruning`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator

from legr.settings import Settings


class RnpConfig(Settings):
    """Runtime Neural Pruning (Lin, Rao, Lu & Zhou, NeurIPS 2017): a Q-learning agent picks, per image and gated
    layer, how many of the layer's ordered channel groups to compute; one trained backbone and agent, an operating
    point (penalty head, action cap) per budget."""

    groups: int = Field(4, ge=2, description="K: each gated layer's output channels split into K ordered groups; "
                                             "action a computes the first a (the paper's 4)")
    penalties: tuple[float, ...] = Field((0.01, 0.03, 0.1, 0.3), min_length=1, description="the compute penalties "
                                         "p, one Q-head each: a step's reward is -p x the fraction of the layer's "
                                         "channels computed")
    loss_weight: float = Field(1.0, gt=0.0, description="alpha: the last step's reward adds -alpha x the image's "
                                                        "classification loss")
    discount: float = Field(1.0, ge=0.0, le=1.0, description="gamma of the Q-learning targets (1: the episode's "
                                                             "undiscounted return)")
    hidden: int = Field(32, ge=1, description="the agent's width: encoder outputs, GRU state")
    rounds: int = Field(2, ge=1, description="alternations of backbone fine-tuning and agent Q-learning (at most "
                                             "the finetune recipe's epochs)")
    epsilon: tuple[float, float] = Field((1.0, 0.1), description="epsilon-greedy exploration: from the first value "
                                         "(the first backbone phase's actions) linearly to the second (the last "
                                         "Q-learning step)")
    agent_lr: float = Field(1e-3, gt=0.0, description="Adam's learning rate for the agent")
    agent_batch: int = Field(128, ge=1, description="episodes (images) per Q-learning update, drawn from the replay")
    replay: int = Field(4096, ge=1, description="episodes the replay memory keeps (emptied each round: the "
                                                "backbone changed)")
    search_images: int | None = Field(None, ge=1, description="validation images each member's operating point is "
                                                              "chosen on (None: the whole validation split)")
    fast_path: bool = Field(True, description="batch-1 inference computes only the chosen groups (the masked "
                                              "network otherwise)")

    @field_validator("penalties")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not all(p > 0 for p in value) or len(set(value)) != len(value):
            raise ValueError(f"penalties must be distinct and > 0, got {list(value)}")
        return value

    @field_validator("epsilon")
    @classmethod
    def _probabilities(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= e <= 1.0 for e in value):
            raise ValueError(f"epsilon values must lie in [0, 1], got {list(value)}")
        return value

    def epsilon_at(self, step: int, total: int) -> float:
        """The exploration rate at agent step ``step`` of ``total`` (linear from ``epsilon[0]`` to ``epsilon[1]``)."""
        start, end = self.epsilon
        return start + (end - start) * min(1.0, step / max(total - 1, 1))


RNP_CONFIG: dict[str, tuple[Any, Any]] = {"rnp": (RnpConfig, RnpConfig())}
