"""The cost model is exact: its MACs equal torch's FLOP counter / 2, its parameter counts equal the pruned model's."""

import numpy as np
import pytest
import torch
from helpers import random_keep
from torch import nn

from legr.engine.cost import BUDGET_UNITS, CostModel, count_params, counted_macs, price
from legr.engine.surgery import prune
from legr.errors import LegrError
from legr.graph import analyze
from legr.models import build_model, list_models

CIFAR_MODELS = [(name, 32) for name in list_models() if name.startswith("cifar_")]
TORCHVISION_MODELS = [(name, 64) for name in
                      ("resnet18", "mobilenet_v2", "efficientnet_b0", "densenet121", "googlenet", "vgg11_bn")]
COST_MODELS = CIFAR_MODELS + TORCHVISION_MODELS


def image_macs(model: nn.Module, size: int) -> float:
    """Multiply-accumulates of one image as torch counts them."""
    return counted_macs(model, torch.randn(1, 3, size, size, dtype=next(model.parameters()).dtype))


def test_cost_zoo_covers_every_cifar_model():
    assert len(CIFAR_MODELS) >= 6 and ("cifar_resnet56", 32) in CIFAR_MODELS


@pytest.mark.parametrize("name,size", COST_MODELS, ids=[m for m, _ in COST_MODELS])
def test_cost_model_matches_flop_counter_and_pruned_model(name, size):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10).eval()
    graph = analyze(model, (3, size, size))
    cost = CostModel(graph)
    graph.gm.eval()
    # the unpruned network
    assert cost.base_macs == image_macs(graph.gm, size)
    assert cost.base_params == count_params(graph.gm)
    full = np.ones(graph.num_classes)
    assert cost.macs(full) == cost.base_macs and cost.params(full) == cost.base_params
    # random plans, physically applied
    rng = np.random.default_rng(0)
    for _ in range(2):
        keep = random_keep(graph, rng)
        pruned = prune(graph, keep).eval()
        macs, params = cost.macs(keep), cost.params(keep)
        assert macs == image_macs(pruned, size)
        assert params == count_params(pruned)
        assert cost.costs(keep) == (macs, params)
        assert macs < cost.base_macs and params < cost.base_params


def test_cifar_resnet_costs_match_the_paper():
    graph = analyze(build_model("cifar_resnet56"), (3, 32, 32))
    cost = CostModel(graph)
    assert cost.base_macs == 125_485_696  # LeGR / He et al.: ~125.5M FLOPs (MACs) for ResNet-56 (option A)
    assert cost.base_params == 853_018
    resnet20 = CostModel(analyze(build_model("cifar_resnet20"), (3, 32, 32)))
    assert resnet20.base_macs == 40_551_040
    assert resnet20.base_params == 269_722


