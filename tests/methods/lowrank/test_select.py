"""Rank selection: every ENC selection meets its budget from below within one rank step per layer, ENC-Model's
search finds the best network metric (checked by brute force on a small grid), floors hold, and an analysis
interrupted midway resumes with the next layer."""

import itertools

import numpy as np
import pytest
import torch

from legr.engine.cost import price
from legr.errors import BudgetError
from legr.methods.lowrank.analysis import ANALYSIS_FILE, PARTIAL_FILE, analyze
from legr.methods.lowrank.decompose import singular_values
from legr.methods.lowrank.select import RankRules, Selector, energy, floor_rank

from lowrank_nets import nets

NETS = nets()


def _analysis(name, folder=None, **kw):
    net, size = NETS[name]
    base = price(net, size)
    return analyze(net, size, {"macs": base.macs, "params": base.params}, folder, **kw)


@pytest.mark.parametrize("name", ["digits_cnn", "cifar_resnet20", "concat"])
@pytest.mark.parametrize("unit", ["macs", "params"])
def test_every_selection_meets_its_budget_from_below_within_one_step_per_layer(name, unit):
    analysis = _analysis(name)
    selector = Selector(analysis, RankRules(), unit)
    for target in (0.3, 0.5, 0.8):
        budget = target * analysis.base[unit]
        chosen = {"map": selector.select_map(budget), **{f"model{k}": c for k, c in
                                                          enumerate(selector.model_candidates(budget, 4))}}
        for how, idx in chosen.items():
            assert selector.cost(idx) <= budget, (how, target)
            assert selector.cost(idx) == analysis.cost(selector.ranks(idx), unit)
            assert selector.cost(selector.step_up(idx)) > budget, (how, target)
            if how.startswith("model"):  # the search's leftover budget is spent: no single layer can go up
                for n in range(len(idx)):
                    up = list(idx)
                    up[n] = min(up[n] + 1, len(selector.options[n].ranks) - 1)
                    assert up == idx or selector.cost(up) > budget, (how, n)


def test_enc_model_finds_the_best_network_metric_under_the_budget():
    analysis = _analysis("concat")
    selector = Selector(analysis, RankRules(rank_step=4), "macs")
    budget = 0.45 * analysis.base["macs"]
    grids = [range(len(o.ranks)) for o in selector.options]
    feasible = [list(c) for c in itertools.product(*grids) if selector.cost(list(c)) <= budget]
    best = max(selector.score(c) for c in feasible)
    candidates = selector.model_candidates(budget, 3, bins=2000)
    assert selector.score(candidates[0]) >= best - 1e-9
    scores = [selector.score(c) for c in candidates]
    assert scores == sorted(scores, reverse=True) and len({tuple(c) for c in candidates}) == len(candidates)
    # ENC-Map's shared level is feasible too, never better than the optimum
    assert selector.score(selector.select_map(budget)) <= best + 1e-9


def test_rank_floors_and_the_grid():
    analysis = _analysis("cifar_resnet20")
    rules = RankRules(safeguard=0.25, min_rank=2, rank_step=4)
    selector = Selector(analysis, rules, "macs")
    for layer, options in zip(analysis.layers, selector.options):
        lowest = options.ranks[0]
        assert lowest == floor_rank(layer.full_rank, rules) >= max(2, 0.25 * layer.full_rank)
        assert options.ranks[-1] is None and all(r % 4 == 0 for r in options.ranks[1:-1])
        assert all(r <= layer.max_rank for r in options.ranks[:-1])
        assert np.all(np.diff(options.cost) > 0) and np.all(np.diff(options.score) >= 0)
    with pytest.raises(BudgetError, match="rank floor"):
        selector.select_map(0.5 * selector.lowest())


def test_the_energy_metric():
    s = np.array([3.0, 2.0, 1.0])
    assert np.allclose(energy(s, 2), [9 / 14, 13 / 14, 1.0]) and np.allclose(energy(s, 1), [0.5, 5 / 6, 1.0])
    assert np.allclose(energy(np.zeros(3), 2), 1.0)


def test_an_interrupted_analysis_resumes_with_the_next_layer(tmp_path):
    calls = []

    def failing(module):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(module)
        return singular_values(module)

    with pytest.raises(KeyboardInterrupt):
        _analysis("cifar_resnet20", tmp_path, svd=failing)
    assert (tmp_path / PARTIAL_FILE).exists() and not (tmp_path / ANALYSIS_FILE).exists()
    again = []
    resumed = _analysis("cifar_resnet20", tmp_path, svd=lambda m: again.append(m) or singular_values(m))
    assert len(again) == len(resumed.layers) - 5 and not (tmp_path / PARTIAL_FILE).exists()
    assert (tmp_path / ANALYSIS_FILE).exists()
    fresh = _analysis("cifar_resnet20")
    for layer in fresh.layers:
        assert np.allclose(resumed.singular[layer.name], fresh.singular[layer.name])
    reread = _analysis("cifar_resnet20", tmp_path, svd=lambda m: pytest.fail("a finished analysis is not redone"))
    assert reread.to_dict() == resumed.to_dict()
    assert torch.is_tensor(singular_values(NETS["digits_cnn"][0].classifier))
