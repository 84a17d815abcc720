"""The int8 stage (`legr.methods.int8`): ``method: [filters, int8]`` quantizes every fine-tuned member in onnxruntime;
the member is the int8 ONNX file in ``members/<name>/int8/``, scored and timed by the run's own evaluation; a rerun
opens that file instead of quantizing again; a latency budget or a bad ``int8`` key is refused when the config is
read."""

import json
import sys

import pytest
import torch
import yaml

from legr.cli import main
from legr.data import normalize
from legr.errors import ConfigError
from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline

RUN = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 3, lr: 0.05, batch_size: 64, augment: false}
allocator: uniform
targets: [0.5]
finetune: {epochs: 1, batch_size: 64, augment: false}
eval: {latency_batch_sizes: [1], latency_rounds: 1, latency_warmup: 1, latency_repeats: 2}
method: [filters, int8]
int8: {calibration_images: 128}
"""


def test_int8_members_are_the_quantized_files_scored_in_onnxruntime(tmp_path):
    import onnx
    import onnxruntime

    run = Pipeline(parse_config(yaml.safe_load(RUN)), tmp_path / "run", progress=False)
    rows = {r["name"]: r for r in run.evaluate()}
    member = run.members()[0]
    row, folder = rows["uniform-50"], member.root / "int8"
    q8 = folder / "model.int8.onnx"
    assert row["method"] == "uniform+int8" and row["path"] == "members/uniform-50/int8"
    assert q8.is_file() and (folder / "model.onnx").is_file() and (folder / "member.json").is_file()

    x, y = run.data.test  # the written file, scored independently of legr's evaluation
    session = onnxruntime.InferenceSession(str(q8), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: normalize(x, run.data.mean, run.data.std).numpy()})[0]
    # int8 logits are quantized (a grid of 256 levels), so classes tie: the first of topk is legr's rule, not argmax's
    first = torch.from_numpy(logits).topk(min(5, logits.shape[1]), dim=1).indices[:, 0]
    assert row["top1"] == (first == y).sum().item() / len(y)

    types = {init.name: init.data_type for init in onnx.load(str(q8)).graph.initializer}
    assert sum(t == onnx.TensorProto.INT8 for t in types.values()) >= 2, types  # the conv / linear weights

    _, info = run.method.load(member)  # the pruned network's counts; int8 adds its file size and validation top-1s
    assert (row["macs"], row["params"]) == (info["macs"], info["params"]) and row["int8_bytes"] == q8.stat().st_size
    figures = json.loads((folder / "member.json").read_text())["figures"]
    assert 0 < figures["int8_val_top1"] <= 1 and 0 < figures["onnx_val_top1"] <= 1
    assert row["latency_cpu_b1_ms"] > 0 and rows["baseline"]["latency_cpu_b1_ms"] > 0  # timed in onnxruntime
    assert "uniform-50" in run.report() and run.folder.pareto.is_file()

    stamp = q8.stat().st_mtime_ns  # a rerun opens the finished member: nothing quantized again
    again = {r["name"]: r for r in Pipeline(parse_config(yaml.safe_load(RUN)), tmp_path / "run",
                                            progress=False).evaluate()}
    assert q8.stat().st_mtime_ns == stamp and again["uniform-50"]["top1"] == row["top1"]


def test_a_latency_budget_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "int8.yaml"
    config.write_text(RUN + "budget: latency\n")
    monkeypatch.setattr(sys, "argv", ["legr", "run", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    with pytest.raises(SystemExit) as exit_:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1, err
    assert "stage int8 keeps budgets in macs or params, not latency" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section,message", [
    ({"calibration_images": 128, "nosuch": 1}, "unknown config key 'int8.nosuch'"),
    ({"calibration": "median"}, "config key 'int8.calibration'"),
    ({"max_drop": 2}, "int8 max_drop is a top-1 fraction in [0, 1], got 2"),
])
def test_the_int8_section_is_checked_when_the_config_is_read(section, message):
    with pytest.raises(ConfigError) as err:
        parse_config({**yaml.safe_load(RUN), "int8": section})
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1, err.value


def test_int8_ends_a_chain(stage_after_int8):
    with pytest.raises(ConfigError, match="the stage 'int8' ends a chain.*not 'fold-after-int8-test' after it"):
        parse_config({**yaml.safe_load(RUN), "method": ["filters", "int8", stage_after_int8]})


@pytest.fixture
def stage_after_int8():
    from legr.methods import STAGES, Member, Stage, register_stage

    class Identity(Stage):
        name, description, budgets = "fold-after-int8-test", "the member as it is (test)", ("macs", "params")

        def apply(self, member: Member, folder) -> Member:
            return member

    register_stage(Identity)
    yield Identity.name
    STAGES.remove(Identity.name)
