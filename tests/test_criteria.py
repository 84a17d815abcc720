"""Filter criteria: each ranks a hand-built layer as its paper says it should."""

import numpy as np
import pytest
import torch
from torch import nn

from legr.criteria import CRITERIA, get_criterion, group_scores
from legr.errors import LegrError
from legr.graph import analyze
from legr.models import build_model


class ConvBNNet(nn.Module):
    def __init__(self, norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 1, bias=False)
        self.bn = nn.BatchNorm2d(4) if norm else nn.Identity()
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x)))).mean((2, 3))


def _net(norm: bool = True) -> ConvBNNet:
    net = ConvBNNet(norm).eval()
    with torch.no_grad():
        # filters (2 inputs, 1x1): a and b and c sit at the layer's geometric median, d is far from them but smallest
        net.conv.weight.copy_(torch.tensor([[3.0, 0.0], [3.0, 0.1], [3.0, -0.1], [0.0, 1.0]]).view(4, 2, 1, 1))
        if norm:
            net.bn.weight.copy_(torch.tensor([0.5, -2.0, 1.0, 0.1]))
    return net


def test_registry_lists_the_criteria():
    assert {"l1", "l2sq", "bn_scale", "fpgm"} <= set(CRITERIA)
    with pytest.raises(LegrError, match="unknown criterion 'nope'; available: .*fpgm"):
        get_criterion("nope")


def test_norm_criteria_rank_the_small_filter_last():
    net = _net()
    graph = analyze(net, (2, 4, 4))
    for name, expected in (("l1", [3.0, 3.1, 3.1, 1.0]), ("l2sq", [9.0, 9.01, 9.01, 1.0])):
        np.testing.assert_allclose(get_criterion(name)(graph, net)["conv"], expected)


def test_bn_scale_is_the_absolute_gamma_of_the_following_norm():
    net = _net()
    graph = analyze(net, (2, 4, 4))
    scores = get_criterion("bn_scale")(graph, net)
    assert set(scores) == {"conv"}  # the head's outputs are the network's: not prunable, not scored
    np.testing.assert_allclose(scores["conv"], [0.5, 2.0, 1.0, 0.1])
    assert np.argsort(group_scores(graph, scores)["conv"]).tolist() == [3, 0, 2, 1]


def test_bn_scale_names_the_layers_without_a_norm():
    net = _net(norm=False)
    with pytest.raises(LegrError, match="needs a batch norm right after every prunable producer layer; none after conv"):
        get_criterion("bn_scale")(analyze(net, (2, 4, 4)), net)


def test_fpgm_keeps_the_filter_far_from_the_geometric_median():
    net = _net()
    scores = get_criterion("fpgm")(analyze(net, (2, 4, 4)), net)["conv"]
    w = net.conv.weight.detach().flatten(1).double()
    expected = [sum(float((w[i] - w[j]).norm()) for j in range(4)) for i in range(4)]
    np.testing.assert_allclose(scores, expected)
    # the opposite of the norm criteria: the smallest filter is the most distinct one, the median one goes first
    assert int(np.argmax(scores)) == 3 and int(np.argmin(scores)) == 0


@pytest.mark.parametrize("name", ["bn_scale", "fpgm"])
def test_criteria_score_every_prunable_producer_of_a_resnet(name):
    model = build_model("cifar_resnet20").eval()
    graph = analyze(model, (3, 32, 32))
    scores = get_criterion(name)(graph, model)
    per_group = group_scores(graph, scores)
    assert set(per_group) == {g.name for g in graph.prunable_groups()}
    assert all(np.isfinite(v).all() and (v >= 0).all() for v in per_group.values())
