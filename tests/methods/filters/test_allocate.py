"""Budget solvers and the allocator registry: targets met exactly (never above, within one channel step), floors respected, clear errors."""

import time

import numpy as np
import pytest
import torch

from legr.engine.cost import CostModel
from legr.errors import BudgetError, LegrError
from legr.graph import analyze
from legr.methods.filters.allocate import (
    ALLOCATORS,
    Floors,
    GlobalSolver,
    UniformSolver,
    check_reachable,
    min_cost_bound,
    solve_uniform,
    uniform_keep,
)
from legr.methods.filters.criteria import CRITERIA, CriterionContext, compute_scores, group_scores
from legr.methods.filters.legr.ranking import Ranking, ranked_layers, stored_scores
from legr.models import build_model


@pytest.fixture(scope="module")
def resnet56():
    model = build_model("cifar_resnet56", pretrained=True)
    graph = analyze(model, (3, 32, 32))
    return graph, CostModel(graph), group_scores(graph, compute_scores("l2sq", graph, model))


def _layer_widths(graph, keep):
    return {name: int(keep[graph.classes(graph.layers[name].producer_ids)].sum())
            for group in graph.prunable_groups() for name in group.producers}


@pytest.mark.parametrize("fraction", [0.3, 0.47, 0.7])
def test_global_solver_is_exact(resnet56, fraction):
    graph, cost, scores = resnet56
    solver = GlobalSolver(graph, cost, scores)
    target = fraction * cost.base_macs
    keep = solver.solve(target)
    removed = int((keep == 0).sum())
    assert cost.macs(keep) <= target < solver.cost_after(removed - 1)  # one channel fewer removed is too much
    floors = Floors()
    for name, width in _layer_widths(graph, keep).items():
        n = len(graph.layers[name].producer_ids)
        assert width >= floors(n), name


@pytest.mark.parametrize("fraction", [0.3, 0.6])
def test_parameter_budgets_are_met_exactly(resnet56, fraction):
    """unit="params": the same solvers cut at a parameter count (never above it, one channel step below)."""
    graph, cost, scores = resnet56
    target = fraction * cost.base_params
    solver = GlobalSolver(graph, cost, scores, unit="params")
    keep = solver.solve(target)
    removed = int((keep == 0).sum())
    assert cost.params(keep) <= target < solver.cost_after(removed - 1)
    assert cost.params(keep) != cost.params(GlobalSolver(graph, cost, scores).solve(fraction * cost.base_macs))
    uniform, ratio = solve_uniform(graph, cost, scores, target, unit="params")
    assert cost.params(uniform) <= target < cost.params(uniform_keep(graph, scores, ratio + 2e-3))
    with pytest.raises(BudgetError, match=r"target [0-9.]+K params is below the smallest reachable"):
        solver.solve(0.5 * solver.min_cost)


def test_global_solver_removes_lowest_scores_first(resnet56):
    graph, cost, scores = resnet56
    keep = GlobalSolver(graph, cost, scores, Floors(0.0, 1)).solve(0.9 * cost.base_macs)
    kept, dropped = [], []
    for name, s in scores.items():
        mask = keep[graph.group_by_name[name].classes] > 0
        kept.append(s[mask])
        dropped.append(s[~mask])
    assert np.concatenate(dropped).max() <= np.concatenate(kept).min()


def test_seven_targets_are_fast(resnet56):
    graph, cost, scores = resnet56
    start = time.perf_counter()
    solver = GlobalSolver(graph, cost, scores)
    for f in (0.3, 0.4, 0.47, 0.5, 0.6, 0.7, 0.8):
        solver.solve(f * cost.base_macs)
    assert time.perf_counter() - start < 1.0


def test_unreachable_target_names_the_minimum(resnet56):
    graph, cost, scores = resnet56
    solver = GlobalSolver(graph, cost, scores)
    with pytest.raises(BudgetError, match="smallest reachable") as info:
        solver.solve(0.01 * cost.base_macs)
    assert f"{solver.min_cost / 1e6:.3f}M" in str(info.value)


