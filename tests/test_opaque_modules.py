"""A submodule torch.fx cannot trace is kept whole, as a channel barrier; the rest of the model is pruned (issue 32,
item 3). Only a failure in the model's own forward refuses it, in one line."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_pruned_matches_masked, equivalence_setup
from torch import nn

from legr.engine.cost import CostModel, counted_macs
from legr.engine.surgery import masked_copy, prune
from legr.errors import UnsupportedModelError
from legr.graph import analyze


class _DataDependent(nn.Module):
    """Control flow on tensor data: no tracer can follow it."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.mean() > 0:  # the branch may differ from one input to the next
            return F.relu(y)
        return y.abs()


class _Wrapped(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.inner, self.post = _DataDependent(width), nn.Conv2d(width, width, 1)

    def forward(self, x):
        return F.relu(self.post(self.inner(x)))


class _Net(nn.Module):
    def __init__(self, where: str = "block"):
        super().__init__()
        self.where = where
        self.a, self.block = nn.Conv2d(3, 8, 3, padding=1), _Wrapped(8)
        self.b, self.c = nn.Conv2d(8, 6, 3, padding=1), nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        y = self.block(F.relu(self.a(x)))
        if self.where == "root" and y.sum() > 0:
            y = y * 2
        y = F.relu(self.c(F.relu(self.b(y))))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


def test_an_untraceable_submodule_is_kept_whole_and_the_rest_prunes():
    """Only the innermost module whose forward fails is kept whole ('block.inner'; 'block.post' beside it is traced
    and prunes); its channels stay, the layers after it are pruned == masked, MACs and parameters as counted."""
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(_Net(), 12)
    assert [b.op for b in graph.barriers] == ["module 'block.inner' (_DataDependent)"]
    assert "torch.fx cannot trace its forward (symbolically traced variables cannot be used as inputs to control " \
           "flow)" in graph.barriers[0].why
    assert graph.group_by_name["block.post"].prunable and graph.group_by_name["b"].prunable
    assert not graph.group_by_name["a"].prunable  # it reaches the opaque module
    keep = graph.keep_vector({"block.post": [0, 3, 4], "b": [1, 2, 5]})
    pruned, masked = prune(graph, keep).eval(), masked_copy(graph, keep).eval()
    with torch.no_grad():
        assert_pruned_matches_masked(pruned(x), masked(x), original)
    cost = CostModel(graph)
    assert cost.base_macs == counted_macs(graph.gm, x[:1]) and cost.macs(keep) == counted_macs(pruned, x[:1])
    assert cost.params(keep) == sum(p.numel() for p in pruned.parameters())
    assert pruned.block.inner.conv.weight.shape == (8, 8, 3, 3)  # kept whole, never sliced


def test_strict_analysis_refuses_at_the_untraceable_module():
    with pytest.raises(UnsupportedModelError, match=r"^cannot prune through module 'block.inner' [^\n]*$"):
        analyze(_Net(), (3, 12, 12), strict=True)


def test_control_flow_on_data_in_the_models_own_forward_is_refused_in_one_line():
    with pytest.raises(UnsupportedModelError, match=r"^cannot trace _Net with torch\.fx: [^\n]*control flow$"):
        analyze(_Net("root"), (3, 12, 12))


def test_timm_efficientvit_is_pruned_around_its_untraceable_attention():
    """timm's EfficientViT (MIT): LiteMLA's forward tests ``v.device.type`` and opens an autocast context on it;
    refused whole before, now its attention modules are barriers and the rest prunes."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(timm.create_model("efficientvit_b0", num_classes=10), 64)
    assert graph.barriers and all("(LiteMLA)" in b.op for b in graph.barriers)
    assert graph.coverage()["prunable_share"] > 0.6
    keep = graph.keep_vector({g.name: list(range(0, g.size, 2)) for g in graph.prunable_groups()})
    with torch.no_grad():
        assert_pruned_matches_masked(prune(graph, keep).eval()(x), masked_copy(graph, keep).eval()(x), original)
