"""Adding a method through the public interface: one registry entry makes it appear in `legr methods`, `legr run`
and `legr compare`, with nothing else changed (in-process CLI, so the entry registered here is seen)."""

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from legr.cli import app
from legr.engine.plan import Plan
from legr.methods.allocate import ALLOCATORS, Allocator, GlobalSolver, register_allocator

TOY = "anti-global"


def anti_global(graph, cost, scores, floors):
    """Removes the *highest*-scored channels first: a real, deliberately bad allocator."""
    return GlobalSolver(graph, cost, {name: -np.asarray(v) for name, v in scores.items()}, floors)


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
