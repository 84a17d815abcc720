"""The latency model: fitting recovers a known latency function exactly, its predictions are monotone and bounded
like the MACs model's, budgets in ms are met from below by every allocator and the search, measurements are cached
per device and resume, and bad settings are one-line errors. (Its accuracy on real timings is a benchmark:
benchmarks/latency_budget.py.)"""

import json

import numpy as np
import pytest
import torch
import yaml

import legr.engine.latency_model as lm
from legr.engine.cost import CostModel
from legr.engine.latency import measure_latency
from legr.engine.latency_model import (
    LatencyModel,
    LatencySetting,
    Probe,
    build_latency_model,
    fit_latency_model,
    measure_probes,
)
from legr.errors import BudgetError, ConfigError, LegrError
from legr.graph import analyze
from legr.methods.filters.allocate import (
    ALLOCATORS,
    Floors,
    GlobalSolver,
    check_reachable,
    min_cost_bound,
    random_plans,
)
from legr.methods.filters.criteria import compute_scores, group_scores
from legr.methods.filters.legr.ranking import learn_ranking
from legr.models import build_model
from legr.pipeline.config import LatencyBudget, parse_config


@pytest.fixture(scope="module")
def resnet20():
    model = build_model("cifar_resnet20", pretrained=False).eval()
    graph = analyze(model, (3, 32, 32))
    return model, graph, CostModel(graph)


def _synthetic(graph, plans, seed=0):
    """Probes from a known latency function: random non-negative per-node coefficients, calibrated 1.3x + 0.2 ms."""
    rng = np.random.default_rng(seed)
    dims = lm._Dims(graph)
    nodes = list(graph.node_ids)
    truth = {n: [0.1 * rng.random(), *rng.random(len(dims.features(n)) - 1)] for n in nodes}  # small constants

    def node_ms(keep):
        x = dims.widths(keep) / dims.size
        return {n: float(sum(c * x[a] * x[b] for (a, b), c in zip(dims.features(n), truth[n]))) for n in nodes}

    probes = []
    for keep in plans:
        ms = node_ms(keep)
        probes.append(Probe(tuple(dims.widths(keep)[:-1]), ms, 1.3 * sum(ms.values()) + 0.2))
    return probes, lambda keep: 1.3 * sum(node_ms(keep).values()) + 0.2


def _model(graph, cost, probes=24):
    plans = [np.ones(graph.num_classes)] + random_plans(graph, cost, probes, seed=1)
    synthetic, truth = _synthetic(graph, plans)
    return fit_latency_model(graph, synthetic), truth


def test_the_fit_recovers_a_known_latency_function_on_new_plans(resnet20):
    _, graph, cost = resnet20
    model, truth = _model(graph, cost)
    for keep in random_plans(graph, cost, 20, seed=7):
        assert model.predict(keep) == pytest.approx(truth(keep), rel=1e-6)
    assert model.base_ms == pytest.approx(truth(np.ones(graph.num_classes)), rel=1e-6)
    assert model.info["fit"]["max_rel_err"] < 1e-6


def test_predictions_never_grow_when_channels_are_removed_and_the_bound_holds(resnet20):
    _, graph, cost = resnet20
    model, _ = _model(graph, cost)
    cost = CostModel(graph, latency=model)
    rng = np.random.default_rng(0)
    for keep in random_plans(graph, cost, 10, seed=3):
        fewer = keep.copy()
        fewer[rng.choice(np.flatnonzero(keep), 5, replace=False)] = 0
        assert model.predict(fewer) <= model.predict(keep) + 1e-12
    floors = Floors()
    with pytest.raises(BudgetError, match="below the smallest reachable"):
        check_reachable(graph, cost, floors, [0.01], "latency")
    lowest = GlobalSolver(graph, cost, group_scores(graph, compute_scores("l1", graph, graph.gm)), floors,
                          "latency").min_cost
    assert min_cost_bound(graph, cost, floors, "latency") <= lowest + 1e-9


@pytest.mark.parametrize("allocator", ["uniform", "global"])
@pytest.mark.parametrize("round_to", [1, 8])
def test_latency_budgets_are_met_from_below(resnet20, allocator, round_to):
    model, graph, cost = resnet20
    latency, _ = _model(graph, cost)
    cost = CostModel(graph, latency=latency)
    scores = group_scores(graph, compute_scores("l1", graph, model))
    solver = ALLOCATORS[allocator].solver(graph, cost, scores, Floors(round_to=round_to), "latency")
    for fraction in (0.5, 0.7, 0.9):
        target = fraction * latency.base_ms
        keep = solver.solve(target)
        assert latency.predict(keep) <= target
        assert latency.predict(keep) > 0.8 * target  # not far below: the budget is used
        if round_to > 1:
            for group in graph.prunable_groups():
                kept = int(keep[group.classes].sum())
                assert kept == group.size or kept % round_to == 0
    if allocator == "global" and round_to == 1:  # exact: removing one channel fewer would break the budget
        target = 0.6 * latency.base_ms
        keep = solver.solve(target)
        removed = int((keep == 0).sum())
        assert latency.predict(keep) <= target < solver.cost_after(removed - 1)


