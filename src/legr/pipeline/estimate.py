"""How long a comparison (or a piece of one, `legr.pipeline.pieces`) will take, estimated before it starts.

A run that outlasts the time at hand is killed before it writes its result, so a long run is split into pieces that
each fit (benchmarks/README.md, "Long runs"), and each piece says first what it will cost. The estimate times the
units of work on the source network and the real data, then multiplies by how many of each the piece still has to
do (work already in its folder is not counted):

- **search**: one candidate evaluation per search target (cut a global ranking there, adaptive BN, ``tau`` steps,
  validation), times ``restarts x evaluations`` (+ the uniform reference and the winner) per searching method and
  seed, and the per-target searches of a pipeline-cost method;
- **fine-tuning**: a few SGD steps on a network of each member's size, times each member's steps (+ its per-epoch
  validation);
- **other**: the source network's adaptation, cutting and test evaluations, and with a latency budget the latency
  model's probes, the members' measured cuts (three per member) and the final interleaved timing, and setting up
  each run (loading the data, analysing the network: timed on the estimate's own set-up).

A latency target is timed as the same fraction of the MACs (a network at 40% of the latency has at most about 40%
of the MACs). Weights do not change these times, so the source network is not adapted for the estimate. On one
thread each unit is the process's CPU time, i.e. what it takes when the piece has its core (one process per core, as
pieces are launched); with more threads, wall time under the current load.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from legr.data import make_loader
from legr.engine.latency import measure_latency
from legr.engine.latency_model import latency_model_path
from legr.methods import METHODS, STAGES
from legr.methods.stages import MEMBER_FILE, method_target
from legr.pipeline.compare import Comparison
from legr.pipeline.compare_config import CompareConfig
from legr.pipeline.config import LatencyBudget
from legr.pipeline.folder import member_name
from legr.pipeline.steps import Pipeline
from legr.training import TrainConfig, make_sgd, recalibrate_bn, train_steps

LIMIT_S = 2 * 3600.0  # what a piece may take: sessions here have ~3 h
MEASURED_CUTS = 3  # a member cut against the clock is timed 1-4 times (2.6 on average in latency_budget.json)


def duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``1 h 05 min``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


@dataclass(frozen=True)
class Estimate:
    search_s: float
    finetune_s: float
    other_s: float
    candidate_s: float  # one candidate evaluated at one search target (mean over the targets timed)
    step_s: float  # one fine-tuning SGD step (mean over the member sizes timed)

    @property
    def total_s(self) -> float:
        return self.search_s + self.finetune_s + self.other_s

    def line(self, what: str = "this piece") -> str:
        units = ", ".join(f"{name} {value:.2f} s" for name, value in
                          (("a search candidate at one target", self.candidate_s), ("an SGD step", self.step_s))
                          if value > 0)
        return (f"estimated wall time of {what}: ~{duration(self.total_s)} (search {duration(self.search_s)}, "
                f"fine-tuning {duration(self.finetune_s)}, other {duration(self.other_s)}"
                + (f"; timed now: {units}" if units else "") + ")")

    def warning(self, limit_s: float = LIMIT_S) -> str | None:
        if self.total_s <= limit_s:
            return None
        return (f"warning: that is over {duration(limit_s)}: split it (--seeds, --methods) or shrink the search for "
                "all methods alike (e.g. --set search.restarts=2) so that every piece finishes")


def estimate_comparison(cfg: CompareConfig, work: str | Path) -> Estimate:
    """The estimate for running ``cfg`` (a whole comparison or `piece_config`'s piece) in the work folder ``work``,
    measured on a source pipeline of its own (a temporary folder; ``work`` is only read)."""
    with tempfile.TemporaryDirectory(prefix="legr-estimate-") as tmp:
        start = time.perf_counter()
        source = source_pipeline(cfg, work, tmp)
        return estimate_piece(cfg, source, work, setup_s=time.perf_counter() - start)


def source_pipeline(cfg: CompareConfig, work: str | Path, out: str | Path) -> Pipeline:
    """A pipeline in ``out`` over the comparison's source network, data and splits (the adapted weights when
    ``work`` holds them, else the configured ones: timings do not depend on them), with nothing to train or search."""
    shared = cfg.run_config()
    adapted = Comparison(cfg, work).folder.source.base_weights
    model = shared.model.model_copy(update={"weights": str(adapted.resolve())}) if adapted.exists() else shared.model
    only = shared.source_only(model=model, budget=None, targets=(1.0,), base_training=TrainConfig(epochs=0),
                              eval=shared.eval.model_copy(update={"latency": False}))
    return Pipeline(only, out, progress=False, log=lambda _: None)


def _clock() -> Callable[[], float]:
    return time.process_time if torch.get_num_threads() == 1 else time.perf_counter


@dataclass(frozen=True)
class _Size:
    """Unit times of one network size: cutting it (solver + surgery), adaptive BN per batch, a validation pass."""

    cut_s: float
    bn_s: float
    val_s: float


class _Units:
    """Unit times on the source pipeline, measured once per network size (a fraction of the source MACs)."""

    def __init__(self, source: Pipeline) -> None:
        self.source, self.model, self.now = source, source.base, _clock()
        self.sizes: dict[tuple, _Size] = {}
        self.steps: dict[tuple, float] = {}
        self.forwards: dict[int, float] = {}
        self.candidates: list[float] = []

    def _network(self, fraction: float) -> nn.Module:
        """A network of ``fraction`` of the source MACs as the default method builds one (`Method.sized_network`)."""
        return self.source.method.sized_network(fraction)

    def size(self, fraction: float) -> _Size:
        key = round(fraction, 4)
        if key not in self.sizes:
            src = self.source
            bn = src.bn_batches(5)
            for _ in range(2):  # the first pass warms up (allocations), the second is timed
                start = self.now()
                net = self._network(fraction)
                cut = self.now()
                recalibrate_bn(net, bn)
                calibrated = self.now()
                src.accuracy(net, src.data.val)
                end = self.now()
            self.sizes[key] = _Size(cut - start, (calibrated - cut) / len(bn), end - calibrated)
        return self.sizes[key]

    def candidate(self, fraction: float, bn_batches: int, tau: int, batch_size: int) -> float:
        """One candidate scored at one search target: cut, adaptive BN, ``tau`` SGD steps, validation."""
        size = self.size(fraction)
        seconds = size.cut_s + bn_batches * size.bn_s + size.val_s
        seconds += tau * self.step(fraction, batch_size, True) if tau else 0.0
        self.candidates.append(seconds)
        return seconds

    def validation(self, fraction: float) -> float:
        return self.size(fraction).val_s

    def test(self, fraction: float) -> float:
        """One pass over the test split (scaled from the validation pass)."""
        val, test = len(self.source.data.val[1]), len(self.source.data.test[1])
        return self.size(fraction).val_s * test / max(val, 1)

    def step(self, fraction: float, batch_size: int, augment: bool, count: int = 2) -> float:
        """One SGD step of a network of this size."""
        key = (round(fraction, 4), batch_size, augment)
        if key not in self.steps:
            src = self.source
            net = self._network(fraction)
            x, y = src.data.train
            loader = make_loader(x, y, batch_size, src.data.mean, src.data.std, shuffle=True, augment=augment,
                                 drop_last=len(x) > batch_size, device=src.device)
            sgd = make_sgd(net, 0.01)
            train_steps(net, loader, 1, sgd)  # warm-up
            start = self.now()
            train_steps(net, loader, count, sgd)
            self.steps[key] = (self.now() - start) / count
        return self.steps[key]

    def training(self, fraction: float, train: TrainConfig) -> float:
        """A whole fine-tune (or source adaptation): every epoch's SGD steps and its validation pass."""
        n = len(self.source.data.train[1])
        full = n // train.batch_size if n > train.batch_size else 1
        steps = min(full, train.steps_per_epoch or full)
        return train.epochs * (steps * self.step(fraction, train.batch_size, train.augment)
                               + self.size(fraction).val_s)

    def forward(self, batch: int) -> float:
        """One forward of the source network at ``batch``."""
        if batch not in self.forwards:
            one = torch.get_num_threads() == 1
            result = measure_latency(self.source.graph.gm, self.source.data.input_size, batch, warmup=1, repeats=3,
                                     threads=1 if one else None, clock="cpu" if one else "wall")
            self.forwards[batch] = result.median_ms / 1e3
        return self.forwards[batch]


