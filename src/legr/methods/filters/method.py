"""Structured filter pruning: a criterion scores every filter, an allocator turns the scores into per-layer widths
(uniform, global, LCP's offsets, LeGR's affine transforms, AMC's agent per target: `legr.methods.filters.criteria`,
`.allocate`), surgery removes the filters. ``prepare`` computes the ranking (``ranking.json``: lcp/legr's resumable
search (CMA-ES or aging evolution), amc's per-target searches), ``cut`` solves each budget on it and removes the channels (BN
statistics re-estimated before the member is saved), ``finetune`` is the run's SGD recipe."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from legr.engine.artifacts import load_pruned
from legr.engine.cost import BUDGET_UNITS, CostModel, count_params, format_cost
from legr.engine.plan import Plan
from legr.engine.surgery import prune
from legr.errors import ConfigError
from legr.graph import ChannelGraph
from legr.methods.filters.allocate import (
    ALLOCATORS,
    Floors,
    GlobalSolver,
    check_reachable,
    random_plans,
    solve_uniform,
)
from legr.methods.base import Method, WorkUnits, register_method
from legr.methods.filters.latency import measured_cut
from legr.methods.filters.member import save_member
from legr.methods.filters.criteria import CRITERIA, compute_scores, group_scores, normalized_scores
from legr.methods.filters.config import FILTERS_CONFIG
from legr.methods.folders import MemberFolder, MethodFolder
from legr.methods.filters.legr.refine import refinements_left
from legr.methods.filters.legr.scorer import CandidateScorer
from legr.methods.filters.run_search import criterion_context, log_margins, search_fitness, search_objective
from legr.methods.filters.legr.ranking import (
    REFERENCE_INDEX,
    Ranking,
    fitness_evaluations,
    learn_ranking,
    model_fingerprint,
    ranked_layers,
    stored_scores,
)


@register_method
class FilterPruning(Method):
    name = "filters"
    description = "structured: a filter criterion cut by a budget allocator (uniform, global, LCP, LeGR, AMC)"
    budgets = ("macs", "params", "latency")
    config_keys = FILTERS_CONFIG
    entry_keys = ("criterion", "allocator", "search", "floors", "amc")

    channel_plans = True
    source_settings = {"allocator": "uniform"}  # no search

    @classmethod
    def member_prefix(cls, settings: Mapping[str, Any]) -> str:
        return settings["allocator"]

    @classmethod
    def entry_label(cls, settings: Mapping[str, Any]) -> tuple[str, str]:
        return settings["criterion"], settings["allocator"]

    @classmethod
    def searches(cls, settings: Mapping[str, Any]) -> bool:
        return ALLOCATORS[settings["allocator"]].searches

    @classmethod
    def identity(cls, cfg: Any, held: dict[str, Any]) -> dict[str, Any]:
        """The search targets as resolved (an explicit list equal to the default is the same run); the keys added
        since the first run folders were written are left out at their old values, so those folders still match."""
        out = dict(held)
        for key in ("method", "budget"):  # a folder written before methods and budgets existed ran filters on MACs
            if out[key] in (None, "filters", "macs"):
                del out[key]
        if out["floors"]["round_to"] == 1:  # ... and before widths could be rounded
            out["floors"] = {k: v for k, v in out["floors"].items() if k != "round_to"}
        searched = ALLOCATORS[cfg.allocator].search is not None  # a search's settings matter only to a search
        out["search"] = {**out["search"], "target": None, "targets": list(cfg.search_targets)} if searched else None
        for a in (a for n, a in ALLOCATORS.items() if a.per_target is not None and n != cfg.allocator):
            out.pop(a.per_target.section, None)  # a per-target search's section matters only to its own runs
        return out

    @classmethod
    def parts(cls) -> list[tuple[str, str, str]]:
        return ([("criterion", name, c.summary) for name, c in CRITERIA.items()]
                + [("allocator", name, a.description) for name, a in ALLOCATORS.items()])

    @classmethod
    def prepare_seconds(cls, cfg: Any, folder: MethodFolder, units: WorkUnits) -> float:
        """The search's candidates still to do (the search log has one line per candidate evaluated) plus the
        uniform reference and the winner, each scored at every search target; then the refinement's at each member's
        target (their logs likewise)."""
        if (per_target := ALLOCATORS[cfg.allocator].per_target) is not None:
            return per_target.prepare_seconds(cfg, folder, units)
        if ALLOCATORS[cfg.allocator].search is None or folder.ranking.exists():
            return 0.0
        s = cfg.search
        done = len(folder.search_log.read_text().splitlines()) if folder.search_log.exists() else 0
        left = max(s.evaluations * s.restarts - done, 0) + 2
        return sum(n * units.candidate(t, s.bn_batches, s.tau, s.batch_size) for t, n in
                   [(t, left) for t in cfg.search_targets] + refinements_left(folder.search_log, s.refine, cfg.targets))

    @classmethod
    def search_cost(cls, folder: MethodFolder) -> dict[str, Any]:
        done = folder.ranking.exists()
        return {"fitness_evaluations": fitness_evaluations(folder.ranking, folder.search_log)} if done else {}

    def __init__(self, run) -> None:
        super().__init__(run)
        self.cfg = run.method_cfg  # targets (and the search's, by default) those of the cut, not the chain's
        self.allocator = ALLOCATORS[self.cfg.allocator]  # the name was checked when the config was read

    @property
    def floors(self) -> Floors:
        f = self.cfg.floors
        return Floors(f.safeguard, f.min_channels, f.round_to)

    def validate(self) -> None:
        if self.allocator.searches and len(self.run.data.val[0]) == 0:
            raise ConfigError("the search needs a validation split: set data.val_size > 0")
        if self.budget not in (units := (self.allocator.per_target or self).budgets):  # amc: macs or params
            raise ConfigError(f"allocator {self.allocator.name} takes {' or '.join(units)} budgets, not {self.budget}")
        searched = self.cfg.search_targets if self.allocator.search is not None else ()
        check_reachable(self.run.graph, self.run.cost, self.floors, (*self.cfg.targets, *searched), self.budget)

    @classmethod
    def latency_probes(cls, graph: ChannelGraph, cost: CostModel, count: int, seed: int = 0) -> list[np.ndarray]:
        """The full network and ``count`` random allocations (`random_plans`: widths differing between layers as a
        learned ranking's do)."""
        return [np.ones(graph.num_classes)] + random_plans(graph, cost, count, seed=seed)

    def sized_network(self, fraction: float) -> nn.Module:
        """A global l2sq-ranking cut at ``fraction`` of the MACs (what a search candidate builds, solver included)."""
        cost = self.run.cost
        solver = GlobalSolver(self.run.graph, cost, self._l2sq_scores, self.floors)
        return prune(self.run.graph, solver.solve(max(fraction * cost.base_macs, solver.min_cost)))

    @cached_property
    def _l2sq_scores(self) -> dict[str, np.ndarray]:
        return group_scores(self.run.graph, compute_scores("l2sq", self.run.graph, self.run.base))

    # --- prepare: the ranking ---------------------------------------------------------------------------------
    def prepare(self) -> Ranking:
        path = self.run.folder.ranking
        fingerprint = model_fingerprint(self.run.base)
        if path.exists():
            ranking = Ranking.load(path)
            ranking.check(self.run.graph, fingerprint)
            self._check_search_targets(ranking, path)
            return ranking
        with self.run.timed("rank"):
            ranking = self._make_ranking(fingerprint)
        ranking.save(path)
        return ranking

    def _check_search_targets(self, ranking: Ranking, path: Path) -> None:
        """A learned ranking is reused only by a config that searches at the same targets (a folder written before
        the family-aware default searched at the lowest target only)."""
        held = ranking.search.get("targets") or ([ranking.search["target"]] if "target" in ranking.search else None)
        if held is None or self.allocator.search is None:
            return
        wanted = self.cfg.search_targets
        if len(held) != len(wanted) or any(abs(a - b) > 1e-9 for a, b in zip(held, wanted)):
            unit = BUDGET_UNITS[self.budget].label
            raise ConfigError(f"{path} was searched at {', '.join(f'{t:.0%}' for t in held)} {unit} but the config "
                              f"searches at {', '.join(f'{t:.0%}' for t in wanted)}: set search.targets to match "
                              "or use another output folder")

    @cached_property
    def _criterion_scores(self) -> dict[str, np.ndarray]:
        return compute_scores(self.cfg.criterion, self.run.graph, self.run.base, criterion_context(self.run, self.cfg))

    @cached_property
    def _search_scores(self) -> dict[str, np.ndarray]:
        """What a learned transform applies to (stored in the ranking: every cut uses them)."""
        return normalized_scores(self.cfg.search.normalize, self.run.graph, self._criterion_scores)

    def work(self, kind: str, items: list[Any]) -> list[Any]:
        """``candidates``: (transform, fitness index, budgets) -> its scores there, as the search scores them here."""
        if kind != "candidates":
            return super().work(kind, items)
        return [self._scorer(c, i, budgets) for c, i, budgets in items]

    @cached_property
    def _scorer(self) -> CandidateScorer:
        run = self.run
        return CandidateScorer(run.graph, run.cost, self._search_scores, ranked_layers(run.graph),
                               search_fitness(run, self.cfg), self.floors, self.budget, self.cfg.allocator)

    def _make_ranking(self, fingerprint: str) -> Ranking:
        run, cfg = self.run, self.cfg
        scores = self._criterion_scores
        if self.allocator.search is None:  # the raw criterion, or searched per target (amc) on it
            layers, per_target = ranked_layers(run.graph), self.allocator.per_target
            searched = {} if per_target is None else per_target.rank(
                run, group_scores(run.graph, scores), self.floors, self.budget, search_fitness(run, cfg))
            return Ranking.identity(layers, criterion=cfg.criterion, fingerprint=fingerprint, search=searched,
                                    source=run.source_info(), allocator=cfg.allocator,
                                    scores=stored_scores(scores, layers))
        s = cfg.search
        targets = cfg.search_targets
        scores = self._search_scores
        runs = f" x {s.restarts} independent searches" if s.restarts > 1 else ""
        run.log(f"learning the ranking ({cfg.allocator}, {cfg.criterion}, {s.optimizer}, {s.evaluations} candidates{runs}, "
                f"BN batches {s.bn_batches}, tau {s.tau}, val {s.fitness}) at "
                f"{', '.join(f'{t:.0%}' for t in targets)} of {format_cost(run.cost.base(self.budget), self.budget)}")
        base = run.cost.base(self.budget)
        parallel = getattr(run, "parallel", None)  # e.g. Ray workers (`legr.pipeline.ray_dispatch`)
        if parallel is not None and s.optimizer == "evolution" and s.in_flight == 1:
            run.log("aging evolution with search.in_flight 1 breeds one child at a time: its candidates are scored "
                    "here, one by one (set search.in_flight to the workers to score that many at once)")
        learned = learn_ranking(
            run.base, run.graph, search_fitness(run, cfg), [t * base for t in targets], unit=self.budget, cost=run.cost,
            objective=search_objective(run, cfg), criterion=cfg.criterion, scores=scores, allocator=cfg.allocator,
            floors=self.floors,
            mutate_fraction=s.mutate_fraction, mutation_scale=s.mutation_scale, seed_uniform=s.seed_uniform,
            refine=s.refine, refine_at=[t * base for t in sorted(cfg.targets)],
            fallback=False, search=s.evolution(cfg.seed),
            state_path=run.folder.search_state, log_path=run.folder.search_log, progress=run.progress,
            score_many=None if parallel is None else lambda items: parallel("candidates", list(items)),
        )
        margins = [{**m, "target": t} for m, t in zip(learned.search["margins"], targets)]
        log_margins(run, cfg, margins)
        for r in learned.search.get("refined", ()):
            run.log(f"refined at {r['target'] / base:.0%}: fitness {r['fitness']:.4f} after {r['evaluations']} candidates (the shared "
                    f"winner's {r['shared_fitness']:.4f})")
        if learned.search.get("infeasible_targets"):
            if self._members_guarded():
                run.log("no searched ranking stays within the tolerance of the uniform allocation at every search "
                        "target: the winner is kept, and each member whose cut scores below uniform's on validation "
                        f"keeps the uniform allocation ({self._fallback_criterion(learned)})")
            else:  # members cut against the clock are not guarded one by one: the whole family falls back
                criterion = self._fallback_criterion(learned)
                run.log("no searched ranking stays within the tolerance of the uniform allocation at every search "
                        f"target: falling back to the uniform allocation ({criterion})")
                learned = replace(Ranking.identity(learned.layers, criterion=criterion,
                                                   fingerprint=learned.fingerprint, allocator="uniform",
                                                   scores=stored_scores(self._fallback_scores(learned),
                                                                        list(learned.layers))),
                                  search={**learned.search, "fallback": f"uniform-{criterion}"})
        return replace(learned, source=run.source_info(),
                       search={**learned.search, **s.model_dump(mode="json"), "target": targets[0],
                               "targets": list(targets), "margins": margins})

    def _fallback_criterion(self, ranking: Ranking) -> str:
        return self.cfg.search.fallback_criterion or ranking.criterion

    def _fallback_scores(self, ranking: Ranking) -> dict[str, np.ndarray]:
        """Per-filter scores of `_fallback_criterion`, which choose the filters the uniform allocation keeps where
        the guard falls back (the ranking's own stored scores when it is the ranking's criterion); computed once."""
        if self._fallback_criterion(ranking) == ranking.criterion:
            return ranking.layer_scores(self.run.graph, self.run.base)
        return self._configured_fallback_scores

    @cached_property
    def _configured_fallback_scores(self) -> dict[str, np.ndarray]:
        return compute_scores(self.cfg.search.fallback_criterion, self.run.graph, self.run.base,
                              criterion_context(self.run, self.cfg))

    def describe(self, ranking: Ranking) -> str:
        fallback = f" (fallback: {ranking.search['fallback']})" if ranking.search.get("fallback") else ""
        return f"ranking over {len(ranking.layers)} layers, best fitness {ranking.search.get('best_fitness')}{fallback}"

    # --- cut: one member per budget -----------------------------------------------------------------------------
    def cut(self, ranking: Ranking, target: float, member: MemberFolder) -> None:
        """Cut the ranking at ``target``; a member on disk cut otherwise (e.g. from an earlier search of this folder)
        is cut again and loses its fine-tune. BN statistics are re-estimated (``bn_batches``) before it is saved, and
        its test top-1 is recorded both as cut (``top1_before_ft``) and after that (``top1_after_bn``)."""
        run, cfg = self.run, self.cfg
        ranked = ranking.at(target * run.cost.base(self.budget))  # the target's refined transform, if any
        solver = ranked.solver(run.graph, run.cost, run.base, self.floors, self.budget)
        measured = self.budget == "latency" and cfg.budget.measure_members
        if measured:
            keep, checked = measured_cut(run, solver, ranking.fingerprint, target, member)
        else:
            keep = solver.solve(target * run.cost.base(self.budget))
            keep, checked = self._guard_member(ranking, keep, target, member)
        if member.plan.exists():
            if np.array_equal(Plan.load(member.plan).keep_vector(run.graph), keep):
                return
            run.log(f"{member.name} was cut from another ranking: cutting it again")
            shutil.rmtree(member.root)
        with run.timed("prune"):
            net = prune(run.graph, keep)
        info: dict[str, Any] = {"method": cfg.allocator, "criterion": cfg.criterion, "target": target,
                                "ranking": ranking.fingerprint, **({"refined": True} if ranked is not ranking else {})}
        if run.cost.latency is not None:
            info["predicted_ms"] = run.cost.latency.predict(keep)
        if checked is not None:
            info["latency_check" if measured else "guard"] = checked
        predicted = f", predicted {info['predicted_ms']:.2f} ms" if "predicted_ms" in info else ""
        save_member(run, member, net, keep, info, bn_batches=cfg.bn_batches, note=predicted)

    def _members_guarded(self) -> bool:
        """Whether `cut` checks every member against the uniform allocation (a cut measured against the clock is
        not: there the search's own fallback protects the family)."""
        return self.cfg.search.guard and not (self.budget == "latency" and self.cfg.budget.measure_members)

    def _guard_member(self, ranking: Ranking, keep: np.ndarray, target: float,
                      member: MemberFolder) -> tuple[np.ndarray, dict | None]:
        """With ``search.guard``, a learned ranking's member is never worse than the uniform allocation at its own
        budget: both are scored by the search's fitness (validation), and uniform is kept when the ranking's cut
        scores below it by more than the sampling error (the search guards only its search targets). The uniform
        allocation keeps the filters of ``search.fallback_criterion`` (default l1: Li et al.'s baseline)."""
        run, s = self.run, self.cfg.search
        if self.allocator.search is None or not s.guard or ranking.allocator == "uniform":
            return keep, None
        raw = group_scores(run.graph, self._fallback_scores(ranking))
        uniform, _ = solve_uniform(run.graph, run.cost, raw, target * run.cost.base(self.budget), self.floors,
                                   unit=self.budget)
        if np.array_equal(uniform, keep):
            return keep, None
        fitness = search_fitness(self.run, self.cfg)
        mine, ref = (fitness(prune(run.graph, k), REFERENCE_INDEX + i) for i, k in enumerate((keep, uniform)))
        tolerance = float(search_objective(self.run, self.cfg).tolerance([ref])[0])
        chosen = "ranking" if mine >= ref - tolerance else "uniform"
        if chosen == "uniform":
            run.log(f"{member.name}: the ranking's cut scores {mine:.4f} on validation, below "
                    f"the uniform allocation's {ref:.4f} by more than {tolerance:.4f}: keeping the uniform allocation "
                    f"({self._fallback_criterion(ranking)})")
        return (keep if chosen == "ranking" else uniform), {"ranking": mine, "uniform": ref, "tolerance": tolerance,
                                                            "chosen": chosen,
                                                            "uniform_criterion": self._fallback_criterion(ranking)}

    def load(self, member: MemberFolder) -> tuple[nn.Module, dict[str, Any]]:
        net, plan = load_pruned(member.root, self.run.base)
        assert int(plan.info["params"]) == count_params(net), "cost model and network disagree on the parameter count"
        return net, plan.info