def test_the_search_runs_under_a_latency_target(resnet20):
    model, graph, cost = resnet20
    latency, _ = _model(graph, cost)
    cost = CostModel(graph, latency=latency)
    target = 0.6 * latency.base_ms
    widths = []

    def fitness(net, i):
        widths.append(sum(p.numel() for p in net.parameters()))
        return float(-widths[-1])

    from legr.methods.filters.legr import EvolutionConfig
    ranking = learn_ranking(model, graph, fitness, [target], unit="latency", cost=cost,
                            search=EvolutionConfig(population=4, sample=2, evaluations=6), progress=False)
    keep = ranking.solver(graph, cost, model, unit="latency").solve(target)
    assert latency.predict(keep) <= target
    with pytest.raises(LegrError, match="needs a latency model"):
        learn_ranking(model, graph, fitness, [target], unit="latency", progress=False,
                      search=EvolutionConfig(population=4, sample=2, evaluations=6))


def test_json_round_trip_and_other_architectures_are_refused(resnet20):
    _, graph, cost = resnet20
    model, _ = _model(graph, cost)
    back = LatencyModel.from_json(model.to_json(), graph)
    keep = random_plans(graph, cost, 1, seed=5)[0]
    assert back.predict(keep) == pytest.approx(model.predict(keep), rel=1e-12)
    other = analyze(build_model("cifar_resnet32", pretrained=False), (3, 32, 32))
    with pytest.raises(LegrError, match="another architecture"):
        LatencyModel.from_json(model.to_json(), other)
    with pytest.raises(LegrError, match="not a valid latency model"):
        LatencyModel.from_json("{not json", graph)


@pytest.fixture(scope="module")
def tiny():
    model = build_model("digits_cnn", num_classes=10, pretrained=False).eval()
    graph = analyze(model, (1, 8, 8))
    cost = CostModel(graph)
    return graph, [np.ones(graph.num_classes)] + random_plans(graph, cost, 3, seed=0)


def test_measured_probes_time_every_computing_node_and_resume(tiny, tmp_path):
    graph, plans = tiny
    setting = LatencySetting(batch_size=4, rounds=2, repeats=1, min_time_s=0)
    state = tmp_path / "state.json"
    probes = measure_probes(graph, plans, setting, state=state, progress=False)
    from legr.engine.surgery import fold_batchnorm

    computing = {n.name for n in fold_batchnorm(graph.gm).graph.nodes if n.op.startswith("call_")}
    assert all(set(p.node_ms) == computing and p.total_ms > 0 for p in probes)  # as deployed: batch norms folded
    assert len(computing) < sum(n.op.startswith("call_") for n in graph.gm.graph.nodes)
    assert probes[0].widths > probes[1].widths or probes[0].widths != probes[1].widths
    first = json.loads(state.read_text())
    assert len(first) == 2
    more = LatencySetting(batch_size=4, rounds=3, repeats=1, min_time_s=0)
    measure_probes(graph, plans, more, state=state, progress=False)  # resumes: measures only the third round
    again = json.loads(state.read_text())
    assert len(again) == 3 and again[:2] == first


def test_models_are_cached_per_device_setting(tiny, tmp_path, monkeypatch):
    graph, plans = tiny
    setting = LatencySetting(batch_size=4, rounds=1, repeats=1, min_time_s=0)
    model = build_latency_model(graph, setting, plans, cache=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.json"))) == 1 and model.base_ms > 0
    assert model.info["device"]["batch_size"] == 4 and model.info["device"]["threads"] == 1

    def no_measuring(*a, **k):
        raise AssertionError("measured again although cached")

    monkeypatch.setattr(lm, "measure_probes", no_measuring)
    cached = build_latency_model(graph, setting, plans, cache=tmp_path, progress=False)
    assert cached.predict(plans[1]) == pytest.approx(model.predict(plans[1]))
    with pytest.raises(AssertionError, match="measured again"):  # another batch size is another device setting
        build_latency_model(graph, LatencySetting(batch_size=8, rounds=1, repeats=1), plans, cache=tmp_path,
                            progress=False)
    monkeypatch.undo()
    path = next(tmp_path.glob("*.json"))
    path.write_text("{damaged")
    messages = []
    rebuilt = build_latency_model(graph, setting, plans, cache=tmp_path, progress=False, log=messages.append)
    assert rebuilt.base_ms > 0 and "unusable" in messages[0]


def test_bad_settings_are_one_line_errors():
    with pytest.raises(LegrError, match="threads: 1"):
        LatencySetting(threads=2, clock="cpu")
    with pytest.raises(LegrError, match="statistic"):
        LatencySetting(statistic="mean")
    if not torch.cuda.is_available():
        with pytest.raises(LegrError, match="CUDA is not available"):
            LatencySetting(device="cuda")
    with pytest.raises(LegrError, match="clock"):
        measure_latency(torch.nn.Identity(), (3,), 1, clock="sundial")


def test_the_cpu_clock_times_a_forward():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU())
    result = measure_latency(net, (3, 32, 32), 2, threads=1, repeats=3, clock="cpu")
    assert result.median_ms > 0 and result.repeats == 3


