"""The ranking artifact: the affine transform, JSON round trip, and refusal on another network."""

import numpy as np
import pytest

from legr.cost import CostModel
from legr.criteria import get_criterion
from legr.errors import LegrError
from legr.graph import analyze
from legr.models import build_model
from legr.ranking import Ranking, model_fingerprint, ranked_layers


@pytest.fixture(scope="module")
def resnet20():
    model = build_model("cifar_resnet20", pretrained=True)
    return model, analyze(model, (3, 32, 32))


def test_identity_is_plain_global_l2_ranking(resnet20):
    model, graph = resnet20
    layers = ranked_layers(graph)
    assert len(layers) == 19  # stem + 18 block convs; the classifier is not prunable
    scores = Ranking.identity(layers).group_scores(graph, model)
    raw = get_criterion("l2sq")(graph, model)
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
