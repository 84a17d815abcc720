"""The SGD training recipe: one typed class for the run config's ``base_training`` and ``finetune`` sections and for
the library's `legr.training.finetune`, validated when built (a YAML file read), not when training starts."""

from __future__ import annotations

from pydantic import Field, field_validator

from legr.settings import Settings
from legr.training.distill import DistillConfig


class TrainConfig(Settings):
    """SGD (re)training; the defaults are the LeGR paper's CIFAR fine-tuning recipe.

    SGD (Nesterov momentum 0.9, weight decay 5e-4, batch 128) for 60 epochs from lr 0.01, multiplied by ``gamma``
    = 0.2 at 30%, 60% and 80% of the epochs (epoch ``int(m * epochs)`` for each fraction ``m`` in ``milestones``),
    with random-crop (padding 4) + horizontal-flip augmentation. An epoch is one shuffled pass in full batches (the
    last partial batch is dropped unless the set is smaller than one batch); ``steps_per_epoch`` caps its optimizer
    steps (None: no cap), for quick runs. ``epochs: 0`` trains nothing.

    ``distill`` (a `DistillConfig`; None: plain cross-entropy) trains against a teacher's softened outputs as well:
    in a run, the source network teaches its members.

    ``seed`` seeds the batch order and augmentation. It is the library's argument, not a config key: a run passes its
    own top-level ``seed`` (it is left out of dumps, so a config file never holds it).
    """

    epochs: int = Field(60, ge=0)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    nesterov: bool = True
    batch_size: int = Field(128, ge=1)
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)
    gamma: float = Field(0.2, gt=0)
    augment: bool = True
    steps_per_epoch: int | None = Field(None, ge=1)
    distill: DistillConfig | None = None
    seed: int = Field(0, exclude=True, description="library argument; a run passes its top-level seed")

    @field_validator("milestones")
    @classmethod
    def _increasing(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not all(0.0 < m < 1.0 for m in value) or list(value) != sorted(value):
            raise ValueError(f"milestones must be increasing fractions in (0, 1), got {list(value)}")
        return value

    def milestone_epochs(self) -> list[int]:
        """The epochs at whose start the lr is multiplied by ``gamma`` (one entry per fraction, may repeat)."""
        return [int(m * self.epochs) for m in self.milestones]

    def lr_at(self, epoch: int) -> float:
        """The learning rate of ``epoch`` (as `finetune`'s MultiStepLR sets it)."""
        return self.lr * self.gamma ** sum(m <= epoch for m in self.milestone_epochs())

    def window(self, start: int, stop: int) -> "TrainConfig":
        """Epochs ``start`` to ``stop`` (excluded) of this recipe as a recipe of their own: it starts at the learning
        rate of epoch ``start`` and decays where this one does (GDP: the dynamic phase is the fine-tune's first
        epochs, the pruned network's fine-tune the rest)."""
        if not 0 <= start < stop <= self.epochs:
            raise ValueError(f"window {start}..{stop} is not within the recipe's {self.epochs} epochs")
        span = stop - start
        later = [(m - start + 0.5) / span for m in self.milestone_epochs() if start < m < stop]
        return self.model_copy(update={"epochs": span, "lr": self.lr_at(start), "milestones": tuple(later)})

    def with_seed(self, seed: int) -> "TrainConfig":
        """This recipe seeded with ``seed``."""
        return self.model_copy(update={"seed": seed})

    def state(self) -> dict:
        """Every setting, the seed included (what a training checkpoint records and is checked against)."""
        return {**self.model_dump(), "seed": self.seed}


FinetuneConfig = TrainConfig  # the library's earlier name of the same recipe