def test_config_latency_budgets():
    base = {"model": {"name": "digits_cnn"}}
    cfg = parse_config({**base, "budget": "latency"})
    assert isinstance(cfg.budget, LatencyBudget) and cfg.budget_unit == "latency" and cfg.budget.batch_size == 1
    cfg = parse_config(yaml.safe_load("{model: {name: digits_cnn}, budget: {unit: latency, batch_size: 64, "
                                      "threads: 1, clock: cpu}}"))
    assert cfg.budget.setting().batch_size == 64 and cfg.budget.setting().clock == "cpu"
    assert parse_config({**base, "budget": "params"}).budget_unit == "params"
    with pytest.raises(ConfigError, match="unknown config key .budget.bach_size.$"):
        parse_config({**base, "budget": {"unit": "latency", "bach_size": 4}})
    with pytest.raises(ConfigError, match="must be macs, params, latency or a latency section"):
        parse_config({**base, "budget": "seconds"})
    with pytest.raises(ConfigError, match="method magnitude takes budgets in params, not latency"):
        from legr.pipeline.steps import Pipeline
        Pipeline(parse_config({**base, "method": "magnitude", "budget": "latency"}), "/nonexistent", progress=False)


def test_members_are_cut_against_the_clock(resnet20, monkeypatch):
    """meet_measured corrects a model that is 25% optimistic for small networks: the plan it returns measures
    within 5% below the target (here the 'clock' is a known function of the plan)."""
    import legr.engine.latency_check as check

    model, graph, cost = resnet20
    latency, truth = _model(graph, cost)
    cost = CostModel(graph, latency=latency)
    solver = GlobalSolver(graph, cost, group_scores(graph, compute_scores("l1", graph, model)), Floors(), "latency")

    def clock(graph_, keep, setting, rounds, warmup):  # measured ratio = predicted ratio x (1.25 - 0.25 x it)
        share = latency.predict(keep) / latency.base_ms
        return share * (1.25 - 0.25 * share), 0.01

    monkeypatch.setattr(check, "measured_ratio", clock)
    keep, record = check.meet_measured(graph, solver, 0.6, latency, LatencySetting())
    ratio = record["measured_ratio"]
    assert 0.6 * 0.95 <= ratio <= 0.6 and not record["over_target"]
    assert len(record["steps"]) >= 2  # the first cut, trusting the prediction, measured over the target
    assert record["steps"][0]["measured_ratio"] > 0.6
    assert np.array_equal(keep, solver.solve(record["asked_ms"]))


def test_a_noisy_clock_does_not_pick_the_smaller_network(resnet20, monkeypatch):
    """Replays a busy machine (latency_accuracy seed 0, four jobs on two cores): two cuts measure under the target,
    the smaller one with the *higher* measured ratio. The larger network (by prediction) is kept."""
    import legr.engine.latency_check as check

    model, graph, cost = resnet20
    latency, _ = _model(graph, cost)
    solver = GlobalSolver(graph, CostModel(graph, latency=latency), group_scores(graph, compute_scores(
        "l1", graph, model)), Floors(), "latency")
    measured = iter([0.72, 0.374, 0.74, 0.369])  # the measured ratios of that run's four cuts, in order

    monkeypatch.setattr(check, "measured_ratio", lambda *a, **k: (next(measured), 0.1))
    keep, record = check.meet_measured(graph, solver, 0.55, latency, LatencySetting())
    steps = record["steps"]
    under = [s for s in steps if s["measured_ratio"] <= 0.55]
    assert len(steps) == 4 and len(under) == 2
    assert record["asked_ms"] == max(under, key=lambda s: s["predicted_ms"])["asked_ms"]
    assert latency.predict(keep) == max(s["predicted_ms"] for s in under) and not record["over_target"]


@pytest.mark.parametrize("name,shape", [("cifar_resnet56", (3, 32, 32)), ("cifar_mobilenet_v2", (3, 32, 32))])
def test_deployed_members_have_their_batch_norms_folded(name, shape):
    from legr.engine.surgery import fold_batchnorm, prune

    model = build_model(name, pretrained=False)
    with torch.no_grad():  # statistics and affine parameters far from the identity
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    graph = analyze(model, shape)
    net = prune(graph, random_plans(graph, CostModel(graph), 1, seed=3)[0]).train()
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert net.training and any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the input is unchanged
    x = torch.randn(4, *shape)
    with torch.no_grad():
        reference = net.eval()(x)
        assert (folded(x) - reference).abs().max() <= 1e-4 * reference.abs().max()
