"""The decomposition engine: exact at full rank on every test network, error falling with the rank, the layers it
leaves whole (and why), analytic cost equal to torch's count of the built network, ONNX export."""

import copy

import pytest
import torch
from torch import nn

from legr.engine.cost import counted_macs, price
from legr.methods.lowrank.analysis import analyze
from legr.methods.lowrank.decompose import apply_ranks, factor, find_layers

from lowrank_nets import nets

NETS = nets()


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize("name", sorted(NETS))
def test_full_rank_is_exact_and_physically_replaces_every_decomposable_layer(name):
    net, size = NETS[name]
    layers, whole = find_layers(net, size)
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = net(x)
        factored = apply_ranks(copy.deepcopy(net), {layer.name: layer.full_rank for layer in layers})
        got = factored(x)
    assert _relative(got, want) < 1e-4
    for layer in layers:
        module = factored.get_submodule(layer.name)
        assert isinstance(module, nn.Sequential) and len(module) == 2
        assert module[0].bias is None
    assert set(whole).isdisjoint(layer.name for layer in layers)


def test_the_layers_left_whole_are_listed_with_their_reason():
    _, whole = find_layers(*NETS["depthwise"])
    assert "depthwise" in whole["dw"]
    assert "no rank saves" in whole["score"]  # 32 -> 1: one output channel
    layers, whole = find_layers(*NETS["cifar_resnet20"])
    assert not whole and len(layers) == 20  # 19 convolutions and the classifier


@pytest.mark.parametrize("name", ["digits_cnn", "concat"])
def test_a_truncated_layers_error_falls_as_its_rank_grows(name):
    net, size = NETS[name]
    layers, _ = find_layers(net, size)
    layer = max(layers, key=lambda x: x.full_rank)
    module = net.get_submodule(layer.name)
    x = torch.randn(4, module.in_channels, 6, 6) if layer.kind == "conv" else torch.randn(4, layer.c_in)
    with torch.no_grad():
        want = module(x)
        errors = [_relative(factor(module, r)(x), want) for r in range(1, layer.full_rank + 1)]
    assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:])) and errors[0] > 0.1 and errors[-1] < 1e-5


@pytest.mark.parametrize("name", sorted(NETS))
def test_the_analytic_cost_of_a_rank_vector_is_torchs_count(name):
    net, size = NETS[name]
    base = price(net, size)
    analysis = analyze(net, size, {"macs": base.macs, "params": base.params})
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        ranks = {x.name: int(torch.randint(1, x.full_rank + 1, (), generator=g)) for x in analysis.layers
                 if torch.rand((), generator=g) < 0.7}
        built = apply_ranks(copy.deepcopy(net), ranks)
        assert analysis.cost(ranks, "macs") == counted_macs(built, torch.zeros(1, *size))
        assert analysis.cost(ranks, "params") == sum(p.numel() for p in built.parameters())


def test_a_decomposed_network_exports_to_onnx_and_runs_in_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from legr.engine.export import export_onnx

    net, size = NETS["concat"]
    layers, _ = find_layers(net, size)
    factored = apply_ranks(copy.deepcopy(net), {x.name: max(1, x.max_rank // 2) for x in layers})
    export_onnx(factored, size, tmp_path / "m.onnx")
    x = torch.randn(1, *size)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        assert _relative(torch.from_numpy(got), factored(x)) < 1e-4
