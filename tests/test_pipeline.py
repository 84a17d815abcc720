"""The pipeline in-process (the CLI tests reach it through subprocesses): one run folder from config to results, its
figures re-derivable from the saved members, and a rerun that recomputes nothing."""

import json
import shutil

import pytest
import yaml

from legr.data import load_dataset
from legr.engine.artifacts import load_pruned
from legr.engine.cost import counted_macs
from legr.errors import ConfigError
from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline
from legr.training import evaluate

CONFIG = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 4, lr: 0.05, batch_size: 64, augment: false}
search: {population: 4, sample: 2, evaluations: 6, restarts: 2, batch_size: 64, bn_batches: 3}
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
    assert ranking["search"]["restarts"] == 2 and len(ranking["search"]["restart_best"]) == 2  # two searches
    assert ranking["search"]["best_fitness"] == max(ranking["search"]["restart_best"])
    assert ranking["search"]["optimizer"] == "cma" and ranking["search"]["normalize"] == "rank"  # the defaults
    assert len((out / "search_log.jsonl").read_text().splitlines()) == 12
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
             and p.name not in ("results.json", "results.csv", "config.yaml", "report.html")}  # eval, the claim and
    # the report rewrite these
    held = (out / "config.yaml").read_text()
    Pipeline(cfg, out, progress=False, log=lambda m: None).run()
    assert {p: p.stat().st_mtime_ns for p in files} == files and (out / "config.yaml").read_text() == held


def test_a_member_cut_from_another_ranking_is_cut_again(run, tmp_path):
    cfg, out, _ = run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "results.json").unlink()
    stale, other = copy / "members" / "legr-35", copy / "members" / "legr-70"
    shutil.rmtree(stale)
    shutil.copytree(other, stale)  # e.g. left by an earlier search of this folder
    messages: list[str] = []
    Pipeline(cfg, copy, progress=False, log=messages.append).run()
    assert any("legr-35 was cut from another ranking: cutting it again" in m for m in messages)
    assert not any("legr-70 was cut" in m for m in messages)
    fresh = {r["name"]: r for r in json.loads((out / "results.json").read_text())}
    again = {r["name"]: r for r in json.loads((copy / "results.json").read_text())}
    assert again["legr-35"]["macs"] == fresh["legr-35"]["macs"] and again["legr-35"]["top1"] == fresh["legr-35"]["top1"]


def strip_restarts(folder) -> None:
    """Make ``folder``'s config.yaml look written before ``search.restarts`` existed."""
    held = yaml.safe_load((folder / "config.yaml").read_text())
    del held["search"]["restarts"]
    (folder / "config.yaml").write_text(yaml.safe_dump(held))


def test_folders_from_before_restarts(run, tmp_path):
    cfg, out, _ = run
    searched = tmp_path / "searched"
    shutil.copytree(out, searched)
    strip_restarts(searched)  # read as one search (written before the key), it ran two: refused, not silently reused
    with pytest.raises(ConfigError, match="holds a run with a different config"):
        Pipeline(cfg, searched, progress=False, log=lambda m: None).run()
    uniform = tmp_path / "uniform"  # a run that searches nothing does not depend on search settings: reused
    ucfg = cfg.model_copy(update={"allocator": "uniform"})
    Pipeline(ucfg, uniform, progress=False, log=lambda m: None).run()
    strip_restarts(uniform)
    plan = uniform / "members" / "uniform-35" / "plan.json"
    stamp = plan.stat().st_mtime_ns
    Pipeline(ucfg, uniform, progress=False, log=lambda m: None).run()
    assert plan.stat().st_mtime_ns == stamp


