"""Methods under equal budgets (legr.pipeline.compare) on the bundled digits: one shared source network, every method x seed x
target pruned and fine-tuned alike, the aggregates equal to the per-run figures, pipeline cost measured."""

import json
import statistics

import pytest
import yaml

from legr.engine.plan import Plan
from legr.errors import ConfigError
from legr.pipeline.compare import Comparison
from legr.pipeline.compare_config import CompareConfig
from legr.pipeline.config import parse_config

CONFIG = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 10, lr: 0.05, batch_size: 64, augment: false}
search: {population: 3, sample: 2, evaluations: 5, restarts: 3, tau: 0, batch_size: 64}
targets: [0.4, 0.7]
finetune: {epochs: 1, batch_size: 64, augment: false}
criterion_batches: 2
eval: {latency_repeats: 2, latency_warmup: 1, latency_rounds: 1, latency_batch_sizes: [1, 8], threads: 1}
compare:
  seeds: [0, 1]
  pipeline_cost: lcp
  methods:
    - {name: uniform-l1, criterion: l1, allocator: uniform}
    - {name: taylor, criterion: taylor, allocator: global}
    - {name: lcp, criterion: l2sq, allocator: lcp}                             # default: fitness at 40% and 70%
    - {name: lcp-one, criterion: l2sq, allocator: lcp, search: {target: 0.4}}  # one search, at 40%
