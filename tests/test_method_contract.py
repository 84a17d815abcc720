"""The contract every registered method keeps (parametrized over `METHODS`, so a new method is checked by adding
it): its config keys parse, dump and read back the same; a bad value in them is a one-line error naming the key,
raised when the config is read; a tiny run produces members whose figures are the cost oracle's."""

import json

import pytest
import yaml

from legr.engine.cost import price
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
        "magnitude": {"magnitude": {"rounds": 1, "sensitivity_samples": 100, "fractions": [0.3, 0.6, 0.9]}}}


@pytest.mark.parametrize("name", METHODS.names())
def test_its_config_keys_parse_and_read_back(name):
    cfg = parse_config({**BASE, "method": name})
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again == cfg and artifact_config(held_config(yaml.safe_load(dump_config(cfg)))) == artifact_config(cfg)
    for key in METHODS[name].config_keys:
        value = cfg.model_dump(mode="json")[key]
        assert getattr(parse_config({**BASE, "method": name, key: value}), key) == getattr(cfg, key)
    others = {k for n, m in METHODS.items() if n != name for k in m.config_keys}
    if name != "magnitude":  # (magnitude keeps filter pruning's keys at null, as its folders before #31 do)
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
        assert info["macs"] == figures.macs and info["params"] in (figures.params, figures.nonzero_params)
        row = rows[member.name]
        assert (row["macs"], row["params"], row["budget"]) == (info["macs"], info["params"], pipeline.method.budget)
