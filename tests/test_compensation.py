"""A removed channel that holds a constant (a learnable scalar affine ``x * s + b`` after an activation maps its 0 to
``b``) is pruned when the next layer can take the constant in its bias exactly, and kept otherwise (issue 32)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (RandomNet, ScalarAffine, assert_pruned_matches_masked, check_random_plans, equivalence_setup,
                     random_keep, randomize_all)
from torch import nn

import legr.graph.compensation as compensation
from legr.engine.artifacts import load_pruned, save_pruned
from legr.engine.cost import CostModel, counted_macs
from legr.engine.export import export_onnx
from legr.engine.plan import Plan
from legr.engine.surgery import masked_copy, prune
from legr.errors import UnsupportedModelError
from legr.graph import analyze


class _BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d: ``F.batch_norm`` on the module's own tensors."""

    def forward(self, x):
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps)
        return F.relu(y)


class _AffineNet(nn.Module):
    """conv a -> BN -> ReLU -> x * s + b, read by ``reader``; the rest of the network after it."""

    def __init__(self, reader: str):
        super().__init__()
        self.reader = reader
        self.a, self.bn = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)
        self.lab = ScalarAffine(1.3, 0.7)
        if reader == "conv-bias":
            self.b = nn.Conv2d(8, 6, 3)  # no padding: the constant is one shift per output channel
        elif reader in ("conv-bn", "conv-padded", "avgpool-padded"):
            k = 3 if reader == "conv-padded" else 1
            self.b = nn.Sequential(nn.Conv2d(8, 6, k, padding=k // 2, bias=False), nn.BatchNorm2d(6))
        elif reader == "conv-fbn":
            self.b = nn.Sequential(nn.Conv2d(8, 6, 1, bias=False), _BatchNormAct(6))
        elif reader == "conv-reflect":
            self.b = nn.Conv2d(8, 6, 3, padding=1, padding_mode="reflect")
        elif reader == "depthwise":
            self.b = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 6, 3, padding=1))
        elif reader == "cat":  # the constant channels concatenated with others, then a 1x1 conv with a bias
            self.c, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(12, 6, 1)
        elif reader == "conv-given":  # a 1x1 conv without a bias (caformer's MLPs): given one
            self.b = nn.Conv2d(8, 6, 1, bias=False)
        self.fc = nn.Linear(8, 5, bias=reader != "linear-given") if reader.startswith("linear") else nn.Linear(6, 5)

    def forward(self, x):
        y = self.lab(F.relu(self.bn(self.a(x))))
        if self.reader.startswith("linear"):  # pooled, then a Linear with a bias, or without one (given one)
            return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))
        if self.reader == "cat":
            y = torch.cat([y, F.relu(self.c(x))], 1)
        if self.reader == "avgpool-padded":
            y = F.avg_pool2d(y, 3, 1, 1)  # counts the zero padding: the constant is not one value after it
        return self.fc(F.adaptive_avg_pool2d(self.b(y), 1).flatten(1))


EXACT = ["conv-bias", "conv-bn", "conv-fbn", "conv-reflect", "linear", "depthwise", "cat", "conv-given",
         "linear-given"]


@pytest.mark.parametrize("reader", EXACT)
def test_a_constant_folded_into_the_next_layer_is_exact(reader, monkeypatch):
    """Removing channels after the scalar affine: pruned == masked (float64), the MACs and parameters as counted;
    the same plan without the folded shifts is wrong (the test has teeth). A depthwise conv needs no shift (its own
    filter of a removed channel is masked with it)."""
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(_AffineNet(reader), 12)
    assert graph.group_by_name["a"].prunable, graph.group_by_name["a"].reason
    keep = graph.keep_vector({"a": [0, 3, 5]})
    pruned, masked = prune(graph, keep).eval(), masked_copy(graph, keep).eval()
    with torch.no_grad():
        a, b = pruned(x), masked(x)
    assert_pruned_matches_masked(a, b, original)
    cost = CostModel(graph)
    assert cost.macs(keep) == counted_macs(pruned, x[:1])
    assert cost.params(keep) == sum(p.numel() for p in pruned.parameters())
    monkeypatch.setattr(compensation, "shifts", lambda *args: [])
    with torch.no_grad():
        unshifted = prune(graph, keep).eval()(x)
    assert (unshifted - b).abs().max() > 1e-3 or reader == "depthwise"


@pytest.mark.parametrize("reader,why", [("conv-padded", "reads beside zero padding"),
                                        ("avgpool-padded", "non-zero value")])
def test_a_constant_read_beside_zero_padding_keeps_the_channels(reader, why):
    """A padded 3x3 conv reads the constant inside the image and zeros at its border (no bias can take that); an
    average pool counting zero padding makes it vary at the border too: the channels stay, with the reason."""
    graph = analyze(_AffineNet(reader), (3, 12, 12))
    group = graph.group_by_name["a"]
    assert not group.prunable and why in group.reason and "lab" in group.reason


