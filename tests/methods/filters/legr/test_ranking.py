"""The ranking artifact: the affine transform, stored scores, allocator, JSON round trip, refusal on another network."""

import json
from pathlib import Path

import numpy as np
import pytest

from legr.engine.cost import CostModel
from legr.errors import LegrError
from legr.graph import analyze
from legr.methods.filters.allocate import UniformSolver, solve_uniform
from legr.methods.filters.criteria import compute_scores, group_scores
from legr.methods.filters.legr import EvolutionConfig, FamilyObjective
from legr.methods.filters.legr.ranking import (
    REFERENCE_INDEX,
    Ranking,
    learn_ranking,
    model_fingerprint,
    ranked_layers,
    stored_scores,
    uniform_transform,
)
from legr.models import build_model


@pytest.fixture(scope="module")
def resnet20():
    model = build_model("cifar_resnet20", pretrained=True)
    return model, analyze(model, (3, 32, 32))


def test_identity_is_plain_global_l2_ranking(resnet20):
    model, graph = resnet20
    layers = ranked_layers(graph)
    assert len(layers) == 19  # stem + 18 block convs; the classifier is not prunable
    scores = Ranking.identity(layers).group_scores(graph, model)
    raw = compute_scores("l2sq", graph, model)
    chain = graph.group_by_name["conv1"]
    expected = np.zeros(chain.size)
    for name in chain.producers:
        np.add.at(expected, graph.producer_positions(name), raw[name])
    np.testing.assert_allclose(scores["conv1"], expected)


def test_affine_transform_changes_the_cut(resnet20):
    model, graph = resnet20
    layers = ranked_layers(graph)
    cost = CostModel(graph)
    identity = Ranking.identity(layers)
    # make layer1.0.conv1 look 100x more important: the cut must keep more of it
    alpha = tuple(100.0 if n == "layer1.0.conv1" else 1.0 for n in layers)
    boosted = Ranking(tuple(layers), alpha, (0.0,) * len(layers))
    width = lambda r: r.solver(graph, cost, model).solve(0.5 * cost.base_macs)[  # noqa: E731
        graph.classes(graph.layers["layer1.0.conv1"].producer_ids)].sum()
    assert width(boosted) > width(identity)


def test_round_trip_and_mismatch(tmp_path, resnet20):
    model, graph = resnet20
    layers = ranked_layers(graph)
    rng = np.random.default_rng(0)
    r = Ranking(tuple(layers), tuple(rng.random(len(layers))), tuple(rng.normal(size=len(layers))),
                fingerprint=model_fingerprint(model), search={"evaluations": 3})
    r.save(tmp_path / "ranking.json")
    loaded = Ranking.load(tmp_path / "ranking.json")
    assert loaded == r
    loaded.check(graph, model_fingerprint(model))
    other = build_model("cifar_resnet20")  # same architecture, other weights
    with pytest.raises(LegrError, match="fingerprint"):
        loaded.check(graph, model_fingerprint(other))
    with pytest.raises(LegrError, match="does not fit this model"):
        loaded.check(analyze(build_model("cifar_resnet32"), (3, 32, 32)))
    (tmp_path / "bad.json").write_text('{"layers": 3}')
    with pytest.raises(LegrError, match="not a valid ranking"):
        Ranking.load(tmp_path / "bad.json")


def test_scores_travel_with_the_ranking(tmp_path, resnet20):
    """A ranking stores its criterion scores: a data-dependent cut is reproduced from the file alone, and a
    version-1 file (no scores) recomputes them from the weights."""
    model, graph = resnet20
    layers = ranked_layers(graph)
    cost = CostModel(graph)
    rng = np.random.default_rng(1)
    scores = {name: rng.random(len(graph.layers[name].producer_ids)) for name in layers}
    r = Ranking.identity(layers, criterion="taylor", allocator="uniform", scores=stored_scores(scores, layers))
    r.save(tmp_path / "ranking.json")
    loaded = Ranking.load(tmp_path / "ranking.json")
    assert loaded == r and loaded.allocator == "uniform"
    target = 0.5 * cost.base_macs
    np.testing.assert_array_equal(loaded.solver(graph, cost, model).solve(target),
                                  UniformSolver(graph, cost, group_scores(graph, scores)).solve(target))

    data = json.loads(r.to_json())
    data.update(version=1, allocator=None, criterion="l2sq")
    del data["allocator"]
    for layer in data["layers"]:
        del layer["scores"]
    (tmp_path / "v1.json").write_text(json.dumps(data))
    old = Ranking.load(tmp_path / "v1.json")
    assert old.allocator == "legr" and not old.scores
    np.testing.assert_allclose(old.layer_scores(graph, model)["conv1"], compute_scores("l2sq", graph, model)["conv1"])

    data["allocator"] = "halving"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(LegrError, match="unknown allocator 'halving'"):
        Ranking.load(tmp_path / "bad.json")


