"""timm's ConvNets through the engine (`timm:<name>`): the pruning contract on models built from timm's norm + act
modules (BatchNormAct2d: functional batch_norm), its Linear (functional linear), squeeze-excite, RepVGG blocks and
channel splits (CSPNet, MixNet), channel slices (GhostNet, DPN), ConvNeXt and NF-ResNet."""

import numpy as np
import pytest
import torch
from helpers import assert_pruned_matches_masked, equivalence_setup, random_keep

from legr.engine.cost import CostModel, counted_macs
from legr.engine.surgery import masked_copy, prune
from legr.errors import LegrError, UnsupportedModelError
from legr.graph import analyze
from legr.models import build_model, get_model_spec

pytest.importorskip("timm")

# each refused before the functional batch_norm / linear rules and channel splits (issue #13)
MODELS = ["timm:efficientnet_b0", "timm:mobilenetv3_small_050", "timm:lcnet_050", "timm:repvgg_a0",
          "timm:cs3darknet_focus_s", "timm:mixnet_s",
          # channel slices, channels-last ConvNeXt blocks, weight-standardized convolutions
          "timm:ghostnet_100", "timm:dpn48b", "timm:convnext_atto", "timm:nf_resnet26",
          # TF "same" padding: F.pad, then a functional conv on the module's own weight (dense and depthwise)
          "timm:tf_efficientnet_b0"]


@pytest.mark.parametrize("name", MODELS)
def test_timm_model_pruned_equals_masked_and_macs_match_torch(name):
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(build_model(name, num_classes=10), 64)
    assert len(graph.prunable_groups()) >= 5
    for seed in (0, 1):
        keep = random_keep(graph, np.random.default_rng(seed))
        pruned, masked = prune(graph, keep).eval(), masked_copy(graph, keep).eval()
        with torch.no_grad():
            assert_pruned_matches_masked(pruned(x), masked(x), original)
        assert CostModel(graph).macs(keep) == counted_macs(pruned, x[:1])


def test_timm_names_resolve_or_fail_in_one_line():
    spec = get_model_spec("timm:lcnet_050")
    assert spec.source == "timm" and spec.input_size == (3, 224, 224) and spec.num_classes == 1000
    with pytest.raises(LegrError, match=r"unknown timm model 'lcnet_05'; did you mean .*timm:lcnet_050"):
        get_model_spec("timm:lcnet_05")


# refused whole before channel barriers (issue 32): now the op freezes the groups it touches, the rest prunes.
# (model, input size, an op that is a barrier, the smallest share of MACs in prunable groups measured)
BARRIER_MODELS = [
    ("timm:halonet26t", 256, "in module 'stages.2.1.self_attn' (HaloAttn)", 0.98),
    ("timm:botnet26t_256", 256, "in module 'stages.2.1.self_attn' (BottleneckAttn)", 0.96),
    ("timm:mobilevit_xxs", 256, "op 'scaled_dot_product_attention'", 0.57),
    ("timm:ecaresnet26t", 64, "module 'layer1.0.se.conv' (Conv1d)", 0.87),  # ECA: a Conv1d along the channels
    ("timm:skresnet18", 64, "method '.view()'", 0.99),  # selective kernel (its stack has a rule)
    ("timm:resnest14d", 64, "(SplitAttn)", 0.45),  # split attention
    ("timm:gcresnet33ts", 64, "op 'matmul'", 0.99),  # global context
    ("timm:lambda_resnet26t", 64, "(LambdaLayer)", 0.95),  # reshaped to a channel count read from its input
    ("timm:edgenext_xx_small", 64, "(CrossCovarianceAttn)", 0.77),  # position encoding on constants only
]


@pytest.mark.parametrize("name,size,op,share", BARRIER_MODELS, ids=[m[0] for m in BARRIER_MODELS])
def test_timm_model_with_barriers_pruned_equals_masked(name, size, op, share):
    torch.manual_seed(0)
    model = build_model(name, num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=r"^cannot prune through [^\n]*$"):  # the old behaviour
        analyze(model, (3, size, size), strict=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model, graph, x, original = equivalence_setup(model, size)
    coverage = graph.coverage()
    assert coverage["prunable_share"] >= share and any(op in b["op"] for b in coverage["barriers"])
    assert any(not g.prunable and g.reason.startswith("channel barrier at ") for g in graph.groups)
    keep = random_keep(graph, np.random.default_rng(0))
    pruned, masked = prune(graph, keep).eval(), masked_copy(graph, keep).eval()
    with torch.no_grad():
        assert_pruned_matches_masked(pruned(x), masked(x), original)
    cost = CostModel(graph)
    assert cost.base_macs == counted_macs(graph.gm, x[:1]) and cost.macs(keep) == counted_macs(pruned, x[:1])


def test_global_response_norm_is_pruned_exactly():
    """ConvNeXt-V2's global response norm (``x.norm()`` over space, divided by its mean over the channels, then
    ``addcmul(beta, gamma, x * x_n)``) froze every prunable group of the model before its rules (issue 32): now the
    mean over the channels is their sum over the original count, and the model prunes with no barrier."""
    torch.manual_seed(0)
    model = build_model("timm:convnextv2_atto", num_classes=10)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "GlobalResponseNorm":  # zero-initialized: the identity, which would hide it
                m.weight.normal_()
                m.bias.normal_()
    model, graph, x, original = equivalence_setup(model, 64)
    coverage = graph.coverage()
    assert not graph.barriers and coverage["prunable_share"] > 0.8
    keep = random_keep(graph, np.random.default_rng(0))
    pruned, masked = prune(graph, keep).eval(), masked_copy(graph, keep).eval()
    with torch.no_grad():
        assert_pruned_matches_masked(pruned(x), masked(x), original)
    assert CostModel(graph).macs(keep) == counted_macs(pruned, x[:1])
