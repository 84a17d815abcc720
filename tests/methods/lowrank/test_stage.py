"""Prune + decompose (``method: [filters, decompose]``, `legr.methods.lowrank.stage`): the method cuts part of the
way, the SVD takes each member to its own target from below; by default one fine-tuning per member (after the
decomposition); a finished member is rebuilt from its ranks and weights with the same outputs; a comparison entry
sets the stage's section for itself."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from legr.cli import app
from legr.engine.cost import counted_macs
from legr.methods.lowrank.artifacts import read_record
from legr.methods.lowrank.stage import DecomposeSection
from legr.pipeline.compare_config import CompareConfig
from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline

RUN = {"model": {"name": "digits_cnn", "weights": None}, "data": {"name": "digits", "val_size": 200},
       "base_training": {"epochs": 2, "lr": 0.05, "batch_size": 64, "augment": False},
       "finetune": {"epochs": 1, "batch_size": 64, "augment": False}, "eval": {"latency": False},
       "method": ["filters", "decompose"], "allocator": "uniform", "targets": [0.3, 0.6],
       "lowrank": {"selection": "model"}}


@pytest.mark.parametrize("share", [0.2, 0.5, 0.9])
def test_the_split_of_a_target_inverts(share):
    section = DecomposeSection(share=share)
    for target in (0.1, 0.47, 0.9):
        before = section.before(target)
        assert target < before < 1 and section.after(before) == pytest.approx(target, abs=1e-12)
        assert 1 - before == pytest.approx((1 - share) * (1 - target))  # the method takes (1 - share) of the cut


@pytest.mark.parametrize("finetune_before", [False, True])
def test_members_meet_their_targets_after_a_looser_cut(finetune_before, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**RUN, "decompose": {"share": 0.5, "finetune_before": finetune_before}}))
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    base = rows["baseline"]["macs"]
    for target in RUN["targets"]:
        folder = out / "members" / f"uniform-{round(100 * target)}"
        row = rows[folder.name]
        figures = json.loads((folder / "decompose" / "member.json").read_text())["figures"]
        assert row["method"].endswith("+decompose") and row["target"] == pytest.approx(target)
        assert figures["pruned_target"] == pytest.approx(1 - 0.5 * (1 - target))
        assert row["macs"] <= target * base < figures["pruned_macs"] <= figures["pruned_target"] * base
        assert read_record(folder / "decompose")["ranks"]  # the pruned network's layers, decomposed
        assert (folder / "finetuned.json").exists() == finetune_before  # the pruned member, as cut or fine-tuned
        assert row["finetune_epochs"] == (2 if finetune_before else 1)
    cfg = parse_config(yaml.safe_load(config.read_text()))
    pipeline = Pipeline(cfg, out, progress=False, log=lambda m: None)
    x = torch.randn(4, 1, 8, 8)
    for member in pipeline.members():
        last, _ = pipeline.load(member)  # rebuilt from ranks.json and the fine-tuned weights
        row = rows[member.name]
        assert counted_macs(last.net, torch.zeros(1, 1, 8, 8)) == row["macs"]
        assert sum(p.numel() for p in last.net.parameters()) == row["params"]
        again, _ = pipeline.load(member)
        with torch.no_grad():
            assert torch.equal(last.net(x), again.net(x))


def test_a_searching_method_searches_at_the_targets_it_cuts_to(tmp_path):
    cfg = parse_config({**RUN, "base_training": {"epochs": 0}, "allocator": "legr", "targets": [0.2, 0.4, 0.6],
                        "decompose": {"share": 0.5}})
    pipeline = Pipeline(cfg, tmp_path, progress=False, log=lambda m: None)
    cut = (0.6, 0.7, 0.8)
    assert pipeline.method.cfg.targets == pytest.approx(cut) and cfg.targets == (0.2, 0.4, 0.6)
    assert pipeline.method.cfg.search_targets == pytest.approx(cut)
    assert [m.name for m in pipeline.members()] == ["legr-20", "legr-40", "legr-60"]  # named by the chain's targets


def test_a_comparison_entry_sets_the_split_for_itself(tmp_path):
    spec = {**RUN, "method": "filters", "targets": [0.5], "compare": {"seeds": [0], "methods": [
        {"name": "uniform-l1", "criterion": "l1", "allocator": "uniform"},
        {"name": "uniform+enc", "method": ["filters", "decompose"], "criterion": "l1", "allocator": "uniform",
         "decompose": {"share": 0.3}}]}}
    cfg = parse_config(spec, schema=CompareConfig)
    plain, chained = cfg.compare.methods
    assert cfg.entry_section(chained, "decompose").share == 0.3
    assert cfg.entry_section(plain, "decompose").share == DecomposeSection().share
    config = tmp_path / "compare.yaml"
    config.write_text(yaml.safe_dump(spec))
    result = CliRunner().invoke(app, ["compare", str(config), "--out", str(tmp_path / "cmp"), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"]}
    assert rows["uniform+enc"]["target"] == rows["uniform-l1"]["target"] == 0.5
    assert rows["uniform+enc"]["macs"] <= 0.5 * rows["baseline"]["macs"]
    member = tmp_path / "cmp" / "seed0" / "uniform+enc" / "members" / "uniform-50" / "decompose"
    assert json.loads((member / "member.json").read_text())["figures"]["pruned_target"] == pytest.approx(0.65)


def test_the_estimate_counts_the_fine_tuning_a_chain_does(tmp_path, monkeypatch):
    """One fine-tuning per member with the default split, two with ``finetune_before``: the piece estimate says so
    before anything runs (each fine-tuning priced at one second here, whatever its size)."""
    from legr.pipeline import estimate

    monkeypatch.setattr(estimate._Units, "training", lambda self, fraction, train: 1.0)

    def finetune_s(entry: dict) -> float:
        spec = {**RUN, "method": "filters", "targets": [0.3, 0.5], "compare": {"seeds": [0], "methods": [entry]}}
        return estimate.estimate_comparison(parse_config(spec, schema=CompareConfig), tmp_path / "work").finetune_s

    chained = {"name": "u+enc", "method": ["filters", "decompose"], "criterion": "l1", "allocator": "uniform"}
    assert finetune_s({"name": "u", "criterion": "l1", "allocator": "uniform"}) == 2.0  # two members
    assert finetune_s(chained) == 2.0
    assert finetune_s({**chained, "decompose": {"finetune_before": True}}) == 4.0
