"""Adding a method through the public interface: one registry entry makes it appear in `legr methods`, `legr run`
and `legr compare`, with nothing else changed (in-process CLI, so the entry registered here is seen)."""

import json

import numpy as np
import pytest
import torch
import yaml
from pydantic import Field
from typer.testing import CliRunner

from legr.cli import app
from legr.engine.artifacts import load_pruned, save_pruned
from legr.engine.cost import counted_macs, price
from legr.engine.plan import Plan
from legr.engine.surgery import prune
from legr.errors import LegrError
from legr.methods import METHODS, Method, register_method
from legr.methods.filters.allocate import ALLOCATORS, Allocator, GlobalSolver, UniformSolver, register_allocator
from legr.methods.filters.criteria import compute_scores
from legr.models import build_model
from legr.settings import Settings

TOY = "anti-global"


def anti_global(graph, cost, scores, floors, unit="macs"):
    """Removes the *highest*-scored channels first: a real, deliberately bad allocator."""
    return GlobalSolver(graph, cost, {name: -np.asarray(v) for name, v in scores.items()}, floors, unit)


@pytest.fixture(scope="module")
def toy_method():
    register_allocator(Allocator(TOY, anti_global, None, "global ranking, highest scores removed first (test)"))
    yield TOY
    ALLOCATORS.remove(TOY)


RUN = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 3, lr: 0.05, batch_size: 64, augment: false}
targets: [0.5]
finetune: {epochs: 1, batch_size: 64, augment: false}
eval: {latency: false}
"""


def invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_registered_method_is_listed_run_and_compared(toy_method, tmp_path):
    assert TOY in invoke("methods")

    config = tmp_path / "toy.yaml"
    config.write_text(RUN + f"allocator: {TOY}\n")
    invoke("run", str(config), "--out", str(tmp_path / "run"), "--quiet")
    rows = {r["name"]: r for r in json.loads((tmp_path / "run" / "results.json").read_text())}
    member = rows[f"{TOY}-50"]
    assert member["method"] == TOY and member["macs"] <= 0.5 * rows["baseline"]["macs"]

    compare = tmp_path / "compare.yaml"
    spec = {"seeds": [0], "pipeline_cost": None, "methods": [
        {"name": "global-l1", "criterion": "l1", "allocator": "global"},
        {"name": "anti", "criterion": "l1", "allocator": TOY}]}
    compare.write_text(RUN + yaml.safe_dump({"compare": spec}))
    output = invoke("compare", str(compare), "--out", str(tmp_path / "cmp"), "--quiet")
    assert "| anti |" in output
    plans = {m: Plan.load(tmp_path / "cmp" / "seed0" / m / "members" / f"{a}-50" / "plan.json").keep
             for m, a in (("global-l1", "global"), ("anti", TOY))}
    assert plans["global-l1"] != plans["anti"]  # the entry's own solver cut it, not a fallback


class FirstChannelsSettings(Settings):
    """The test method's own config section (``first_channels: {...}``), declared by the method alone."""

    last: bool = Field(False, description="keep each layer's last channels instead of its first")


class FirstChannels(Method):
    """A whole method through `Method`: keep each layer's first channels, uniformly to the budget (no criterion), with
    a config section, an artifact of its own and its members priced by the one cost entry point."""

    name = "first-channels"
    description = "keeps each layer's first channels, uniform widths (test)"
    budgets = ("macs",)
    config_keys = {"first_channels": (FirstChannelsSettings, FirstChannelsSettings())}

    def prepare(self):
        order = 1.0 if self.run.cfg.first_channels.last else -1.0
        scores = {layer: order * np.arange(len(s), dtype=float)
                  for layer, s in compute_scores("l1", self.run.graph, self.run.base).items()}
        self.run.folder.file("first_channels.json").write_text(json.dumps({k: len(v) for k, v in scores.items()}))
        return scores

    def cut(self, scores, target, member):
        run = self.run
        keep = UniformSolver(run.graph, run.cost, scores).solve(target * run.cost.base("macs"))
        net = prune(run.graph, keep)
        figures = price(net, run.data.input_size, exact=(run.cost, keep))
        info = {"method": self.name, "criterion": None, "target": target, "macs": figures.macs,
                "params": figures.params}
        save_pruned(member.root, net, Plan.from_keep_vector(run.graph, keep, source=run.source_info(), info=info))

    def load(self, member):
        net, plan = load_pruned(member.root, self.run.base)
        return net, plan.info


@pytest.fixture
def first_channels():
    register_method(FirstChannels)
    yield FirstChannels.name
    METHODS.remove(FirstChannels.name)


def test_a_registered_compression_method_is_listed_run_and_compared(first_channels, tmp_path):
    assert first_channels in invoke("methods")

    config = tmp_path / "first.yaml"
    (config.parent / "bad.yaml").write_text(RUN + f"method: {first_channels}\nfirst_channels: {{last: maybe}}\n")
    bad = CliRunner().invoke(app, ["run", str(config.parent / "bad.yaml"), "--out", str(tmp_path / "bad"), "--quiet"])
    assert isinstance(bad.exception, LegrError)  # the CLI prints it on one line, exit 2 (its section, read with the rest)
    assert str(bad.exception) == "config key 'first_channels.last': Input should be a valid boolean, unable to interpret input"
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    config.write_text(RUN + f"method: {first_channels}\nfirst_channels: {{last: true}}\n")
    invoke("run", str(config), "--out", str(tmp_path / "run"), "--quiet")
    rows = {r["name"]: r for r in json.loads((tmp_path / "run" / "results.json").read_text())}
    member = rows[f"{first_channels}-50"]
    assert member["method"] == first_channels and member["macs"] <= 0.5 * rows["baseline"]["macs"]
    assert (tmp_path / "run" / "first_channels.json").exists()  # its own artifact
    plan = Plan.load(tmp_path / "run" / "members" / f"{first_channels}-50" / "plan.json")
    net = load_pruned(tmp_path / "run" / "members" / f"{first_channels}-50", build_model("digits_cnn", num_classes=10))[0]
    assert member["macs"] == counted_macs(net, torch.zeros(1, 1, 8, 8))  # its figures: the cost oracle's
    for layer, kept in plan.keep.items():  # its own cut, as its section asks: each layer's last channels
        assert kept[0] > 0 and list(kept) == list(range(kept[0], kept[0] + len(kept))), layer
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["first_channels"] == {"last": True}

    compare = tmp_path / "compare.yaml"
    spec = {"seeds": [0], "pipeline_cost": None, "methods": [
        {"name": "uniform-l1", "criterion": "l1", "allocator": "uniform"},
        {"name": "first", "method": first_channels}]}
    compare.write_text(RUN + yaml.safe_dump({"compare": spec}))
    output = invoke("compare", str(compare), "--out", str(tmp_path / "cmp"), "--quiet")
    assert "| first |" in output and "| uniform-l1 |" in output