# ------------------------------------------------------------------ other methods and budget units
MAGNITUDE = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
method: magnitude
magnitude: {rounds: 2, sensitivity_samples: 100}
base_training: {epochs: 4, lr: 0.05, batch_size: 64, augment: false}
targets: [0.2, 0.5]
finetune: {epochs: 3, batch_size: 64, augment: false}
eval: {latency: false}
"""


@pytest.fixture(scope="module")
def magnitude_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("magnitude")
    cfg = parse_config(yaml.safe_load(MAGNITUDE))
    Pipeline(cfg, out, progress=False, log=lambda m: None).run()
    return cfg, out


def test_han_et_al_is_a_family_method_with_parameter_budgets(magnitude_run):
    """method: magnitude runs through the same pipeline: one sparse member per parameter budget, reported like any."""
    from legr.methods.magnitude.compress import load_magnitude
    from legr.methods.magnitude.pruning import count_nonzero
    from legr.models import build_model

    cfg, out = magnitude_run
    rows = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in rows] == ["baseline", "magnitude-20", "magnitude-50"]
    base = rows[0]
    data = load_dataset("digits")
    for row in rows[1:]:
        assert row["budget"] == "params" and row["method"] == "magnitude"
        assert row["params"] <= row["target"] * base["params"]  # non-zero parameters within the budget
        assert row["finetune_epochs"] == cfg.finetune.epochs  # the run's fine-tune budget, spread over 2 rounds
        rounds = json.loads((out / row["path"] / "rounds.json").read_text())
        assert [r["epochs"] for r in rounds] == [1, 2]
        net = load_magnitude(out / row["path"], build_model("digits_cnn", num_classes=10))
        assert count_nonzero(net) == row["params"]
        again = evaluate(net, data.test_x, data.test_y, data.mean, data.std)
        assert again.top1 == row["top1"]
    assert (out / "sensitivity.json").exists()  # computed once for the family
    stamps = {p: p.stat().st_mtime_ns for p in (out / "members").rglob("*") if p.is_file()}
    Pipeline(cfg, out, progress=False, log=lambda m: None).run()
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_filter_pruning_at_parameter_budgets(run, tmp_path):
    cfg, _, _ = run
    pcfg = cfg.model_copy(update={"budget": "params", "allocator": "uniform"})
    Pipeline(pcfg, tmp_path, progress=False, log=lambda m: None).run()
    rows = json.loads((tmp_path / "results.json").read_text())
    for row in rows[1:]:
        assert row["budget"] == "params" and row["params"] <= row["target"] * rows[0]["params"]
        assert row["params"] > (row["target"] - 0.1) * rows[0]["params"]  # cut at the parameter budget
    with pytest.raises(ConfigError, match="method magnitude takes budgets in params, not macs"):
        Pipeline(parse_config({**yaml.safe_load(MAGNITUDE), "budget": "macs"}), tmp_path / "m", progress=False)


LATENCY = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 1, lr: 0.05, batch_size: 64, augment: false}
budget: {unit: latency, batch_size: 16, probes: 3, rounds: 2, repeats: 1}
allocator: uniform
bn_batches: 2
targets: [0.85]
finetune: {epochs: 0}
eval: {latency_batch_sizes: [1], latency_rounds: 1, latency_repeats: 2}
"""


def test_a_latency_budget_run_cuts_members_against_the_clock(tmp_path, monkeypatch):
    cfg = parse_config(yaml.safe_load(LATENCY))
    messages: list[str] = []
    Pipeline(cfg, tmp_path, progress=False, log=messages.append).evaluate()
    rows = json.loads((tmp_path / "results.json").read_text())
    base, member = rows[0], rows[1]
    assert member["budget"] == "latency" and member["predicted_ms"] < base["predicted_ms"]
    assert "latency_cpu_b16_ms" in member  # the budget's batch size is timed beside eval's
    plan = json.loads((tmp_path / "members" / "uniform-85" / "plan.json").read_text())
    check = plan["info"]["latency_check"]
    assert 1 <= len(check["steps"]) <= 4 and check["measured_ratio"] in [s["measured_ratio"] for s in check["steps"]]
    assert json.loads((tmp_path / "latency_model.json").read_text())["device"]["batch_size"] == 16
    stamp = (tmp_path / "members" / "uniform-85" / "plan.json").stat().st_mtime_ns
    import legr.engine.latency_model as lm

    monkeypatch.setattr(lm, "measure_probes", lambda *a, **k: pytest.fail("the run's latency model was measured again"))
    monkeypatch.setenv("LEGR_CACHE", str(tmp_path / "elsewhere"))  # another machine: its cache is empty
    Pipeline(cfg, tmp_path, progress=False, log=messages.append).prune()  # no new measurement cuts it otherwise
    assert (tmp_path / "members" / "uniform-85" / "plan.json").stat().st_mtime_ns == stamp