@pytest.mark.parametrize("reader,layer", [("conv-given", "b"), ("linear-given", "fc")])
def test_a_layer_without_a_bias_is_given_one(reader, layer, tmp_path):
    """A torch.nn conv or linear layer without a bias (nor a batch norm after it) is given one to take the constant:
    only by plans that remove such a channel, sliced with the layer's filters, counted by the cost model (+ the
    layer's kept outputs); the pruned network saves, loads and exports like any other."""
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(_AffineNet(reader), 12)
    cost = CostModel(graph)
    removed = graph.keep_vector({"a": [0, 3, 5]})  # 5 of a's 8 channels (3x3 filters with a bias, and their BN)
    pruned = prune(graph, removed).eval()
    bias = pruned.get_submodule(layer).bias
    assert model.get_submodule(layer).bias is None and bias.shape == (pruned.get_submodule(layer).weight.shape[0],)
    reads = pruned.get_submodule(layer).weight.shape[0]
    assert cost.params(removed) == sum(p.numel() for p in pruned.parameters()) == \
        cost.base_params - 5 * (3 * 9 + 1 + 2) - 5 * reads + reads
    if layer == "b":  # its own filters pruned too: the bias is sliced with them
        both = graph.keep_vector({"a": [0, 3, 5], "b": [1, 4]})
        with torch.no_grad():
            assert_pruned_matches_masked(prune(graph, both).eval()(x), masked_copy(graph, both).eval()(x), original)
        assert prune(graph, both).b.bias.shape == (2,) and cost.params(both) == sum(
            p.numel() for p in prune(graph, both).parameters())
        untouched = graph.keep_vector({"b": [1, 4]})  # a keeps every channel: no constant, no bias
        assert prune(graph, untouched).b.bias is None
        assert cost.params(untouched) == sum(p.numel() for p in prune(graph, untouched).parameters())
    save_pruned(tmp_path / "m", pruned, Plan.from_keep_vector(graph, removed, source={"input_size": [3, 12, 12]}))
    loaded, _ = load_pruned(tmp_path / "m", model)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), pruned(x))
    assert export_onnx(pruned.float(), (3, 12, 12), tmp_path / "m.onnx")["max_abs_diff"] < 1e-4


def test_a_functional_layer_without_a_bias_keeps_the_channels():
    """A functional conv on a module's weight has no bias legr could give it (the call would change): kept."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.lab, self.b = nn.Conv2d(3, 8, 3), ScalarAffine(1.0, 0.5), nn.Conv2d(8, 6, 1, bias=False)

        def forward(self, x):
            return F.adaptive_avg_pool2d(F.relu(F.conv2d(self.lab(self.a(x)), self.b.weight)), 1).flatten(1)

    group = analyze(Net(), (3, 12, 12)).group_by_name["a"]
    assert not group.prunable and "has no bias (legr gives one only to a torch.nn layer)" in group.reason


@pytest.mark.parametrize("seed", range(40))
def test_random_compositions_with_scalar_affines_pruned_equal_masked(seed):
    """Random compositions of the supported ops with learnable scalar affines and 1x1 convs (with a bias, without,
    before a batch norm): random plans are pruned == masked (float64, 1e-9), MACs equal torch's count."""
    rng = np.random.default_rng(2000 + seed)
    torch.manual_seed(seed)
    check_random_plans(randomize_all(RandomNet(rng, steps=6, kinds=RandomNet.AFFINE_KINDS), seed).double().eval(), seed,
                       rng)


def test_random_compositions_with_scalar_affines_fold_constants():
    """The property test above is not vacuous: many of its nets prune channels whose constant is folded."""
    folded = 0
    for seed in range(40):
        rng = np.random.default_rng(2000 + seed)
        model = randomize_all(RandomNet(rng, steps=6, kinds=RandomNet.AFFINE_KINDS), seed)
        try:
            graph = analyze(model, (3, 12, 12))
        except UnsupportedModelError:
            continue
        removable = {int(c) for g in graph.prunable_groups() for c in g.classes}
        folded += any(set(graph.classes(c.in_ids).tolist()) & removable and c.module for c in graph.compensations)
    assert folded >= 10


@pytest.mark.parametrize("arch,affine,share", [("hgnetv2_b0", "LearnableAffineBlock", 0.8),
                                               ("caformer_s18", "StarReLU", 0.6)])
def test_timm_models_are_pruned_around_their_scalar_affines(arch, affine, share):
    """timm's PP-HGNetV2 puts a learnable scalar affine after every activation: 0% prunable before this rule;
    caformer's StarReLU (``s * relu(x) ** 2 + b``) feeds MLP layers without a bias, which are given one: 10% prunable
    MACs before that."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == affine:
                m.scale.uniform_(0.5, 1.5)
                m.bias.normal_()
    model, graph, x, original = equivalence_setup(model, 64)
    assert graph.coverage()["prunable_share"] > share
    rng = np.random.default_rng(0)
    keep = random_keep(graph, rng)
    pruned = prune(graph, keep).eval()
    with torch.no_grad():
        assert_pruned_matches_masked(pruned(x), masked_copy(graph, keep).eval()(x), original)
    assert CostModel(graph).params(keep) == sum(p.numel() for p in pruned.parameters())
