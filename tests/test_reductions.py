"""Reductions over the channel axis (global response norm), p-norms, addcmul, expand_as, and the efficient-channel-
attention gate (a Conv1d along the channels: a barrier naming it) (issue 32, item 2)."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_pruned_matches_masked, equivalence_setup
from torch import nn

from legr.engine.cost import CostModel, counted_macs
from legr.engine.surgery import masked_copy, prune
from legr.graph import analyze


class _GRN(nn.Module):
    """timm's GlobalResponseNorm, channels-last or channels-first."""

    def __init__(self, dim: int, channels_last: bool):
        super().__init__()
        self.spatial, self.channel = ((1, 2), -1) if channels_last else ((2, 3), 1)
        self.shape = (1, 1, 1, -1) if channels_last else (1, -1, 1, 1)
        self.weight, self.bias = nn.Parameter(torch.randn(dim)), nn.Parameter(torch.randn(dim))

    def forward(self, x):
        x_g = x.norm(p=2, dim=self.spatial, keepdim=True)
        x_n = x_g / (x_g.mean(dim=self.channel, keepdim=True) + 1e-6)
        return x + torch.addcmul(self.bias.view(self.shape), self.weight.view(self.shape), x * x_n)


class _GRNNet(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.grn, self.g = _GRN(8, how == "channels-last"), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = F.gelu(self.a(x))
        if self.how == "channels-last":
            y = self.grn(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        elif self.how == "channels-first":
            y = self.grn(y)
        elif self.how == "vector-norm":  # a p-norm over the channels (zeros add nothing), then a plain sum
            y = y / (torch.linalg.vector_norm(y, 3, dim=1, keepdim=True) + y.sum(1, keepdim=True).abs() + 1.0)
        elif self.how == "expand-gate":  # a gate made explicit with expand_as
            y = y * torch.sigmoid(self.g(y).mean((2, 3), keepdim=True)).expand_as(y)
        return self.fc(F.adaptive_avg_pool2d(self.b(y), 1).flatten(1))


@pytest.mark.parametrize("how", ["channels-last", "channels-first", "vector-norm"])
def test_reductions_over_the_channels_are_pruned_exactly(how):
    """A mean over the channels becomes their sum over the original count; a sum or a p-norm needs nothing: pruned
    == masked (float64), MACs as torch counts them, and no barrier."""
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(_GRNNet(how), 12)
    assert not graph.barriers and graph.group_by_name["a"].prunable
    keep = graph.keep_vector({"a": [0, 2, 3, 6], "b": [1, 4]})
    pruned, masked = prune(graph, keep).eval(), masked_copy(graph, keep).eval()
    with torch.no_grad():
        assert_pruned_matches_masked(pruned(x), masked(x), original)
    assert CostModel(graph).macs(keep) == counted_macs(pruned, x[:1])


class _Reduced(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how, self.a, self.b = how, nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        y = self.a(x)
        if self.how == "amax":
            y = y - y.amax(1, keepdim=True)
        elif self.how == "mean-after-sigmoid":  # a removed channel holds 0.5 there: it would change the mean
            y = y / (torch.sigmoid(y).mean(1, keepdim=True) + 1.0)
        elif self.how == "negative-p":
            y = y * y.norm(p=-1, dim=1, keepdim=True)
        return self.fc(F.adaptive_avg_pool2d(self.b(y), 1).flatten(1))


@pytest.mark.parametrize("how,reason", [
    ("amax", "channel barrier at method '.amax()'"),
    ("mean-after-sigmoid", "reduced over the channel axis at method '.mean()'"),
    ("negative-p", "a norm with p=-1"),
])
def test_reductions_the_math_does_not_allow_keep_the_channels(how, reason):
    graph = analyze(_Reduced(how), (3, 8, 8))
    group = graph.group_by_name["a"]
    assert not group.prunable and reason in group.reason and graph.group_by_name["b"].prunable


def test_a_gate_made_explicit_with_expand_as_is_pruned_exactly():
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(_GRNNet("expand-gate"), 12)
    assert not graph.barriers and graph.group_by_name["a"].prunable
    keep = graph.keep_vector({"a": [1, 2, 5], "b": [0, 1, 3]})
    with torch.no_grad():
        assert_pruned_matches_masked(prune(graph, keep).eval()(x), masked_copy(graph, keep).eval()(x), original)


class _ECA(nn.Module):
    """Efficient channel attention: a Conv1d along the channel axis of the pooled features gates each channel."""

    def __init__(self):
        super().__init__()
        self.a, self.eca, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv1d(1, 1, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.c = nn.Conv2d(6, 5, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.a(x))
        gate = self.eca(y.mean((2, 3)).view(y.shape[0], 1, -1)).sigmoid().view(y.shape[0], -1, 1, 1)
        y = self.b(y * gate.expand_as(y))
        return F.adaptive_avg_pool2d(self.c(F.relu(y)), 1).flatten(1)


def test_an_eca_gate_is_a_barrier_naming_its_conv1d_and_the_rest_prunes():
    """The gate of channel c reads channels c-1..c+1: removing one would change its neighbours' gates. The gated
    channels stay whole (one barrier, at the Conv1d), the layers after it prune exactly."""
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(_ECA(), 12)
    assert [b.op for b in graph.barriers] == ["module 'eca' (Conv1d)"]
    assert "convolves along the channel axis" in graph.barriers[0].why
    assert not graph.group_by_name["a"].prunable and graph.group_by_name["b"].prunable
    keep = graph.keep_vector({"b": [0, 3, 4]})
    with torch.no_grad():
        assert_pruned_matches_masked(prune(graph, keep).eval()(x), masked_copy(graph, keep).eval()(x), original)


class _RmsStar(nn.Module):
    """An RMS norm over the channels (timm's RmsNorm2d: ``x * rsqrt(mean(x ** 2 over C) + eps) * weight``), then
    StarReLU (``s * relu(x) ** 2 + b``, scalar s and b: a removed channel holds b) read by a 1x1 conv with a bias."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 6, 1), nn.Linear(6, 4)
        self.weight = nn.Parameter(torch.randn(8))
        self.s, self.t = nn.Parameter(torch.tensor(0.8)), nn.Parameter(torch.tensor(0.3))

    def forward(self, x):
        y = self.a(x)
        if self.how == "rsqrt-of-channels":  # 1 / sqrt of each channel: a removed one would be infinite
            y = y * torch.rsqrt(y.square() + 1.0)
        else:
            y = y * torch.rsqrt(y.pow(2).mean(1, keepdim=True) + 1e-6) * self.weight.view(1, -1, 1, 1)
        y = self.s * F.relu(y) ** 2 + self.t
        return self.fc(F.adaptive_avg_pool2d(self.b(y), 1).flatten(1))


def test_rms_norm_and_star_relu_are_pruned_exactly():
    """``pow`` / ``square`` with a positive exponent keep 0 (and a constant) as they are; ``rsqrt`` of the one fixed
    channel of a mean over the channels is exact; the StarReLU bias is folded into the next conv's bias."""
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(_RmsStar("rms"), 12)
    assert not graph.barriers and graph.group_by_name["a"].prunable
    keep = graph.keep_vector({"a": [0, 2, 3, 6], "b": [1, 4]})
    with torch.no_grad():
        assert_pruned_matches_masked(prune(graph, keep).eval()(x), masked_copy(graph, keep).eval()(x), original)


def test_rsqrt_of_prunable_channels_is_a_barrier():
    graph = analyze(_RmsStar("rsqrt-of-channels"), (3, 8, 8))
    assert [b.op.split(" in ")[0] for b in graph.barriers] == ["op 'rsqrt' at node 'rsqrt'"]
    assert "infinity" in graph.barriers[0].why and not graph.group_by_name["a"].prunable


@pytest.mark.parametrize("exponent", [0, -1, 0.5])
def test_pow_needs_a_positive_exponent(exponent):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 6, 3), nn.Linear(6, 4)

        def forward(self, x):
            y = F.relu(self.a(x)) + 1.0
            return self.fc(F.adaptive_avg_pool2d(self.b(y ** exponent), 1).flatten(1))

    graph = analyze(Net(), (3, 8, 8))
    if exponent > 0:  # (relu(x) + 1) ** 0.5: a removed channel holds 1, folded into b's bias
        assert not graph.barriers and graph.group_by_name["a"].prunable
    else:
        assert "exponent is not a positive number" in graph.barriers[0].why
