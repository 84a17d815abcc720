"""CMA-ES as LeGR's searcher (``search.optimizer: cma``): what it starts from, that it searches better than aging
evolution where every coordinate matters, and that a killed search resumes exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from legr.errors import ConfigError
from legr.methods.filters.legr import AffineSpace, AffineTransform, EvolutionConfig, aging_evolution, run_search
from legr.methods.filters.legr.cmaes import cma_es

L = 12
STD = np.linspace(0.5, 2.0, L)
TARGET = np.random.default_rng(7).normal(0.0, 0.7, 2 * L)  # the optimum, in unit coordinates


def space(**kw) -> AffineSpace:
    return AffineSpace([f"layer{i}" for i in range(L)], STD, **kw)


def fitness(c: AffineTransform, index: int) -> float:
    """Minus the squared distance to TARGET in unit coordinates (every coordinate matters, as in a real cut)."""
    return -float(np.sum((space().to_vector(c) - TARGET) ** 2))


CFG = EvolutionConfig(population=8, sample=3, evaluations=120, seed=3, optimizer="cma", sigma0=0.3)


def test_unit_coordinates_round_trip_and_random_members_are_standard_normal():
    s, rng = space(), np.random.default_rng(0)
    x = rng.normal(size=2 * L)
    assert np.allclose(s.to_vector(s.from_vector(x)), x)
    members = np.array([s.to_vector(s.random(rng)) for _ in range(4000)])
    assert np.allclose(members.mean(0), 0.0, atol=0.08) and np.allclose(members.std(0), 1.0, atol=0.08)
    lcp = space(learn_alpha=False)
    t = lcp.from_vector(x[:L])
    assert np.all(t.alpha == 1.0) and np.allclose(lcp.to_vector(t), x[:L])


def test_candidates_scored_together_end_the_search_as_one_at_a_time():
    """``evaluate_many`` (Ray workers in a run) gets the identity and the initial candidates, then each generation
    (the last one cut to the evaluations left); the history and the winner are the sequential search's."""
    s, initial = space(), [space().from_vector(np.full(2 * L, 0.5))]
    alone = cma_es(s, fitness, CFG.model_copy(update={"evaluations": 30}), initial=initial, progress=False)
    batches: list[list[int]] = []

    def many(pairs):
        batches.append([i for _, i in pairs])
        return [fitness(c, i) for c, i in pairs]

    together = run_search(s, lambda c, i: pytest.fail("scored alone"), CFG.model_copy(update={"evaluations": 30}),
                          initial=initial, progress=False, evaluate_many=many)
    assert together.history == alone.history and together.best_index == alone.best_index
    assert batches == [[0, 1]] + [list(range(k, min(k + 8, 30))) for k in range(2, 30, 8)]  # 2, then 8 per generation
    evolution = run_search(s, fitness, CFG.model_copy(update={"evaluations": 12, "optimizer": "evolution"}),
                           progress=False, evaluate_many=lambda pairs: pytest.fail("bred one at a time"))
    assert evolution.evaluations == 12


def test_first_candidates_are_the_identity_and_initial_then_steps_around_the_fittest():
    s = space()
    best = s.from_vector(TARGET)  # the optimum as an initial candidate: CMA-ES must start there
    seen = []
    result = cma_es(s, lambda c, i: seen.append(c) or fitness(c, i), CFG.model_copy(update={"evaluations": 20}),
                    initial=[s.from_vector(np.zeros(2 * L) + 1.0), best], progress=False)
    assert seen[0] == s.identity() and np.allclose(s.to_vector(seen[2]), TARGET)
    steps = np.array([s.to_vector(c) - TARGET for c in seen[3:11]])  # the first generation
    assert np.all(np.abs(steps) < 6 * CFG.sigma0) and steps.std() == pytest.approx(CFG.sigma0, rel=0.35)
    assert result.best_index == 2 and result.evaluations == 20


def test_cma_beats_aging_evolution_when_every_coordinate_matters():
    evolution = aging_evolution(space(), fitness, CFG.model_copy(update={"optimizer": "evolution"}), progress=False)
    cma = run_search(space(), fitness, CFG, progress=False)
    start = fitness(space().identity(), 0)
    assert cma.best_fitness > 0.35 * start  # a third of the start's squared distance to the optimum is left
    assert cma.best_fitness > evolution.best_fitness + 0.5 * abs(start)  # evolution: one layer per jump, rarely better


def test_resume_after_an_interrupt_is_exact_and_a_foreign_state_is_refused(tmp_path):
    state, log = tmp_path / "state.json", tmp_path / "log.jsonl"
    cfg = CFG.model_copy(update={"restarts": 2, "evaluations": 40})

    def interrupted(c, i):
        if i == 53:  # restart 1, mid-generation
            raise KeyboardInterrupt
        return fitness(c, i)

    with pytest.raises(KeyboardInterrupt):
        run_search(space(), interrupted, cfg, state_path=state, log_path=log, progress=False)
    resumed = run_search(space(), fitness, cfg, state_path=state, log_path=log, progress=False)
    fresh = run_search(space(), fitness, cfg, progress=False)
    assert resumed.history == fresh.history and resumed.best == fresh.best
    assert [json.loads(x)["index"] for x in log.read_text().splitlines()] == list(range(80))
    assert fresh.restarts == 2 and fresh.history[:40] != fresh.history[40:]  # independent restarts

    with pytest.raises(ConfigError, match="another search space"):  # an evolution state is not continued by CMA
        aging_evolution(space(), fitness, cfg.model_copy(update={"optimizer": "evolution"}), state_path=state,
                        progress=False)
    data = json.loads(state.read_text())
    data["history"][20]["candidate"]["kappa"][0] += 1.0
    state.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="does not replay"):
        run_search(space(), fitness, cfg, state_path=state, progress=False)


def test_config_and_space_checks():
    with pytest.raises(ConfigError):
        EvolutionConfig(optimizer="bayes")
    with pytest.raises(ConfigError, match="more evaluations"):
        cma_es(space(), fitness, CFG.model_copy(update={"evaluations": 8, "population": 2}),
               initial=[space().random(np.random.default_rng(i)) for i in range(7)], progress=False)
