"""FBS's section of a run config (``fbs:``), read by the method ``fbs``.

The paper trains its gated networks from a pretrained one with SGD on the task loss plus ``lambda * sum_l
||g_l(x)||_1`` (the saliencies before the winner-take-all), and its reference code's instructions fine-tune first
at density 1, then lower the density stage by stage, fine-tuning each. Here one network is trained that way, once
per run, on the run's ``finetune`` recipe (its SGD steps split evenly over the stages, the learning rate decaying as
the recipe says across all of them; or, ``schedule: sampled``, every step at a density drawn from the stages'), and
every member is that network at its own density, with its batch norms' statistics re-estimated there
(``bn_batches``): a network trained down to density 0.3 and run at 0.7 sees other activation statistics than it was
trained with (on CIFAR-10-JPEG, ResNet-20: 21% top-1 with the trained statistics, 74% re-estimated).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from legr.settings import Settings


class FbsConfig(Settings):
    """Feature Boosting and Suppression (Gao et al., ICLR 2019): one gated network, a density per budget."""

    sparsity: float = Field(1e-8, ge=0.0, description="lambda of the L1 penalty on the saliencies (per image, summed "
                                                      "over gated layers and channels; the paper's 1e-8)")
    densities: tuple[float, ...] | None = Field(None, min_length=1, description="the training stages' densities, in "
                                                "order (None: 1.0 down to the lowest target in steps of 0.1)")
    schedule: Literal["progressive", "sampled"] = Field("progressive", description="progressive: the stages in "
                                                        "order, the steps split evenly (the paper's recipe); sampled: "
                                                        "each step at one of the stages' densities, drawn at random")
    bn_batches: int = Field(20, ge=0, description="training batches the batch norms are re-estimated on at each "
                                                  "operating point (0: the trained statistics for every density)")
    search_images: int | None = Field(None, ge=1, description="validation images each member's density is chosen on "
                                                              "(None: the whole validation split)")
    fast_path: Literal["auto", "always", "never"] = Field("auto", description="run batch-1 inference on the fast path "
                                                          "(only the active channels computed): always, never, or "
                                                          "where it measured faster than the masked network (auto)")

    @field_validator("densities")
    @classmethod
    def _fractions(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and not all(0.0 < d <= 1.0 for d in value):
            raise ValueError(f"densities must lie in (0, 1], got {list(value)}")
        return value

    def stages(self, targets: Sequence[float]) -> tuple[float, ...]:
        """The training stages' densities for a run with these targets."""
        if self.densities is not None:
            return self.densities
        lowest = max(0.1, math.floor(min(targets) * 10 + 1e-9) / 10)
        return tuple(round(1.0 - 0.1 * i, 1) for i in range(round((1.0 - lowest) * 10) + 1))


def stage_density(schedule: Sequence[float], step: int, total_steps: int, sampled: bool = False, seed: int = 0
                  ) -> float:
    """The density trained at ``step`` of ``total_steps``: the steps split evenly over the stages, in order, or
    (``sampled``) one of the stages' densities drawn uniformly, a function of (seed, step) only (a resumed run draws
    the same)."""
    if sampled:
        return schedule[int(np.random.default_rng([seed, step]).integers(len(schedule)))]
    return schedule[min(len(schedule) - 1, step * len(schedule) // max(total_steps, 1))]


FBS_CONFIG: dict[str, tuple[Any, Any]] = {"fbs": (FbsConfig, FbsConfig())}
