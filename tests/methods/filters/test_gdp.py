"""GDP (issue #36): masks that change while the network trains. The masked network computes what the pruned one does
(residual, depthwise and concatenating nets; in training mode too, where batch norms use batch statistics); masked
weights receive no gradient and come back unchanged; every decision keeps the top of the global ranking under the
budget, from below; a channel masked at one decision and salient at the next is restored (GDP's Taylor function on
the real network); a member's dynamic phase + fine-tune take the recipe's steps at its learning rates. A killed run
resuming identically is the method contract's test (tests/methods/test_method_contract.py)."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_pruned_matches_masked, equivalence_setup, random_keep
from torch import nn
from torch.nn.utils import parametrize

from legr.engine.cost import CostModel
from legr.engine.surgery import prune
from legr.graph import analyze
from legr.methods.filters.allocate import Floors, GlobalSolver
from legr.methods.filters.criteria import CriterionContext, compute_scores, group_scores
from legr.methods.filters.gdp import DynamicMasks, DynamicPruning, GlobalDynamicPruning, decision_steps
from legr.models import build_model
from legr.pipeline.config import parse_config


@pytest.mark.parametrize("name, size", [("cifar_resnet20", 16), ("cifar_mobilenet_v2", 16), ("shufflenet_v2_x0_5", 32)])
def test_the_masked_network_computes_what_the_pruned_one_does(name, size):
    model, graph, x, original = equivalence_setup(build_model(name, num_classes=10), size)
    keep = random_keep(graph, np.random.default_rng(0))
    pruned = prune(graph, keep).eval()
    net = copy.deepcopy(graph.gm)
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    masks = DynamicMasks(net, graph)
    masks.set(keep)
    with torch.no_grad():
        assert_pruned_matches_masked(pruned(x), net.eval()(x), original)
        # batch statistics (on copies: a training-mode forward moves the running ones): a masked channel is zero
        # before and after its norm
        assert (copy.deepcopy(pruned).train()(x) - copy.deepcopy(net).train()(x)).abs().max() < 1e-9
    masks.set(np.ones(graph.num_classes))
    with torch.no_grad():
        assert torch.allclose(net.eval()(x), original, atol=1e-12)
    unmasked = masks.remove()
    assert not any(parametrize.is_parametrized(m) for m in unmasked.modules())
    after = unmasked.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items() if "running" not in k and "num_batches" not in k)


def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_masked_weights_get_no_gradient_and_train_nothing():
    net0 = _tiny()
    graph = analyze(net0, (3, 8, 8))
    net = copy.deepcopy(graph.gm)
    masks = DynamicMasks(net, graph)
    keep = np.ones(graph.num_classes)
    group = graph.prunable_groups()[0]
    keep[group.classes[:3]] = 0
    masks.set(keep)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)  # no weight decay: masked weights stay exact
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(16, 3, 8, 8, generator=g), torch.randint(0, 4, (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net.train()(x), y).backward()
        opt.step()
    after = masks.remove().state_dict()
    producer = group.producers[0]
    filters = keep[graph.classes(graph.layers[producer].producer_ids)]  # per filter of the producer: kept or not
    assert (filters == 0).sum() == 3
    w0, w1 = before[f"{producer}.parametrizations.weight.original"], after[f"{producer}.weight"]
    assert torch.equal(w0[filters == 0], w1[filters == 0]) and not torch.equal(w0[filters == 1], w1[filters == 1])


def _resnet():
    model = build_model("cifar_resnet20", num_classes=10).eval()
    graph = analyze(model, (3, 16, 16))
    return graph, CostModel(graph)


@pytest.mark.parametrize("unit", ["macs", "params"])
def test_every_decision_is_the_solvers_cut_of_the_ranking_from_below(tmp_path, unit):
    graph, cost = _resnet()
    net = copy.deepcopy(graph.gm)
    rng = np.random.default_rng(0)
    drawn = []

    def score(module, decision):
        s = {name: rng.random(len(graph.layers[name].producer_ids)) for name in graph.layers
             if graph.layers[name].producer_ids is not None}
        drawn.append(s)
        return s

    floors, budget = Floors(0.25), 0.4 * cost.base(unit)
    steps = decision_steps(20, 4)
    hook = DynamicPruning(net, graph, cost, floors, unit, budget, score, steps, tmp_path / "u.json")
    for step in range(20):
        hook(step)
    records = json.loads((tmp_path / "u.json").read_text())
    assert steps == [0, 5, 10, 15] and [r["step"] for r in records] == steps
    previous = np.ones(graph.num_classes)
    for record, scores in zip(records, drawn):
        expected = GlobalSolver(graph, cost, group_scores(graph, scores), floors, unit).solve(budget)
        keep = np.array(record["keep"], dtype=float)
        assert np.array_equal(keep, expected) and record[unit] == cost.of(unit)(keep) <= budget
        assert record["recovered"] == int(((previous == 0) & (keep == 1)).sum()) > (0 if record["step"] else -1)
        previous = keep
    assert records[0]["recovered"] == 0 and records[0]["masked"] == records[0]["newly_masked"] > 0


def test_a_masked_channel_that_becomes_salient_comes_back(tmp_path):
    """GDP's own discriminative function on the real network: after decision 1 masks a channel, its batch norm scale
    is made large (the channel now carries the loss), and decision 2 restores it."""
    graph, cost = _resnet()
    net = copy.deepcopy(graph.gm)
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 3, 16, 16, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(2)]
    score = lambda module, k: compute_scores("taylor_abs", graph, module,  # noqa: E731
                                             CriterionContext(batches=lambda: iter(data)))
    hook = DynamicPruning(net, graph, cost, Floors(0.25), "macs", 0.5 * cost.base_macs, score, [0, 1],
                          tmp_path / "u.json")
    hook(0)
    first = hook.keep
    layer = "layer3.0.conv1"  # a producer of its own group: its channels are masked or kept alone
    group = graph.group_of(layer)
    masked = [c for c in group.classes if first[c] == 0]
    assert masked, "the first decision masked nothing in the layer: the test would prove nothing"
    channel = graph.local_index[masked[0]]
    bn = net.get_submodule("layer3.0.bn1")
    with torch.no_grad():
        bn.parametrizations.weight.original[channel] *= 1e3
        bn.parametrizations.bias.original[channel] += 10.0
    hook(1)
    assert hook.keep[masked[0]] == 1 and json.loads((tmp_path / "u.json").read_text())[1]["recovered"] >= 1


def test_a_member_trains_the_recipe_s_steps_at_its_learning_rates():
    cfg = parse_config({"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "method": "gdp",
                        "finetune": {"epochs": 5, "lr": 0.01, "milestones": [0.3, 0.6, 0.8]}})
    (_, scoring), (size, dynamic), (target, rest) = GlobalDynamicPruning.member_training(cfg, 0.4)
    assert (size, target) == (1.0, 0.4) and dynamic.epochs + rest.epochs == 5 and dynamic.epochs == 2
    rates = [dynamic.lr_at(e) for e in range(dynamic.epochs)] + [rest.lr_at(e) for e in range(rest.epochs)]
    assert rates == pytest.approx([cfg.finetune.lr_at(e) for e in range(5)])
    assert scoring.steps_per_epoch == cfg.gdp.updates * cfg.gdp.scoring_batches
    whole = parse_config({**cfg.model_dump(mode="json"), "gdp": {"dynamic_epochs": 5}})
    assert GlobalDynamicPruning.member_training(whole, 0.4)[-1][1].epochs == 0


@pytest.mark.parametrize("changes, message", [
    ({"finetune": {"epochs": 0}}, "gdp trains while it prunes: it needs finetune.epochs >= 1"),
    ({"finetune": {"epochs": 3}, "gdp": {"dynamic_epochs": 4}}, "gdp.dynamic_epochs is 4 but the fine-tune has 3"),
    ({"targets": [0.001]}, "target 0.001 of 2.969M MACs is below the smallest reachable"),
])
def test_a_gdp_run_refuses_what_cannot_work_before_training(tmp_path, changes, message):
    from legr.errors import LegrError
    from legr.pipeline.steps import Pipeline

    cfg = parse_config({"model": {"name": "digits_cnn", "weights": None}, "data": {"name": "digits", "val_size": 200},
                        "method": "gdp", **changes})
    with pytest.raises(LegrError, match=message):
        Pipeline(cfg, tmp_path, progress=False, log=lambda m: None).method.validate()
