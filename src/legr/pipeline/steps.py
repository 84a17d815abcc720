"""The LeGR pipeline over one run folder: base -> rank -> prune -> finetune -> evaluate -> report.

Every step writes its artifacts atomically and skips work already on disk, so a killed run restarted with the same
command continues where it stopped (the search and each fine-tune also resume mid-way). The folder's layout:
`legr.pipeline.folder.RunFolder`.

The test split is only used by `evaluate` (and for the before-fine-tune figures recorded at pruning time): search
fitness uses a validation split carved from the training data (BatchNorm statistics are re-estimated on training
batches), and no step picks anything by test accuracy.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import yaml
from torch import nn

from legr.data import TensorLoader, load_dataset, split_train_val
from legr.engine.artifacts import load_pruned, save_pruned
from legr.engine.cost import CostModel, count_params
from legr.engine.latency import measure_interleaved
from legr.engine.plan import Plan
from legr.engine.surgery import prune
from legr.errors import ConfigError
from legr.graph import analyze
from legr.hardware import git_revision, hardware_label
from legr.methods.allocate import Floors, check_reachable, get_allocator
from legr.methods.criteria import CriterionContext, compute_scores
from legr.methods.legr import EvolutionConfig
from legr.methods.legr.fitness import CandidateFitness
from legr.methods.legr.ranking import (
    Ranking,
    learn_ranking,
    model_fingerprint,
    ranked_layers,
    stored_scores,
)
from legr.models import build_model, load_checkpoint, save_state_dict
from legr.paths import atomic_write_text, make_folder
from legr.pipeline.config import (
    RunConfig,
    TrainConfig,
    artifact_config,
    dump_config,
    held_config,
)
from legr.pipeline.folder import MemberFolder, RunFolder, member_name
from legr.reporting import (
    config_hash,
    format_table,
    latency_key,
    plot_pareto,
    read_results,
    write_results,
)
from legr.training import FinetuneConfig, bn_batches, evaluate, finetune, recalibrate_bn


@dataclass(frozen=True)
class Splits:
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    num_classes: int


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


def finetune_config(cfg: TrainConfig, seed: int) -> FinetuneConfig:
    return FinetuneConfig(**cfg.model_dump(), seed=seed)


class Pipeline:
    def __init__(self, cfg: RunConfig, out: str | Path, *, progress: bool = True, log: Callable[[str], None] = print):
        self.cfg, self.out, self.progress, self.log = cfg, Path(out), progress, log
        self.folder = RunFolder(self.out)
        self.device = resolve_device(cfg.device)
        self.floors = Floors(cfg.floors.safeguard, cfg.floors.min_channels)
        self._validate()
        self._claim_folder()

    def _validate(self) -> None:
        """Check what needs no training before the folder is claimed: the model builds and its checkpoint fits, the
        dataset loads (with a validation split when the allocator searches), and every target (and search target)
        lies above the MACs floor any ranking can reach."""
        if get_allocator(self.cfg.allocator).search is not None and len(self.data.val[0]) == 0:
            raise ConfigError("the search needs a validation split: set data.val_size > 0")
        check_reachable(self.graph, self.cost, self.floors, (*self.cfg.targets, *self.cfg.search_targets))

    def _claim_folder(self) -> None:
        """Refuse a folder that holds another run; `eval` and `device` may differ (e.g. train on a GPU, time on a CPU).
        A folder holding only a config.yaml (a run that never started) is reused."""
        make_folder(self.out)
        path = self.folder.config
        if path.exists() and any(p.name != path.name for p in self.out.iterdir()):
            try:
                held = artifact_config(held_config(yaml.safe_load(path.read_text())))
            except (ConfigError, yaml.YAMLError):
                held = None
            if held != artifact_config(self.cfg):
                raise ConfigError(f"run folder {self.out} holds a run with a different config; "
                                  "use another output folder or delete it")
        atomic_write_text(path, dump_config(self.cfg))

    # --- inputs ---------------------------------------------------------------------------------------------
    @cached_property
    def data(self) -> Splits:
        d = self.cfg.data
        ds = load_dataset(d.name, d.root)
        if d.val_size >= len(ds.train_x):
            raise ConfigError(f"data.val_size ({d.val_size}) must be smaller than the training set ({len(ds.train_x)})")
        tx, ty, vx, vy = split_train_val(ds.train_x, ds.train_y, d.val_size, seed=d.split_seed)
        return Splits((tx, ty), (vx, vy), (ds.test_x, ds.test_y), ds.mean, ds.std, ds.input_size, ds.num_classes)

    @cached_property
    def _network(self) -> nn.Module:
        """The source network as built and loaded, on the run's device, eval mode (`base` trains it in place)."""
        m = self.cfg.model
        weights: bool | str = {None: False, "pretrained": True}.get(m.weights, m.weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)  # a network trained from scratch starts from the same weights
            model = build_model(m.name, num_classes=m.num_classes or self.data.num_classes, pretrained=weights)
        return model.to(self.device).eval()

    @cached_property
    def base(self) -> nn.Module:
        """The source network (loaded, and trained/adapted first when base_training.epochs > 0), eval mode."""
        model = self._network
        if self.cfg.base_training.epochs > 0:
            path = self.folder.base_weights
            if path.exists():
                load_checkpoint(model, path)
            else:
                self.log(f"training the source network for {self.cfg.base_training.epochs} epochs")
                self._train(model, self.cfg.base_training, self.folder.base_checkpoint)
                save_state_dict(model.state_dict(), path)
        return model.eval()

    @cached_property
    def graph(self):
        """Channel groups of the source network: they depend on its structure only, so they are found before any
        base training (the graph's modules are the network's, so they hold its weights once trained)."""
        return analyze(self._network, self.data.input_size)

    @cached_property
    def cost(self) -> CostModel:
        return CostModel(self.graph)

    def _train(self, model: nn.Module, cfg: TrainConfig, checkpoint: Path) -> list[dict]:
        x, y = self.data.train
        val = self.data.val if len(self.data.val[0]) else None
        return finetune(model, x, y, self.data.mean, self.data.std, finetune_config(cfg, self.cfg.seed),
                        checkpoint=checkpoint, val=val, progress=self.progress, device=self.device)

    def _evaluate(self, model: nn.Module, split: tuple[torch.Tensor, torch.Tensor]):
        return evaluate(model, *split, self.data.mean, self.data.std, batch_size=self.cfg.eval.batch_size,
                        device=self.device)

    @contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        """Add this step's wall seconds to timings.json once it succeeds (steps found finished on disk add nothing; a
        step killed midway and resumed counts only its last part)."""
        start = time.perf_counter()
        yield
        path = self.folder.timings
        timings = json.loads(path.read_text()) if path.exists() else {}
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start
        atomic_write_text(path, json.dumps(timings, indent=1))

    def _criterion_context(self) -> CriterionContext:
        """Seed + a fixed sample of ``criterion_batches`` training batches (never validation or test images)."""
        x, y = self.data.train

        def batches():
            loader = TensorLoader(x, y, self.cfg.finetune.batch_size, self.data.mean, self.data.std, shuffle=True,
                                  seed=self.cfg.seed, device=self.device)
            return itertools.islice(loader, self.cfg.criterion_batches)

        return CriterionContext(seed=self.cfg.seed, batches=batches)

    # --- steps ----------------------------------------------------------------------------------------------
    def rank(self) -> Ranking:
        path = self.folder.ranking
        fingerprint = model_fingerprint(self.base)
        if path.exists():
            ranking = Ranking.load(path)
            ranking.check(self.graph, fingerprint)
            self._check_search_targets(ranking, path)
            return ranking
        with self._timed("rank"):
            ranking = self._make_ranking(fingerprint)
        ranking.save(path)
        return ranking

    def _check_search_targets(self, ranking: Ranking, path: Path) -> None:
        """A learned ranking is reused only by a config that searches at the same targets (a folder written before
        the family-aware default searched at the lowest target only)."""
        held = ranking.search.get("targets") or ([ranking.search["target"]] if "target" in ranking.search else None)
        if held is None or get_allocator(self.cfg.allocator).search is None:
            return
        wanted = self.cfg.search_targets
        if len(held) != len(wanted) or any(abs(a - b) > 1e-9 for a, b in zip(held, wanted)):
            raise ConfigError(f"{path} was searched at {', '.join(f'{t:.0%}' for t in held)} MACs but the config "
                              f"searches at {', '.join(f'{t:.0%}' for t in wanted)}: set search.targets to match "
                              "or use another output folder")

    def _make_ranking(self, fingerprint: str) -> Ranking:
        cfg = self.cfg
        scores = compute_scores(cfg.criterion, self.graph, self.base, self._criterion_context())
        if get_allocator(cfg.allocator).search is None:
            layers = ranked_layers(self.graph)
            return Ranking.identity(layers, criterion=cfg.criterion, fingerprint=fingerprint, source=self._source(),
                                    allocator=cfg.allocator, scores=stored_scores(scores, layers))
        s = cfg.search
        targets = cfg.search_targets
        runs = f" x {s.restarts} independent searches" if s.restarts > 1 else ""
        self.log(f"learning the ranking ({cfg.allocator}, {cfg.criterion}, {s.evaluations} candidates{runs}, "
                 f"BN batches {s.bn_batches}, tau {s.tau}, val {s.fitness}) at "
                 f"{', '.join(f'{t:.0%}' for t in targets)} of {self.cost.base_macs / 1e6:.2f}M MACs")
        x, y = self.data.train
        fitness = CandidateFitness(
            lambda net: self._evaluate(net, self.data.val), bn=self._bn_batches(s.bn_batches), tau=s.tau,
            train_loader=lambda i: TensorLoader(x, y, s.batch_size, self.data.mean, self.data.std, shuffle=True,
                                                augment=True, seed=cfg.seed * 100_003 + i, device=self.device),
            sgd=(s.lr, s.momentum, s.weight_decay), metric=s.fitness)
        learned = learn_ranking(
            self.base, self.graph, fitness, [t * self.cost.base_macs for t in targets],
            criterion=cfg.criterion, scores=scores, allocator=cfg.allocator, floors=self.floors,
            mutate_fraction=s.mutate_fraction, seed_uniform=s.seed_uniform,
            search=EvolutionConfig(population=s.population, sample=s.sample, evaluations=s.evaluations, seed=cfg.seed,
                                   restarts=s.restarts),
            state_path=self.folder.search_state, log_path=self.folder.search_log, progress=self.progress,
        )
        return replace(learned, source=self._source(),
                       search={**learned.search, **s.model_dump(mode="json"), "target": targets[0],
                               "targets": list(targets)})

    def _bn_batches(self, count: int) -> list[torch.Tensor]:
        """``count`` fixed training batches for adaptive BN (the same for every network of this run), augmented as
        in fine-tuning: the statistics the network then trains with."""
        x, y = self.data.train
        f = self.cfg.finetune
        return bn_batches(x, y, self.data.mean, self.data.std, count, f.batch_size, augment=f.augment,
                          seed=self.cfg.seed, device=self.device)

    def _source(self) -> dict[str, Any]:
        m = self.cfg.model
        return {"model": m.name, "num_classes": m.num_classes or self.data.num_classes,
                "input_size": list(self.data.input_size), "weights": m.weights, "dataset": self.cfg.data.name}

    def members(self) -> list[MemberFolder]:
        """The family's member folders, by target."""
        return [self.folder.member(member_name(self.cfg.allocator, t)) for t in sorted(self.cfg.targets)]

    def prune(self) -> list[Path]:
        """Cut the ranking at every target (a member on disk cut otherwise, e.g. from an earlier search of this
        folder, is cut again and loses its fine-tune); each member's BN statistics are re-estimated (``bn_batches``)
        before it is saved, and its test top-1 is recorded both as cut (``top1_before_ft``) and after that
        (``top1_after_bn``)."""
        ranking = self.rank()
        solver = ranking.solver(self.graph, self.cost, self.base, self.floors)
        bn: list[torch.Tensor] | None = None
        for target, member in zip(sorted(self.cfg.targets), self.members()):
            keep = solver.solve(target * self.cost.base_macs)
            if member.plan.exists():
                if np.array_equal(Plan.load(member.plan).keep_vector(self.graph), keep):
                    continue
                self.log(f"{member.name} was cut from another ranking: cutting it again")
                shutil.rmtree(member.root)
            with self._timed("prune"):
                net = prune(self.graph, keep)
            before = self._evaluate(net, self.data.test)
            after_bn = None
            if self.cfg.bn_batches:
                bn = bn if bn is not None else self._bn_batches(self.cfg.bn_batches)
                recalibrate_bn(net, bn)
                after_bn = self._evaluate(net, self.data.test).top1
            macs, params = self.cost.costs(keep)
            info = {"method": self.cfg.allocator, "criterion": self.cfg.criterion, "target": target, "macs": macs,
                    "params": params, "top1_before_ft": before.top1, "top5_before_ft": before.top5,
                    "top1_after_bn": after_bn, "ranking": ranking.fingerprint}
            save_pruned(member.root, net, Plan.from_keep_vector(self.graph, keep, source=self._source(), info=info))
            self.log(f"pruned {member.name}: {macs / 1e6:.2f}M MACs ({macs / self.cost.base_macs:.1%}), "
                     f"{params / 1e3:.1f}K params, top-1 before fine-tuning {before.top1:.2%}"
                     + (f" ({after_bn:.2%} after adaptive BN)" if after_bn is not None else ""))
        return [m.root for m in self.members()]

    def finetune(self) -> None:
        self.prune()
        for member in self.members():
            if member.finetuned.exists():
                continue
            net, _ = load_pruned(member.root, self.base)
            self.log(f"fine-tuning {member.name} for {self.cfg.finetune.epochs} epochs")
            with self._timed("finetune"):
                history = self._train(net.to(self.device), self.cfg.finetune, member.finetune_checkpoint)
            save_state_dict(net.state_dict(), member.weights)
            atomic_write_text(member.finetuned, json.dumps(history, indent=1))
            member.finetune_checkpoint.unlink(missing_ok=True)

    def evaluate(self, baseline: bool = True) -> list[dict[str, Any]]:
        """Test accuracy (and latency) of the source network (unless ``baseline`` is False) and every member."""
        self.finetune()
        nets = {"baseline": self.graph.gm} if baseline else {}  # timed as the same fx module type as the members
        rows = [self._row("baseline", self.base, None, self.cost.base_macs, self.cost.base_params, {})] if baseline else []
        for member in self.members():
            net, plan = load_pruned(member.root, self.base)
            nets[member.name] = net.to(self.device)
            rows.append(self._row(member.name, nets[member.name], plan.info.get("target"), plan.info["macs"],
                                  plan.info["params"], plan.info, str(member.root.relative_to(self.out))))
        if self.cfg.eval.latency:
            for row, timings in zip(rows, self._latency(nets).values()):
                row.update(timings)
        write_results(rows, self.out)
        return rows

    def _row(self, name: str, net: nn.Module, target, macs: float, params: float, info: dict, path: str = "") -> dict:
        result = self._evaluate(net, self.data.test)
        assert int(params) == count_params(net), "cost model and network disagree on the parameter count"
        row = {
            "name": name, "method": info.get("method", "baseline"), "criterion": info.get("criterion"),
            "model": self.cfg.model.name,
            "dataset": self.cfg.data.name, "target": target, "macs": macs, "params": params,
            "macs_ratio": macs / self.cost.base_macs, "params_ratio": params / self.cost.base_params,
            "compression": self.cost.base_params / params, "top1": result.top1, "top5": result.top5,
            "loss": result.loss, "top1_before_ft": info.get("top1_before_ft"),
            "top1_after_bn": info.get("top1_after_bn"),
            "finetune_epochs": self.cfg.finetune.epochs if name != "baseline" else None,
            "seed": self.cfg.seed, "config_hash": config_hash(artifact_config(self.cfg)),
            "git_rev": git_revision(), "hardware": hardware_label(), "path": path,
        }
        return row

    def _latency(self, nets: dict[str, nn.Module]) -> dict[str, dict[str, float]]:
        """Per network, `latency_<device>_b<batch>_ms`: all networks timed in interleaved rounds (see
        `measure_interleaved`), on the CPU and, when the run uses one, the GPU."""
        e = self.cfg.eval
        out: dict[str, dict[str, float]] = {name: {} for name in nets}
        for device in ["cpu"] + (["cuda"] if self.device.type == "cuda" else []):
            timings = measure_interleaved(nets, self.data.input_size, e.latency_batch_sizes, device=device,
                                          rounds=e.latency_rounds, threads=e.threads if device == "cpu" else None,
                                          warmup=e.latency_warmup, repeats=e.latency_repeats)
            for name, per_batch in timings.items():
                out[name].update({latency_key(device, b): r.median_ms for b, r in per_batch.items()})
        return out

    def report(self) -> str:
        rows = read_results(self.out)
        title = f"{rows[0]['model']} on {rows[0]['dataset']}" if rows else None
        plot_pareto(rows, self.folder.pareto, title=title)
        return format_table(rows)

    def run(self) -> str:
        self.evaluate()
        return self.report()
