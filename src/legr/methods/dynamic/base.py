"""What the dynamic methods (``fbs``, ``rnp``) share: one network trained once in `prepare` on the run's ``finetune``
recipe into ``<folder>/model.safetensors``, nothing trained per member, each member's operating point chosen on
validation, and a budget in average MACs per image that must stay above the cheapest point any input can take."""

from __future__ import annotations

from typing import Any

from legr.errors import ConfigError
from legr.methods.base import Method
from legr.methods.folders import MethodFolder
from legr.training import TrainConfig


class DynamicMethod(Method):
    """A subclass names its ``folder`` (run folder for the one trained network), what a member's ``operating``
    point is, what its training ``trains``, and ``cheapest`` (its least MACs per image, for `validate`)."""

    budgets = ("macs",)
    folder = ""
    operating = "operating point"  # what `cut` chooses on validation
    trains = ""  # what `prepare` trains on the finetune recipe
    least = ""  # the configuration `cheapest` costs

    @classmethod
    def member_training(cls, cfg: Any, target: float) -> list[tuple[float, TrainConfig]]:
        """Nothing per member: the one training is `prepare`'s."""
        return [(1.0, cfg.finetune.model_copy(update={"epochs": 0}))]

    @classmethod
    def prepare_seconds(cls, cfg: Any, folder: MethodFolder, units: Any) -> float:
        """The one training (at the source's size), unless its weights are there."""
        return 0.0 if (folder.file(cls.folder) / "model.safetensors").exists() else units.training(1.0, cfg.finetune)

    @property
    def section(self) -> Any:
        return getattr(self.run.cfg, self.name)

    def cheapest(self) -> float:
        raise NotImplementedError

    def validate(self) -> None:
        """Before any training: a validation split, training steps, and every target above the cheapest point."""
        run = self.run
        if len(run.data.val[0]) == 0:
            raise ConfigError(f"{self.name} chooses each member's {self.operating} on validation images: set "
                              "data.val_size > 0")
        if run.cfg.finetune.epochs < 1:
            raise ConfigError(f"{self.name} trains {self.trains} on the finetune recipe: it needs finetune.epochs >= 1")
        lowest = self.cheapest() / run.cost.base_macs
        low = [t for t in run.cfg.targets if t < lowest]
        if low:
            raise ConfigError(f"{self.name} cannot meet target {min(low):g}: with {self.least} its network still "
                              f"costs {lowest:.1%} of the source's MACs (residual streams stay dense)")
