"""The LeGR search's section of a run config (``search:``): the searcher's settings
(`legr.methods.filters.legr.evolution.EvolutionConfig`: CMA-ES or aging evolution, with LeGR's defaults) plus how a
candidate is scored."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from legr.methods.filters.criteria import CRITERIA
from legr.methods.filters.legr.evolution import EvolutionConfig
from legr.settings import registered


class SearchConfig(EvolutionConfig):
    """The search of the per-layer affine transform (allocator legr) or offset only (allocator lcp): CMA-ES over each
    layer's score quantiles by default, the paper's aging evolution over the raw scores with ``optimizer: evolution,
    normalize: none`` (Chin et al.'s LCP searched the same way).

    Fitness of a candidate: prune at each search target (default: the run's lowest, middle and highest targets),
    re-estimate BatchNorm statistics on ``bn_batches`` training batches (adaptive BN; augmented when
    ``finetune.augment`` is), take ``tau`` SGD steps, then the validation ``fitness`` (top-1 by default; see
    benchmarks/results/fitness_correlation for why); the per-target scores are combined by ``aggregate``
    (`family`), and with ``guard`` a ranking below the uniform allocation at any search target is
    never returned. The paper's CIFAR setting: ``{optimizer: evolution, normalize: none, population: 64, sample: 16,
    evaluations: 400, restarts: 1, bn_batches: 0, tau: 0, fitness: loss, seed_uniform: false, guard: false,
    guard_weight: null, target: <one target>}`` (ImageNet: tau 200).
    """

    optimizer: Literal["evolution", "cma"] = Field(
        "cma", description="cma (the default: separable CMA-ES, every layer moves at each step, along directions that "
                           "paid off; population = CMA's lambda, sample unused; legr.methods.filters.legr.cmaes) or "
                           "evolution (aging evolution, the paper's). On ResNet-20 / CIFAR-10-JPEG, 3 seeds, equal "
                           "evaluations, cma with normalize rank and guard_weight 1 fine-tuned +1.5 / +2.2 points "
                           "above the paper's search averaged over two families (README, issue 38)")
    population: int = Field(16, ge=1, strict=True, description="cma: candidates per generation (lambda); evolution: "
                                                               "the population (the paper: 64)")
    sample: int = Field(4, ge=1, strict=True, description="evolution: members drawn per tournament (the paper: 16)")
    evaluations: int = Field(1200, ge=1, strict=True, description="candidates per restart, the first population "
                                                                  "included (the paper: 400, one restart)")
    fallback_criterion: registered(lambda: CRITERIA) | None = Field(  # type: ignore[valid-type]
        "l1", description="the criterion choosing the filters of the uniform allocation that the guard checks each "
                          "member against and falls back to (null: the ranking's own criterion). l1 is Li et al.'s "
                          "uniform baseline: on ResNet-20 / CIFAR-10-JPEG uniform widths with l2sq fine-tuned 2.2 "
                          "points below l1 at 35% MACs (3 seeds, benchmarks/README.md)")
    restarts: int = Field(1, ge=1, strict=True, description="independent searches (own initial population and "
                                                            "random stream); the fittest candidate of all wins")
    mutate_fraction: float = Field(0.1, gt=0, le=1)
    mutation_scale: float = Field(1.0, ge=0, description="scales a mutation's steps (log-alpha std and kappa std; "
                                                         "the paper: 1, smaller: a more local search)")
    bn_batches: int = Field(20, ge=0, description="training batches re-estimating BN statistics before the fitness "
                                                  "(0: keep the source network's statistics, as the paper)")
    tau: int = Field(0, ge=0, description="fine-tune steps per candidate before measuring fitness")
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0)
    weight_decay: float = Field(5e-4, ge=0)
    batch_size: int = Field(128, ge=1)
    fitness: Literal["loss", "accuracy"] = "accuracy"
    aggregate: Literal["mean", "relative", "worst"] = Field(
        "mean", description="how the search targets' scores combine: mean (plain mean of the scores), relative (mean "
                            "over targets of the gain over the uniform allocation, in units of uniform's distance from "
                            "chance), worst (the smallest relative gain); benchmarks/results/family_fitness says why "
                            "mean")
    guard: bool = Field(True, description="never return a ranking scoring below the uniform allocation at a search "
                                          "target (beyond validation sampling error); fall back to uniform instead")
    guard_weight: float | None = Field(1.0, ge=0, description="null: the guard's infeasible candidates score below "
                                                               "every feasible one while searching; w: they lose w x "
                                                               "their summed shortfall instead (a soft guard: they "
                                                               "still breed), and the best feasible one is returned "
                                                               "(legr.methods.filters.legr.family)")
    seed_uniform: bool = Field(True, description="the first population also holds the transforms reproducing the "
                                                 "uniform allocation at each search target (beside the identity = "
                                                 "global ranking)")
    normalize: Literal["none", "rank", "rank-mean"] = Field(
        "rank", description="each layer's criterion scores before the affine transform: none (the criterion's values, "
                            "the paper), rank (their quantiles within the layer, one scale for every layer: alpha "
                            "and kappa then set each layer's keep fraction as a linear function of the global "
                            "threshold) or rank-mean (rank, a channel written by several layers scored by their mean "
                            "quantile, not the sum; legr.methods.filters.criteria.normalized_scores)")
    refine: int = Field(0, ge=0, description="then continue the search at each of the run's targets alone for this "
                                             "many candidates from the winner; the member cut there uses the "
                                             "refined transform, any other budget the shared ranking (0: off; "
                                             "legr.methods.filters.legr.refine)")
    target: float | None = Field(None, gt=0, le=1, description="search at this one MACs fraction (the paper's "
                                                                "single-target search)")
    targets: tuple[float, ...] | None = Field(None, min_length=1, description="fitness = mean over these MACs "
                                              "fractions; default (neither key): the run's lowest, middle and "
                                              "highest targets")

    @model_validator(mode="after")
    def _check(self) -> "SearchConfig":
        if self.target is not None and self.targets is not None:
            raise ValueError("search.target and search.targets exclude each other: give one")
        if 0 < self.refine < 3:
            raise ValueError(f"search.refine must be 0 (off) or at least 3 candidates per target, got {self.refine}")
        bad = [t for t in self.targets or () if not 0 < t <= 1]
        if bad:
            raise ValueError(f"search.targets must be fractions in (0, 1], got {bad}")
        return self
