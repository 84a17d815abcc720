"""Estimate the environment's class prior online, from the network's own outputs on the stream (no labels).

Every estimator sees the network's raw softmax ``P(i|x)`` of each batch of the stream as it arrives (`update`) and
holds its current estimate of ``P_t(i)`` (`prior`), which the probability layer (`legr.engine.prior`) uses on the
*next* batch. All are forms of the EM of Saerens, Latinne & Decaestecker (2002), whose fixed point is the
maximum-likelihood prior: ``P_t(i) = mean over the images of the corrected posterior P_t(i|x)``. They differ in
which images the mean runs over and how often it is iterated:

- ``ema``: an exponential average of the corrected posteriors, each batch corrected with the estimate at the time
  (a stochastic-approximation form of EM; a running mean until ``memory`` images have been seen, then the weight of
  an image decays by ``1 - 1/memory`` per later image);
- ``window``: the mean corrected posterior over the last ``memory`` images, all of them re-corrected with the current
  estimate (one EM step per batch over a sliding window);
- ``em``: EM run to convergence over the last ``memory`` images after every batch (warm-started from the previous
  estimate);
- ``counts``: the same over hard decisions (classification EM): the class frequencies of the corrected *predictions*
  over the last ``memory`` images, iterated to a fixed point. Not consistent: a minority class the network confuses
  with a larger one can be driven to the floor and stay there (``tests/test_prior.py``). But it also sends a class
  the network merely confuses with a dominant one (the "cats" a network sees in a stream of dogs) to the floor, where
  soft EM keeps the confusion's mass and with it the confusion; which costs more accuracy is measured.

The raw outputs are never clamped, only the prior used in a correction is (``floor``, as in the layer), so a class
the estimate has driven towards zero still gets a posterior and is estimated back up when it returns.
`reset` forgets the stream (the estimate is the training prior again). The benchmark's comparison of the four:
``benchmarks/class_skew.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch

from legr.engine.prior import as_prior, bayes_correct
from legr.errors import LegrError
from legr.registry import Registry


class PriorEstimator(ABC):
    """The environment prior, estimated online from batches of raw posteriors (see the module doc)."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, train_prior: Sequence[float] | torch.Tensor, *, memory: int = 500, floor: float = 1e-3):
        self.train_prior = as_prior(train_prior, what="training prior")
        if memory < 1:
            raise LegrError(f"estimator memory must be at least 1 image, got {memory}")
        if not 0.0 <= floor <= 1.0 / len(self.train_prior):
            raise LegrError(f"floor must be in [0, 1/classes], got {floor}")
        self.memory, self.floor = int(memory), float(floor)
        self.reset()

    @property
    def num_classes(self) -> int:
        return len(self.train_prior)

    def reset(self) -> None:
        """Forget the stream: the estimate is the training prior (the layer is the identity) until new images come."""
        self.prior = self.train_prior.clone()
        self.seen = 0

    def correct(self, probs: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
        """Raw posteriors corrected with ``prior`` (default: the current estimate), the floor applied."""
        return bayes_correct(probs, self.train_prior, self.prior if prior is None else prior, self.floor)

    def update(self, probs: torch.Tensor) -> torch.Tensor:
        """Take one batch of raw posteriors (N, classes) of the stream; return the new estimate (float64)."""
        probs = torch.as_tensor(probs).detach().to("cpu", torch.float64)
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise LegrError(f"estimator expects posteriors of shape (N, {self.num_classes}), got {tuple(probs.shape)}")
        if len(probs):
            self.prior = self._update(probs / probs.sum(dim=1, keepdim=True))
            self.seen += len(probs)
        return self.prior

    @abstractmethod
    def _update(self, probs: torch.Tensor) -> torch.Tensor:
        """The new estimate after the batch ``probs`` (normalized rows, float64); ``self.seen`` counts the images
        before it."""


PRIOR_ESTIMATORS: Registry[type[PriorEstimator]] = Registry("prior estimator")


@PRIOR_ESTIMATORS.register("ema")
class EmaEstimator(PriorEstimator):
    name, description = "ema", "exponential average of the corrected posteriors (online EM)"

    def _update(self, probs: torch.Tensor) -> torch.Tensor:
        batch_mean = self.correct(probs).mean(dim=0)
        # a running mean over the first `memory` images, then each image's weight decays by (1 - 1/memory) per image
        keep = self.seen / (self.seen + len(probs)) if self.seen + len(probs) <= self.memory else \
            (1.0 - 1.0 / self.memory) ** len(probs)
        return keep * self.prior + (1.0 - keep) * batch_mean


class _WindowEstimator(PriorEstimator):
    """Holds the raw posteriors of the last ``memory`` images (a ring buffer)."""

    def reset(self) -> None:
        super().reset()
        self._buffer = torch.zeros(self.memory, self.num_classes, dtype=torch.float64)
        self._next = 0

    def _push(self, probs: torch.Tensor) -> torch.Tensor:
        """Add the batch; return the window's posteriors (the last ``memory`` images)."""
        probs = probs[-self.memory:]
        idx = (self._next + torch.arange(len(probs))) % self.memory
        self._buffer[idx] = probs
        self._next = (self._next + len(probs)) % self.memory
        return self._buffer[:min(self.seen + len(probs), self.memory)]


@PRIOR_ESTIMATORS.register("window")
class WindowEstimator(_WindowEstimator):
    name, description = "window", "mean corrected posterior over a sliding window (one EM step per batch)"

    def _update(self, probs: torch.Tensor) -> torch.Tensor:
        return self.correct(self._push(probs)).mean(dim=0)


@PRIOR_ESTIMATORS.register("em")
class EmEstimator(_WindowEstimator):
    name, description = "em", "EM (Saerens et al. 2002) to convergence over a sliding window"
    tolerance: ClassVar[float] = 1e-6  # L1 change of the estimate at which EM stops
    max_iterations: ClassVar[int] = 200

    def _update(self, probs: torch.Tensor) -> torch.Tensor:
        window = self._push(probs)
        prior = self.prior
        for _ in range(self.max_iterations):
            new = self.correct(window, prior).mean(dim=0)
            done = float((new - prior).abs().sum()) < self.tolerance
            prior = new
            if done:
                break
        return prior


@PRIOR_ESTIMATORS.register("counts")
class CountsEstimator(_WindowEstimator):
    name, description = "counts", "class frequencies of the corrected predictions over a sliding window (hard EM)"
    max_iterations: ClassVar[int] = 50

    def _update(self, probs: torch.Tensor) -> torch.Tensor:
        window = self._push(probs)
        prior = self.prior
        for _ in range(self.max_iterations):
            predicted = self.correct(window, prior).argmax(dim=1)
            new = torch.bincount(predicted, minlength=self.num_classes).double() / len(window)
            if torch.equal(new, prior):
                break
            prior = new
        return prior


def make_estimator(name: str, train_prior: Sequence[float] | torch.Tensor, *, memory: int = 500,
                   floor: float = 1e-3) -> PriorEstimator:
    """The registered estimator ``name`` (ema, window, em, counts); an unknown name is a one-line `LegrError`."""
    return PRIOR_ESTIMATORS[name](train_prior, memory=memory, floor=floor)
