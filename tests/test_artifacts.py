"""A pruned network saved as plan JSON + safetensors reloads to the identical network, without unpickling."""

import json

import numpy as np
import pytest
import torch
from helpers import random_keep

from legr.engine.artifacts import load_pruned, save_pruned
from legr.engine.plan import Plan
from legr.engine.surgery import prune
from legr.errors import CheckpointError, LegrError
from legr.graph import analyze
from legr.models import build_model


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_mobilenet_v2"])
def test_round_trip(tmp_path, name):
    model = build_model(name).eval()
    graph = analyze(model, (3, 32, 32))
    keep = random_keep(graph, np.random.default_rng(1))
    pruned = prune(graph, keep).eval()
    plan = Plan.from_keep_vector(graph, keep, source={"model": name, "num_classes": 10, "input_size": [3, 32, 32]})
    save_pruned(tmp_path / "net", pruned, plan)
    loaded, plan2 = load_pruned(tmp_path / "net")
    assert plan2 == plan
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pruned(x))
    # the plan is readable data
    data = json.loads((tmp_path / "net" / "plan.json").read_text())
    assert data["source"]["model"] == name and all(isinstance(v, list) for v in data["keep"].values())


def test_plan_for_another_model_is_refused(tmp_path):
    graph = analyze(build_model("cifar_resnet20"), (3, 32, 32))
    keep = random_keep(graph, np.random.default_rng(0))
    plan = Plan.from_keep_vector(graph, keep, source={"model": "cifar_vgg16_bn", "input_size": [3, 32, 32]})
    save_pruned(tmp_path, prune(graph, keep), plan)
    with pytest.raises(LegrError, match="unknown channel group"):
        load_pruned(tmp_path)


def test_weights_that_do_not_fit_the_plan(tmp_path):
    graph = analyze(build_model("cifar_resnet20"), (3, 32, 32))
    rng = np.random.default_rng(0)
    source = {"model": "cifar_resnet20", "input_size": [3, 32, 32]}
    save_pruned(tmp_path, prune(graph, random_keep(graph, rng)), Plan.from_keep_vector(graph, random_keep(graph, rng), source=source))
    with pytest.raises(CheckpointError, match="shape"):
        load_pruned(tmp_path)


def test_bad_plan_files(tmp_path):
    with pytest.raises(LegrError, match="no plan.json"):
        load_pruned(tmp_path)
    (tmp_path / "plan.json").write_text("{not json")
    with pytest.raises(LegrError, match="not valid JSON"):
        load_pruned(tmp_path)
    graph = analyze(build_model("cifar_resnet20"), (3, 32, 32))
    with pytest.raises(LegrError, match="keeps no channel"):
        graph.keep_vector({"layer1.0.conv1": []})
    with pytest.raises(LegrError, match="cannot be pruned"):
        graph.keep_vector({"linear": [0]})
