"""Every torchvision classifier is either refused cleanly or pruned exactly: nothing in between (slow: -m slow).

For each model: `analyze` raises `UnsupportedModelError` (one-line message, model unchanged), or the equivalence
property of `test_graph.assert_equivalent` holds and the cost model's MACs / params equal FlopCounterMode / the
pruned model's. Any other exception fails. `benchmarks/torchvision_tally.py` runs the same check as a report.
"""

import gc
import hashlib

import numpy as np
import pytest
import torch
from helpers import assert_pruned_matches_masked, equivalence_setup, random_keep
from test_graph import assert_equivalent
from torch import nn

from legr.engine.cost import CostModel, count_params, counted_macs
from legr.engine.surgery import apply_masks_, prune
from legr.errors import UnsupportedModelError
from legr.graph import analyze
from legr.models import build_model, get_model_spec, list_models

TORCHVISION_MODELS = [name for name in list_models() if get_model_spec(name).source == "torchvision"]
NEEDS_SPEC_INPUT = ("inception_v3", "vit_", "swin_", "maxvit")  # >= 75 px / fixed position embeddings and windows
# assert_equivalent holds three float64 copies (original, pruned, masked): above this many parameters (only
# regnet_y_128gf, 637M = 5.1 GB per copy) the same property is checked with the masked net made in place.
IN_PLACE_ABOVE_PARAMS = 300_000_000


def input_size(name: str) -> int:
    return get_model_spec(name).input_size[-1] if name.startswith(NEEDS_SPEC_INPUT) else 64


def fingerprint(model: nn.Module) -> tuple:
    """Exact digest of every parameter and buffer (without copying them) and of every module's train flag."""
    digests = []
    for key, t in model.state_dict(keep_vars=True).items():
        t = t.detach()
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        digests.append((key, tuple(t.shape), t.dtype, hashlib.blake2b(raw.data).hexdigest()))
    return tuple(digests), tuple(m.training for m in model.modules())


def assert_exact_costs(graph, size: int, seed: int = 0) -> None:
    cost = CostModel(graph)
    gm = graph.gm.eval()
    x = torch.randn(1, 3, size, size, dtype=next(gm.parameters()).dtype)
    assert cost.base_macs == counted_macs(gm, x)
    assert cost.base_params == count_params(gm)
    keep = random_keep(graph, np.random.default_rng(seed))
    pruned = prune(graph, keep).eval()
    assert cost.macs(keep) == counted_macs(pruned, x)
    assert cost.params(keep) == count_params(pruned)


def assert_equivalent_in_place(model: nn.Module, size: int, seed: int = 0) -> None:
    """`assert_equivalent` with plans=1, holding two copies instead of three: the masked network is the original
    masked in place once the pruned one has been measured (masked_copy is apply_masks_ on a deep copy)."""
    model, graph, x, original = equivalence_setup(model, size, seed)
    keep = random_keep(graph, np.random.default_rng(seed))
    pruned = prune(graph, keep).eval()
    with torch.no_grad():
        a = pruned(x)
    assert count_params(pruned) < count_params(model)
    pruned.train()
    pruned(x).sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())
    del pruned
    gc.collect()
    masked = apply_masks_(graph.gm, graph, keep).eval()
    with torch.no_grad():
        b = masked(x)
    assert_pruned_matches_masked(a, b, original)


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_MODELS)
def test_torchvision_model_is_refused_or_pruned_exactly(name):
    size = input_size(name)
    torch.manual_seed(0)
    model = build_model(name, num_classes=10)
    before = fingerprint(model)
    try:
        graph = analyze(model, (3, size, size))
    except UnsupportedModelError as exc:
        assert str(exc) and "\n" not in str(exc)
        assert fingerprint(model) == before, "analyze changed the model before refusing it"
        return
    assert fingerprint(model) == before, "analyze changed the model"
    assert_exact_costs(graph, size)
    del graph
    gc.collect()
    if count_params(model) > IN_PLACE_ABOVE_PARAMS:
        assert_equivalent_in_place(model, size)
    else:
        assert_equivalent(model, size, plans=1)


def test_torchvision_registry_is_complete():
    """The slow test above covers every torchvision classifier (cheap: no model is built)."""
    import torchvision

    assert set(TORCHVISION_MODELS) == set(torchvision.models.list_models(module=torchvision.models))
    assert len(TORCHVISION_MODELS) >= 70
