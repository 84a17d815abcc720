"""One fitness for a family: how a candidate ranking's scores at several budget targets become one number.

A candidate is cut at every search target and scored there (e.g. validation top-1 after adaptive BN). The plain mean
lets the targets where every network scores high outweigh the ones where every network is near chance: a ranking
that gives up the smallest member for the largest one wins (issue 38: at 25/40/60% MACs the mean-fitness winner
scored 16.6% at 25% against the uniform allocation's 19.8%, and lost to uniform there after fine-tuning). So the
scores are read against the uniform allocation cut at the same target and scored the same way (the *reference*):

- ``mean`` (default): the plain mean of the scores, with the guard below doing the protecting.
- ``relative``: the mean over targets of ``(score - reference) / (reference - chance)``, the gain over uniform in
  units of uniform's own distance from a guessing network, so a point counts for more where every network is weak.
  Measured (`benchmarks/family_fitness.py`): that is where the fitness predicts the fine-tuned network least
  (Spearman +0.31 at 20% MACs against +0.94 / +0.90 at 50% / 80% on ResNet-20), so the relative gain chases noise at
  the smallest target; its unguarded pick lost 7.5 points at 50%.
- ``worst``: the smallest of those relative gains (max-min).

With ``guard`` (default), a candidate scoring below the reference at any target by more than the validation sampling error
(one binomial standard error of the reference's top-1 on ``val_images`` images; none for a loss) is *infeasible*:
its fitness is lowered by `PENALTY`, so any feasible candidate beats every infeasible one, and the search's result is
checked again at the end (`learn_ranking` falls back to the uniform allocation when no candidate is feasible).
With ``guard_weight`` w, the guard is *soft* while the search runs: an infeasible candidate's fitness is lowered by w
times its summed shortfall below the references' tolerance bands instead, so a ranking a point short at one target
and far ahead elsewhere still breeds (the hard guard made 15-31 of 40 candidates per search equal losers on
ResNet-20); the ranking returned is still the best *feasible* candidate by the plain aggregate (`choose`). Measured
(issue 38, ResNet-20, two seeds): the same rankings as the hard guard's, so it stays off by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

PENALTY = 1000.0
MIN_SCALE = 0.01  # the relative gain's denominator when the reference itself is at chance
MAX_GAIN = 100.0  # |relative gain| is clipped here (keeps every feasible fitness above every infeasible one)

Aggregate = Literal["mean", "relative", "worst"]


@dataclass(frozen=True)
class FamilyObjective:
    """``aggregate`` of the per-target scores against the uniform allocation's (``reference``); ``chance``: the score
    of a network that guesses (top-1: 1 / classes; minus the loss: -ln(classes)); ``val_images``: the validation
    sample size behind a top-1 score (0: scores are not proportions, no tolerance)."""

    aggregate: Aggregate = "mean"
    guard: bool = True
    chance: float = 0.0
    val_images: int = 0
    guard_weight: float | None = None  # None: the hard guard (PENALTY); w: w x the shortfall while searching

    def gains(self, scores: Sequence[float], reference: Sequence[float]) -> np.ndarray:
        s, r = np.asarray(scores, dtype=np.float64), np.asarray(reference, dtype=np.float64)
        return np.clip((s - r) / np.maximum(r - self.chance, MIN_SCALE), -MAX_GAIN, MAX_GAIN)

    def tolerance(self, reference: Sequence[float]) -> np.ndarray:
        r = np.asarray(reference, dtype=np.float64)
        if self.val_images <= 0:
            return np.zeros_like(r)
        p = np.clip(r, 0.0, 1.0)
        return np.sqrt(p * (1 - p) / self.val_images)

    def shortfall(self, scores: Sequence[float], reference: Sequence[float]) -> float:
        """How far the scores fall below the references' tolerance bands, summed over targets (0: feasible)."""
        s, r = np.asarray(scores, dtype=np.float64), np.asarray(reference, dtype=np.float64)
        return float(np.maximum(r - self.tolerance(r) - s, 0.0).sum())

    def feasible(self, scores: Sequence[float], reference: Sequence[float]) -> bool:
        return self.shortfall(scores, reference) <= 1e-12

    def value(self, scores: Sequence[float], reference: Sequence[float]) -> float:
        """The aggregate alone (no guard)."""
        return {"mean": lambda: float(np.mean(scores)), "relative": lambda: float(self.gains(scores, reference).mean()),
                "worst": lambda: float(self.gains(scores, reference).min())}[self.aggregate]()

    def __call__(self, scores: Sequence[float], reference: Sequence[float]) -> float:
        value = self.value(scores, reference)
        if self.guard and not self.feasible(scores, reference):
            short = self.shortfall(scores, reference)
            value -= PENALTY if self.guard_weight is None else self.guard_weight * short
        return value

    def infeasible(self, scored: Sequence[tuple[int, Any, Sequence[float]]], reference: Sequence[float],
                   restarts: int = 1) -> list[int]:
        """Per restart (``scored``: a search's ``(index, candidate, per-target scores)``, its restarts' candidates
        in equal consecutive blocks), how many candidates fall outside the tolerance band somewhere."""
        per = max(1, -(-len(scored) // restarts))
        counts = [0] * restarts
        for n, (_, _, s) in enumerate(sorted(scored, key=lambda x: x[0])):
            counts[n // per] += not self.feasible(s, reference)
        return counts

    def choose(self, scored: Sequence[tuple[int, Any, Sequence[float]]],
               reference: Sequence[float]) -> tuple[int, Any] | None:
        """Of ``(index, candidate, per-target scores)``, the feasible one with the best aggregate (ties: the
        earliest) — what a guarded search returns whatever steered it; None when none is feasible."""
        feasible = [(i, c, s) for i, c, s in scored if self.feasible(s, reference)]
        if not feasible:
            return None
        i, c, _ = max(feasible, key=lambda x: (self.value(x[2], reference), -x[0]))
        return i, c

    def margins(self, targets: Sequence[float], scores: Sequence[float],
                reference: Sequence[float]) -> list[dict[str, Any]]:
        """Per target: the candidate's score, uniform's, their difference, the tolerance and the relative gain."""
        tol, gains = self.tolerance(reference), self.gains(scores, reference)
        return [{"target": float(t), "score": float(s), "uniform": float(r), "margin": float(s - r),
                 "tolerance": float(e), "gain": float(g)}
                for t, s, r, e, g in zip(targets, scores, reference, tol, gains)]
