"""ONNX export of unpruned and physically pruned networks, checked in onnxruntime."""

import numpy as np
import pytest
import torch
from helpers import randomize_norms
from torch import nn

from legr.engine.surgery import prune
from legr.errors import LegrError
from legr.graph import analyze
from legr.models import build_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from legr.engine.export import export_onnx  # noqa: E402


@pytest.fixture(scope="module")
def resnet20():
    torch.manual_seed(0)
    return randomize_norms(build_model("cifar_resnet20")).eval()


def _half_keep(graph):
    """Keep the first half of the channels of every other prunable group."""
    keep = np.ones(graph.num_classes)
    for group in graph.prunable_groups()[::2]:
        mask = np.zeros(group.size)
        mask[: group.size // 2] = 1.0
        keep[group.classes] = mask
    return keep


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_export_pruned_resnet20(tmp_path, resnet20):
    graph = analyze(resnet20, (3, 32, 32))
    net = prune(graph, _half_keep(graph))
    assert _n_params(net) < 0.8 * _n_params(resnet20)
    net.train()
    info = export_onnx(net, (3, 32, 32), tmp_path / "sub" / "pruned.onnx")
    assert net.training  # the caller's module keeps its mode
    assert info["path"] == str(tmp_path / "sub" / "pruned.onnx") and info["opset"] == 17
    assert 0 <= info["max_abs_diff"] <= 1e-4
    assert info["inputs"] == [{"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32"}]
    assert info["outputs"] == [{"name": "output", "shape": ["batch", 10], "dtype": "float32"}]
    model = onnx.load(info["path"])
    onnx.checker.check_model(model)
    assert model.opset_import[0].version == 17
    # eval-mode export folds each batch norm into its convolution (torch.onnx's peephole pass): nothing to add
    assert not [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    stored = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert stored < 0.8 * _n_params(resnet20)  # the file holds the smaller network
    # the file runs on other batch sizes too
    session = ort.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = net.eval()(x).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, atol=1e-4, rtol=1e-4)
    assert not [p for p in (tmp_path / "sub").iterdir() if p.name.startswith(".")]


def test_export_unpruned_static_batch(tmp_path, resnet20):
    info = export_onnx(resnet20, (3, 32, 32), tmp_path / "full.onnx", opset=13, batch_size=3, dynamic_batch=False)
    assert info["max_abs_diff"] <= 1e-4 and info["opset"] == 13
    assert info["inputs"][0]["shape"] == [3, 3, 32, 32] and info["outputs"][0]["shape"] == [3, 10]
    info = export_onnx(resnet20, (3, 32, 32), tmp_path / "unchecked.onnx", check=False)
    assert info["max_abs_diff"] is None and info["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert (tmp_path / "unchecked.onnx").stat().st_size > 100_000


class _Unexportable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x).flatten(1)[:, :4]
        return torch.linalg.eigh(y[:, :, None] * y[:, None, :])[0]  # no ONNX symbolic for eigh


class _Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y + torch.rand_like(y)  # ONNX and PyTorch draw different noise


def test_export_failure_is_one_line_legr_error(tmp_path, capfd):
    target = tmp_path / "bad.onnx"
    with pytest.raises(LegrError) as err:
        export_onnx(_Unexportable(), (3, 8, 8), target)
    message = str(err.value)
    assert "\n" not in message and "cannot export _Unexportable" in message and "eigh" in message
    assert not target.exists()
    assert "Torch IR graph" not in capfd.readouterr().out  # the exporter's graph dump is silenced


def test_export_mismatch_raises_and_writes_nothing(tmp_path):
    target = tmp_path / "noisy.onnx"
    with pytest.raises(LegrError, match="disagrees with PyTorch"):
        export_onnx(_Noisy(), (3, 8, 8), target)
    assert not target.exists()
