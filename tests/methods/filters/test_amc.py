"""AMC (issue #34): the resource-constrained action space always leaves the budget reachable and every episode's
network meets it exactly from below; the DDPG update learns; a seed fixes every episode; a killed search resumes to
the uninterrupted result; its allocations prune residual, depthwise and concat nets exactly; `legr run` with
``allocator: amc`` produces a family within its budgets."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_pruned_matches_masked, equivalence_setup
from torch import nn
from typer.testing import CliRunner

from legr.cli import app
from legr.engine.cost import CostModel
from legr.engine.plan import Plan
from legr.engine.surgery import masked_copy, prune
from legr.errors import BudgetError, ConfigError
from legr.graph import analyze
from legr.methods.filters.allocate import ALLOCATORS, Floors
from legr.methods.filters import FilterPruning
from legr.methods.filters.amc import AmcConfig, DDPGAgent, PruningEnv, reward_function, search_target
from legr.methods.filters.amc.agent import DTYPE
from legr.methods.filters.criteria import compute_scores, group_scores
from legr.methods.filters.legr.ranking import Ranking
from legr.methods.folders import MethodFolder
from legr.models import build_model
from legr.pipeline.config import parse_config
from legr.pipeline.config_files import artifact_config

SMALL = AmcConfig(warmup=3, episodes=5, hidden=32, batch_size=16, replay_size=200)


class Residual(nn.Module):
    """stem -> two residual blocks (the stem's channels and both blocks' second convs form one group) -> fc."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width)) for _ in range(2))
        self.fc = nn.Linear(width, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for block in self.blocks:
            x = F.relu(x + block(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class Depthwise(nn.Module):
    """A MobileNet-like inverted residual: 1x1 expand -> depthwise 3x3 (stride 2) -> 1x1 project, twice."""

    def __init__(self):
        super().__init__()

        def block(cin, mid, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                                 nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                 nn.ReLU6(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.a, self.b = block(8, 24, 12, 2), block(12, 36, 12, 1)
        self.head = nn.Sequential(nn.Conv2d(12, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.a(self.stem(x))
        x = x + self.b(x)
        return self.fc(F.adaptive_avg_pool2d(self.head(x), 1).flatten(1))


class Concat(nn.Module):
    """Two branches concatenated along the channels, then a conv (an Inception / DenseNet pattern)."""

    def __init__(self):
        super().__init__()
        self.left = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU())
        self.right = nn.Sequential(nn.Conv2d(3, 10, 1, bias=False), nn.BatchNorm2d(10), nn.ReLU())
        self.mix = nn.Sequential(nn.Conv2d(16, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.mix(torch.cat([self.left(x), self.right(x)], 1))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _setup(model, size=12, unit="macs", fraction=0.5, floors=Floors()):
    graph = analyze(model, (3, size, size))
    cost = CostModel(graph)
    scores = group_scores(graph, compute_scores("l1", graph, model))
    return graph, cost, PruningEnv(graph, cost, scores, fraction * cost.base(unit), floors, unit)


def _toy_score(env):
    """A deterministic reward without networks: prefer wide early groups and narrow late ones."""
    weights = np.linspace(1.0, -1.0, len(env.groups))

    def score(keep, episode):
        widths = np.array([keep[g.classes].mean() for g in env.groups])
        value = float(widths @ weights)
        return value, value
    return score


def _episodes(log):
    return [{k: v for k, v in entry.items() if k != "seconds"} for entry in log]


@pytest.mark.parametrize("unit", ["macs", "params"])
def test_clipped_actions_keep_the_budget_reachable_and_every_episode_meets_it_from_below(unit):
    graph, cost, _ = _setup(build_model("cifar_resnet20"), 32, unit)
    scores = group_scores(graph, compute_scores("l1", graph, build_model("cifar_resnet20")))
    rng = np.random.default_rng(0)
    floors = Floors(0.2, 2)
    for fraction in (0.25, 0.5, 0.8):
        target = fraction * cost.base(unit)
        env = PruningEnv(graph, cost, scores, target, floors, unit)
        n = len(env.groups)
        clipped = 0
        for trial in range(12):
            env.reset()
            low = trial % 3 == 0  # some episodes ask for everything: the clip must hold them
            while not env.done:
                state = env.state()
                assert state.shape == (10,) and state.min() >= 0.0 and state.max() <= 1.0 + 1e-12
                action = 1.0 if low else float(rng.uniform())
                applied, _ = env.step(action)
                assert 0.0 <= applied <= action
                clipped += applied < action
                left = n - len(env.ratios)
                assert env.cost([*env.ratios, *[0.0] * left]) <= target  # the rest at floors still fits
            keep, scale = env.finish()
            assert env.measure(keep) <= target
            widened = np.minimum(np.asarray(env.ratios) * scale * (1 + 1e-6), 1.0)
            assert keep.sum() == graph.num_classes or env.cost(widened) > target  # the largest such network
            for group in env.groups:
                for name in group.producers:
                    width = keep[graph.classes(graph.layers[name].producer_ids)].sum()
                    assert width >= floors(len(graph.layers[name].producer_ids))
        assert clipped > 0 or fraction > 0.7
    with pytest.raises(BudgetError, match="below the smallest network AMC can reach"):
        PruningEnv(graph, cost, scores, 0.01 * cost.base(unit), floors, unit)


def test_the_ddpg_update_reduces_the_critics_td_error():
    before_rng = torch.random.get_rng_state()
    agent = DDPGAgent(4, AmcConfig(hidden=64, batch_size=32, replay_size=256), seed=0)
    assert torch.equal(torch.random.get_rng_state(), before_rng)  # seeded on its own
    rng = np.random.default_rng(1)
    for _ in range(256):  # terminal transitions: the TD target is the reward itself, a fixed function
        state, action = rng.uniform(size=4), float(rng.uniform())
        agent.remember(state, action, float(np.sin(3 * state[0]) + action * state[1]), np.zeros(4), True)
    everything = {key: value.clone() for key, value in agent.buffer.data.items()}
    with torch.no_grad():
        before = float(agent.td_error(everything))
    for _ in range(300):
        agent.update()
    with torch.no_grad():
        after = float(agent.td_error(everything))
    assert after < 0.2 * before, (before, after)
    assert agent.actor[0].weight.dtype == DTYPE


def test_identical_seeds_give_identical_episodes(tmp_path):
    _, _, env = _setup(Residual())
    score = _toy_score(env)
    a = search_target(env, score, SMALL, seed=3, log_path=tmp_path / "a.jsonl", progress=False)
    b = search_target(env, score, SMALL, seed=3, log_path=tmp_path / "b.jsonl", progress=False)
    c = search_target(env, score, SMALL, seed=4, progress=False)
    log = lambda name: _episodes(map(json.loads, (tmp_path / name).read_text().splitlines()))  # noqa: E731
    assert log("a.jsonl") == log("b.jsonl") and len(log("a.jsonl")) == 8
    assert (a.ratios, a.best_reward, a.best_episode, a.scale) == (b.ratios, b.best_reward, b.best_episode, b.scale)
    assert a.ratios != c.ratios
    assert a.episodes == a.fitness_evaluations == 8 and a.warmup == 3
    assert all(e["sigma"] is None for e in log("a.jsonl")[:3]) and log("a.jsonl")[3]["sigma"] == 0.5
    assert log("a.jsonl")[4]["sigma"] == pytest.approx(0.5 * 0.95)


class Killed(Exception):
    pass


def test_a_killed_search_resumes_to_the_uninterrupted_result(tmp_path):
    _, _, env = _setup(Residual())
    score = _toy_score(env)
    whole = search_target(env, score, SMALL, seed=1, state_path=tmp_path / "whole.pt",
                          log_path=tmp_path / "whole.jsonl", progress=False)
    for kill_at in (2, 5):  # during the warm-up and while learning
        state, log = tmp_path / f"cut{kill_at}.pt", tmp_path / f"cut{kill_at}.jsonl"

        def dying(keep, episode):
            if episode == kill_at:
                raise Killed
            return score(keep, episode)

        with pytest.raises(Killed):
            search_target(env, dying, SMALL, seed=1, state_path=state, log_path=log, progress=False)
        assert len(log.read_text().splitlines()) == kill_at
        resumed = search_target(env, score, SMALL, seed=1, state_path=state, log_path=log, progress=False)
        assert {k: v for k, v in resumed.to_json().items() if k != "seconds"} == \
               {k: v for k, v in whole.to_json().items() if k != "seconds"}
        assert _episodes(map(json.loads, log.read_text().splitlines())) == \
               _episodes(map(json.loads, (tmp_path / "whole.jsonl").read_text().splitlines()))
    with pytest.raises(ConfigError, match="belongs to another search"):
        search_target(env, score, SMALL, seed=2, state_path=tmp_path / "whole.pt", progress=False)


@pytest.mark.parametrize("net,size", [(Residual, 12), (Depthwise, 16), (Concat, 12)],
                         ids=["residual", "depthwise", "concat"])
def test_amc_allocations_prune_exactly(net, size):
    model, graph, x, original = equivalence_setup(net(), size)
    cost = CostModel(graph)
    scores = group_scores(graph, compute_scores("l1", graph, model))
    env = PruningEnv(graph, cost, scores, 0.5 * cost.base_macs, Floors(0.1, 1))
    result = search_target(env, _toy_score(env), SMALL, seed=0, fraction=0.5, progress=False)
    solver = ALLOCATORS["amc"].per_target.solver(graph, cost, scores, Floors(0.1, 1), "macs",
                                                 {"amc": {"searched": [result.to_json()]}})
    keep = solver.solve(0.5 * cost.base_macs)
    assert cost.macs(keep) <= 0.5 * cost.base_macs and keep.sum() < graph.num_classes
    assert {g.name: int(keep[g.classes].sum()) for g in graph.prunable_groups()} == result.widths
    with torch.no_grad():
        assert_pruned_matches_masked(prune(graph, keep).eval()(x), masked_copy(graph, keep).eval()(x), original)
    with pytest.raises(BudgetError, match=r"AMC has no search for target 0.6 .*searched: 0.5"):
        solver.solve(0.6 * cost.base_macs)


RUN = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 3, lr: 0.05, batch_size: 64, augment: false}
targets: [0.4, 0.7]
allocator: amc
amc: {warmup: 2, episodes: 3, hidden: 32, batch_size: 16}
search: {bn_batches: 2, batch_size: 64}
bn_batches: 2
finetune: {epochs: 0, batch_size: 64, augment: false}
eval: {latency: false}
"""


def test_legr_run_with_allocator_amc_makes_a_family_within_its_budgets(tmp_path):
    listing = CliRunner().invoke(app, ["methods"]).output
    assert "│ amc " in listing and "DDPG agent" in listing
    config = tmp_path / "amc.yaml"
    config.write_text(RUN)
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads((tmp_path / "run" / "results.json").read_text())}
    for t in (0.4, 0.7):
        member = rows[f"amc-{round(100 * t)}"]
        assert member["method"] == "amc" and member["macs"] <= t * rows["baseline"]["macs"]
    ranking = Ranking.load(tmp_path / "run" / "ranking.json")
    searched = ranking.search["amc"]["searched"]
    assert [r["target"] for r in searched] == [0.4, 0.7] and ranking.allocator == "amc"
    for record in searched:
        assert record["episodes"] == record["fitness_evaluations"] == 5 and record["seconds"] > 0
        assert 0.0 <= record["best_score"] <= 1.0 and record["best_reward"] == record["best_score"]
        assert set(record["ratios"]) == set(record["widths"]) and len(record["ratios"]) == 4
        plan = Plan.load(tmp_path / "run" / "members" / f"amc-{round(100 * record['target'])}" / "plan.json")
        assert {name: len(kept) for name, kept in plan.keep.items()} == record["widths"]  # cut from its record
    assert len((tmp_path / "run" / "amc_log_0.4.jsonl").read_text().splitlines()) == 5
    assert (tmp_path / "run" / "amc_state_0.7.pt").exists()
    folder = MethodFolder(tmp_path / "run")  # what a comparison reports: every target's episodes, each one network
    assert FilterPruning.search_cost(folder) == {"fitness_evaluations": 2 * 5}


def test_bad_amc_settings_are_one_line_errors():
    base = {"model": {"name": "digits_cnn"}, "allocator": "amc"}
    assert parse_config(base).amc == AmcConfig()
    for amc, message in [({"warmpu": 3}, "unknown config key 'amc.warmpu'"),
                         ({"reward": "flops"}, "config key 'amc.reward': Input should be 'accuracy' or 'paper'"),
                         ({"episodes": 0}, "config key 'amc.episodes': Input should be greater than or equal to 1")]:
        with pytest.raises(ConfigError) as info:
            parse_config({**base, "amc": amc})
        assert str(info.value) == message and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="AmcConfig: unknown config key 'noise_sigma'"):
        AmcConfig(noise_sigma=0.3)


def test_a_latency_budget_is_refused_before_the_run_folder_is_touched(tmp_path):
    config = tmp_path / "latency.yaml"
    config.write_text(RUN + "budget: latency\n")
    result = CliRunner().invoke(app, ["run", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert isinstance(result.exception, ConfigError) and not (tmp_path / "run").exists()
    assert str(result.exception) == "allocator amc takes macs or params budgets, not latency"


def test_the_paper_reward_is_minus_error_times_log_macs():
    macs = lambda keep: 1e6 * keep.sum()  # noqa: E731
    keep = np.ones(3)
    paper = reward_function("paper", lambda k, i: 0.75, macs)
    assert paper(keep, 0) == (pytest.approx(-0.25 * np.log(3e6)), 0.75)
    loss = reward_function("paper", lambda k, i: -0.5, macs, metric="loss")
    assert loss(keep, 0)[0] == pytest.approx(-0.5 * np.log(3e6))
    assert reward_function("accuracy", lambda k, i: 0.75, macs)(keep, 0) == (0.75, 0.75)


def test_amc_searches_its_section_identifies_its_folders_and_its_episodes_are_estimated(tmp_path):
    base = {"model": {"name": "digits_cnn"}, "targets": [0.4, 0.7]}
    amc, legr = (parse_config({**base, "allocator": a}) for a in ("amc", "legr"))
    assert FilterPruning.searches(amc.model_dump()) and FilterPruning.searches(legr.model_dump())
    other = parse_config({**base, "allocator": "legr", "amc": {"warmup": 5}})
    assert artifact_config(other) == artifact_config(legr) and "amc" not in artifact_config(legr)
    assert artifact_config(parse_config({**base, "allocator": "amc", "amc": {"warmup": 5}})) != artifact_config(amc)

    class Units:
        def candidate(self, fraction, bn_batches, tau, batch_size):
            return 10 * fraction

    folder = MethodFolder(tmp_path)
    (tmp_path / "amc_log_0.4.jsonl").write_text("{}\n" * 30)  # 30 of 100 episodes done at 40%
    assert FilterPruning.prepare_seconds(amc, folder, Units()) == pytest.approx(70 * 4.0 + 100 * 7.0)
    folder.ranking.write_text("{}")
    assert FilterPruning.prepare_seconds(amc, folder, Units()) == 0.0
