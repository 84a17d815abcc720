"""GDP's section of a run config (``gdp:``), read by the method ``gdp``. The reference code (ShaohuiLin/GDP, VGG-16 on
ImageNet) trains 1.2M steps with the masks re-chosen every 500 steps from the Taylor scores of 100 batches, then
fine-tunes 800k steps: the dynamic phase is 60% of the training, each mask decision costs a fifth of its interval in
scoring batches. Scaled to a run's fine-tuning budget: the dynamic phase is the first half of ``finetune.epochs``
(whole epochs), with 4 mask decisions (the first at its start: the initial global pruning) and 10 scoring batches
each (a fifth of an interval at the 47-step intervals of the committed CIFAR-10 comparison)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from legr.settings import Settings


class GdpConfig(Settings):
    """Global & dynamic filter pruning (Lin et al., IJCAI 2018), one dynamic run per target."""

    dynamic_epochs: int | None = Field(None, ge=1, description="epochs of the fine-tune recipe trained with dynamic "
                                                               "masks before the network is pruned (None: half of "
                                                               "finetune.epochs, at least 1)")
    updates: int = Field(4, ge=1, description="mask decisions in the dynamic phase, evenly spaced, the first at its "
                                              "start (the reference code: every 500 steps)")
    scoring_batches: int = Field(10, ge=1, description="training batches the Taylor saliency of each decision is "
                                                       "averaged over (the reference code: 100)")

    def dynamic(self, epochs: int) -> int:
        """The dynamic phase's epochs for a fine-tune recipe of ``epochs`` epochs."""
        return self.dynamic_epochs if self.dynamic_epochs is not None else max(1, epochs // 2)


GDP_CONFIG: dict[str, tuple[Any, Any]] = {"gdp": (GdpConfig, GdpConfig())}
