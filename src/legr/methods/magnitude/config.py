"""The run-config section of the method ``magnitude`` (``magnitude: {...}``; `MagnitudePruning.config_keys`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from legr.settings import Settings


class MagnitudeSection(Settings):
    """Han et al. 2015 (``method: magnitude``): each member keeps ``target`` of the source's parameters non-zero,
    reached in ``rounds`` prune -> retrain rounds over which the run's ``finetune`` epochs are spread."""

    rounds: int = Field(3, ge=1, description="prune -> retrain rounds (needs finetune.epochs >= rounds)")
    fractions: tuple[float, ...] = Field((0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99),
                                         min_length=1, description="pruned fractions of the sensitivity analysis")
    sensitivity_samples: int | None = Field(None, ge=1, description="validation images it scores on (null: all)")
    regularization: Literal["l1", "l2"] = "l2"
    reg_strength: float = Field(5e-4, ge=0, description="L2 weight decay (replaces finetune.weight_decay) or L1 "
                                                        "coefficient")
    scale_dropout: bool = Field(True, description="Dropout rate x sqrt(kept connections / all) while retraining")
    remove_dead: bool = Field(True, description="physically remove neurons/filters left without weights")
    layers: tuple[str, ...] | None = Field(None, description="Linear/Conv layers to prune (null: all)")
    allocation: Literal["cost", "tolerance"] = "cost"

    @model_validator(mode="after")
    def _check(self) -> "MagnitudeSection":
        bad = [f for f in self.fractions if not 0 < f < 1]
        if bad:
            raise ValueError(f"magnitude.fractions must lie in (0, 1), got {bad}")
        return self


MAGNITUDE_CONFIG: dict[str, tuple[Any, Any]] = {"magnitude": (MagnitudeSection, MagnitudeSection())}
