"""The pipeline in-process (the CLI tests reach it through subprocesses): one run folder from config to results, its
figures re-derivable from the saved members, and a rerun that recomputes nothing."""

import json

import pytest
import yaml

from legr.data import load_dataset
from legr.engine.artifacts import load_pruned
from legr.engine.cost import counted_macs
from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline
from legr.training import evaluate

CONFIG = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 4, lr: 0.05, batch_size: 64, augment: false}
search: {population: 4, sample: 2, evaluations: 6, batch_size: 64, bn_batches: 3}
bn_batches: 3
targets: [0.35, 0.7]
finetune: {epochs: 1, batch_size: 64, augment: false}
eval: {latency: false}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    messages: list[str] = []
    cfg = parse_config(yaml.safe_load(CONFIG))
    Pipeline(cfg, out, progress=False, log=messages.append).run()
    return cfg, out, messages


def test_a_run_writes_the_family_and_its_figures_are_the_saved_members(run):
    cfg, out, messages = run
    rows = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in rows] == ["baseline", "legr-35", "legr-70"]
    data = load_dataset("digits")
    ranking = json.loads((out / "ranking.json").read_text())
    assert ranking["search"]["targets"] == [0.35, 0.7]  # the default family fitness: every target of the run
    base_macs = rows[0]["macs"]
    for row in rows[1:]:
        net, plan = load_pruned(out / row["path"])
        assert row["macs"] <= row["target"] * base_macs
        assert counted_macs(net, data.test_x[:1].float()) == row["macs"]  # torch's own count of the saved network
        again = evaluate(net, data.test_x, data.test_y, data.mean, data.std)
        assert again.top1 == row["top1"] and again.loss == pytest.approx(row["loss"])
        assert row["top1_after_bn"] is not None and row["finetune_epochs"] == 1
    assert any("learning the ranking" in m for m in messages)


def test_a_rerun_recomputes_nothing(run):
    cfg, out, _ = run
    files = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix != ".png"
             and p.name not in ("results.json", "results.csv", "config.yaml")}  # eval and the claim rewrite these
    held = (out / "config.yaml").read_text()
    Pipeline(cfg, out, progress=False, log=lambda m: None).run()
    assert {p: p.stat().st_mtime_ns for p in files} == files and (out / "config.yaml").read_text() == held
