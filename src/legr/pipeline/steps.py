"""The pipeline over one run folder: base -> prepare (rank) -> prune -> finetune -> [stages] -> evaluate -> report,
the same for every compression method (`legr.methods.base.Method`: the method named by ``cfg.method`` does prepare,
cut and fine-tune; the stages after it in a chain take each member in turn, `legr.methods.stages`; this module owns
the folder, data, source network, evaluation, latency and results).

Every step writes its artifacts atomically and skips work already on disk, so a killed run restarted with the same
command continues where it stopped (the search and each fine-tune also resume mid-way). The folder's layout:
`legr.pipeline.folder.RunFolder`.

The test split is only used by `evaluate` (and for the before-fine-tune figures recorded at pruning time): search
fitness uses a validation split carved from the training data (BatchNorm statistics are re-estimated on training
batches), and no step picks anything by test accuracy.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import yaml
from torch import nn

from legr.data import Splits, in_memory, load_dataset, split_train_val
from legr.engine.cost import CostModel
from legr.engine.int8 import OnnxModule
from legr.engine.latency_model import LatencyModel, build_latency_model
from legr.engine.latency import measure_interleaved
from legr.engine.surgery import fold_batchnorm
from legr.errors import ConfigError
from legr.graph import analyze
from legr.hardware import git_revision, hardware_label
from legr.methods import METHODS, STAGES, Member, Method
from legr.methods.stages import method_member, method_target, run_stages
from legr.models import build_from_factory, build_model, load_checkpoint, save_state_dict
from legr.models.registry import resolve_factory
from legr.paths import atomic_write_text, make_folder
from legr.pipeline.config import LatencyBudget, RunConfig
from legr.pipeline.config_files import artifact_config, dump_config, held_config
from legr.pipeline.folder import MemberFolder, RunFolder, member_name
from legr.reporting import (
    BASELINE,
    ResultRow,
    config_hash,
    format_table,
    latency_columns,
    plot_pareto,
    read_results,
    warn_if_noisy,
    write_results,
)
from legr.training import EvalResult, TrainConfig, bn_batches, evaluate, finetune
from legr.training.distributed import World, barrier, world


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)


class Pipeline:
    def __init__(self, cfg: RunConfig, out: str | Path, *, progress: bool = True, log: Callable[[str], None] = print,
                 read_only: bool = False):
        """``read_only``: open the finished run in ``out`` (its own config) to read its networks, writing nothing."""
        self.cfg, self.out, self.progress, self.log = cfg, Path(out), progress, log
        self.folder = RunFolder(self.out)
        self.device = resolve_device(cfg.device)
        self._bn: dict[int, list[torch.Tensor]] = {}
        self.parallel: Callable[[str, list[Any]], list[Any]] | None = None  # set by legr.pipeline.ray_dispatch
        self.stages = [STAGES[name](self) for name in cfg.chain[1:]]
        targets = tuple(method_target(cfg, t) for t in cfg.targets)
        self.method_cfg = cfg if targets == tuple(cfg.targets) else cfg.model_copy(update={"targets": targets})
        self.method: Method = METHODS[cfg.chain[0]](self)
        # what needs no training is checked before the folder is claimed: the model builds and its checkpoint fits,
        # the dataset loads, and the method accepts the budgets (e.g. every target above the floor any cut reaches)
        self.method.validate()
        if not read_only:
            self._claim_folder()

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
        if self.cost.latency is not None:
            atomic_write_text(self.folder.latency_model, self.cost.latency.to_json())

    # --- inputs ---------------------------------------------------------------------------------------------
    @cached_property
    def data(self) -> Splits:
        d = self.cfg.data
        ds = load_dataset(d.name, d.root, **d.options)
        if d.val_size >= len(ds.train_x):
            raise ConfigError(f"data.val_size ({d.val_size}) must be smaller than the training set ({len(ds.train_x)})")
        tx, ty, vx, vy = split_train_val(ds.train_x, ds.train_y, d.val_size, seed=d.split_seed)
        val = (in_memory(vx, self.progress), vy)  # streamed images: decoded once (cached), scored many times
        return Splits((tx, ty), val, (ds.test_x, ds.test_y), ds.mean, ds.std, ds.input_size, ds.num_classes)

    @cached_property
    def _network(self) -> nn.Module:
        """The source network as built and loaded, on the run's device, eval mode (`base` trains it in place)."""
        m = self.cfg.model
        weights: bool | str = {None: False, "pretrained": True}.get(m.weights, m.weights)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.cfg.seed)  # a network trained from scratch starts from the same weights
            if m.factory is not None:  # the user's own architecture (their code, named in the config)
                model = build_from_factory(m.factory, m.kwargs, num_classes=m.num_classes or self.data.num_classes,
                                           pretrained=weights)
            else:
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
                self.train(model, self.cfg.base_training, self.folder.base_checkpoint)
                save_state_dict(model.state_dict(), path)
        return model.eval()

    @cached_property
    def graph(self):
        """Channel groups of the source network: they depend on its structure only, so they are found before any
        base training (the graph's modules are the network's, so they hold its weights once trained)."""
        return analyze(self._network, self.data.input_size)

    @cached_property
    def cost(self) -> CostModel:
        """MACs and params of any plan; with a latency budget also its predicted latency, from a latency model of
        the source network measured on this machine (or read from its cache), or the run folder's own once it has
        one (``latency_model.json``: the model its members were cut with, also when `legr eval` runs elsewhere)."""
        cost = CostModel(self.graph)
        budget = self.cfg.budget
        if not isinstance(budget, LatencyBudget) or "latency" not in METHODS[self.cfg.chain[0]].budgets:
            return cost  # a method without latency budgets refuses one when it is built
        if self.folder.latency_model.exists():  # the model this run's members were cut with (eval may run elsewhere)
            return CostModel(self.graph, latency=LatencyModel.from_json(self.folder.latency_model.read_text(),
                                                                        self.graph))
        setting = budget.setting()
        self.log(f"latency model of {self.cfg.model.name} ({setting.label}): measured once per device, then cached")
        model = build_latency_model(self.graph, setting, self.method.latency_probes(self.graph, cost, budget.probes),
                                    progress=self.progress, log=self.log)
        return CostModel(self.graph, latency=model)

    # --- what a method uses (`legr.methods.base.RunContext`) ---------------------------------------------------
    def train(self, model: nn.Module, cfg: TrainConfig, checkpoint: Path,
              before_step: Callable[[int], None] | None = None,
              extra_loss: Callable[[nn.Module], torch.Tensor] | None = None) -> list[dict]:
        x, y = self.data.train
        val = self.data.val if len(self.data.val[0]) else None
        teacher = self.base if cfg.distill is not None else None  # a member learns from its source network
        return finetune(model, x, y, self.data.mean, self.data.std, cfg.with_seed(self.cfg.seed),
                        checkpoint=checkpoint, val=val, progress=self.progress, device=self.device, teacher=teacher,
                        before_step=before_step, extra_loss=extra_loss)

    def accuracy(self, model: nn.Module, split: tuple[torch.Tensor, torch.Tensor]) -> EvalResult:
        """Top-1 etc. on ``split``, on the run's device (an onnxruntime network, the int8 stage's: on the CPU)."""
        device = torch.device("cpu") if isinstance(model, OnnxModule) else self.device
        return evaluate(model, *split, self.data.mean, self.data.std, batch_size=self.cfg.eval.batch_size,
                        device=device)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Add this step's wall seconds to timings.json once it succeeds (steps found finished on disk add nothing; a
        step killed midway and resumed counts only its last part)."""
        start = time.perf_counter()
        yield
        path = self.folder.timings
        timings = json.loads(path.read_text()) if path.exists() else {}
        timings[step] = timings.get(step, 0.0) + time.perf_counter() - start
        atomic_write_text(path, json.dumps(timings, indent=1))

    def bn_batches(self, count: int) -> list[torch.Tensor]:
        """``count`` fixed training batches for adaptive BN (the same for every network of this run), augmented as
        in fine-tuning: the statistics the network then trains with."""
        if count not in self._bn:
            x, y = self.data.train
            f = self.cfg.finetune
            self._bn[count] = bn_batches(x, y, self.data.mean, self.data.std, count, f.batch_size, augment=f.augment,
                                         seed=self.cfg.seed, device=self.device)
        return self._bn[count]

    def source_info(self) -> dict[str, Any]:
        m = self.cfg.model
        info = {"model": m.name, "num_classes": m.num_classes or self.data.num_classes,
                "input_size": list(self.data.input_size), "weights": m.weights, "dataset": self.cfg.data.name}
        if m.factory is not None:  # a saved member rebuilds its source from these (`legr.engine.artifacts`)
            info.update(factory=resolve_factory(m.factory), kwargs=dict(m.kwargs))
        return info

    # --- steps ----------------------------------------------------------------------------------------------
    @cached_property
    def prepared(self) -> Any:
        """The method's one-time work (a ranking, a sensitivity analysis ...), computed or read back."""
        return self.method.prepare()

    def rank(self) -> Any:
        """`legr rank`: the method's one-time work (for filter pruning: the ranking)."""
        return self.prepared

    def members(self) -> list[MemberFolder]:
        """The family's member folders, by target."""
        return [self.folder.member(member_name(self.method.prefix, t)) for t in sorted(self.cfg.targets)]

    def prune(self) -> list[Path]:
        """Cut every member (work already on disk and still valid is kept)."""
        for target, member in zip(sorted(self.method_cfg.targets), self.members()):
            self.method.cut(self.prepared, target, member)
        return [m.root for m in self.members()]

    def finetune(self) -> None:
        """Fine-tune every member (unless the chain's first stage takes it as cut), then apply the chain's stages
        to it (work already on disk is kept). Data-parallel (launched by torchrun, `legr.training.distributed`):
        the ranks train the source network together (when base_training asks for it), rank 0 cuts the members the
        others then read (run `legr prune` first: a search leaves every other process waiting), every rank trains
        each member on its share of the batches, and rank 0 writes."""
        w = world()
        if w.size > 1:  # every rank trains the source network (base_training) together, its channel groups found
            self.graph  # noqa: B018  first, on the network as built (DDP on GPUs turns its BatchNorms into SyncBN)
            self.base  # noqa: B018
        if w.main:
            self.prune()
        barrier(w)
        for member in self.members():
            self.finetune_member(member, w)

    def needs_finetune(self, member: MemberFolder) -> bool:
        """Whether ``member`` (already cut) is still to be fine-tuned (never, when the chain's first stage takes it as
        cut)."""
        before = not self.stages or self.stages[0].finetune_before(self.cfg)
        return before and not member.finetuned.exists()

    def finetune_member(self, member: MemberFolder, w: World = World()) -> None:
        """Fine-tune one member already cut (resuming) and apply the chain's stages (a Ray task's work:
        `legr.pipeline.ray_dispatch`)."""
        if self.needs_finetune(member):
            self.method.finetune(member)
            barrier(w)  # rank 0's files are on disk before any rank reads them
        if self.stages:
            self.load(member)

    def load(self, member: MemberFolder) -> tuple[Member, MemberFolder]:
        """A member as the run's chain leaves it (the method's, after every stage) and the folder holding it."""
        net, info = self.method.load(member)
        return run_stages(self, self.stages, method_member(self.method.name, member, net, info), member)

    def evaluate(self, baseline: bool = True) -> list[ResultRow]:
        """Test accuracy (and latency) of the source network (unless ``baseline`` is False) and every member."""
        self.finetune()
        nets = {BASELINE: self.graph.gm} if baseline else {}  # timed as the same fx module type as the members
        source = {"macs": self.cost.base_macs, "params": self.cost.base_params}
        if self.cost.latency is not None:
            source["predicted_ms"] = self.cost.latency.base_ms
        rows = [self._row(BASELINE, self.base, source)] if baseline else []
        for member in self.members():
            last, folder = self.load(member)
            nets[member.name] = last.net.to(self.device)
            rows.append(self._row(member.name, nets[member.name], last.figures, str(folder.root.relative_to(self.out))))
        if self.cfg.eval.latency:
            for row, timings in zip(rows, self._latency(nets).values()):
                row.update(timings)
        write_results(rows, self.out)
        return rows

    def _row(self, name: str, net: nn.Module, info: dict[str, Any], path: str = "") -> ResultRow:
        result = self.accuracy(net, self.data.test)
        member = name != BASELINE
        macs, params = info["macs"], info["params"]
        copied = ("sparse_macs", "dense_params", "int8_bytes", "onnx_bytes", "macs_worst", "density")
        extra = {k: info[k] for k in copied if k in info}
        return {
            "name": name, "method": info["method"] if member else BASELINE, "criterion": info.get("criterion"),
            "model": self.cfg.model.name, "dataset": self.cfg.data.name, "target": info.get("target"),
            "budget": self.method.budget if member else None, "macs": macs, "params": params,
            "macs_ratio": macs / self.cost.base_macs, "params_ratio": params / self.cost.base_params,
            "compression": self.cost.base_params / params, "top1": result.top1, "top5": result.top5,
            "loss": result.loss, "test_images": result.n, "top1_before_ft": info.get("top1_before_ft"),
            "top1_after_bn": info.get("top1_after_bn"), "predicted_ms": info.get("predicted_ms"), **extra,
            "finetune_epochs": info.get("finetune_epochs", self.cfg.finetune.epochs) if member else None,
            "seed": self.cfg.seed, "config_hash": config_hash(artifact_config(self.cfg)),
            "git_rev": git_revision(), "hardware": hardware_label(), "path": path,
        }

    def _latency(self, nets: dict[str, nn.Module]) -> dict[str, dict[str, float]]:
        """Per network, `latency_<device>_b<batch>_ms`: all networks timed in interleaved rounds (see
        `measure_interleaved`), on the CPU and, when the run uses one, the GPU (not an onnxruntime network: it runs
        on the CPU, its CPU figure is onnxruntime's); batch norms folded first when ``eval.fold_bn``."""
        e = self.cfg.eval
        threads, batches = self.cfg.latency_timing()
        if e.fold_bn:
            nets = {name: fold_batchnorm(net) for name, net in nets.items()}
        out: dict[str, dict[str, float]] = {name: {} for name in nets}
        for device in ["cpu"] + (["cuda"] if self.device.type == "cuda" else []):
            timed = {n: net for n, net in nets.items() if device == "cpu" or not isinstance(net, OnnxModule)}
            timings = measure_interleaved(timed, self.data.input_size, batches, device=device,
                                          rounds=e.latency_rounds, threads=threads if device == "cpu" else None,
                                          warmup=e.latency_warmup, repeats=e.latency_repeats)
            for name, per_batch in timings.items():
                out[name].update(latency_columns(device, per_batch))
        warn_if_noisy(out, self.log)
        return out

    def report(self) -> str:
        """Draw pareto.png, write report.html (`legr.reporting.html`) and return the results table."""
        from legr.reporting.html import write_report_html  # altair: imported when a report is written

        rows = read_results(self.out)
        title = f"{rows[0]['model']} on {rows[0]['dataset']}" if rows else None
        plot_pareto(rows, self.folder.pareto, title=title)
        write_report_html(self.out)
        return format_table(rows)

    def run(self) -> str:
        self.evaluate()
        return self.report()
