"""Filter criteria: each ranks a hand-built layer as its paper says it should."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from legr.errors import LegrError
from legr.graph import analyze
from legr.methods.filters.criteria import CRITERIA, CriterionContext, compute_scores, group_scores
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
    assert {"l1", "l2sq", "bn_scale", "fpgm", "taylor", "random"} <= set(CRITERIA)
    with pytest.raises(LegrError, match="unknown criterion 'nope'; available: .*fpgm"):
        CRITERIA["nope"]


def test_norm_criteria_rank_the_small_filter_last():
    net = _net()
    graph = analyze(net, (2, 4, 4))
    for name, expected in (("l1", [3.0, 3.1, 3.1, 1.0]), ("l2sq", [9.0, 9.01, 9.01, 1.0])):
        np.testing.assert_allclose(compute_scores(name, graph, net)["conv"], expected)


def test_bn_scale_is_the_absolute_gamma_of_the_following_norm():
    net = _net()
    graph = analyze(net, (2, 4, 4))
    scores = compute_scores("bn_scale", graph, net)
    assert set(scores) == {"conv"}  # the head's outputs are the network's: not prunable, not scored
    np.testing.assert_allclose(scores["conv"], [0.5, 2.0, 1.0, 0.1])
    assert np.argsort(group_scores(graph, scores)["conv"]).tolist() == [3, 0, 2, 1]


def test_bn_scale_names_the_layers_without_a_norm():
    net = _net(norm=False)
    with pytest.raises(LegrError, match="needs a batch norm right after every prunable producer layer; none after conv"):
        compute_scores("bn_scale", analyze(net, (2, 4, 4)), net)


def test_fpgm_keeps_the_filter_far_from_the_geometric_median():
    net = _net()
    scores = compute_scores("fpgm", analyze(net, (2, 4, 4)), net)["conv"]
    w = net.conv.weight.detach().flatten(1).double()
    expected = [sum(float((w[i] - w[j]).norm()) for j in range(4)) for i in range(4)]
    np.testing.assert_allclose(scores, expected)
    # the opposite of the norm criteria: the smallest filter is the most distinct one, the median one goes first
    assert int(np.argmax(scores)) == 3 and int(np.argmin(scores)) == 0


@pytest.mark.parametrize("name", ["bn_scale", "fpgm", "taylor", "random"])
def test_criteria_score_every_prunable_producer_of_a_resnet(name):
    model = build_model("cifar_resnet20").eval()
    graph = analyze(model, (3, 32, 32))
    data = [(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))]
    scores = compute_scores(name, graph, model, CriterionContext(batches=lambda: iter(data)))
    per_group = group_scores(graph, scores)
    assert set(per_group) == {g.name for g in graph.prunable_groups()}
    assert all(np.isfinite(v).all() and (v >= 0).all() for v in per_group.values())


def test_random_is_seeded_and_scores_every_filter():
    net = _net()
    graph = analyze(net, (2, 4, 4))
    a = compute_scores("random", graph, net, CriterionContext(seed=3))
    b = compute_scores("random", graph, net, CriterionContext(seed=3))
    c = compute_scores("random", graph, net, CriterionContext(seed=4))
    assert set(a) == {"conv", "head"} and a["conv"].shape == (4,)
    np.testing.assert_array_equal(a["conv"], b["conv"])
    assert not np.array_equal(a["conv"], c["conv"])


def _batches(n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    data = [(torch.randn(5, 2, 4, 4, generator=g), torch.randint(0, 3, (5,), generator=g)) for _ in range(n)]
    return lambda: iter(data)


def test_taylor_is_the_squared_gate_gradient_averaged_over_batches():
    """Independent check: a multiplicative gate of ones after the batch norm; d loss / d gate = sum of
    activation x gradient over the batch and positions, and the criterion is its square averaged over batches."""
    net = _net()
    graph = analyze(net, (2, 4, 4))
    net.bn.train()  # the criterion must evaluate in eval mode and restore this afterwards
    batches = _batches()
    scores = compute_scores("taylor", graph, net, CriterionContext(batches=batches))["conv"]
    assert net.bn.training and all(p.grad is None for p in net.parameters())

    reference = copy.deepcopy(net).eval()
    gate = torch.ones(4, requires_grad=True)
    reference.bn.register_forward_hook(lambda m, i, out: out * gate.view(1, -1, 1, 1))
    expected = np.zeros(4)
    for x, y in batches():
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(reference(x), y), gate)
        expected += g.double().pow(2).numpy()
    np.testing.assert_allclose(scores, expected / 3, rtol=1e-5)


def test_taylor_abs_is_gdps_absolute_gate_gradient_averaged_over_batches():
    """GDP's discriminative function, by hand on a toy net: per batch |sum of gamma dL/dgamma + beta dL/dbeta| at the
    batch norm of each channel (eval mode), the mean over the batches; differs from taylor's square."""
    net = _net()
    batches = _batches()
    scores = compute_scores("taylor_abs", analyze(net, (2, 4, 4)), net, CriterionContext(batches=batches))["conv"]
    reference = copy.deepcopy(net).eval()
    expected = np.zeros(4)
    for x, y in batches():
        gw, gb = torch.autograd.grad(nn.functional.cross_entropy(reference(x), y), [reference.bn.weight, reference.bn.bias])
        expected += (reference.bn.weight * gw + reference.bn.bias * gb).detach().double().abs().numpy()
    np.testing.assert_allclose(scores, expected / 3, rtol=1e-5)
    squared = compute_scores("taylor", analyze(net, (2, 4, 4)), net, CriterionContext(batches=batches))["conv"]
    assert not np.allclose(scores, squared)


