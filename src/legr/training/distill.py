"""Knowledge distillation in fine-tuning (Hinton, Vinyals, Dean 2015): a pruned member learns from the labels and from
the unpruned source network's softened outputs.

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 factor keeps the soft term's gradients on the scale of the hard one's as T changes (Hinton et al., section
2). The teacher runs in eval mode without gradients: its weights and batch-norm statistics never change.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from legr.settings import Settings


class DistillConfig(Settings):
    """``alpha``: the weight of the soft (teacher) term, 0 = plain cross-entropy; ``temperature``: T, softening both
    distributions. The teacher is the run's source network (a member learns from the network it was cut from)."""

    alpha: float = Field(0.9, ge=0, le=1)
    temperature: float = Field(4.0, gt=0)


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    """The mean distillation loss of a batch (see the module docstring); ``teacher`` holds no gradient."""
    hard = F.cross_entropy(student, targets)
    if cfg.alpha == 0:
        return hard
    t = cfg.temperature
    soft = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher.detach() / t, dim=1),
                    reduction="batchmean", log_target=True)
    return (1 - cfg.alpha) * hard + cfg.alpha * t * t * soft


class Teacher:
    """A frozen network that answers a batch: eval mode, no gradients, its modes put back after (it may be the very
    network a run evaluates elsewhere); ``seconds`` sums its forward time (the distillation's cost per step)."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.seconds = model, 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            with torch.no_grad():
                out = self.model(x)
        finally:
            for module, training in modes:
                module.training = training
        self.seconds += time.perf_counter() - start
        return out