def test_uniform_keeps_the_same_fraction_everywhere(resnet56):
    graph, cost, scores = resnet56
    keep, ratio = solve_uniform(graph, cost, scores, 0.5 * cost.base_macs)
    assert cost.macs(keep) <= 0.5 * cost.base_macs
    for name, width in _layer_widths(graph, keep).items():
        n = len(graph.layers[name].producer_ids)
        assert width == max(Floors()(n), round(ratio * n)), name


def test_uniform_zero_ratio_is_the_floor(resnet56):
    graph, _, scores = resnet56
    keep = uniform_keep(graph, scores, 0.0, Floors(0.25, 3))
    for name, width in _layer_widths(graph, keep).items():
        assert width == Floors(0.25, 3)(len(graph.layers[name].producer_ids))


@pytest.fixture(scope="module")
def resnet20():
    model = build_model("cifar_resnet20", pretrained=True)
    graph = analyze(model, (3, 32, 32))
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 3, 32, 32, generator=g), torch.randint(0, 10, (16,), generator=g))]
    return model, graph, CostModel(graph), CriterionContext(seed=1, batches=lambda: iter(data))


def test_allocator_registry():
    assert set(ALLOCATORS) == {"uniform", "global", "lcp", "legr", "amc"}
    assert [ALLOCATORS[n].search for n in ("uniform", "global", "lcp", "legr", "amc")] == [None, None, "offsets",
                                                                                          "affine", None]
    assert [n for n, a in ALLOCATORS.items() if a.per_target is not None] == ["amc"]  # searched per target
    assert [n for n, a in ALLOCATORS.items() if a.searches] == ["amc", "lcp", "legr"]
    with pytest.raises(LegrError, match="unknown allocator 'even'; available: amc, global, lcp, legr, uniform"):
        ALLOCATORS["even"]


@pytest.mark.parametrize("allocator", sorted(n for n, a in ALLOCATORS.items() if a.per_target is None))  # amc: test_amc
@pytest.mark.parametrize("criterion", sorted(CRITERIA))
def test_every_criterion_with_every_allocator_meets_the_budget(resnet20, criterion, allocator):
    model, graph, cost, context = resnet20
    layers = ranked_layers(graph)
    ranking = Ranking.identity(layers, criterion=criterion, allocator=allocator,
                               scores=stored_scores(compute_scores(criterion, graph, model, context), layers))
    floors = Floors(0.2, 3)
    solver = ranking.solver(graph, cost, model, floors)
    for fraction in (0.3, 0.7):
        keep = solver.solve(fraction * cost.base_macs)
        assert 0.9 * fraction * cost.base_macs < cost.macs(keep) <= fraction * cost.base_macs
        widths = _layer_widths(graph, keep)
        for name, width in widths.items():
            n = len(graph.layers[name].producer_ids)
            assert width >= floors(n), name
            if allocator == "uniform":
                assert width == max(floors(n), round(solver.ratio * n)), name
        if allocator != "uniform":  # the global cut: nothing removed outranks anything kept, floors aside
            expected = GlobalSolver(graph, cost, group_scores(graph, ranking.layer_scores(graph, model)), floors)
            np.testing.assert_array_equal(keep, expected.solve(fraction * cost.base_macs))


def test_lcp_offsets_move_the_cut(resnet20):
    """An lcp ranking (alpha = 1) with a large offset on one layer keeps that layer whole."""
    model, graph, cost, _ = resnet20
    layers = ranked_layers(graph)
    kappa = tuple(1e6 if n == "layer2.1.conv1" else 0.0 for n in layers)
    lcp = Ranking(tuple(layers), (1.0,) * len(layers), kappa, allocator="lcp")
    widths = _layer_widths(graph, lcp.solver(graph, cost, model).solve(0.3 * cost.base_macs))
    plain = _layer_widths(graph, Ranking.identity(layers).solver(graph, cost, model).solve(0.3 * cost.base_macs))
    assert widths["layer2.1.conv1"] == 32 > plain["layer2.1.conv1"]


