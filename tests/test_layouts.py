"""Channel layouts beyond plain NCHW chains (issue #13): fixed channel slices (GhostNet, DPN, ReXNet), the channel
shuffle (ShuffleNet), channels-last blocks with a layer norm over the channels (ConvNeXt), group norm, padding
modules, weight-standardized convolutions (BiT, NFNets) and shape-dependent control flow. Each is pruned exactly
(pruned == masked original, MACs == torch's count) or refused in one line."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import random_keep
from test_graph import assert_equivalent
from torch import nn

from legr.engine.cost import CostModel, counted_macs
from legr.engine.surgery import StandardizedConv2d, prune
from legr.errors import BudgetError, UnsupportedModelError
from legr.graph import analyze
from legr.graph.tracing import SPECIALIZED
from legr.methods.filters.allocate import Floors, check_reachable
from legr.models import build_model


def _head(channels: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, 10))


# --- fixed channel slices ------------------------------------------------------------------------------------------
class _Ghost(nn.Module):
    """GhostNet's module: primary conv + cheap depthwise conv, concatenated and cut to ``out`` channels."""

    def __init__(self, out: int = 13):
        super().__init__()
        self.out = out
        self.primary = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU())
        self.head = _head(out)

    def forward(self, x):
        a = self.primary(x)
        return self.head(torch.cat([a, self.cheap(a)], dim=1)[:, :self.out])


class _DualPath(nn.Module):
    """DPN's split of one conv's output into a residual part and a dense part (slices with literal bounds)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.conv = nn.Conv2d(6, 10, 1)
        self.head = _head(10)

    def forward(self, x):
        s = self.stem(x)
        y = self.conv(F.relu(s))
        resid = s + y[:, :6]
        return self.head(torch.cat([resid, y[:, 6:, ...]], dim=1))


@pytest.mark.parametrize("model", [_Ghost, _DualPath], ids=["ghost", "dual-path"])
def test_channel_slices_prune_inside_and_outside_the_slice(model):
    torch.manual_seed(0)
    assert_equivalent(model(), 12, plans=3, seed=1)  # seed 0's second plan keeps every channel of the ghost


def test_a_slice_never_becomes_empty():
    graph = analyze(_DualPath(), (3, 12, 12))
    assert any(len(s) for s in graph.segments)  # y[:, :6] and y[:, 6:] are pieces the floors hold for
    keep = random_keep(graph, np.random.default_rng(0), min_keep=0)
    for piece in graph.segments:
        assert keep[piece].sum() >= 1


class _Strided(nn.Module):
    def __init__(self, index):
        super().__init__()
        self.index = index
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return self.conv(x)[self.index].mean()


@pytest.mark.parametrize("index,message", [
    ((slice(None), slice(None, None, 2)), "slices the channel dimension with a step"),
    ((slice(None), 0), "indexes the channel dimension with fixed positions"),
], ids=["step", "position"])
def test_other_channel_indexing_is_refused(index, message):
    with pytest.raises(UnsupportedModelError, match=message):
        analyze(_Strided(index), (3, 8, 8))


# --- channel shuffle -------------------------------------------------------------------------------------------------
def test_shufflenet_prunes_through_the_channel_shuffle():
    torch.manual_seed(0)
    assert_equivalent(build_model("shufflenet_v2_x0_5", num_classes=10), 64)


def test_a_shuffle_couples_each_position_across_the_groups():
    class Shuffle(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 6, 1), _head(6)

        def forward(self, x):
            y = self.a(x)
            n, c, h, w = y.size()
            y = y.view(n, 3, c // 3, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
            return self.head(self.b(y))

    graph = analyze(Shuffle(), (3, 4, 4))
    group = graph.group_by_name["a"]
    assert group.size == 2 and group.prunable  # 3 groups x 2 positions: position j of every group is one element
    torch.manual_seed(0)
    assert_equivalent(Shuffle(), 4, plans=2)


# --- channels-last blocks and layer norms over the channels (ConvNeXt) ---------------------------------------------
class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.dw = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))
        self.down_norm = nn.LayerNorm(dim)  # LayerNorm2d: permute -> F.layer_norm -> permute
        self.head = _head(dim)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.fc2(F.gelu(self.fc1(self.norm(y))))
        x = x + (self.gamma * y).permute(0, 3, 1, 2)
        x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.down_norm.weight, self.down_norm.bias)
        return self.head(x.permute(0, 3, 1, 2))


def test_convnext_block_prunes_its_mlp_and_keeps_the_normalized_channels():
    graph = analyze(_ConvNeXtBlock(), (3, 8, 8))
    assert graph.group_by_name["fc1"].prunable and graph.group_by_name["fc1"].size == 32
    assert not graph.group_by_name["stem"].prunable and "layer norm" in graph.group_by_name["stem"].reason
    torch.manual_seed(0)
    assert_equivalent(_ConvNeXtBlock(), 8, plans=2)


def test_torchvision_convnext_is_handled():
    graph = analyze(build_model("convnext_tiny", num_classes=10), (3, 32, 32))
    assert len(graph.prunable_groups()) == 18  # the 18 blocks' MLP hidden layers


class _LayerScale(nn.Module):
    """A residual branch scaled per channel by a parameter (timm: ``x.mul(gamma.reshape(1, -1, 1, 1))``;
    torchvision: ``layer_scale * x`` with a (C, 1, 1) parameter), plus a per-channel bias added."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.gamma = nn.Parameter(torch.full((8,), 1e-6))
        self.layer_scale = nn.Parameter(torch.full((8, 1, 1), 1e-6))
        self.beta = nn.Parameter(torch.randn(8))
        self.head = _head(8)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv(F.relu(x))
        x = x + y.mul(self.gamma.reshape(1, -1, 1, 1)) + self.layer_scale * y
        return self.head(F.relu(x + self.beta.view(1, -1, 1, 1)))


