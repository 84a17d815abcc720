"""Per-target refinement of a learned ranking (issue 38): each search target's evolution starts from the shared
winner, scores only at its target, keeps the winner when nothing beats it, resumes after a kill, and a member cut at a
refined target (only there) uses the refined transform."""

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from legr.engine.cost import CostModel
from legr.engine.plan import Plan
from legr.engine.surgery import prune
from legr.errors import ConfigError
from legr.graph import analyze
from legr.methods.filters.allocate import Floors
from legr.methods.filters.legr import EvolutionConfig, FamilyObjective
from legr.methods.filters.legr.ranking import REFERENCE_INDEX, Ranking, fitness_evaluations, learn_ranking
from legr.methods.filters.legr.refine import REFINE_INDEX, refine_path, refinements_left
from legr.methods.filters.legr.search_config import SearchConfig
from legr.models import build_model
from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline

SEARCH = EvolutionConfig(population=4, sample=2, evaluations=6, seed=0)


@pytest.fixture(scope="module")
def resnet20():
    model = build_model("cifar_resnet20", pretrained=True)
    return model, analyze(model, (3, 32, 32))


def params_fitness(calls=None):
    """A deterministic fitness that differs between allocations: the pruned network's parameters (millions)."""

    def fitness(net, i):
        if calls is not None:
            calls.append(i)
        return sum(p.numel() for p in net.parameters()) / 1e6

    return fitness


def learn(resnet20, fitness, tmp_path=None, refine=12, refine_at=None, optimizer="evolution"):
    model, graph = resnet20
    cost = CostModel(graph)
    targets = [0.3 * cost.base_macs, 0.6 * cost.base_macs]
    state = None if tmp_path is None else tmp_path / "state.json"
    log = None if tmp_path is None else tmp_path / "log.jsonl"
    at = None if refine_at is None else [f * cost.base_macs for f in refine_at]
    search = SEARCH.model_copy(update={"optimizer": optimizer})
    learned = learn_ranking(model, graph, fitness, targets, search=search, refine=refine, refine_at=at, progress=False,
                            objective=FamilyObjective("mean", guard=False), state_path=state, log_path=log)
    return learned, targets, cost


@pytest.mark.parametrize("optimizer", ["evolution", "cma"])
def test_each_target_is_refined_from_the_shared_winner_and_scored_there_alone(resnet20, optimizer):
    calls: list[int] = []
    learned, targets, _ = learn(resnet20, params_fitness(calls), optimizer=optimizer)
    records = learned.search["refined"]
    assert [r["target"] for r in records] == targets
    for k, r in enumerate(records):
        mine = [i - (k + 1) * REFINE_INDEX for i in calls if (k + 1) * REFINE_INDEX <= i < (k + 2) * REFINE_INDEX]
        assert mine == list(range(12))  # one network per candidate: scored at its own target only
        # candidate 1 is the shared winner, scored exactly as the shared search scored it at this target
        assert r["shared_fitness"] == pytest.approx(learned.search["margins"][k]["score"])
        assert r["fitness"] >= r["shared_fitness"]
    # the shared search optimizes the mean over both targets; alone at one target, the evolution finds more there
    assert any(r["fitness"] > r["shared_fitness"] + 1e-9 for r in records)
    assert {i for i in calls if i < REFINE_INDEX} == set(range(6))  # the shared search is unchanged
    assert {i for i in calls if i >= REFERENCE_INDEX} == {REFERENCE_INDEX, REFERENCE_INDEX + 1}


def test_the_members_targets_are_refined_those_the_search_did_not_score_against_their_own_uniform_reference(
        resnet20):
    calls: list[int] = []
    learned, targets, cost = learn(resnet20, params_fitness(calls), refine_at=[0.3, 0.45, 0.6])
    assert [r["target"] for r in learned.search["refined"]] == [targets[0], 0.45 * cost.base_macs, targets[1]]
    assert {i for i in calls if i >= REFERENCE_INDEX} == {REFERENCE_INDEX + k for k in range(3)}
    assert learned.search["refine_references"] == 1
    assert all(len([i for i in calls if (k + 1) * REFINE_INDEX <= i < (k + 2) * REFINE_INDEX]) == 12 for k in range(3))


def test_a_member_cut_at_a_refined_target_uses_its_transform_any_other_budget_the_shared_one(resnet20):
    model, graph = resnet20
    learned, targets, cost = learn(resnet20, params_fitness())
    best = max(learned.search["refined"], key=lambda r: r["fitness"] - r["shared_fitness"])
    t = best["target"]
    refined = learned.at(t)
    assert refined.alpha == tuple(best["alpha"]) and refined.kappa == tuple(best["kappa"])
    keep = refined.solver(graph, cost, model).solve(t)
    shared = learned.solver(graph, cost, model).solve(t)
    assert not np.array_equal(keep, shared)  # the refinement changed this member
    # the refined cut is the one whose fitness the record holds
    assert params_fitness()(prune(graph, keep), 0) == pytest.approx(best["fitness"])
    assert learned.at(0.45 * cost.base_macs) is learned  # a budget that was not refined: the shared ranking
    uniform = Ranking.identity(learned.layers, allocator="uniform", search=learned.search)
    assert uniform.at(t) is uniform  # a fallback to the uniform allocation has no transform to refine