def test_uniform_solver_names_the_smallest_uniform_network(resnet20):
    model, graph, cost, _ = resnet20
    solver = UniformSolver(graph, cost, group_scores(graph, compute_scores("l1", graph, model)))
    with pytest.raises(BudgetError, match="below the smallest uniform network"):
        solver.solve(0.5 * solver.min_cost)


@pytest.mark.parametrize("name,size", [("cifar_resnet20", 32), ("cifar_resnet56_b", 32), ("cifar_mobilenet_v2", 32),
                                       ("mobilenet_v3_small", 64), ("densenet121", 64)])
def test_min_cost_bound_holds_for_every_ranking(name, size):
    """The pre-training reachability check never refuses a target some ranking reaches (and is tight here)."""
    graph = analyze(build_model(name, num_classes=10), (3, size, size))
    cost, rng = CostModel(graph), np.random.default_rng(0)
    for floors in (Floors(), Floors(0.5, 2), Floors(0.0, 1)):
        bound = min_cost_bound(graph, cost, floors)
        reached = []
        for _ in range(3):
            scores = {g.name: rng.random(g.size) for g in graph.prunable_groups()}
            reached += [solver(graph, cost, scores, floors).min_cost for solver in (GlobalSolver, UniformSolver)]
        assert 0 < bound <= min(reached) + 1e-6 * cost.base_macs
        params = min_cost_bound(graph, cost, floors, "params")
        reached = [GlobalSolver(graph, cost, scores, floors, "params").min_cost, UniformSolver(
            graph, cost, scores, floors, "params").min_cost]
        assert 0 < params <= min(reached) + 1e-6 * cost.base_params
    check_reachable(graph, cost, Floors(), [min_cost_bound(graph, cost, Floors()) / cost.base_macs + 1e-9])
    with pytest.raises(BudgetError, match="below the smallest reachable"):
        check_reachable(graph, cost, Floors(), [0.5, 0.001])
    with pytest.raises(BudgetError, match="params is below the smallest reachable"):
        check_reachable(graph, cost, Floors(), [0.001], "params")


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.7])
def test_round_to_keeps_every_width_a_multiple_and_meets_the_budget_exactly(fraction):
    model = build_model("resnet18", num_classes=10)
    graph = analyze(model, (3, 64, 64))
    cost, scores = CostModel(graph), group_scores(graph, compute_scores("l2sq", graph, model))
    floors = Floors(round_to=8)
    target = fraction * cost.base_macs
    solver = GlobalSolver(graph, cost, scores, floors)
    keep = solver.solve(target)
    steps = int(np.searchsorted(solver.ends, int((keep == 0).sum())))
    assert cost.macs(keep) <= target < solver.cost_after(steps - 1)  # one step (8 channels or a remainder) less: over
    uniform = UniformSolver(graph, cost, scores, floors).solve(target)
    assert cost.macs(uniform) <= target
    for k in (keep, uniform):
        for group in graph.prunable_groups():
            width = int(k[group.classes].sum())
            assert width % 8 == 0 or width == group.size, group.name
            assert width >= floors(group.size)
    # the lowest-scored channels of a group go first, 8 at a time
    group = max(graph.prunable_groups(), key=lambda g: g.size)
    removed = keep[group.classes] == 0
    if removed.any():
        assert scores[group.name][removed].max() <= scores[group.name][~removed].min()


def test_round_to_one_is_the_channel_solver(resnet56):
    graph, cost, scores = resnet56
    a, b = GlobalSolver(graph, cost, scores), GlobalSolver(graph, cost, scores, Floors(round_to=1))
    assert np.array_equal(a.removal, b.removal) and np.array_equal(b.ends, np.arange(len(b.removal) + 1))
    assert Floors(0.1, 2, 8)(16) == 8 and Floors(0.1, 2, 8)(5) == 5 and Floors(0.3, 2, 8)(64) == 24