"""


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cfg = parse_config(yaml.safe_load(CONFIG), schema=CompareConfig)
    return out, Comparison(cfg, out, progress=False, log=lambda m: None).run()


def test_every_method_seed_and_target_is_run_on_the_same_source(comparison):
    out, result = comparison
    runs = result["runs"]
    base = [r for r in runs if r["method"] == "baseline"]
    assert len(base) == 1 and base[0]["top1"] > 0.6  # one source network, evaluated once
    members = [r for r in runs if r["method"] != "baseline"]
    assert sorted((r["method"], r["seed"], r["target"]) for r in members) == sorted(
        (m, s, t) for m in ("uniform-l1", "taylor", "lcp", "lcp-one") for s in (0, 1) for t in (0.4, 0.7))
    for r in members:
        assert r["macs"] <= r["target"] * base[0]["macs"] and r["latency_cpu_b1_ms"] > 0
        assert r["top1_before_ft"] is not None and r["finetune_epochs"] == 1
    source = str((out / "source" / "base" / "model.safetensors").resolve())
    for folder in out.glob("seed*/*"):
        assert yaml.safe_load((folder / "config.yaml").read_text())["model"]["weights"] == source
    # a deterministic criterion with a uniform allocator cuts the same network whatever the seed
    plans = [Plan.load(out / f"seed{s}" / "uniform-l1" / "members" / "uniform-40" / "plan.json").keep for s in (0, 1)]
    assert plans[0] == plans[1]


def test_summary_is_the_mean_and_std_of_the_runs(comparison):
    _, result = comparison
    for entry in result["summary"]:
        if entry["method"] == "baseline":
            continue
        mine = [r for r in result["runs"] if r["method"] == entry["method"] and r["target"] == entry["target"]]
        assert entry["n"] == len(mine) == 2
        assert entry["top1"] == pytest.approx(statistics.fmean(r["top1"] for r in mine))
        assert entry["top1_std"] == pytest.approx(statistics.stdev(r["top1"] for r in mine))
        assert entry["top1_before_ft_std"] == pytest.approx(statistics.stdev(r["top1_before_ft"] for r in mine))
        assert entry["macs"] == pytest.approx(statistics.fmean(r["macs"] for r in mine))


def test_family_times_pipeline_cost_and_widths(comparison):
    out, result = comparison
    assert all(t["mean_s"] > 0 for t in result["family_time_s"].values())
    pc = result["pipeline_cost"]  # lcp searches at both targets: each is searched again alone
    timings = json.loads((out / "seed0" / "lcp" / "timings.json").read_text())
    assert pc["search_targets"] == [0.4, 0.7] and pc["learn_once_s"] > timings["rank"]
    for t in ("40", "70"):
        alone = out / "per_target" / f"lcp-{t}"
        assert pc["search_s"][str(int(t) / 100)] == json.loads((alone / "timings.json").read_text())["rank"]
        assert json.loads((alone / "ranking.json").read_text())["search"]["targets"] == [int(t) / 100]
    assert pc["search_ratio"] == pytest.approx(sum(pc["search_s"].values()) / timings["rank"])
    w = result["widths"]
    assert w["target"] == 0.7 and set(w["methods"]) == {"uniform-l1", "taylor", "lcp", "lcp-one"}
    for widths in w["methods"].values():
        assert all(0 < widths[n] <= w["original"][n] for n in w["layers"])
    summary = (out / "summary.md").read_text()
    assert "| lcp | 70% |" in summary and "Search time ratio" in summary
    for name in ("accuracy_vs_macs.png", "widths.png"):
        assert (out / name).stat().st_size > 10_000


def test_pipeline_cost_of_a_single_target_search_reuses_its_own_search(comparison):
    out, _ = comparison
    data = yaml.safe_load(CONFIG)
    data["compare"]["pipeline_cost"] = "lcp-one"
    c = Comparison(parse_config(data, schema=CompareConfig), out, progress=False, log=lambda m: None)
    pc = c._pipeline_cost(c._source())
    timings = json.loads((out / "seed0" / "lcp-one" / "timings.json").read_text())
    assert pc["search_targets"] == [0.4] and pc["search_s"]["0.4"] == timings["rank"]  # the family's own search
    assert pc["search_s"]["0.7"] == json.loads((out / "per_target" / "lcp-one-70" / "timings.json").read_text())["rank"]
    assert 1 < pc["pipeline_ratio"] < pc["search_ratio"]


def test_rerun_finds_everything_done(comparison):
    out, result = comparison
    cfg = parse_config(yaml.safe_load(CONFIG), schema=CompareConfig)
    again = Comparison(cfg, out, progress=False, log=lambda m: None).run()
    assert again["runs"] == result["runs"] and again["family_time_s"] == result["family_time_s"]


def test_compare_config_errors():
    data = yaml.safe_load(CONFIG)
    data["compare"]["methods"].append({"name": "lcp", "criterion": "l1", "allocator": "global"})
    with pytest.raises(ConfigError, match="method names must be unique, repeated: \\['lcp'\\]"):
        parse_config(data, schema=CompareConfig)
    data = yaml.safe_load(CONFIG)
    data["compare"]["pipeline_cost"] = "legr"
    with pytest.raises(ConfigError, match="pipeline_cost names 'legr', which is not a method"):
        parse_config(data, schema=CompareConfig)
    data = yaml.safe_load(CONFIG)
    data["compare"]["pipeline_cost"] = "taylor"
    with pytest.raises(ConfigError, match="'taylor', whose allocator searches nothing"):
        parse_config(data, schema=CompareConfig)
    data = yaml.safe_load(CONFIG)
    data["compare"]["methods"][0]["allocator"] = "halving"
    with pytest.raises(ConfigError, match="'compare.methods.0.allocator': unknown allocator 'halving'"):
        parse_config(data, schema=CompareConfig)


def test_a_method_may_change_the_shared_search():
    data = yaml.safe_load(CONFIG)
    data["compare"]["methods"][2]["search"] = {"tau": 7}
    cfg = parse_config(data, schema=CompareConfig)
    assert cfg.entry_section(cfg.compare.methods[2], "search").tau == 7
    assert cfg.entry_section(cfg.compare.methods[0], "search").tau == 0
    data["compare"]["methods"][2]["search"] = {"tua": 7}
    with pytest.raises(ConfigError, match="unknown config key 'compare.methods.2.search.tua'"):
        parse_config(data, schema=CompareConfig)


def test_every_search_reports_its_restarts(comparison):
    _, result = comparison
    searches = result["searches"]
    assert sorted(searches) == ["lcp", "lcp-one"] and all(sorted(s) == ["0", "1"] for s in searches.values())
    for per_seed in searches.values():
        for s in per_seed.values():
            assert len(s["restart_best"]) == 3 and s["best_fitness"] == max(s["restart_best"])  # 3 searches
            assert 0 <= min(s["winner"]) and max(s["winner"]) <= 1  # the winner's validation top-1 per search target
    assert len(searches["lcp"]["0"]["winner"]) == 2 and len(searches["lcp-one"]["0"]["winner"]) == 1


def test_every_run_reports_its_search_cost(comparison):
    """Per method and seed: the one-time work's seconds and the networks its search scored — lcp: every logged
    candidate plus the uniform references and the winner, at each search target; nothing searched: 0."""
    out, result = comparison
    cost = result["search_cost"]
    assert sorted(cost) == ["lcp", "lcp-one", "taylor", "uniform-l1"]
    for name, targets in (("lcp", 2), ("lcp-one", 1)):
        for seed in ("0", "1"):
            logged = len((out / f"seed{seed}" / name / "search_log.jsonl").read_text().splitlines())
            assert logged == 3 * 5  # 3 restarts x 5 candidates
            assert cost[name][seed]["fitness_evaluations"] == (logged + 2) * targets
            assert cost[name][seed]["rank_s"] > 0
    assert cost["uniform-l1"]["0"]["fitness_evaluations"] == 0 == cost["taylor"]["1"]["fitness_evaluations"]
    assert "| lcp | l2sq | lcp |" in (out / "summary.md").read_text()
    assert f"| {(15 + 2) * 2} |" in (out / "summary.md").read_text()  # lcp's networks scored per seed


PARAMS = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 10, lr: 0.05, batch_size: 64, augment: false}
budget: params
targets: [0.3, 0.6]
finetune: {epochs: 2, batch_size: 64, augment: false}
magnitude: {rounds: 2, sensitivity_samples: 100}
eval: {latency_repeats: 2, latency_warmup: 1, latency_rounds: 1, latency_batch_sizes: [1], threads: 1}
compare:
  seeds: [0]
  methods:
    - {name: uniform-l1, criterion: l1, allocator: uniform}
    - {name: han, method: magnitude}
"""