class _Tiny(nn.Module):
    """conv 3->8 (k3, pad 1) -> BN -> ReLU -> depthwise 8 (k3, pad 1) -> conv 1x1 8->16 -> avgpool -> Linear 16->10."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pw(self.dw(self.relu(self.bn(self.conv(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _tiny_costs(c1: int, c2: int) -> tuple[int, int]:
    """Hand-derived MACs and parameters of `_Tiny` on an 8x8 image with c1 of 8 and c2 of 16 channels kept."""
    hw = 8 * 8
    macs = (hw * 3 * 3 * 3 * c1  # conv: H*W * k*k * C_in * C_out
            + hw * 3 * 3 * c1  # depthwise: H*W * k*k * C
            + hw * c1 * c2  # 1x1 conv
            + c2 * 10)  # linear
    params = (3 * 3 * 3 * c1  # conv weight
              + 2 * c1  # bn gamma, beta
              + 3 * 3 * c1  # depthwise weight
              + c1 * c2 + c2  # 1x1 weight, bias
              + c2 * 10 + 10)  # linear weight, bias
    return macs, params


def test_hand_computed_costs_of_a_tiny_net():
    graph = analyze(_Tiny(), (3, 8, 8))
    cost = CostModel(graph)
    assert [g.name for g in graph.prunable_groups()] == ["conv", "pw"]
    assert (graph.group_by_name["conv"].size, graph.group_by_name["pw"].size) == (8, 16)
    assert graph.group_by_name["conv"].producers == ("conv", "dw")  # the depthwise conv keeps its input's channels
    assert _tiny_costs(8, 16) == (26_784, 618)
    assert (cost.base_macs, cost.base_params) == (26_784, 618)

    # keep 5 of the 8 channels of the first group, all 16 of the second
    keep = graph.keep_vector({"conv": [0, 2, 3, 5, 7]})
    assert _tiny_costs(5, 16) == (1728 * 5 + 576 * 5 + 64 * 5 * 16 + 160, 135 + 10 + 45 + 80 + 16 + 170)
    assert (cost.macs(keep), cost.params(keep)) == _tiny_costs(5, 16) == (16_800, 456)
    # and 12 of the 16 of the second: 8640 + 2880 + 3840 + 120 MACs
    keep = graph.keep_vector({"conv": [0, 2, 3, 5, 7], "pw": list(range(12))})
    assert (cost.macs(keep), cost.params(keep)) == _tiny_costs(5, 12) == (15_480, 392)

    # every width combination, and the physically pruned net agrees
    for c1 in (1, 4, 8):
        for c2 in (1, 9, 16):
            keep = graph.keep_vector({"conv": list(range(8 - c1, 8)), "pw": list(range(c2))})
            assert (cost.macs(keep), cost.params(keep)) == _tiny_costs(c1, c2)
            pruned = prune(graph, keep).eval()
            assert image_macs(pruned, 8) == cost.macs(keep) and count_params(pruned) == cost.params(keep)


def test_macs_is_a_cheap_pure_function():
    graph = analyze(build_model("cifar_resnet20"), (3, 32, 32))
    cost = CostModel(graph)
    keep = random_keep(graph, np.random.default_rng(1))
    before = keep.copy()
    values = {cost.macs(keep) for _ in range(200)}
    assert len(values) == 1 and np.array_equal(keep, before)
    assert isinstance(cost.macs(keep), float) and isinstance(cost.params(keep), float)
    assert cost.macs(keep) < cost.base_macs
    group = graph.prunable_groups()[0]
    fewer = keep.copy()
    fewer[group.classes[np.flatnonzero(keep[group.classes])[0]]] = 0.0
    assert cost.macs(fewer) < cost.macs(keep) or keep[group.classes].sum() == 1


def test_budget_units_are_one_registry():
    """Every place that names a unit (the cost model, the run config, a comparison's entries) reads BUDGET_UNITS."""
    from legr.pipeline.config import parse_config

    assert list(BUDGET_UNITS) == ["macs", "params", "latency"]
    cost = CostModel(analyze(_Tiny(), (3, 8, 8)))
    for name, unit in BUDGET_UNITS.items():
        assert unit.name == name and isinstance(unit.format(1234.0), str)
        if not unit.section:
            assert cost.base(name) == {"macs": cost.base_macs, "params": cost.base_params}[name]
            assert parse_config({"model": {"name": "digits_cnn"}, "budget": name}).budget_unit == name
    assert parse_config({"model": {"name": "digits_cnn"}, "budget": "latency"}).budget_unit == "latency"
    with pytest.raises(LegrError, match="unknown budget unit 'flops'"):
        cost.base("flops")


def test_price_counts_any_network_and_its_nonzero_weights():
    """One entry point: the keep-vector model for a channel-pruned network, torch's counter otherwise; the non-zero
    MACs of a sparse network count each conv / linear weight's non-zero entries once per output position."""
    net = _Tiny().eval()
    dense = price(net, (3, 8, 8))
    assert (dense.macs, dense.params) == (26_784, 618) == (counted_macs(net, torch.zeros(1, 3, 8, 8)), count_params(net))
    assert dense.nonzero_macs == dense.macs and dense.weight_bytes == 4 * 618
    with torch.no_grad():
        net.conv.weight[:4] = 0  # 4 of 8 filters of the first 8x8 conv: half its 1728 * 8 MACs
        net.fc.weight[:, ::2] = 0  # half the classifier's inputs
    sparse = price(net, (3, 8, 8))
    assert sparse.macs == 26_784 and sparse.nonzero_macs == 26_784 - 1728 * 4 - 16 * 10 // 2
    assert sparse.nonzero_macs == counted_macs(net, torch.zeros(1, 3, 8, 8), nonzero=True)
    assert sparse.nonzero_params == 618 - 4 * 27 - 80 - 8 and sparse.params == 618  # - 8: the BN biases start at 0
    graph = analyze(_Tiny(), (3, 8, 8))
    keep = graph.keep_vector({"conv": [0, 2, 3, 5, 7]})
    pruned = prune(graph, keep).eval()
    exact, counted = price(pruned, (3, 8, 8), exact=(CostModel(graph), keep)), price(pruned, (3, 8, 8))
    assert exact == counted and (exact.macs, exact.params) == (16_800, 456)
