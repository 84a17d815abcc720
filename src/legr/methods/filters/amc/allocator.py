"""The allocator ``amc`` of the filter-pruning method: a per-target search (`allocate.TargetSearch`).

`FilterPruning.prepare` calls `AmcSearch.rank`, which searches every target of the run in turn (`search.search_target`;
state and log per target in the run folder: ``amc_state_<target>.pt``, ``amc_log_<target>.jsonl``) and returns
what the ranking file stores under ``search.amc``: the settings, the seed and, per target, its search (episodes,
fitness evaluations, wall seconds, best reward and fitness, the per-group ratios, the scale factor and the kept
widths). `FilterPruning.cut` then cuts each target from its record (`SearchedSolver`); a target that was not
searched is an error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from legr.engine.cost import BudgetUnit, CostModel, format_cost
from legr.engine.surgery import prune
from legr.errors import BudgetError, LegrError
from legr.graph import ChannelGraph
from legr.methods.filters.allocate import Allocator, Floors, RatioKeep, register_allocator
from legr.methods.filters.amc.env import PruningEnv
from legr.methods.filters.amc.search import TargetResult, reward_function, search_target


def state_file(folder: Any, target: float) -> Any:
    return folder.file(f"amc_state_{target:g}.pt")


def log_file(folder: Any, target: float) -> Any:
    return folder.file(f"amc_log_{target:g}.jsonl")


class SearchedSolver:
    """Cuts the targets an AMC search recorded: the record's ratios, brought to the budget exactly from below
    (`PruningEnv.finish`, as during the search)."""

    def __init__(self, graph: ChannelGraph, cost: CostModel, scores: Mapping[str, np.ndarray], floors: Floors,
                 unit: BudgetUnit, records: list[dict[str, Any]]) -> None:
        self.graph, self.cost, self.scores, self.floors, self.unit = graph, cost, scores, floors, unit
        self.records = records
        self.base = cost.base(unit)
        self.min_cost = cost.of(unit)(RatioKeep(graph, scores, floors)([0.0] * len(graph.prunable_groups())))

    def solve(self, target: float) -> np.ndarray:
        fraction = target / self.base
        record = next((r for r in self.records if abs(r["target"] - fraction) <= 1e-9), None)
        if record is None:
            searched = ", ".join(f"{r['target']:g}" for r in self.records) or "none"
            raise BudgetError(f"AMC has no search for target {fraction:g} ({format_cost(target, self.unit)}): it "
                              f"searches every target on its own (searched: {searched}); add it to the run's "
                              "targets in a new output folder")
        env = PruningEnv(self.graph, self.cost, self.scores, target, self.floors, self.unit)
        keep, _ = env.finish([record["ratios"][g.name] for g in env.groups])
        return keep


class AmcSearch:
    """AMC's per-target DDPG search (`allocate.TargetSearch`), configured by the run's ``amc`` section and scored by
    the filter method's search fitness (``search.bn_batches``, ``tau``, ``fitness``)."""

    section = "amc"
    budgets: tuple[BudgetUnit, ...] = ("macs", "params")

    def rank(self, run: Any, scores: Mapping[str, np.ndarray], floors: Floors, unit: BudgetUnit,
             fitness: Any) -> dict[str, Any]:
        cfg, targets, base = run.cfg.amc, sorted(run.cfg.targets), run.cost.base(unit)
        results: list[TargetResult] = []
        for k, t in enumerate(targets):
            env = PruningEnv(run.graph, run.cost, scores, t * base, floors, unit)
            run.log(f"AMC search at {t:.0%} of {format_cost(base, unit)}: {cfg.warmup} warm-up + {cfg.episodes} "
                    f"episodes over {len(env.groups)} groups, reward {cfg.reward}")
            net_fitness = lambda keep, i, k=k: fitness(prune(run.graph, keep), k * 1_000_000 + i)  # noqa: E731
            score = reward_function(cfg.reward, net_fitness, run.cost.macs, run.cfg.search.fitness)
            result = search_target(env, score, cfg, seed=run.cfg.seed, fraction=t, state_path=state_file(run.folder, t),
                                   log_path=log_file(run.folder, t), progress=run.progress, label=f"amc {t:.0%}")
            run.log(f"AMC at {t:.0%}: best reward {result.best_reward:.5g} (episode {result.best_episode}, fitness "
                    f"{result.best_score:.4f}), {result.episodes} episodes in {result.seconds:.0f} s")
            results.append(result)
        return {"amc": {**cfg.model_dump(mode="json"), "seed": run.cfg.seed, "budget": unit,
                        "searched": [r.to_json() for r in results]},
                "best_fitness": [r.best_score for r in results]}

    def solver(self, graph: ChannelGraph, cost: CostModel, scores: Mapping[str, np.ndarray], floors: Floors,
               unit: BudgetUnit, search: Mapping[str, Any]) -> SearchedSolver:
        return SearchedSolver(graph, cost, scores, floors, unit, list(search.get("amc", {}).get("searched", [])))

    def prepare_seconds(self, cfg: Any, folder: Any, units: Any) -> float:
        """The episodes still to run (each target's log has one line per finished episode), each one candidate
        network scored by the search fitness."""
        if folder.ranking.exists():
            return 0.0
        a, s, seconds = cfg.amc, cfg.search, 0.0
        for t in cfg.targets:
            log = log_file(folder, t)
            done = len(log.read_text().splitlines()) if log.exists() else 0
            seconds += max(a.warmup + a.episodes - done, 0) * units.candidate(t, s.bn_batches, s.tau, s.batch_size)
        return seconds


def _searched_only(graph: ChannelGraph, cost: CostModel, scores: Mapping[str, np.ndarray], floors: Floors,
                   unit: BudgetUnit = "macs") -> SearchedSolver:
    """``Allocator.solver`` without search records: AMC has nothing to cut before its search (`Ranking.solver`
    passes the ranking's records to `AmcSearch.solver`)."""
    raise LegrError("allocator amc cuts only the targets its search recorded: use the ranking it stored "
                    "(`Ranking.solver`)")


AMC = register_allocator(Allocator(
    "amc", _searched_only, None, "per-layer ratios chosen by a DDPG agent, searched for every target (He et al. 2018)",
    per_target=AmcSearch()))
