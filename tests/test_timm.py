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
          "timm:ghostnet_100", "timm:dpn48b", "timm:convnext_atto", "timm:nf_resnet26"]


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


def test_a_refused_timm_model_names_the_module():
    model = build_model("timm:botnet26t_256", num_classes=10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    where = r"method '\.reshape\(\)' at node '\w+' in module 'stages\.2\.1\.self_attn' \(BottleneckAttn\)"
    with pytest.raises(UnsupportedModelError, match=where):
        analyze(model, (3, 256, 256))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