def test_only_searching_allocators_learn(resnet20):
    model, graph = resnet20
    with pytest.raises(LegrError, match="allocator 'uniform' learns nothing"):
        learn_ranking(model, graph, lambda net, i: 0.0, 1e6, allocator="uniform")


def _widths(graph, keep):
    return {n: int(keep[graph.classes(graph.layers[n].producer_ids)].sum()) for n in ranked_layers(graph)}


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet20_b", "cifar_mobilenet_v2"])
@pytest.mark.parametrize("fraction", [0.3, 0.47, 0.7])
def test_uniform_transform_cuts_the_uniform_allocation(name, fraction):
    """The search's uniform seed: its global cut equals uniform pruning's widths, within one channel per layer."""
    model = build_model(name, pretrained=name == "cifar_resnet20")
    graph = analyze(model, (3, 32, 32))
    cost, layers = CostModel(graph), ranked_layers(graph)
    scores = compute_scores("l2sq", graph, model)
    target = fraction * cost.base_macs
    alpha, kappa = uniform_transform(graph, cost, scores, target)
    assert np.all(alpha == 1.0)  # so LCP's offset-only space holds it too
    ranking = Ranking(tuple(layers), tuple(alpha), tuple(kappa), scores=stored_scores(scores, layers))
    cut = ranking.solver(graph, cost, model).solve(target)
    uniform = UniformSolver(graph, cost, group_scores(graph, scores)).solve(target)
    a, b = _widths(graph, cut), _widths(graph, uniform)
    assert max(abs(a[n] - b[n]) for n in layers) <= 1, {n: (a[n], b[n]) for n in layers if a[n] != b[n]}
    assert cost.macs(cut) <= target
    identity = Ranking.identity(layers, scores=stored_scores(scores, layers)).solver(graph, cost, model).solve(target)
    assert sum(abs(_widths(graph, identity)[n] - b[n]) for n in layers) > 2 * len(layers)  # not global by accident


@pytest.mark.parametrize("optimizer", ["evolution", "cma"])
def test_search_starts_from_both_baselines_and_scores_every_target(resnet20, tmp_path, optimizer):
    """Candidate 0 is the identity (global ranking), then the uniform seeds (one per target); each candidate prunes
    once per target (largest budget network last) and, with the plain-mean objective, its fitness is the mean. The
    uniform references are scored once, and the winner once more for its margins. Whichever searcher runs."""
    model, graph = resnet20
    cost = CostModel(graph)
    targets = [0.3 * cost.base_macs, 0.6 * cost.base_macs]
    seen: dict[int, list[int]] = {}

    def fitness(net, i):
        seen.setdefault(i, []).append(sum(p.numel() for p in net.parameters()))
        return float(seen[i][-1] % 1000)

    search = EvolutionConfig(population=4, sample=2, evaluations=6, seed=0, optimizer=optimizer)
    state = tmp_path / "state.json"
    learned = learn_ranking(model, graph, fitness, targets, search=search, state_path=state, progress=False,
                            objective=FamilyObjective("mean", guard=False))
    refs = [REFERENCE_INDEX, REFERENCE_INDEX + 1]
    assert sorted(seen) == list(range(6)) + refs
    best = learned.search["best_index"]
    assert all(len(v) == (4 if i == best else 2 if i < 6 else 1) for i, v in seen.items())
    assert all(v[0] < v[1] for i, v in seen.items() if i < 6)
    history = json.loads(state.read_text())["history"]
    assert [h["fitness"] for h in history] == [np.mean([p % 1000 for p in seen[i][:2]]) for i in range(6)]
    layers = ranked_layers(graph)
    scores = compute_scores("l2sq", graph, model)
    assert history[0]["candidate"] == {"alpha": [1.0] * len(layers), "kappa": [0.0] * len(layers)}
    for k, t in enumerate(targets):  # candidates 1 and 2: the uniform allocation at each target
        np.testing.assert_allclose(history[1 + k]["candidate"]["kappa"], uniform_transform(graph, cost, scores, t)[1])
    assert learned.search["reference"] == [float(seen[i][0] % 1000) for i in refs]
    assert [m["score"] for m in learned.search["margins"]] == [float(p % 1000) for p in seen[best][2:]]
    assert learned.search["target_macs"] == targets and "fallback" not in learned.search


