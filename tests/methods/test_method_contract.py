"""The contract every registered method keeps (parametrized over `METHODS`, so a new method is checked by adding
it): its config keys parse, dump and read back the same; a bad value in them is a one-line error naming the key,
raised when the config is read; a tiny run produces members whose figures are the cost oracle's; a tiny run killed
with SIGKILL and started again resumes, and ends where an uninterrupted run does."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml

from legr.data import normalize
from legr.engine.cost import counted_macs, price
from legr.errors import ConfigError
from legr.methods import METHODS
from legr.pipeline.config import parse_config
from legr.pipeline.config_files import artifact_config, dump_config, held_config
from legr.pipeline.steps import Pipeline

BASE = {"model": {"name": "digits_cnn", "weights": None}, "data": {"name": "digits", "val_size": 200}}
TINY_RUN = {**BASE, "base_training": {"epochs": 2, "lr": 0.05, "batch_size": 64, "augment": False},
            "targets": [0.5], "finetune": {"epochs": 1, "batch_size": 64, "augment": False}, "eval": {"latency": False}}
# what keeps each built-in method's tiny run short (a method without an entry runs with its defaults)
TINY = {"filters": {"allocator": "uniform", "bn_batches": 2},
        "magnitude": {"magnitude": {"rounds": 1, "sensitivity_samples": 100, "fractions": [0.3, 0.6, 0.9]}},
        "lowrank": {"lowrank": {"selection": "inf", "candidates": 3, "inf_images": 100}},
        "gdp": {"gdp": {"dynamic_epochs": 2, "updates": 3, "scoring_batches": 2},
                "finetune": {"epochs": 3, "steps_per_epoch": 5, "batch_size": 64, "augment": False}},
        "fbs": {"fbs": {"search_images": 100},
                "finetune": {"epochs": 3, "steps_per_epoch": 5, "batch_size": 64, "augment": False}},
        "rnp": {"rnp": {"search_images": 100, "hidden": 8, "agent_batch": 32},
                "finetune": {"epochs": 3, "steps_per_epoch": 5, "batch_size": 64, "augment": False}}}
# when a run is killed: once its one-time work is done (timings.json has "rank"), or where a method has none, once
# the file it resumes its work from appears (gdp: the dynamic phase's training checkpoint, after its first epoch)
KILL_AT = {"gdp": lambda out: any(out.glob("members/*/gdp_dynamic.pt")),
           "fbs": lambda out: (out / "fbs" / "train.pt").exists(),
           "rnp": lambda out: (out / "rnp" / "backbone0.pt").exists()}


def _gdp_epochs_at_kill(out) -> list:
    """The dynamic epochs the killed run had checkpointed (their history rows, wall seconds included)."""
    import torch

    return torch.load(next(out.glob("members/*/gdp_dynamic.pt")), weights_only=True)["history"]


def _gdp_epochs_after(out) -> list:
    plan = json.loads(next(out.glob("members/*-30/plan.json")).read_text())
    return plan["info"]["gdp"]["dynamic_history"]


def _fbs_epochs_at_kill(out) -> list:
    import torch

    return torch.load(out / "fbs" / "train.pt", weights_only=True)["history"]


def _fbs_epochs_after(out) -> list:
    return json.loads((out / "fbs" / "fbs.json").read_text())["history"]


def _rnp_epochs_at_kill(out) -> list:
    import torch

    return torch.load(out / "rnp" / "backbone0.pt", weights_only=True)["history"]


def _rnp_epochs_after(out) -> list:
    return json.loads((out / "rnp" / "rnp.json").read_text())["history"][0]["backbone"]


# evidence that the rerun resumed the killed run's work: what the kill left, and where the finished run shows it
RESUMED = {"gdp": (_gdp_epochs_at_kill, lambda out, before: _gdp_epochs_after(out)[:len(before)] == before),
           "fbs": (_fbs_epochs_at_kill, lambda out, before: _fbs_epochs_after(out)[:len(before)] == before),
           "rnp": (_rnp_epochs_at_kill, lambda out, before: _rnp_epochs_after(out)[:len(before)] == before)}


def _ranked(out) -> bool:
    try:
        return "rank" in json.loads((out / "timings.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return False


@pytest.mark.parametrize("name", METHODS.names())
def test_its_config_keys_parse_and_read_back(name):
    cfg = parse_config({**BASE, "method": name})
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg and artifact_config(held_config(yaml.safe_load(dump_config(cfg)))) == artifact_config(cfg)
    for key in METHODS[name].config_keys:
        value = cfg.model_dump(mode="json")[key]
        assert getattr(parse_config({**BASE, "method": name, key: value}), key) == getattr(cfg, key)
    others = {k for n, m in METHODS.items() if n != name for k in m.config_keys}
    if name not in ("magnitude", "gdp"):  # (magnitude keeps filter pruning's keys at null, as its folders before
        # #31 do; gdp cuts under filter pruning's floors)
        assert not others & set(artifact_config(cfg)), "a run's identity holds only its own method's keys"


@pytest.mark.parametrize("name", METHODS.names())
def test_a_bad_value_in_its_keys_is_a_one_line_error_when_read(name):
    for key in METHODS[name].config_keys:
        with pytest.raises(ConfigError) as info:
            parse_config({**BASE, "method": name, key: {"no_such_setting": 1}})
        assert f"'{key}" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_tiny_run_reports_the_cost_oracles_figures(name, tmp_path):
    assert set(TINY) <= set(METHODS), "a built-in method lost its registration"
    cfg = parse_config({**TINY_RUN, "method": name, **TINY[name]})
    pipeline = Pipeline(cfg, tmp_path, progress=False, log=lambda m: None)
    pipeline.run()
    rows = {r["name"]: r for r in json.loads((tmp_path / "results.json").read_text())}
    members = pipeline.members()
    assert members and len(rows) == len(members) + 1
    for member in members:
        net, info = pipeline.method.load(member)
        figures = price(net, pipeline.data.input_size)
        if "macs_worst" in info:  # a dynamic member: MACs per image averaged over the test images (and their worst)
            net.fast_path = True  # torch counts each image on the path that computes only its active channels
            x = normalize(pipeline.data.test[0], pipeline.data.mean, pipeline.data.std)
            per_image = [counted_macs(net, x[i:i + 1]) for i in range(len(x))]
            assert info["macs"] == pytest.approx(np.mean(per_image), rel=1e-12) and info["macs_worst"] == max(per_image)
            assert info["params"] == figures.params
        else:
            assert info["macs"] == figures.macs and info["params"] in (figures.params, figures.nonzero_params)
        row = rows[member.name]
        assert (row["macs"], row["params"], row["budget"]) == (info["macs"], info["params"], pipeline.method.budget)


def _legr_run(config, out, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "legr.cli", "run", str(config), "--out", str(out), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, **kw)


def _finished(out) -> list[dict]:
    """A run's result rows, less what differs between two runs of the same config (when and where it ran)."""
    volatile = {"git_rev", "hardware"}
    return [{k: v for k, v in r.items() if k not in volatile} for r in json.loads((out / "results.json").read_text())]


