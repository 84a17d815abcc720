"""Aging evolution + LeGR's affine search space: correctness, determinism, and resuming after SIGKILL / Ctrl-C."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from legr.errors import ConfigError
from legr.methods.filters.legr import AffineSpace, AffineTransform, EvolutionConfig, SearchResult, aging_evolution

L = 6
STD = np.array([0.5, 1.0, 1.5, 2.0, 0.8, 1.2])
TARGET_ALPHA = np.array([0.4, 2.5, 1.0, 0.7, 3.0, 1.6])
TARGET_KAPPA = np.array([-0.6, 1.2, 0.3, -2.0, 0.9, -1.1])


def make_space(**kw) -> AffineSpace:
    return AffineSpace([f"layer{i}" for i in range(L)], STD, **kw)


def toy_fitness(c: AffineTransform, index: int) -> float:
    return -float(np.sum((c.alpha - TARGET_ALPHA) ** 2) + np.sum((c.kappa - TARGET_KAPPA) ** 2))


def same_result(a: SearchResult, b: SearchResult) -> None:
    assert a.best == b.best and a.best_fitness == b.best_fitness and a.best_index == b.best_index
    assert a.history == b.history and a.evaluations == b.evaluations


# ---------------------------------------------------------------- evolution


def test_config_validation():
    for bad in (dict(population=0), dict(sample=0), dict(population=10, evaluations=9), dict(seed=-1),
                dict(population=2.0)):
        with pytest.raises(ConfigError):
            EvolutionConfig(**bad)


def test_improves_and_counts():
    cfg = EvolutionConfig(population=16, sample=4, evaluations=300, seed=0)
    seen: list[int] = []

    def fit(c: AffineTransform, i: int) -> float:
        seen.append(i)
        return toy_fitness(c, i)

    res = aging_evolution(make_space(), fit, cfg, progress=False)
    assert seen == list(range(300)) and res.evaluations == 300 and [i for i, _ in res.history] == seen
    identity = toy_fitness(make_space().identity(), 0)
    assert res.history[0][1] == identity
    init_best = max(f for _, f in res.history[:16])
    # closes most of the gap to the optimum (0) left by the initial population
    assert res.best_fitness > 0.5 * init_best and res.best_fitness > 0.5 * identity
    assert res.best_index >= 16 and res.best_fitness == max(f for _, f in res.history)
    assert toy_fitness(res.best, 0) == res.best_fitness
    summary = json.loads(json.dumps(res.summary()))
    assert summary["evaluations"] == 300 and summary["best_index"] == res.best_index
    assert summary["last_10pct"]["median"] > summary["initial_population"]["median"]


def test_determinism_and_seed():
    cfg = EvolutionConfig(population=8, sample=3, evaluations=60, seed=3)
    a = aging_evolution(make_space(), toy_fitness, cfg, progress=False)
    b = aging_evolution(make_space(), toy_fitness, cfg, progress=True)  # the progress bar changes nothing
    same_result(a, b)
    c = aging_evolution(make_space(), toy_fitness, EvolutionConfig(8, 3, 60, seed=4), progress=False)
    assert c.history != a.history


def test_aging_removes_oldest_and_population_bounded(tmp_path):
    cfg = EvolutionConfig(population=5, sample=2, evaluations=40, seed=1)
    state = tmp_path / "state.json"
    windows: list[list[int]] = []

    def fit(c: AffineTransform, i: int) -> float:
        if i > 0:  # the state on disk reflects evaluations 0..i-1
            data = json.loads(state.read_text())
            assert len(data["history"]) == i
            windows.append([p["index"] for p in data["population"]])
        return toy_fitness(c, i)

    aging_evolution(make_space(), fit, cfg, state_path=state, progress=False)
    for i, window in enumerate(windows, start=1):
        assert len(window) <= cfg.population
        assert window == list(range(max(0, i - cfg.population), i))  # the oldest member left, whatever its fitness


def test_parent_is_fittest_of_sample(tmp_path):
    # with sample >> population every member is drawn (miss prob ~1e-7), so the parent is the population's best
    cfg = EvolutionConfig(population=4, sample=64, evaluations=30, seed=2)
    log = tmp_path / "log.jsonl"
    aging_evolution(make_space(), toy_fitness, cfg, log_path=log, progress=False)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    fitness = {r["index"]: r["fitness"] for r in rows}
    for r in rows[4:]:
        i = r["index"]
        window = range(i - 4, i)
        assert r["parent"] in window and fitness[r["parent"]] == max(fitness[j] for j in window)
    assert all(r["parent"] is None for r in rows[:4])


def test_mutate_steps_passed():
    class Spy(AffineSpace):
        calls: list[tuple[int, int]] = []

        def mutate(self, parent, rng, step, total):
            self.calls.append((step, total))
            return super().mutate(parent, rng, step, total)

    space = Spy([f"l{i}" for i in range(L)], STD)
    aging_evolution(space, toy_fitness, EvolutionConfig(6, 2, 20, 0), progress=False)
    assert space.calls == [(s, 20) for s in range(6, 20)]


def test_nan_fitness_is_worst():
    res = aging_evolution(make_space(), lambda c, i: float("nan") if i % 2 else toy_fitness(c, i),
                          EvolutionConfig(4, 2, 12, 0), progress=False)
    assert res.best_index % 2 == 0 and np.isfinite(res.best_fitness)


# ---------------------------------------------------------------- affine space


@pytest.mark.parametrize("n_layers,expected", [(6, 1), (10, 1), (25, 2), (57, 5)])
def test_mutation_changes_exact_layer_count(n_layers, expected):
    space = AffineSpace([f"l{i}" for i in range(n_layers)], np.linspace(0.5, 2, n_layers))
    assert space.mutate_layers == expected
    rng = np.random.Generator(np.random.PCG64(0))
    parent = space.random(rng)
    for step in range(0, 400, 37):
        child = space.mutate(parent, rng, step, 400)
        changed_a, changed_k = child.alpha != parent.alpha, child.kappa != parent.kappa
        assert changed_a.sum() == expected and np.array_equal(changed_a, changed_k)


def test_sigma_schedule_statistics():
    space = AffineSpace([f"l{i}" for i in range(10)], np.full(10, 2.0), kappa_scale=0.5)
    assert space.sigma(0, 400) == 1.0 and space.sigma(400, 400) == pytest.approx(0.2)
    rng = np.random.Generator(np.random.PCG64(5))
    parent = space.identity()
    for step, sigma in ((0, 1.0), (200, 0.6), (400, 0.2)):
        log_alpha, dk = [], []
        for _ in range(3000):
            child = space.mutate(parent, rng, step, 400)
            j = np.flatnonzero(child.kappa != parent.kappa)
            log_alpha.append(np.log(child.alpha[j] / parent.alpha[j]))
            dk.append(child.kappa[j] - parent.kappa[j])
        assert np.std(np.concatenate(log_alpha)) == pytest.approx(sigma, rel=0.07)
        assert np.std(np.concatenate(dk)) == pytest.approx(1.0, rel=0.07)  # std_l * kappa_scale


def test_mutation_scale_shrinks_every_step_by_its_factor():
    """The same random draws, scaled: log-alpha and kappa steps at scale 0.3 are 0.3 x those at scale 1 (the
    paper's); the scale is part of the space's identity (a state file resumes only the same search)."""
    names, std = [f"l{i}" for i in range(10)], np.linspace(0.5, 2, 10)
    full, local = AffineSpace(names, std), AffineSpace(names, std, mutation_scale=0.3)
    parent = full.random(np.random.Generator(np.random.PCG64(3)))
    for step in (0, 150, 390):
        a = full.mutate(parent, np.random.Generator(np.random.PCG64(step)), step, 400)
        b = local.mutate(parent, np.random.Generator(np.random.PCG64(step)), step, 400)
        np.testing.assert_allclose(np.log(b.alpha / parent.alpha), 0.3 * np.log(a.alpha / parent.alpha), atol=1e-12)
        np.testing.assert_allclose(b.kappa - parent.kappa, 0.3 * (a.kappa - parent.kappa), atol=1e-12)
        assert (a.kappa != parent.kappa).sum() == 1  # one layer moved, by both
    assert local.fingerprint != full.fingerprint
    assert AffineSpace(names, std, mutation_scale=1.0).fingerprint == full.fingerprint  # the default's unchanged
    with pytest.raises(ConfigError, match="mutation_scale"):
        AffineSpace(names, std, mutation_scale=-1)


def test_random_members_distribution():
    space = AffineSpace(["a", "b"], [0.5, 3.0])
    rng = np.random.Generator(np.random.PCG64(7))
    members = [space.random(rng) for _ in range(4000)]
    log_alpha = np.log(np.stack([m.alpha for m in members]))
    kappa = np.stack([m.kappa for m in members])
    assert np.std(log_alpha, axis=0) == pytest.approx([1.0, 1.0], rel=0.07)
    assert np.std(kappa, axis=0) == pytest.approx([0.5, 3.0], rel=0.07)


def test_lcp_keeps_alpha_one():
    space = make_space(learn_alpha=False)
    res = aging_evolution(space, toy_fitness, EvolutionConfig(8, 3, 80, 0), progress=False)
    assert np.all(res.best.alpha == 1.0)
    rng = np.random.default_rng(0)
    c = space.random(rng)
    assert np.all(c.alpha == 1.0) and np.all(space.mutate(c, rng, 10, 80).alpha == 1.0)
    assert space.fingerprint != make_space().fingerprint


def test_affine_helpers_and_json_roundtrip():
    space = make_space()
    c = space.random(np.random.default_rng(1))
    back = space.from_json(json.loads(json.dumps(space.to_json(c))))
    assert back == c and back.alpha.tobytes() == c.alpha.tobytes()
    scores = np.array([1.0, 2.0])
    assert np.array_equal(c.apply(2, scores), c.alpha[2] * scores + c.kappa[2])
    assert np.array_equal(c(2, scores), c.apply(2, scores))
    assert space.identity().apply(0, scores).tolist() == [1.0, 2.0]
    with pytest.raises(ValueError):
        c.alpha[0] = 5.0  # read-only
    with pytest.raises(ConfigError):
        space.from_json({"alpha": [1.0], "kappa": [0.0]})
    with pytest.raises(ConfigError):
        AffineSpace(["a", "b"], [1.0])
    assert make_space().fingerprint == space.fingerprint != make_space(mutate_fraction=0.5).fingerprint


# ---------------------------------------------------------------- resuming

SCRIPT = '''
import sys, time
from pathlib import Path
import numpy as np
from legr.methods.filters.legr import AffineSpace, EvolutionConfig, aging_evolution

CFG = EvolutionConfig(population=6, sample=3, evaluations=40, seed=11)
STD = [0.5, 1.0, 1.5, 2.0, 0.8, 1.2]
TARGET = np.array([0.4, 2.5, 1.0, 0.7, 3.0, 1.6])


def space():
    return AffineSpace([f"layer{i}" for i in range(6)], STD)


def fitness(c, index, sleep=0.0):
    time.sleep(sleep)
    noise = np.random.default_rng(1000 + index).normal(0, 0.01)  # per-candidate seed from the index
    return -float(np.sum((c.alpha - TARGET) ** 2) + np.sum(c.kappa ** 2)) + noise


if __name__ == "__main__":
    state, log, sleep = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    aging_evolution(space(), lambda c, i: fitness(c, i, sleep), CFG, state_path=state, log_path=log, progress=False)
'''


@pytest.fixture
def toy_script(tmp_path):
    path = tmp_path / "toy_search.py"
    path.write_text(SCRIPT)
    return path, runpy.run_path(str(path), run_name="toy")


def history_len(state: Path) -> int:
    try:
        return len(json.loads(state.read_text())["history"])
    except (OSError, ValueError, KeyError):
        return 0


def check_log(log: Path, result: SearchResult) -> None:
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(result.evaluations))
    assert [(r["index"], r["fitness"]) for r in rows] == result.history
    assert rows[-1]["best_fitness"] == result.best_fitness and rows[-1]["best_index"] == result.best_index


def test_resume_after_sigkill(tmp_path, toy_script):
    script, mod = toy_script
    state, log = tmp_path / "state.json", tmp_path / "log.jsonl"
    cmd = [sys.executable, str(script), str(state), str(log), "0.05"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[4] / "src")}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 60
    while history_len(state) < 3:
        assert proc.poll() is None, "search subprocess exited early"
        assert time.monotonic() < deadline, "search subprocess made no progress"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = history_len(state)
    assert 3 <= killed_at < mod["CFG"].evaluations  # really interrupted mid-search
    subprocess.run(cmd, env=env, check=True, timeout=120)

    space = mod["space"]()
    resumed = aging_evolution(space, mod["fitness"], mod["CFG"], state_path=state, progress=False)  # finished: no-op
    fresh = aging_evolution(space, mod["fitness"], mod["CFG"], progress=False)
    same_result(resumed, fresh)
    check_log(log, fresh)


def test_keyboard_interrupt_then_resume(tmp_path, toy_script):
    _, mod = toy_script
    space, cfg, fitness = mod["space"](), mod["CFG"], mod["fitness"]
    state, log = tmp_path / "state.json", tmp_path / "log.jsonl"
    k = 17

    def interrupted(c, i):
        if i == k:
            raise KeyboardInterrupt
        return fitness(c, i)

    with pytest.raises(KeyboardInterrupt):
        aging_evolution(space, interrupted, cfg, state_path=state, log_path=log, progress=True)
    assert history_len(state) == k
    assert len(log.read_text().splitlines()) == k
    calls: list[int] = []
    resumed = aging_evolution(space, lambda c, i: calls.append(i) or fitness(c, i), cfg, state_path=state,
                              log_path=log, progress=False)
    assert calls == list(range(k, cfg.evaluations))
    fresh = aging_evolution(space, fitness, cfg, progress=False)
    same_result(resumed, fresh)
    check_log(log, fresh)


def test_log_rebuilt_when_it_lags_or_leads(tmp_path, toy_script):
    _, mod = toy_script
    space, cfg, fitness = mod["space"](), mod["CFG"], mod["fitness"]
    state, log = tmp_path / "state.json", tmp_path / "log.jsonl"
    with pytest.raises(KeyboardInterrupt):
        aging_evolution(space, lambda c, i: fitness(c, i) if i < 9 else (_ for _ in ()).throw(KeyboardInterrupt),
                        cfg, state_path=state, log_path=log, progress=False)
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:5] + lines[2:] + ['{"index": 9, "fitness": 0}']) + "\n")  # dupes + extra
    res = aging_evolution(space, fitness, cfg, state_path=state, log_path=log, progress=False)
    check_log(log, res)


def test_mismatched_state_raises(tmp_path):
    state = tmp_path / "state.json"
    cfg = EvolutionConfig(4, 2, 10, 0)
    aging_evolution(make_space(), toy_fitness, cfg, state_path=state, progress=False)
    for other_cfg, space in ((EvolutionConfig(4, 2, 12, 0), make_space()), (EvolutionConfig(4, 2, 10, 1), make_space()),
                             (cfg, make_space(learn_alpha=False))):
        with pytest.raises(ConfigError, match="another state path or delete it"):
            aging_evolution(space, toy_fitness, other_cfg, state_path=state, progress=False)
    state.write_text("{not json")
    with pytest.raises(ConfigError, match="delete it"):
        aging_evolution(make_space(), toy_fitness, cfg, state_path=state, progress=False)


def test_initial_candidates_follow_the_identity(tmp_path):
    space = make_space()
    seeds = [AffineTransform(TARGET_ALPHA, TARGET_KAPPA)]
    cfg = EvolutionConfig(population=4, sample=2, evaluations=8, seed=0)
    state = tmp_path / "state.json"
    result = aging_evolution(space, toy_fitness, cfg, initial=seeds, state_path=state, progress=False)
    history = json.loads(state.read_text())["history"]
    assert history[0]["candidate"] == space.to_json(space.identity())
    assert history[1]["candidate"] == space.to_json(seeds[0]) and result.best_index == 1  # the optimum, seeded
    with pytest.raises(ConfigError, match="belongs to another search space"):  # never resumed with other seeds
        aging_evolution(space, toy_fitness, cfg, initial=[space.identity()], state_path=state, progress=False)
    with pytest.raises(ConfigError, match="population of at least"):
        aging_evolution(space, toy_fitness, EvolutionConfig(population=1, sample=1, evaluations=2), initial=seeds,
                        progress=False)


# ---------------------------------------------------------------- restarts

def test_restarts_are_independent_searches_and_the_fittest_wins(tmp_path):
    space, state, log = make_space(), tmp_path / "state.json", tmp_path / "log.jsonl"
    one = EvolutionConfig(population=6, sample=3, evaluations=20, seed=5)
    single = aging_evolution(space, toy_fitness, one, progress=False)
    calls: list[int] = []
    both = aging_evolution(space, lambda c, i: calls.append(i) or toy_fitness(c, i), one.model_copy(update={"restarts": 2}),
                           state_path=state, log_path=log, progress=False)
    assert calls == list(range(40)) and both.evaluations == 40 and both.restarts == 2
    assert both.history[:20] == single.history  # restart 0 is the one-restart search, unchanged
    second = [f for _, f in both.history[20:]]
    assert second != [f for _, f in single.history[:20]][: len(second)]  # restart 1 draws its own population
    assert second[:1] == [single.history[0][1]]  # ... but starts from the identity too
    assert both.best_fitness == max(f for _, f in both.history)
    assert both.best_index == [f for _, f in both.history].index(both.best_fitness)
    summary = both.summary()
    assert summary["restart_best"] == [max(f for _, f in both.history[:20]), max(second)]
    assert (tmp_path / "state.restart1.json").exists()
    check_log(log, both)
    assert [json.loads(x)["restart"] for x in log.read_text().splitlines()] == [0] * 20 + [1] * 20
    # a one-restart state of the previous version (no "restarts" key recorded) resumes as restart 0
    assert "restarts" not in json.loads(state.read_text())["config"]
    resumed = aging_evolution(space, toy_fitness, one.model_copy(update={"restarts": 2}), state_path=state, progress=False)
    same_result(resumed, both)
    # no run seed's restart repeats another run seed's first search (seeds 0, 1, 2 run side by side)
    a = aging_evolution(space, toy_fitness, EvolutionConfig(6, 3, 20, seed=0, restarts=2), progress=False)
    b = aging_evolution(space, toy_fitness, EvolutionConfig(6, 3, 20, seed=1), progress=False)
    assert a.history[20:] != b.history


def interrupt_at(k, fitness):
    """``fitness``, raising KeyboardInterrupt at evaluation ``k`` (a user's Ctrl-C there)."""

    def interrupted(c, i):
        if i == k:
            raise KeyboardInterrupt
        return fitness(c, i)

    return interrupted


def test_restarts_resume_after_an_interrupt_in_the_second(tmp_path):
    space, state = make_space(), tmp_path / "state.json"
    cfg = EvolutionConfig(population=5, sample=2, evaluations=12, seed=2, restarts=3)

    with pytest.raises(KeyboardInterrupt):
        aging_evolution(space, interrupt_at(17, toy_fitness), cfg, state_path=state, progress=False)
    assert history_len(state) == 12 and history_len(tmp_path / "state.restart1.json") == 5
    calls: list[int] = []
    resumed = aging_evolution(space, lambda c, i: calls.append(i) or toy_fitness(c, i), cfg, state_path=state,
                              progress=False)
    assert calls == list(range(17, 36))
    same_result(resumed, aging_evolution(space, toy_fitness, cfg, progress=False))
    with pytest.raises(ConfigError, match="restarts"):
        EvolutionConfig(restarts=0)


def test_details_returned_with_the_fitness_are_kept_across_an_interrupt(tmp_path):
    """``evaluate`` may return ``(fitness, details)``: the fitness drives the search exactly as a bare one, the details
    are written to the state beside it and come back in ``SearchResult.details`` after an interrupt and resume; a
    state written without details (an earlier version) resumes with none for its candidates."""
    space, cfg, state = make_space(), EvolutionConfig(4, 2, 12, seed=3), tmp_path / "state.json"
    detailed = lambda c, i: (toy_fitness(c, i), [i, float(c.kappa[0])])  # noqa: E731

    with pytest.raises(KeyboardInterrupt):
        aging_evolution(space, interrupt_at(7, detailed), cfg, state_path=state, progress=False)
    resumed = aging_evolution(space, detailed, cfg, state_path=state, progress=False)
    same_result(resumed, aging_evolution(space, toy_fitness, cfg, progress=False))
    assert [d[0] for d in resumed.details] == list(range(12))
    for i, candidate, details in resumed.details:
        assert details == [i, space.from_json(candidate).kappa[0]]

    data = json.loads(state.read_text())
    for h in data["history"]:
        h.pop("details")
    state.write_text(json.dumps(data))
    old = aging_evolution(space, detailed, EvolutionConfig(4, 2, 12, seed=3), state_path=state, progress=False)
    assert old.details == [] and old.best == resumed.best


# ---------------------------------------------------------------- asynchronous workers (in_flight)


def test_children_in_flight_are_bred_before_their_elders_results_and_scored_concurrently():
    """``in_flight`` N: child i is bred from the population as child i - N left it (its parent scored at least N
    candidates earlier), the same search whether ``evaluate_many`` scores the N in flight concurrently, in threads
    finishing in any order, or the loop scores them here one by one; N = 1 is the sequential search."""
    space, cfg = make_space(), EvolutionConfig(population=8, sample=3, evaluations=60, seed=5, in_flight=3)
    here = aging_evolution(space, toy_fitness, cfg, progress=False)
    sequential = aging_evolution(space, toy_fitness, cfg.model_copy(update={"in_flight": 1}), progress=False)
    assert here.history[:8] == sequential.history[:8] and here.history != sequential.history
    same_result(sequential, aging_evolution(space, toy_fitness, EvolutionConfig(8, 3, 60, seed=5), progress=False))

    rng, lock, live, most = np.random.default_rng(0), threading.Lock(), [0], [0]

    def many(pairs):
        (candidate, index), = pairs  # one call per candidate in flight
        with lock:
            live[0] += 1
            most[0] = max(most[0], live[0])
            pause = float(rng.uniform(0, 0.004))
        time.sleep(pause)
        with lock:
            live[0] -= 1
        return [toy_fitness(candidate, index)]

    together = aging_evolution(space, lambda c, i: pytest.fail("scored in the loop"), cfg, progress=False,
                               evaluate_many=many)
    same_result(together, here)
    assert most[0] == 3


def test_children_in_flight_resume_after_an_interrupt_without_breeding_twice(tmp_path):
    """The state holds the children bred but not yet recorded; a run killed with children in flight resumes with
    exactly those and ends as an uninterrupted one. A state of another ``in_flight`` is refused."""
    space, state = make_space(), tmp_path / "state.json"
    cfg = EvolutionConfig(population=6, sample=2, evaluations=30, seed=1, in_flight=4)
    with pytest.raises(KeyboardInterrupt):
        aging_evolution(space, interrupt_at(17, toy_fitness), cfg, state_path=state, progress=False)
    data = json.loads(state.read_text())
    assert len(data["history"]) == 17 and len(data["pending"]) == 3 and data["config"]["in_flight"] == 4
    assert [p["parent"] <= 17 + k - 4 for k, p in enumerate(data["pending"])] == [True] * 3  # bred, not scored
    resumed = aging_evolution(space, toy_fitness, cfg, state_path=state, progress=False)
    same_result(resumed, aging_evolution(space, toy_fitness, cfg, progress=False))
    with pytest.raises(ConfigError, match="in_flight"):
        aging_evolution(space, toy_fitness, cfg.model_copy(update={"in_flight": 2}), state_path=state, progress=False)
    with pytest.raises(ConfigError, match="in_flight"):
        EvolutionConfig(population=4, evaluations=10, in_flight=5)