def test_family_objective_counts_every_target():
    """Issue 38's search numbers (validation top-1 at 25% / 60% MACs, 10 classes, 1000 images): the mean prefers the
    ranking that gives up the small member, the relative gain does not, and the guard makes it infeasible."""
    winner, uniform = [0.166, 0.709], [0.198, 0.573]
    mean = FamilyObjective("mean", guard=False, chance=0.1)
    assert mean(winner, uniform) > mean(uniform, uniform)
    relative = FamilyObjective("relative", guard=False, chance=0.1, val_images=1000)
    assert relative(winner, uniform) < relative(uniform, uniform) == 0.0
    np.testing.assert_allclose(relative.gains(winner, uniform), [-0.032 / 0.098, 0.136 / 0.473])
    assert FamilyObjective("worst", guard=False, chance=0.1)(winner, uniform) == pytest.approx(-0.032 / 0.098)
    guarded = FamilyObjective(chance=0.1, val_images=1000)
    tol = np.sqrt(0.198 * 0.802 / 1000)  # one binomial standard error of uniform's top-1
    assert guarded.tolerance(uniform)[0] == pytest.approx(tol)
    assert not guarded.feasible(winner, uniform) and guarded(winner, uniform) < -900
    near = [0.198 - 0.9 * tol, 0.65]  # below uniform by less than the sampling error: feasible
    assert guarded.feasible(near, uniform) and guarded(near, uniform) > guarded(winner, uniform) + 900
    assert guarded(near, uniform) > guarded(uniform, uniform)


def test_search_falls_back_to_uniform_when_no_candidate_is_feasible(resnet20):
    """A fitness under which every searched ranking scores below the uniform allocation at some target: the guard
    returns the uniform allocation itself, which cuts exactly as `solve_uniform`."""
    model, graph = resnet20
    cost = CostModel(graph)
    targets = [0.3 * cost.base_macs, 0.6 * cost.base_macs]
    fitness = lambda net, i: 1.0 if i >= REFERENCE_INDEX else 0.5  # noqa: E731
    learned = learn_ranking(model, graph, fitness, targets, progress=False,
                            search=EvolutionConfig(population=4, sample=2, evaluations=5, seed=0),
                            objective=FamilyObjective(chance=0.1, val_images=1000))
    assert learned.allocator == "uniform" and learned.search["fallback"] == "uniform"
    assert [m["margin"] for m in learned.search["margins"]] == [-0.5, -0.5]
    scores = compute_scores("l2sq", graph, model)
    for t in targets:
        expected, _ = solve_uniform(graph, cost, group_scores(graph, scores), t)
        np.testing.assert_array_equal(learned.solver(graph, cost, model).solve(t), expected)


def two_target_fitness(score):
    """A fitness for a two-target search: 0.5 for every uniform reference, ``score(index, first)`` for a candidate
    at the first or second target (`per_target` scores a candidate's targets in order, one call each)."""
    calls = {"n": 0}

    def fitness(net, i):
        if i >= REFERENCE_INDEX:
            return 0.5
        calls["n"] += 1
        return score(i, calls["n"] % 2 == 1)
    return fitness


def test_without_fallback_the_winner_is_kept_with_the_targets_it_loses(resnet20):
    """``fallback=False`` (the caller guards every member, as the method ``filters`` does): an infeasible winner is
    returned as learned, naming the targets where it scores below uniform by more than the tolerance."""
    model, graph = resnet20
    cost = CostModel(graph)
    targets = [0.3 * cost.base_macs, 0.6 * cost.base_macs]
    # a candidate loses at the first target only
    fitness = two_target_fitness(lambda i, first: 0.2 if first else 0.9)
    learned = learn_ranking(model, graph, fitness, targets, progress=False, fallback=False,
                            search=EvolutionConfig(population=4, sample=2, evaluations=5, seed=0),
                            objective=FamilyObjective(chance=0.1, val_images=1000))
    assert learned.allocator == "legr" and "fallback" not in learned.search
    assert learned.search["infeasible_targets"] == [targets[0]]
    assert [round(m["margin"], 6) for m in learned.search["margins"]] == [-0.3, 0.4]


def test_committed_version1_rankings_still_load():
    """Ranking files written by earlier versions (v1, no stored scores) load and cut the current network."""
    path = Path(__file__).resolve().parents[4] / "benchmarks/results/legr_resnet56_cifar10jpeg/ranking.json"
    assert json.loads(path.read_text())["version"] == 1
    ranking = Ranking.load(path)
    model = build_model("cifar_resnet56", pretrained=True)
    graph = analyze(model, (3, 32, 32))
    ranking.check(graph)
    cost = CostModel(graph)
    keep = ranking.solver(graph, cost, model).solve(0.5 * cost.base_macs)
    assert 0.49 * cost.base_macs < cost.macs(keep) <= 0.5 * cost.base_macs