def test_a_busy_clock_cannot_cut_a_higher_target_smaller(tmp_path, monkeypatch):
    """Members are cut against the clock in ascending targets, and no member is asked below the budget the lower
    targets' members were cut at: a clock that says the 95% member is twice the source's latency (a busy machine)
    leaves it at least as large as the 80% member, marked over its target, instead of cutting it smaller."""
    import legr.engine.latency_check as check

    calls = []

    def clock(graph, keep, setting, rounds, warmup):
        calls.append(keep.sum())
        return (0.78, 0.0) if len(calls) == 1 else (2.0, 0.5)  # the 80% member: on target; then: always over

    monkeypatch.setattr(check, "measured_ratio", clock)
    # targets every machine's latency model reaches with the paper's 10% floor (the digits net is small: its
    # smallest network's predicted share of the source latency varies with the machine)
    cfg = parse_config({**yaml.safe_load(LATENCY), "targets": [0.8, 0.95], "floors": {"safeguard": 0.1}})
    Pipeline(cfg, tmp_path, progress=False, log=lambda m: None).prune()
    low, high = (json.loads((tmp_path / "members" / f"uniform-{t}" / "plan.json").read_text())["info"]
                 for t in (80, 95))
    assert high["latency_check"]["over_target"] and len(high["latency_check"]["steps"]) >= 1
    assert high["macs"] >= low["macs"] and high["latency_check"]["asked_ms"] >= low["latency_check"]["asked_ms"]
    assert all(s["asked_ms"] >= low["latency_check"]["asked_ms"] for s in high["latency_check"]["steps"])


@pytest.mark.parametrize("fallback_criterion", ["l1", None])
def test_a_member_is_never_below_the_uniform_allocation_on_validation(run, monkeypatch, fallback_criterion):
    """The member guard: a learned ranking's cut is kept unless the search fitness scores the uniform cut at the same
    budget higher by more than the sampling error; then uniform is kept, and the member says so. The uniform cut
    keeps the filters of ``search.fallback_criterion`` (default l1), or of the ranking's own criterion (null)."""
    import numpy as np

    from legr.methods.filters.allocate import solve_uniform
    from legr.methods.filters.criteria import compute_scores, group_scores
    from legr.methods.filters.legr import Ranking
    from legr.methods.filters.legr.ranking import REFERENCE_INDEX

    cfg, out, _ = run
    pipeline = Pipeline(cfg, out, progress=False, log=lambda m: None)
    method = pipeline.method
    method.cfg = cfg.model_copy(update={"search": cfg.search.model_copy(update={"fallback_criterion": fallback_criterion})})
    ranking = Ranking.load(out / "ranking.json")
    member = next(iter(pipeline.members()))
    target = 0.35
    keep = ranking.solver(pipeline.graph, pipeline.cost, pipeline.base, method.floors).solve(target * pipeline.cost.base_macs)
    scores = (compute_scores("l1", pipeline.graph, pipeline.base) if fallback_criterion
              else ranking.layer_scores(pipeline.graph, pipeline.base))
    uniform, _ = solve_uniform(pipeline.graph, pipeline.cost, group_scores(pipeline.graph, scores),
                               target * pipeline.cost.base_macs, method.floors)
    assert not np.array_equal(keep, uniform)
    own = group_scores(pipeline.graph, ranking.layer_scores(pipeline.graph, pipeline.base))
    own_uniform, _ = solve_uniform(pipeline.graph, pipeline.cost, own, target * pipeline.cost.base_macs, method.floors)
    assert np.array_equal(uniform, own_uniform) == (fallback_criterion is None)  # l1 keeps other filters than l2sq
    for ranking_score, chosen in ((0.5, "uniform"), (0.9, "ranking"), (0.8 - 0.01, "ranking")):
        fit = {REFERENCE_INDEX: ranking_score, REFERENCE_INDEX + 1: 0.8}  # uniform scores 0.8 on 200 images
        monkeypatch.setattr("legr.methods.filters.method.search_fitness", lambda run, cfg: (lambda net, i: fit[i]))
        got, record = method._guard_member(ranking, keep, target, member)
        assert record["chosen"] == chosen and record["tolerance"] == pytest.approx(np.sqrt(0.8 * 0.2 / 200))
        assert record["uniform_criterion"] == (fallback_criterion or "l2sq")
        np.testing.assert_array_equal(got, uniform if chosen == "uniform" else keep)