def test_han_et_al_beside_filter_pruning_at_equal_parameter_counts(tmp_path):
    cfg = parse_config(yaml.safe_load(PARAMS), schema=CompareConfig)
    result = Comparison(cfg, tmp_path, progress=False, log=lambda m: None).run()
    base = next(r for r in result["runs"] if r["method"] == "baseline")
    members = [r for r in result["runs"] if r["method"] != "baseline"]
    assert sorted((r["method"], r["target"]) for r in members) == [("han", 0.3), ("han", 0.6), ("uniform-l1", 0.3),
                                                                   ("uniform-l1", 0.6)]
    for r in members:  # both at the same parameter budgets (non-zero parameters for the sparse members), both timed
        assert r["budget"] == "params" and r["params"] <= r["target"] * base["params"]
        assert r["latency_cpu_b1_ms"] > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "| han | 30% params |" in summary and "| uniform-l1 | 60% params |" in summary
    assert "| han | - | magnitude |" in summary
    assert set(result["widths"]["methods"]) == {"uniform-l1"}  # channel widths: filter pruning only


CHAIN = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 3, lr: 0.05, batch_size: 64, augment: false}
targets: [0.5]
finetune: {epochs: 1, batch_size: 64, augment: false}
int8: {calibration_images: 128}
eval: {latency_repeats: 2, latency_warmup: 1, latency_rounds: 1, latency_batch_sizes: [1], threads: 1}
compare:
  seeds: [0]
  methods:
    - {name: uniform-l1, criterion: l1, allocator: uniform}
    - {name: uniform-l1-int8, method: [filters, int8], criterion: l1, allocator: uniform}
