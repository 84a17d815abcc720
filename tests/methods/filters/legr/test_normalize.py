"""``search.normalize`` (issue 38): with ``rank`` each layer's criterion scores become their quantiles within the layer
before the affine transform, so the plain transform cuts every layer to the same fraction; ``rank-mean`` also scores a
channel written by several layers (a residual stream) by their mean quantile; a run's ranking stores and cuts them."""

import numpy as np
import pytest
import yaml

from legr.engine.cost import CostModel
from legr.engine.plan import Plan
from legr.errors import ConfigError, LegrError
from legr.graph import analyze
from legr.methods.filters.allocate import Floors, GlobalSolver
from legr.methods.filters.criteria import (
    compute_scores,
    group_scores,
    normalized_scores,
    producer_counts,
    within_layer_ranks,
)
from legr.methods.filters.legr.ranking import Ranking
from legr.methods.filters.legr.search_config import SearchConfig
from legr.models import build_model
from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline


def test_quantiles_keep_each_layers_order_on_one_scale():
    rng = np.random.default_rng(0)
    scores = {"a": rng.normal(size=16) * 100.0, "b": np.array([3.0, 1.0, 3.0, 2.0]), "c": np.array([7.0])}
    ranks = within_layer_ranks(scores)
    for name, v in scores.items():
        n = v.size
        np.testing.assert_allclose(np.sort(ranks[name]), (np.arange(n) + 0.5) / n)  # the same grid, whatever the scale
        np.testing.assert_array_equal(np.argsort(ranks[name], kind="stable"), np.argsort(v, kind="stable"))
    np.testing.assert_allclose(ranks["b"], [0.625, 0.125, 0.875, 0.375])  # the tie broken by position


def test_the_plain_transform_of_quantiles_cuts_every_single_producer_layer_to_one_fraction():
    """With raw squared L2 norms the plain global cut of ResNet-20 at 50% MACs leaves its layers at very different
    fractions; with quantiles every layer that alone produces its channels keeps the same fraction (within one
    channel) — the uniform cut, from which the learned alpha and kappa depart."""
    model = build_model("cifar_resnet20", pretrained=True)
    graph = analyze(model, (3, 32, 32))
    cost = CostModel(graph)
    raw = compute_scores("l2sq", graph, model)
    single = [g for g in graph.prunable_groups() if len(g.producers) == 1]
    assert len(single) == 9

    def fractions(scores):
        keep = GlobalSolver(graph, cost, group_scores(graph, scores), Floors(0.0)).solve(0.5 * cost.base_macs)
        return np.array([np.mean(keep[g.classes] > 0) for g in single]), [g.size for g in single]

    spread_raw = np.ptp(fractions(raw)[0])
    kept, sizes = fractions(within_layer_ranks(raw))
    assert np.ptp(kept) <= 1.0 / min(sizes) + 1e-9 < spread_raw


def test_rank_mean_puts_the_residual_stream_on_the_inner_layers_scale():
    """ResNet-20's residual stream (one group, written by conv1 and every block's conv2) sums 3 to 10 quantiles per
    channel with ``rank`` and is cut last by the plain transform; with ``rank-mean`` each channel scores its writers'
    mean quantile, in (0, 1) like every inner layer, and the plain cut at 50% MACs takes some of it."""
    model = build_model("cifar_resnet20", pretrained=True)
    graph = analyze(model, (3, 32, 32))
    cost = CostModel(graph)
    raw = compute_scores("l2sq", graph, model)
    stream = next(g for g in graph.prunable_groups() if len(g.producers) > 1)
    counts = producer_counts(graph)
    assert len(stream.producers) == 10 and counts["layer3.2.conv2"].max() == 10 and counts["layer1.0.conv1"].max() == 1
    kept = {}
    for kind in ("rank", "rank-mean"):
        scores = group_scores(graph, normalized_scores(kind, graph, raw))
        keep = GlobalSolver(graph, cost, scores, Floors(0.0)).solve(0.5 * cost.base_macs)
        kept[kind] = np.mean(keep[stream.classes] > 0)
        if kind == "rank-mean":
            assert all(0 < v.min() and v.max() < 1 for v in scores.values())
        else:
            assert scores[stream.name].max() > 3
    assert kept["rank"] > 0.95 > kept["rank-mean"] + 0.05  # 98% and 86%
    assert normalized_scores("none", graph, raw).keys() == raw.keys()


RUN = """
model: {name: digits_cnn}
data: {name: digits, val_size: 120}
base_training: {epochs: 2, lr: 0.05, batch_size: 64, augment: false}
search: {population: 4, sample: 2, evaluations: 5, restarts: 1, batch_size: 64, bn_batches: 2, normalize: rank-mean}
bn_batches: 2
targets: [0.35, 0.7]
finetune: {epochs: 0}
eval: {latency: false}
"""


def test_a_run_stores_the_quantiles_and_cuts_its_members_from_them(tmp_path):
    Pipeline(parse_config(yaml.safe_load(RUN)), tmp_path, progress=False).run()
    ranking = Ranking.load(tmp_path / "ranking.json")
    assert ranking.search["normalize"] == "rank-mean"
    model = build_model("digits_cnn")
    graph = analyze(model, (1, 8, 8))
    for name, stored in ranking.scores.items():
        n = len(stored)
        np.testing.assert_allclose(np.sort(stored), (np.arange(n) + 0.5) / n)
    cost = CostModel(graph)
    for fraction in (0.35, 0.7):
        plan = Plan.load(tmp_path / "members" / f"legr-{round(fraction * 100)}" / "plan.json")
        if plan.info.get("guard", {}).get("chosen", "ranking") == "ranking":  # else uniform-l1: not the ranking's cut
            keep = ranking.solver(graph, cost, model, Floors(0.25)).solve(fraction * cost.base_macs)
            np.testing.assert_array_equal(plan.keep_vector(graph), keep)


def test_normalize_is_rank_by_default_and_refuses_other_values():
    assert SearchConfig().normalize == "rank"  # the default since issue 38 (README: LeGR on any family)
    with pytest.raises(ConfigError, match="normalize.*none.*rank"):
        SearchConfig(normalize="zscore")
    with pytest.raises(LegrError, match="unknown score normalization"):
        normalized_scores("zscore", None, {})
