"""What a run gives the method ``filters``'s searches (lcp / legr's learned ranking, amc's agent, the member guard):
the criterion's seeded training batches, the fitness of a cut network, the family objective, the winner's log
lines. Built from the run (`legr.methods.base.RunContext`) and the method's config, alike in the driver and in a
worker that scores candidates for it (`FilterPruning.work`)."""

from __future__ import annotations

import itertools
import math
from typing import Any

from legr.data import make_loader
from legr.methods.base import RunContext
from legr.methods.filters.criteria import CriterionContext
from legr.methods.filters.legr.family import FamilyObjective
from legr.methods.filters.legr.fitness import CandidateFitness


def criterion_context(run: RunContext, cfg: Any) -> CriterionContext:
    """Seed + a fixed sample of ``criterion_batches`` training batches (never validation or test images)."""
    x, y = run.data.train

    def batches():
        loader = make_loader(x, y, cfg.finetune.batch_size, run.data.mean, run.data.std, shuffle=True,
                             seed=cfg.seed, device=run.device)
        return itertools.islice(loader, cfg.criterion_batches)

    return CriterionContext(seed=cfg.seed, batches=batches)


def search_fitness(run: RunContext, cfg: Any) -> CandidateFitness:
    """The search's score of one pruned network: adaptive BN, tau SGD steps, the validation metric."""
    s = cfg.search
    x, y = run.data.train
    return CandidateFitness(
        lambda net: run.accuracy(net, run.data.val), bn=run.bn_batches(s.bn_batches), tau=s.tau,
        train_loader=lambda i: make_loader(x, y, s.batch_size, run.data.mean, run.data.std, shuffle=True,
                                           augment=True, seed=cfg.seed * 100_003 + i, device=run.device),
        sgd=(s.lr, s.momentum, s.weight_decay), metric=s.fitness)


def search_objective(run: RunContext, cfg: Any) -> FamilyObjective:
    s, classes = cfg.search, run.data.num_classes
    return FamilyObjective(
        s.aggregate, s.guard, chance=1 / classes if s.fitness == "accuracy" else -math.log(classes),
        val_images=len(run.data.val[1]) if s.fitness == "accuracy" else 0, guard_weight=s.guard_weight)


def log_margins(run: RunContext, cfg: Any, margins: list[dict[str, Any]]) -> None:
    metric = "top-1" if cfg.search.fitness == "accuracy" else "-loss"
    pct = (lambda v: f"{100 * v:.1f}%") if metric == "top-1" else (lambda v: f"{v:.3f}")  # noqa: E731
    for m in margins:
        run.log(f"search winner at {m['target']:.0%}: validation {metric} {pct(m['score'])} vs uniform "
                f"{pct(m['uniform'])} (margin {m['margin']:+.4f}, tolerance {m['tolerance']:.4f})")
