"""int8 through onnxruntime: the fused int8 kernels compute what the QDQ graph specifies, weights are stored as int8,
exclusions act, a run's networks are quantized with figures measured in onnxruntime, idempotently and resumably, and
bad input is a one-line error."""

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from torch import nn

from legr.engine import int8
from legr.engine.export import export_onnx
from legr.errors import LegrError
from legr.pipeline.config import parse_config
from legr.pipeline.quantize import INT8_JSON, int8_file, quantize_run
from legr.pipeline.steps import Pipeline

CONFIG = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 4, lr: 0.05, batch_size: 64, augment: false}
search: {population: 4, sample: 2, evaluations: 6, batch_size: 64, bn_batches: 3, restarts: 1}
targets: [0.5]
finetune: {epochs: 1, batch_size: 64, augment: false}
eval: {latency_repeats: 2, latency_warmup: 1, latency_rounds: 1, latency_batch_sizes: [1, 8]}
"""


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10)).eval()


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    export_onnx(_net(), (3, 16, 16), d / "export.onnx")
    fp32 = int8.preprocess(d / "export.onnx", d / "model.onnx")
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((16, 3, 16, 16)).astype(np.float32) for _ in range(4)]
    info = int8.quantize(fp32, d / "model.int8.onnx", calib)
    return fp32, d / "model.int8.onnx", calib, info


def test_int8_kernels_agree_with_the_qdq_reference(onnx_pair):
    fp32, q8, _, info = onnx_pair
    x = np.random.default_rng(1).standard_normal((32, 3, 16, 16)).astype(np.float32)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # QDQ ops run literally: fake quant
    reference = ort.InferenceSession(str(q8), options, providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    fused = int8.session(q8).run(None, {"input": x})[0]
    full = int8.session(fp32).run(None, {"input": x})[0]
    # integer kernels = the graph's arithmetic, up to the rounding of intermediate requantizations
    err = np.abs(fused - reference).max()
    assert err <= 0.02 * np.abs(reference).max()
    # the same class wherever the reference's top-2 margin exceeds that rounding (this untrained network's logits
    # nearly tie: on a third of the images the margin is below it, and there rounding decides the argmax)
    top2 = np.sort(reference, 1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * err
    assert clear.sum() >= 8 and (fused.argmax(1) == reference.argmax(1))[clear].all()
    assert np.abs(fused - full).max() < 0.1 * np.abs(full).max()  # and close to the float network
    assert np.abs(reference - full).max() > 0  # really quantized
    # weights stored as int8 initializers, every conv/linear quantized; the file is much smaller; the classifier's
    # output stays float (quantized logits tie, and a tie decides top-1 by the argmax's rule)
    model = onnx.load(str(q8))
    producer = {o: n for n in model.graph.node for o in n.output}[model.graph.output[0].name]
    assert producer.op_type == "Gemm" and len(set(np.round(fused[0], 6))) == fused.shape[1]
    assert any(i.data_type == onnx.TensorProto.INT8 for i in model.graph.initializer)
    assert info["quantized"] == int8.quantizable_nodes(fp32) and len(info["quantized"]) == 3
    assert info["bytes"] == q8.stat().st_size


def test_exclude_keeps_a_layer_in_fp32(onnx_pair, tmp_path):
    fp32, _, calib, _ = onnx_pair
    first = int8.quantizable_nodes(fp32)[0]
    int8.quantize(fp32, tmp_path / "q.onnx", calib, int8.Int8Settings(exclude=(first,)))
    g = onnx.load(str(tmp_path / "q.onnx")).graph
    producers = {o: n for n in g.node for o in n.output}
    conv = next(n for n in g.node if n.op_type == "Conv" and n.name == first)
    assert conv.input[1] not in producers  # its weight is the float initializer, not a DequantizeLinear output
    others = [n for n in g.node if n.op_type == "Conv" and n.name != first]
    assert all(producers[n.input[1]].op_type == "DequantizeLinear" for n in others)
    with pytest.raises(LegrError, match="exclude names no quantizable node.*no_such_conv"):
        int8.quantize(fp32, tmp_path / "r.onnx", calib, int8.Int8Settings(exclude=("no_such_conv",)))
    assert not (tmp_path / "r.onnx").exists()


def test_settings_are_checked():
    with pytest.raises(LegrError, match="calibration must be minmax"):
        int8.Int8Settings(calibration="kl")
    with pytest.raises(LegrError, match="max_drop"):
        int8.Int8Settings(max_drop=5)


def test_sensitivity_names_each_layer(onnx_pair):
    fp32, _, calib, _ = onnx_pair
    x = np.random.default_rng(2).standard_normal((16, 3, 16, 16)).astype(np.float32)
    full = int8.session(fp32).run(None, {"input": x})[0]

    def score(path):  # closeness to the float network: higher is better
        return -float(np.abs(int8.session(path).run(None, {"input": x})[0] - full).mean())

    rows = int8.sensitivity(fp32, calib, score)
    assert sorted(r["node"] for r in rows) == sorted(int8.quantizable_nodes(fp32))
    assert [r["regained"] for r in rows] == sorted((r["regained"] for r in rows), reverse=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    Pipeline(parse_config(yaml.safe_load(CONFIG)), out, progress=False, log=lambda m: None).run()
    return out


def test_quantize_run_measures_in_onnxruntime(finished_run):
    before = json.loads((finished_run / "results.json").read_text())
    rows = quantize_run(finished_run, int8.Int8Settings(calibration_images=128), log=lambda m: None)
    assert [r["name"] for r in rows] == [r["name"] for r in before]
    for row, old in zip(rows, before):
        # the fp32 ONNX network scores what PyTorch scored on the same test images (at most one image apart)
        assert abs(row["onnx_top1"] - old["top1"]) <= 1 / 360 + 1e-9
        assert abs(row["int8_top1"] - row["onnx_top1"]) < 0.05
        assert row["int8_bytes"] < row["onnx_bytes"] and row["int8_cpu_b8_ms"] > 0 and row["onnx_cpu_b1_ms"] > 0
    member = finished_run / "members" / rows[1]["name"]
    record = json.loads((member / INT8_JSON).read_text())
    assert record["settings"]["calibration_images"] == 128 and "int8_val_top1" in record
    assert (finished_run / "int8" / "source" / "model.int8.onnx").is_file()
    assert json.loads((finished_run / "results.json").read_text())[1]["int8_top1"] == rows[1]["int8_top1"]
    # idempotent: a second call reads every network back; resumable: a network without its record is redone
    stamp = (member / INT8_JSON).stat().st_mtime_ns
    source_record = finished_run / "int8" / "source" / INT8_JSON
    source_record.unlink()
    again = quantize_run(finished_run, int8.Int8Settings(calibration_images=128), log=lambda m: None)
    assert (member / INT8_JSON).stat().st_mtime_ns == stamp and source_record.is_file()
    assert [r["int8_top1"] for r in again] == [r["int8_top1"] for r in rows]
    assert int8_file(member) == member / "model.int8.onnx" and (member / INT8_JSON).stat().st_mtime_ns == stamp
    with pytest.raises(LegrError, match="give one member folder"):
        int8_file(finished_run)


def test_quantize_errors_are_one_line(finished_run, tmp_path):
    with pytest.raises(LegrError, match="neither a run folder"):
        quantize_run(tmp_path)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((finished_run / "config.yaml").read_text())
    with pytest.raises(LegrError, match="not finished"):
        quantize_run(unfinished)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "legr.cli", "quantize", str(tmp_path / "nowhere")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "not a folder" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "legr.cli", "quantize", str(finished_run), "--exclude", "nope"],
                          capture_output=True, text=True, env=env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]  # after the progress lines
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1 and "nope" in errors[0]