def test_candidate_fitness_is_adaptive_bn_then_tau_steps_then_the_validation_metric():
    import copy

    import torch

    from legr.data import TensorLoader, load_dataset
    from legr.methods.filters.legr.fitness import CandidateFitness
    from legr.training import bn_batches, evaluate, make_sgd, recalibrate_bn, train_steps

    digits = load_dataset("digits")
    x, y, mean, std = digits.train_x, digits.train_y, digits.mean, digits.std
    torch.manual_seed(0)
    net = build_model("digits_cnn", num_classes=10).eval()
    val = lambda m: evaluate(m, digits.test_x[:200], digits.test_y[:200], mean, std)  # noqa: E731
    bn = bn_batches(x, y, mean, std, 3, 64, augment=False)
    loader = lambda i: TensorLoader(x, y, 64, mean, std, shuffle=True, seed=i)  # noqa: E731

    assert CandidateFitness(val, metric="loss")(copy.deepcopy(net), 0) == -val(net).loss  # the paper's: as cut
    expected = copy.deepcopy(net)
    recalibrate_bn(expected, bn)
    torch.manual_seed(1)
    train_steps(expected, loader(5), 2, make_sgd(expected, 0.01, 0.9, 5e-4))
    torch.manual_seed(1)
    got = CandidateFitness(val, bn=bn, tau=2, train_loader=loader)(copy.deepcopy(net), 5)
    assert got == val(expected).top1
    with pytest.raises(ValueError, match="train_loader"):
        CandidateFitness(val, tau=1)


def test_a_soft_guard_charges_the_shortfall_and_chooses_like_the_hard_one():
    """``guard_weight``: an infeasible candidate loses w x its shortfall below the tolerance band (not `PENALTY`), so
    it still ranks among the others while searching; the candidate returned is the best feasible one by the plain
    aggregate, as under the hard guard; none feasible: None."""
    uniform = [0.5, 0.5]
    soft = FamilyObjective(val_images=1000, guard_weight=1.0)
    tol = np.sqrt(0.25 / 1000)
    short = [0.4, 0.9]  # 0.1 - tol below the band at the first target, far ahead at the second
    assert soft.shortfall(short, uniform) == pytest.approx(0.1 - tol) and soft.shortfall([0.5, 0.6], uniform) == 0
    assert soft(short, uniform) == pytest.approx(0.65 - (0.1 - tol))
    assert FamilyObjective(val_images=1000)(short, uniform) == pytest.approx(0.65 - 1000)
    assert soft(short, uniform) > soft([0.5, 0.51], uniform)  # breeds ahead of a barely feasible candidate
    scored = [(0, "a", short), (1, "b", [0.5, 0.51]), (2, "c", [0.52, 0.55]), (3, "d", [0.55, 0.52])]
    assert soft.choose(scored, uniform) == (2, "c")  # c and d tie on the mean: the earlier one
    assert soft.choose(scored[:1], uniform) is None
    assert soft.infeasible(scored, uniform, restarts=2) == [1, 0]  # per restart: the first two, the last two


def test_a_soft_guarded_search_returns_its_best_feasible_candidate(resnet20):
    """Candidates with an even evaluation index score far below uniform at the first target and far above it at the
    second: under the soft guard they are the search's fittest, yet the ranking returned is the best feasible one."""
    model, graph = resnet20
    cost = CostModel(graph)
    targets = [0.3 * cost.base_macs, 0.6 * cost.base_macs]
    fitness = two_target_fitness(lambda i, first: (0.2 if first else 3.0) if i % 2 == 0 else
                                 (0.5 if first else 0.6 + 0.01 * i))
    learned = learn_ranking(model, graph, fitness, targets, progress=False, fallback=False,
                            search=EvolutionConfig(population=4, sample=2, evaluations=9, seed=0),
                            objective=FamilyObjective(chance=0.1, val_images=1000, guard_weight=1.0))
    assert learned.search["guard_weight"] == 1.0 and learned.search["best_fitness"] > 1.0  # an infeasible one
    assert learned.search["chosen_index"] == 7  # the last odd index: the best feasible mean
    assert [round(m["score"], 6) for m in learned.search["margins"]] == [0.5, 0.67]
    assert "infeasible_targets" not in learned.search
    assert learned.search["infeasible"] == [5]  # the even indices 0, 2, 4, 6, 8