def test_a_layer_scale_is_pruned_with_its_channels():
    graph = analyze(_LayerScale(), (3, 8, 8))
    assert graph.group_by_name["stem"].prunable
    assert {t.param for t in graph.layers[""].ties} == {"gamma", "layer_scale", "beta"}
    torch.manual_seed(0)
    assert_equivalent(_LayerScale(), 8, plans=2, seed=1)


# --- group norm, padding modules ------------------------------------------------------------------------------------
class _GroupNormNet(nn.Module):
    def __init__(self, functional: bool):
        super().__init__()
        self.functional = functional
        self.pad = nn.ConstantPad2d(1, 0.0)
        self.a, self.gn, self.b = nn.Conv2d(3, 8, 3), nn.GroupNorm(4, 8), nn.Conv2d(8, 8, 3, padding=1)
        self.head = _head(8)

    def forward(self, x):
        y = self.a(self.pad(x))
        y = F.group_norm(y, 4, self.gn.weight, self.gn.bias) if self.functional else self.gn(y)
        return self.head(self.b(F.relu(y)))


@pytest.mark.parametrize("functional", [False, True], ids=["module", "functional"])
def test_group_norm_removes_whole_groups(functional):
    graph = analyze(_GroupNormNet(functional), (3, 8, 8))
    assert graph.group_by_name["a"].size == 4  # 4 groups of 2 channels: each group one element
    torch.manual_seed(0)
    assert_equivalent(_GroupNormNet(functional), 8, plans=3)


class _InstanceNormNet(nn.Module):
    def __init__(self, functional: bool, affine: bool):
        super().__init__()
        self.functional = functional
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8, affine=affine)
        self.head = _head(8)

    def forward(self, x):
        y = self.a(x)
        y = F.instance_norm(y, weight=self.norm.weight, bias=self.norm.bias) if self.functional else self.norm(y)
        return self.head(self.b(F.relu(y)))


@pytest.mark.parametrize("functional,affine", [(False, True), (False, False), (True, True)],
                         ids=["module", "module-no-affine", "functional"])
