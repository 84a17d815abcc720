"""Adding a method through the public interface: one registry entry makes it appear in `legr methods`, `legr run`
and `legr compare`, with nothing else changed (in-process CLI, so the entry registered here is seen)."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from legr.cli import app
from legr.engine.artifacts import load_pruned, save_pruned
from legr.engine.plan import Plan
from legr.engine.surgery import prune
from legr.methods import METHODS, Method, register_method
from legr.methods.allocate import ALLOCATORS, Allocator, GlobalSolver, UniformSolver, register_allocator
from legr.methods.criteria import compute_scores

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


class FirstChannels(Method):
    """A whole method through `Method`: keep each layer's first channels, uniformly to the budget (no criterion)."""

    name = "first-channels"
    description = "keeps each layer's first channels, uniform widths (test)"
    budgets = ("macs",)

    def prepare(self):
        return {layer: -np.arange(len(scores), dtype=float)
                for layer, scores in compute_scores("l1", self.run.graph, self.run.base).items()}

    def cut(self, scores, target, member):
        run = self.run
        keep = UniformSolver(run.graph, run.cost, scores).solve(target * run.cost.base("macs"))
        macs, params = run.cost.costs(keep)
        info = {"method": self.name, "criterion": None, "target": target, "macs": macs, "params": params}
        save_pruned(member.root, prune(run.graph, keep), Plan.from_keep_vector(run.graph, keep, source=run.source_info(), info=info))

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
    config.write_text(RUN + f"method: {first_channels}\n")
    invoke("run", str(config), "--out", str(tmp_path / "run"), "--quiet")
    rows = {r["name"]: r for r in json.loads((tmp_path / "run" / "results.json").read_text())}
    member = rows[f"{first_channels}-50"]
    assert member["method"] == first_channels and member["macs"] <= 0.5 * rows["baseline"]["macs"]
    plan = Plan.load(tmp_path / "run" / "members" / f"{first_channels}-50" / "plan.json")
    for layer, kept in plan.keep.items():  # its own cut: always a prefix of the channels
        assert list(kept) == list(range(len(kept))), layer

    compare = tmp_path / "compare.yaml"
    spec = {"seeds": [0], "pipeline_cost": None, "methods": [
        {"name": "uniform-l1", "criterion": "l1", "allocator": "uniform"},
        {"name": "first", "method": first_channels}]}
    compare.write_text(RUN + yaml.safe_dump({"compare": spec}))
    output = invoke("compare", str(compare), "--out", str(tmp_path / "cmp"), "--quiet")
    assert "| first |" in output and "| uniform-l1 |" in output