def test_taylor_saliency_with_batch_statistics_leaves_the_running_ones_alone():
    """GDP scores with the norms normalizing by batch statistics (as in training): by hand, a training-mode copy;
    the scored network's running buffers and modes are unchanged."""
    from legr.methods.filters.criteria import taylor_saliency

    net = _net()
    net.eval()
    buffers = {k: v.clone() for k, v in net.state_dict().items() if "running" in k or "num_batches" in k}
    batches = _batches()
    scores = taylor_saliency(analyze(net, (2, 4, 4)), net, CriterionContext(batches=batches), "taylor_abs", torch.abs,
                             batch_norms=True)["conv"]
    assert not net.bn.training and all(torch.equal(net.state_dict()[k], v) for k, v in buffers.items())
    reference = copy.deepcopy(net).eval()
    reference.bn.train()
    expected = np.zeros(4)
    for x, y in batches():
        gw, gb = torch.autograd.grad(nn.functional.cross_entropy(reference(x), y), [reference.bn.weight, reference.bn.bias])
        expected += (reference.bn.weight * gw + reference.bn.bias * gb).detach().double().abs().numpy()
    np.testing.assert_allclose(scores, expected / 3, rtol=1e-5)


def test_taylor_ranks_a_channel_the_loss_ignores_last():
    net = _net()
    with torch.no_grad():
        net.head.weight[:, 2] = 0.0  # channel 2 no longer reaches the output: zero gradient, zero importance
    scores = compute_scores("taylor", analyze(net, (2, 4, 4)), net, CriterionContext(batches=_batches()))["conv"]
    assert scores[2] == 0.0 and (np.delete(scores, 2) > 0).all()


def test_taylor_without_batches_or_batch_norm():
    net = _net(norm=False)
    graph = analyze(net, (2, 4, 4))
    with pytest.raises(LegrError, match="criterion 'taylor' needs training batches"):
        compute_scores("taylor", graph, net)
    # no norm after the layer: the gate sits at the conv output itself (its bias-free weights * gradient)
    scores = compute_scores("taylor", graph, net, CriterionContext(batches=_batches(1)))["conv"]
    x, y = next(_batches(1)())
    out = net.conv(x).detach().requires_grad_(True)
    loss = nn.functional.cross_entropy(net.head(torch.relu(out)).mean((2, 3)), y)
    (g,) = torch.autograd.grad(loss, out)
    np.testing.assert_allclose(scores, (out * g).sum((0, 2, 3)).double().pow(2).detach().numpy(), rtol=1e-5)