def test_instance_norm_normalizes_each_channel_on_its_own(functional, affine):
    model = _InstanceNormNet(functional, affine)
    if affine:
        with torch.no_grad():
            model.norm.weight.uniform_(0.5, 1.5)
            model.norm.bias.uniform_(-0.2, 0.2)
    graph = analyze(model, (3, 8, 8))
    assert graph.group_by_name["a"].prunable and graph.group_by_name["a"].size == 8
    assert_equivalent(model, 8, plans=2, seed=1)


def test_a_padding_module_on_the_channel_axis_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ConstantPad3d((0, 0, 0, 0, 1, 1), 0.0), nn.Conv2d(10, 4, 1))
    with pytest.raises(UnsupportedModelError, match="pads the channel axis"):
        analyze(model, (3, 8, 8))


# --- weight-standardized convolutions (timm: BiT, NFNets) -------------------------------------------------------------
class _Standardized(nn.Module):
    def __init__(self, scaled: bool):
        super().__init__()
        from timm.layers import ScaledStdConv2d, StdConv2d

        conv = ScaledStdConv2d if scaled else StdConv2d
        self.a, self.b = conv(3, 8, 3, padding=1), conv(8, 8, 3, padding=1)
        if scaled:
            with torch.no_grad():
                self.a.gain.uniform_(0.5, 1.5)
                self.b.gain.uniform_(0.5, 1.5)
        self.head = _head(8)

    def forward(self, x):
        return self.head(self.b(F.relu(self.a(x))))


@pytest.mark.parametrize("scaled", [False, True], ids=["StdConv2d", "ScaledStdConv2d"])
def test_weight_standardized_convs_are_folded_then_pruned_exactly(scaled):
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _Standardized(scaled)
    graph = analyze(model, (3, 8, 8))
    assert graph.group_by_name["a"].prunable  # b's input channels too: its standardization is folded first
    keep = random_keep(graph, np.random.default_rng(0))
    pruned = prune(graph, keep)
    assert isinstance(pruned.b, StandardizedConv2d) and (pruned.b.gain is not None) == scaled
    x = torch.randn(1, 3, 8, 8)
    assert CostModel(graph).macs(keep) == counted_macs(pruned, x)
    assert_equivalent(_Standardized(scaled), 8, plans=2)


def test_a_model_with_nothing_prunable_is_refused_in_one_line():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.LayerNorm(6), nn.Flatten())  # output channels are fixed
    graph = analyze(model, (3, 8, 8))
    with pytest.raises(BudgetError, match="nothing in this model can be pruned: every channel group is fixed"):
        check_reachable(graph, CostModel(graph), Floors(), [0.5])


# --- control flow on shapes ------------------------------------------------------------------------------------------
class _ShapeBranch(nn.Module):
    """timm's VGG head: pool up to the kernel size when the feature map is smaller."""

    def __init__(self, on_data: bool = False):
        super().__init__()
        self.on_data = on_data
        self.a, self.fc = nn.Conv2d(3, 8, 3, stride=2), nn.Conv2d(8, 6, 4)
        self.head = _head(6)

    def forward(self, x):
        y = F.relu(self.a(x))
        if (y.sum() > 0) if self.on_data else (y.shape[-1] < 4 or y.shape[-2] < 4):
            y = F.adaptive_avg_pool2d(y, (max(4, y.shape[-2]), max(4, y.shape[-1])))
        return self.head(self.fc(y))


def test_control_flow_on_shapes_is_recorded_for_the_input_size():
    assert analyze(_ShapeBranch(), (3, 7, 7)).gm.meta[SPECIALIZED] == (3, 7, 7)
    assert SPECIALIZED not in analyze(_Ghost(), (3, 7, 7)).gm.meta  # symbolic: any input size
    torch.manual_seed(0)
    assert_equivalent(_ShapeBranch(), 7, plans=2)  # 7x7 -> 3x3 features: the pooling branch runs


def test_control_flow_on_data_is_refused():
    with pytest.raises(UnsupportedModelError, match="cannot trace _ShapeBranch with torch.fx: symbolically traced"):
        analyze(_ShapeBranch(on_data=True), (3, 7, 7))
