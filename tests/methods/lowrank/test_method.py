"""``method: lowrank`` through the public interface: `legr methods` lists it, `legr run` makes a family whose
members meet their budgets with the cost oracle's figures and whose artifacts load back into a fresh source network,
`legr compare` takes it as an entry, and a bad key in its section is a one-line config error."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from legr.cli import app
from legr.engine.cost import counted_macs
from legr.errors import LegrError
from legr.methods.lowrank.artifacts import load_lowrank, read_record
from legr.models import build_model

RUN = {"model": {"name": "digits_cnn", "weights": None}, "data": {"name": "digits", "val_size": 200},
       "base_training": {"epochs": 2, "lr": 0.05, "batch_size": 64, "augment": False},
       "finetune": {"epochs": 1, "batch_size": 64, "augment": False}, "eval": {"latency": False},
       "method": "lowrank", "targets": [0.3, 0.6]}


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_legr_methods_lists_it():
    assert "lowrank" in invoke("methods")


@pytest.mark.parametrize("selection", ["map", "inf"])
def test_a_run_makes_a_family_within_its_budgets_that_loads_back(selection, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**RUN, "lowrank": {"selection": selection, "candidates": 3,
                                                         "inf_images": 100}}))
    out = tmp_path / "run"
    invoke("run", str(config), "--out", str(out), "--quiet")
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    assert (out / "lowrank_analysis.json").exists()
    x = torch.randn(3, 1, 8, 8)
    for target in RUN["targets"]:
        folder = out / "members" / f"enc-{selection}-{round(100 * target)}"
        row = rows[folder.name]
        assert row["method"] == "lowrank" and row["macs"] <= target * rows["baseline"]["macs"]
        record = read_record(folder)
        assert 0 < row["top1_before_ft"] == record["figures"]["top1_before_ft"] <= 1  # right after decomposition
        assert record["ranks"] and all(1 <= r < record["full_ranks"][n] for n, r in record["ranks"].items())
        assert (len(record["candidates"]) > 1) == (selection == "inf")
        assert json.loads((folder / "finetuned.json").read_text())  # the factored network was fine-tuned
        net, _ = load_lowrank(folder, build_model("digits_cnn", num_classes=10))  # a fresh source network
        assert row["macs"] == counted_macs(net, torch.zeros(1, 1, 8, 8))
        assert row["params"] == sum(p.numel() for p in net.parameters())
        again, _ = load_lowrank(folder, build_model("digits_cnn", num_classes=10))
        with torch.no_grad():
            assert torch.equal(net(x), again(x))
    assert yaml.safe_load((out / "config.yaml").read_text())["lowrank"]["selection"] == selection


def test_a_bad_key_in_its_section_is_a_one_line_config_error(tmp_path):
    config = tmp_path / "bad.yaml"
    for section, words in (({"selection": "svd"}, "lowrank.selection"), ({"rank": 3}, "unknown config key "
                                                                                           "'lowrank.rank'")):
        config.write_text(yaml.safe_dump({**RUN, "lowrank": section}))
        result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "bad"), "--quiet"])
        assert isinstance(result.exception, LegrError) and words in str(result.exception)
        assert "\n" not in str(result.exception) and not (tmp_path / "bad").exists()


def test_an_unreachable_target_is_refused_before_anything_trains(tmp_path):
    config = tmp_path / "low.yaml"
    config.write_text(yaml.safe_dump({**RUN, "targets": [0.01], "lowrank": {"safeguard": 0.5}}))
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "low"), "--quiet"])
    assert isinstance(result.exception, LegrError) and "rank floor" in str(result.exception)
    assert not (tmp_path / "low").exists()


def test_legr_compare_takes_lowrank_entries(tmp_path):
    spec = {"seeds": [0], "pipeline_cost": None, "methods": [
        {"name": "uniform-l1", "criterion": "l1", "allocator": "uniform"},
        {"name": "enc-model", "method": "lowrank", "lowrank": {"selection": "model"}}]}
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump({**RUN, "targets": [0.5], "method": "filters", "compare": spec}))
    output = invoke("compare", str(config), "--out", str(tmp_path / "cmp"), "--quiet")
    assert "| enc-model |" in output
    member = tmp_path / "cmp" / "seed0" / "enc-model" / "members" / "enc-model-50"
    assert read_record(member)["figures"]["selection"] == "model"


def test_a_sized_network_for_estimates_is_decomposed_to_about_that_size(tmp_path):
    from legr.engine.cost import price
    from legr.pipeline.config import parse_config
    from legr.pipeline.steps import Pipeline

    cfg = parse_config({**RUN, "base_training": {"epochs": 0}})
    pipeline = Pipeline(cfg, tmp_path, progress=False, log=lambda m: None)
    base = price(pipeline.base, (1, 8, 8)).macs
    for fraction in (0.3, 0.7):
        macs = price(pipeline.method.sized_network(fraction), (1, 8, 8)).macs
        assert 0.5 * fraction * base < macs <= fraction * base
    assert not (tmp_path / "lowrank_analysis.json").exists()  # an estimate writes nothing


def test_enc_inf_scores_its_candidates_on_validation_images_only(tmp_path):
    from legr.pipeline.config import parse_config
    from legr.pipeline.steps import Pipeline

    cfg = parse_config({**RUN, "base_training": {"epochs": 0}, "lowrank": {"candidates": 4, "inf_images": 50}})
    pipeline = Pipeline(cfg, tmp_path, progress=False, log=lambda m: None)
    seen = []
    scored = pipeline.accuracy
    pipeline.accuracy = lambda net, split: seen.append(split) or scored(net, split)
    member = pipeline.members()[0]
    pipeline.method.cut(pipeline.prepared, 0.3, member)
    val_x, test_x = pipeline.data.val[0], pipeline.data.test[0]
    *choosing, report = seen  # the candidates, then the chosen member's top-1 as cut (reported, chooses nothing)
    assert len(choosing) == len(read_record(member.root)["candidates"]) > 1
    for x, _ in choosing:
        assert len(x) == 50 and x.untyped_storage().data_ptr() == val_x.untyped_storage().data_ptr()
    assert report[0] is test_x