def test_a_refinement_killed_midway_resumes_to_the_same_ranking(resnet20, tmp_path):
    reference, _, _ = learn(resnet20, params_fitness())
    plain = params_fitness()

    def killed(net, i):
        if i == 2 * REFINE_INDEX + 5:  # in the second target's refinement
            raise KeyboardInterrupt
        return plain(net, i)

    with pytest.raises(KeyboardInterrupt):
        learn(resnet20, killed, tmp_path)
    assert refine_path(tmp_path / "state.json", 0).exists() and refine_path(tmp_path / "state.json", 1).exists()
    calls: list[int] = []
    resumed, _, _ = learn(resnet20, params_fitness(calls), tmp_path)
    assert min(i for i in calls if i >= REFINE_INDEX) == 2 * REFINE_INDEX + 5  # the first target was not redone
    assert resumed.search["refined"] == [{**r, "seconds": s["seconds"]} for r, s in
                                         zip(reference.search["refined"], resumed.search["refined"])]
    ranking = tmp_path / "ranking.json"
    replace(resumed, search={**resumed.search, "targets": [0.3, 0.6]}).save(ranking)  # as the method saves it
    logged = len((tmp_path / "log.jsonl").read_text().splitlines())
    assert fitness_evaluations(ranking, tmp_path / "log.jsonl") == (logged + 2) * 2 + 2 * 12
    assert len(refine_path(tmp_path / "log.jsonl", 1).read_text().splitlines()) == 12


def test_refine_is_off_by_default_and_needs_three_candidates(resnet20):
    learned, _, _ = learn(resnet20, params_fitness(), refine=0)
    assert "refined" not in learned.search
    assert SearchConfig().refine == 0
    with pytest.raises(ConfigError, match="refine must be 0"):
        SearchConfig(refine=2)
    assert json.loads(json.dumps(SearchConfig(refine=60).model_dump(mode="json")))["refine"] == 60
    with pytest.raises(ConfigError, match="refine"):
        SearchConfig(refine=-1)


RUN = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 2, lr: 0.05, batch_size: 64, augment: false}
search: {population: 4, sample: 2, evaluations: 5, restarts: 1, batch_size: 64, bn_batches: 2, targets: [0.35, 0.7],
         refine: 4}
bn_batches: 2
targets: [0.35, 0.5, 0.7]
finetune: {epochs: 0}
eval: {latency: false}
"""


def test_a_run_refines_every_member_and_cuts_each_with_its_own_transform(tmp_path):
    """`search.refine` in a run: every member's target is refined (0.5, which the search did not score, too), and
    each member is the cut of its target's refined transform unless the guard kept the uniform allocation."""
    messages: list[str] = []
    Pipeline(parse_config(yaml.safe_load(RUN)), tmp_path, progress=False, log=messages.append).run()
    ranking = Ranking.load(tmp_path / "ranking.json")
    records = ranking.search["refined"]
    assert len(records) == 3 and ranking.search["refine_references"] == 1 and ranking.search["refine"] == 4
    assert sum("refined at" in m for m in messages) == 3
    model = build_model("digits_cnn")
    graph = analyze(model, (1, 8, 8))
    cost = CostModel(graph)
    for fraction, r in zip([0.35, 0.5, 0.7], records):
        assert r["target"] == pytest.approx(fraction * cost.base_macs)
        plan = Plan.load(tmp_path / "members" / f"legr-{round(fraction * 100)}" / "plan.json")
        assert plan.info["refined"] is True
        refined = ranking.at(r["target"])
        assert refined.alpha == tuple(r["alpha"]) and refined is not ranking
        if plan.info["guard"]["chosen"] == "ranking":
            keep = refined.solver(graph, cost, model, Floors(0.25)).solve(r["target"])  # the run's floors; stored
            # scores: these weights do not matter
            np.testing.assert_array_equal(plan.keep_vector(graph), keep)
    evaluations = len((tmp_path / "search_log.jsonl").read_text().splitlines())
    assert fitness_evaluations(tmp_path / "ranking.json", tmp_path / "search_log.jsonl") == \
        (evaluations + 2) * 2 + 3 * 4 + 1


def test_the_estimate_counts_the_refinement_candidates_still_to_score(tmp_path):
    log = tmp_path / "search_log.jsonl"
    refine_path(log, 0).write_text("{}\n" * 12)  # the lowest target is done, the middle one half
    refine_path(log, 1).write_text("{}\n" * 5)
    assert refinements_left(log, 12, [0.7, 0.3, 0.5]) == [(0.3, 0), (0.5, 7), (0.7, 12)]
    assert refinements_left(log, 0, [0.3]) == []


def test_each_refinement_also_starts_from_the_shared_candidates_best_at_its_target(resnet20, tmp_path):
    """The shared search keeps every candidate's score at each search target; target k's first population holds, after
    the winner and the uniform transform, the shared candidates that scored best at k (up to half the population)."""
    learned, _, _ = learn(resnet20, params_fitness(), tmp_path, refine=24)
    shared = json.loads((tmp_path / "state.json").read_text())["history"]
    assert all(len(h["details"]) == 2 for h in shared)  # the scores at 30% and 60%
    for k in range(2):
        history = json.loads(refine_path(tmp_path / "state.json", k).read_text())["history"]
        winner, uniform = history[1]["candidate"], history[2]["candidate"]
        assert winner == {"alpha": list(learned.alpha), "kappa": list(learned.kappa)}
        best = [h["candidate"] for h in sorted(shared, key=lambda h: (-h["details"][k], h["index"]))]
        best = [c for i, c in enumerate(best) if c not in best[:i] and c not in (winner, uniform)]
        population = json.loads(refine_path(tmp_path / "state.json", k).read_text())["config"]["population"]
        room = min(population // 2, population - 3)
        assert room >= 1 and [h["candidate"] for h in history[3:3 + room]] == best[:room]
