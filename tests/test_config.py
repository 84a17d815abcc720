"""Config validation: unknown keys and wrong types are errors naming the key; defaults are the paper's."""

from pathlib import Path

import pytest
import yaml

from legr.errors import ConfigError
from legr.pipeline.compare_config import CompareConfig
from legr.pipeline.config import RunConfig, parse_config
from legr.pipeline.config_files import artifact_config, dump_config, held_config, load_config
from legr.training import FinetuneConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

BASE = {"model": {"name": "digits_cnn"}}


def test_defaults_are_the_papers_except_the_search_the_fitness_and_the_floor():
    cfg = parse_config(BASE)  # the search: CMA-ES over score quantiles, soft guard, the paper's 3 x 400 candidates
    assert (cfg.search.optimizer, cfg.search.normalize, cfg.search.guard_weight) == ("cma", "rank", 1.0)
    assert (cfg.search.population, cfg.search.evaluations, cfg.search.restarts) == (16, 1200, 1)
    s = cfg.search  # the fitness: adaptive BN + validation top-1, seeded with the baselines (the fitness study's pick)
    assert (s.bn_batches, s.tau, s.fitness, s.seed_uniform, cfg.bn_batches) == (20, 0, "accuracy", True, 20)
    assert (cfg.finetune.lr, cfg.finetune.momentum, cfg.finetune.weight_decay, cfg.finetune.nesterov) == (0.01, 0.9, 5e-4, True)
    assert cfg.finetune.milestones == (0.3, 0.6, 0.8) and cfg.finetune.gamma == 0.2 and cfg.finetune.batch_size == 128
    assert (cfg.floors.safeguard, cfg.criterion, cfg.data.val_size) == (0.25, "l2sq", 5000)  # paper: 0.1 (issue 38)
    assert len(cfg.targets) == 7 and cfg.search_targets == (0.3, 0.6, 0.9)  # family fitness: lowest, middle, highest


def test_search_targets():
    assert parse_config({**BASE, "search": {"target": 0.5}}).search_targets == (0.5,)
    assert parse_config({**BASE, "search": {"targets": [0.3, 0.7]}}).search_targets == (0.3, 0.7)
    for targets, default in [([0.5], (0.5,)), ([0.7, 0.3], (0.3, 0.7)), ([0.7, 0.5, 0.3, 0.5], (0.3, 0.5, 0.7)),
                             ([0.2, 0.3, 0.45, 0.6, 0.8], (0.2, 0.45, 0.8))]:
        assert parse_config({**BASE, "targets": targets}).search_targets == default
    with pytest.raises(ConfigError, match="exclude each other"):
        parse_config({**BASE, "search": {"target": 0.5, "targets": [0.3]}})
    with pytest.raises(ConfigError, match="search.targets must be fractions"):
        parse_config({**BASE, "search": {"targets": [0.3, 1.5]}})


def test_a_run_folder_is_the_same_run_whether_its_search_targets_are_written_or_default():
    default = parse_config({**BASE, "targets": [0.3, 0.47, 0.7]})
    written = parse_config({**BASE, "targets": [0.3, 0.47, 0.7], "search": {"targets": [0.3, 0.47, 0.7]}})
    single = parse_config({**BASE, "targets": [0.3, 0.47, 0.7], "search": {"target": 0.3}})
    assert artifact_config(default) == artifact_config(written) != artifact_config(single)


def test_a_folder_from_before_the_cma_default_is_read_as_the_search_it_ran():
    written = yaml.safe_load(dump_config(parse_config(BASE)))
    for key in ("optimizer", "normalize", "guard_weight", "restarts"):
        del written["search"][key]
    old = held_config(written)  # a config.yaml written before these keys existed: the search of that time
    assert (old.search.optimizer, old.search.normalize, old.search.guard_weight, old.search.restarts) == (
        "evolution", "none", None, 1)
    assert artifact_config(old) != artifact_config(parse_config(BASE))  # not silently reused by today's default


def test_rounded_widths_are_another_run_and_the_default_keeps_old_folders():
    default, rounded = parse_config(BASE), parse_config({**BASE, "floors": {"round_to": 8}})
    assert "round_to" not in artifact_config(default)["floors"]  # folders written before the key still match
    assert artifact_config(rounded)["floors"]["round_to"] == 8
    with pytest.raises(ConfigError, match="floors.round_to"):
        parse_config({**BASE, "floors": {"round_to": 0}})


@pytest.mark.parametrize(
    "data,message",
    [
        ({**BASE, "serach": {}}, "unknown config key 'serach'"),
        ({**BASE, "search": {"tua": 3}}, "unknown config key 'search.tua'"),
        ({**BASE, "search": {"tau": "many"}}, "config key 'search.tau'"),
        ({**BASE, "targets": [0.5, 1.5]}, "targets must be fractions"),
        ({**BASE, "search": {"population": 64, "evaluations": 10}}, "evaluations"),
        ({**BASE, "finetune": {"milestones": [0.9, 0.5, 1.5]}},  # refused when read, not after the search
         r"config key 'finetune\.milestones': milestones must be increasing fractions in \(0, 1\)"),
        ({**BASE, "base_training": {"epochs": 3, "lr": 0}}, "config key 'base_training.lr'"),
        ({**BASE, "finetune": {"seed": 3}}, "unknown config key 'finetune.seed'"),
        ({"data": {}}, "missing config key 'model'"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_configs(data, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(data)
    assert "\n" not in str(info.value)


def test_overrides_and_files(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {name: digits_cnn}\nsearch: {tau: 5}\n")
    cfg = load_config(path, {"search.tau": 0, "finetune.epochs": 2})
    assert cfg.search.tau == 0 and cfg.finetune.epochs == 2
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text,where", [("model:\n  name: digits_cnn\n  weights: [oops\n", ":4:1"),
                                        ("model: {name: digits_cnn}\ntargets: [0.3\nseed: 1\n", ":3:5"),
                                        ("model:\n\tname: x\n", ":2:1")])
def test_yaml_syntax_error_names_line_and_column(tmp_path, text, where):
    """Issue #11: a YAML syntax error says where it is (path:line:column), on one line."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert f"{path}{where} is not valid YAML" in msg and "\n" not in msg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_committed_config_parses(path):
    """Every config under configs/ (benchmarks run them) is read by the current schema."""
    data = yaml.safe_load(path.read_text())
    if "arms" in data:  # benchmarks/distill_quantize.py: one run config, each arm a set of overrides of it
        for arm in data["arms"]:
            cfg = parse_config(data["run"], arm.get("set", {}))
            assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg
        return
    schema = CompareConfig if "compare" in data else RunConfig
    cfg = load_config(path, schema=schema)
    assert parse_config(yaml.safe_load(dump_config(cfg)), schema=schema) == cfg  # and its dump reads back the same


def test_training_recipe_is_one_class():
    """The run config's training sections are the library's recipe: validated once, the same way, either way."""
    cfg = parse_config({**BASE, "finetune": {"epochs": 3, "milestones": [0.5]}})
    assert isinstance(cfg.finetune, FinetuneConfig) and cfg.finetune.with_seed(7).seed == 7
    assert "seed" not in cfg.finetune.model_dump()  # the run's seed: never a key of a config file
    with pytest.raises(ConfigError, match=r"^TrainConfig: config key 'milestones'"):
        FinetuneConfig(milestones=(0.9, 0.5))
