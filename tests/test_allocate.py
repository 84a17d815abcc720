"""Budget solvers: targets met exactly (never above, within one channel step), floors respected, clear errors."""

import time

import numpy as np
import pytest

from legr.allocate import Floors, GlobalSolver, solve_uniform, uniform_keep
from legr.cost import CostModel
from legr.criteria import get_criterion, group_scores
from legr.errors import BudgetError
from legr.graph import analyze
from legr.models import build_model


@pytest.fixture(scope="module")
def resnet56():
    model = build_model("cifar_resnet56", pretrained=True)
    graph = analyze(model, (3, 32, 32))
    return graph, CostModel(graph), group_scores(graph, get_criterion("l2sq")(graph, model))


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
    assert cost.macs(keep) <= target < solver.macs_after(removed - 1)  # one channel fewer removed is too much
    floors = Floors()
    for name, width in _layer_widths(graph, keep).items():
        n = len(graph.layers[name].producer_ids)
        assert width >= floors(n), name


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
    assert f"{solver.min_macs / 1e6:.3f}M" in str(info.value)


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