def estimate_piece(cfg: CompareConfig, source: Pipeline, work: str | Path | None = None, *,
                   setup_s: float = 0.0) -> Estimate:
    """The wall time of running ``cfg`` (restricted to a piece: `legr.pipeline.pieces.piece_config`) in the work
    folder ``work`` (None: an empty one), from unit times measured on ``source`` (`source_pipeline`); ``setup_s``:
    what setting up one run's pipeline took (counted once per run still to do)."""
    units = _Units(source)
    comparison = Comparison(cfg, Path(work) if work is not None else source.out / "nothing-done", progress=False,
                            log=lambda _: None)
    shared, folder = cfg.run_config(), comparison.folder
    search = finetune = other = 0.0
    b = shared.base_training
    if b.epochs > 0 and not folder.source.base_weights.exists():
        other += units.training(1.0, b)
    other += units.test(1.0) + setup_s  # the source network's test figures and its pipeline
    latency_done = False
    members = 1  # networks timed at the end, the source included
    for seed in cfg.compare.seeds:
        for m in cfg.compare.methods:
            rc = comparison._config(shared, m, seed)
            run = folder.run(seed, m.name)
            members += len(rc.targets)
            if run.results_json.exists():
                continue
            other += setup_s
            method, settings = METHODS[m.chain[0]], rc.model_dump()
            mrc = rc.model_copy(update={"targets": tuple(method_target(rc, t) for t in rc.targets)})  # its cuts'
            prepare = method.prepare_seconds(mrc, run, units)
            if method.searches(settings):
                search += prepare
            else:
                other += prepare
            budget = rc.budget if isinstance(rc.budget, LatencyBudget) else None
            if budget is not None and not latency_done:
                latency_done = True
                other += _latency_model_s(units, source, budget, folder.root)
            stages = [STAGES[name] for name in m.chain[1:]]
            for t in sorted(rc.targets):
                member = run.member(member_name(method.member_prefix(settings), t))
                cut = method_target(rc, t)
                size = cut if method.channel_plans else 1.0  # e.g. a sparse network computes as the dense one
                *cutting, (ft_size, ft_recipe) = method.member_training(mrc, cut)
                if not all(f.exists() for f in method.member_files(run, member)):
                    finetune += sum(units.training(f, recipe) for f, recipe in cutting)
                    other += 2 * units.test(size)  # top-1 as cut and after adaptive BN
                    other += rc.bn_batches * units.size(size).bn_s
                    if budget is not None and budget.measure_members:
                        per = max(budget.repeats * units.forward(budget.batch_size), 0.1)
                        other += MEASURED_CUTS * 5 * 2 * per
                if not member.finetuned.exists() and (not stages or stages[0].finetune_before(rc)):
                    finetune += units.training(ft_size, ft_recipe)
                path = member.root
                for stage in stages:  # a stage that fine-tunes its member: the run's recipe at the member's size
                    path = path / stage.name
                    if stage.needs_finetune and not (path / MEMBER_FILE).exists():
                        finetune += units.training(t if method.channel_plans else 1.0, rc.finetune)
                other += units.test(size)
    pc = cfg.compare.pipeline_cost
    if pc is not None:
        m = next(x for x in cfg.compare.methods if x.name == pc)
        rc = comparison._config(shared, m, cfg.compare.seeds[0])
        own = rc.search_targets
        for t in rc.targets:
            if len(own) == 1 and abs(t - own[0]) < 1e-9:
                continue
            run = folder.per_target(pc, t)
            if not run.ranking.exists():
                other += setup_s
                search += METHODS[m.chain[0]].prepare_seconds(rc.model_copy(update={
                    "targets": (t,), "search": rc.search.model_copy(update={"target": t, "targets": None})}), run, units)
    e = shared.eval
    if e.latency and not folder.latency.exists():
        _, batches = shared.latency_timing()
        other += members * e.latency_rounds * sum((e.latency_warmup + e.latency_repeats) * units.forward(batch)
                                                  for batch in batches)
    mean = lambda values: float(np.mean(list(values))) if values else 0.0  # noqa: E731
    return Estimate(search, finetune, other, mean(units.candidates), mean(units.steps.values()))


def _latency_model_s(units: _Units, source: Pipeline, budget: LatencyBudget, work: Path) -> float:
    """Measuring the latency model (nothing when this device's model is cached or the work folder holds one):
    every probe, every round, a pass of the timing interpreter and the timed forwards."""
    setting = budget.setting()
    probes = source.method.latency_probes(source.graph, source.cost, budget.probes)
    if latency_model_path(source.graph, setting, probes).exists() or any(work.glob("seed*/*/latency_model.json")):
        return 0.0
    forward = units.forward(budget.batch_size)
    per_round = 2.5 * forward + max(budget.repeats * forward, setting.min_time_s)
    return (budget.probes + 1) * budget.rounds * per_round