"""


def test_an_entry_may_be_a_chain_beside_its_method_alone(tmp_path):
    """``method: [filters, int8]`` in a comparison: the same cut as the entry without the stage, then quantized;
    scored and timed as the int8 network; a latency budget for such an entry is refused when the config is read."""
    cfg = parse_config(yaml.safe_load(CHAIN), schema=CompareConfig)
    result = Comparison(cfg, tmp_path, progress=False, log=lambda m: None).run()
    rows = {r["method"]: r for r in result["runs"]}
    fp32, q8 = rows["uniform-l1"], rows["uniform-l1-int8"]
    assert q8["allocator"] == "uniform+int8" and q8["path"].endswith("members/uniform-50/int8")
    assert (q8["macs"], q8["params"]) == (fp32["macs"], fp32["params"])  # the same cut, then quantized
    assert q8["loss"] != fp32["loss"] and q8["int8_bytes"] < q8["onnx_bytes"] and q8["latency_cpu_b1_ms"] > 0 and fp32["latency_cpu_b1_ms"] > 0
    assert (tmp_path / q8["run"] / q8["path"] / "model.int8.onnx").is_file()
    assert "| uniform-l1-int8 | 50% | 1.46 |" in (tmp_path / "summary.md").read_text()
    raw = yaml.safe_load(CHAIN)
    raw["compare"]["methods"][1]["budget"] = "latency"
    with pytest.raises(ConfigError, match=r"compare.methods\[1\] \(uniform-l1-int8\): stage int8 keeps budgets"):
        parse_config(raw, schema=CompareConfig)


def test_a_comparison_of_methods_that_cut_no_channels_has_no_widths_plot(tmp_path):
    """A piece holding only Han et al. (or low rank): no channel plans, so no widths plot — the rest is written."""
    raw = yaml.safe_load(PARAMS)
    raw["compare"]["methods"] = [raw["compare"]["methods"][1]]  # han only
    raw["targets"] = [0.5]
    result = Comparison(parse_config(raw, schema=CompareConfig), tmp_path, progress=False, log=lambda m: None).run()
    assert result["widths"]["methods"] == {} and not (tmp_path / "widths.png").exists()
    assert (tmp_path / "compare.json").is_file() and (tmp_path / "summary.md").is_file()
    assert (tmp_path / "accuracy_vs_macs.png").is_file() and (tmp_path / "report.html").is_file()


def test_a_method_may_have_its_own_budget_and_targets(tmp_path):
    """The equal-latency study (benchmarks/latency_accuracy.py): methods under a shared latency budget beside one
    searched and cut at its own MACs targets."""
    raw = yaml.safe_load(CONFIG)
    raw["budget"] = {"unit": "latency", "batch_size": 8}
    raw["compare"]["methods"] = [{"name": "legr", "allocator": "legr"},
                                 {"name": "legr-macs", "allocator": "legr", "budget": "macs", "targets": [0.2, 0.5]}]
    raw["compare"]["pipeline_cost"] = None
    cfg = parse_config(raw, schema=CompareConfig)
    comparison = Comparison(cfg, tmp_path, progress=False, log=lambda m: None)
    source = cfg.run_config()
    latency, macs = (comparison._config(source, m, 0) for m in cfg.compare.methods)
    assert latency.budget_unit == "latency" and latency.budget.batch_size == 8 and latency.targets == (0.4, 0.7)
    assert macs.budget_unit == "macs" and macs.targets == (0.2, 0.5)
    with pytest.raises(ConfigError, match="fractions"):
        raw["compare"]["methods"][1]["targets"] = [1.5]
        parse_config(raw, schema=CompareConfig)


def test_pieces_merge_into_the_whole_comparison(comparison, tmp_path):
    """Two pieces run on their own (seed 0 of uniform-l1 and taylor; seed 1 of uniform-l1) merge into the tables of
    the whole comparison for what they hold (same source network, same splits, same figures), and the merge names
    the pairs no piece holds. A pair held by two pieces is refused."""
    from legr.pipeline.pieces import merge, piece, piece_config

    _, whole = comparison
    cfg = parse_config(yaml.safe_load(CONFIG), schema=CompareConfig)
    pieces = [piece(cfg, [0], ["taylor", "uniform-l1"]), piece(cfg, [1], ["uniform-l1"])]
    assert [p.name for p in pieces] == ["seed0_uniform-l1+taylor", "seed1_uniform-l1"]
    parts = [Comparison(piece_config(cfg, p), tmp_path / p.name, progress=False, log=lambda m: None).run()
             for p in pieces]
    assert parts[0]["pipeline_cost"] is None  # lcp is not in the piece
    merged = merge(cfg, parts)
    assert merged["missing"] == [[0, "lcp"], [0, "lcp-one"], [1, "taylor"], [1, "lcp"], [1, "lcp-one"]]
    assert merged["seeds"] == [0, 1] and merged["pieces"] == 2
    key = lambda r: (r["method"], None if r["method"] == "baseline" else r["seed"], r.get("target"))  # noqa: E731
    full = {key(r): r["top1"] for r in whole["runs"]}
    assert all(full[key(r)] == r["top1"] for r in merged["runs"])
    row = next(r for r in merged["summary"] if r["method"] == "uniform-l1" and r["target"] == 0.4)
    seeds = [full["uniform-l1", s, 0.4] for s in (0, 1)]
    assert row["n"] == 2 and row["top1"] == pytest.approx(statistics.fmean(seeds))
    assert row["top1_std"] == pytest.approx(statistics.stdev(seeds))
    assert set(merged["family_time_per_seed"]["uniform-l1"]) == {"0", "1"}
    assert set(merged["widths"]["methods"]) == {"uniform-l1", "taylor"}
    with pytest.raises(ConfigError, match="seed 1 of uniform-l1 is in two pieces"):
        merge(cfg, [*parts, parts[1]])
    with pytest.raises(ConfigError, match="no method named bogus"):
        piece(cfg, [0], ["bogus"])


def test_a_whole_comparison_splits_into_pieces_that_merge_back(comparison):
    """`split`: a comparison run whole becomes one piece per method (all seeds) that merge back into the same
    summary, family times, widths, searches and pipeline cost; dropping a method's piece leaves only it missing (to be
    run again as pieces); a result without per-seed family times keeps each method's mean and std."""
    from legr.pipeline.pieces import merge, split

    _, whole = comparison
    cfg = parse_config(yaml.safe_load(CONFIG), schema=CompareConfig)
    parts = split(json.loads(json.dumps(whole)))
    assert list(parts) == ["seed0-1_uniform-l1", "seed0-1_taylor", "seed0-1_lcp", "seed0-1_lcp-one"]
    assert parts["seed0-1_lcp"]["pipeline_cost"] == whole["pipeline_cost"]
    assert parts["seed0-1_taylor"]["pipeline_cost"] is None and "lcp" not in parts["seed0-1_taylor"]["searches"]
    merged = merge(cfg, list(parts.values()))
    assert merged["missing"] == []
    methods = lambda summary: [r for r in summary if r["method"] != "baseline"]  # noqa: E731
    source = lambda summary: next({**r, "n": None} for r in summary if r["method"] == "baseline")  # noqa: E731
    assert methods(merged["summary"]) == methods(whole["summary"]), "the methods' rows"
    assert source(merged["summary"]) == source(whole["summary"])  # the source network's (each piece holds its row)
    assert merged["family_time_s"] == whole["family_time_s"]
    assert merged["widths"] == whole["widths"] and merged["searches"] == whole["searches"]
    assert merged["search_cost"] == whole["search_cost"]
    assert merged["pipeline_cost"] == whole["pipeline_cost"]
    merged = merge(cfg, [p for name, p in parts.items() if name != "seed0-1_lcp"])
    assert merged["missing"] == [[0, "lcp"], [1, "lcp"]] and merged["pipeline_cost"] is None
    assert not any(r["method"] == "lcp" for r in merged["runs"])
    legacy = {k: v for k, v in json.loads(json.dumps(whole)).items() if k != "family_time_per_seed"}
    assert merge(cfg, list(split(legacy).values()))["family_time_s"] == whole["family_time_s"]


def test_a_member_cut_again_is_timed_again(comparison):
    """The comparison's cached timings (latency.json) hold only while every member has the architecture it was timed
    with: a member cut again since (a changed plan.json) makes the comparison time the networks again."""
    out, result = comparison
    cfg = parse_config(yaml.safe_load(CONFIG), schema=CompareConfig)
    messages: list[str] = []
    Comparison(cfg, out, progress=False, log=messages.append).run()
    assert not any(m.startswith("timing ") for m in messages)  # nothing changed: the cache is used
    plan = next(out.glob("seed*/*/members/*/plan.json"))
    original = plan.read_text()
    try:
        plan.write_text(original + "\n")  # another digest, the same plan: stands for a member cut again
        messages.clear()
        Comparison(cfg, out, progress=False, log=messages.append).run()
        assert any(m.startswith("timing ") for m in messages)
    finally:
        plan.write_text(original)