@pytest.mark.parametrize("name", sorted(TINY))
def test_a_run_killed_midway_resumes_and_ends_as_an_uninterrupted_one(name, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_RUN, "method": name, **TINY[name], "targets": [0.3, 0.5, 0.7]}))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert _legr_run(config, reference).wait(timeout=600) == 0

    proc = _legr_run(config, killed)
    ready, deadline = KILL_AT.get(name, _ranked), time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline and not ready(killed):
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").exists()
    # what was finished when it was killed (the source network, the method's one-time work): kept, not redone
    done = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file() and p.suffix != ".pt"
            and p.name not in ("config.yaml", "timings.json") and "members" not in p.relative_to(killed).parts}
    assert done or name in KILL_AT, "nothing was finished before the kill"
    evidence = RESUMED[name][0](killed) if name in RESUMED else None

    again = _legr_run(config, killed)
    assert again.wait(timeout=600) == 0, again.stderr.read()[-3000:]
    assert {p: p.stat().st_mtime_ns for p in done} == done, "the rerun redid finished work instead of resuming"
    assert _finished(killed) == _finished(reference)  # the code is deterministic on the CPU: the same family
    if name in RESUMED:
        assert evidence and RESUMED[name][1](killed, evidence), "the rerun started over instead of resuming"
