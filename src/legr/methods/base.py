"""What a compression method provides to the pipeline, so that `legr run`, `legr compare`, `legr eval` and the report
treat every method alike.

A method turns the run's source network into a *family*: one member per budget. It declares the units its budgets
may count (``budgets``: ``macs``, ``params`` and/or ``latency``, targets being fractions of the source network's; the first is the
default, the run's ``budget`` key picks another), and implements four steps over the run folder, each resumable (work
found finished on disk is not redone):

- ``prepare()``: the one-time work shared by every member (learn a ranking, run a sensitivity analysis ...);
- ``cut(prepared, target, member)``: produce the member for one budget in its folder (``legr prune``);
- ``finetune(member)``: recover its accuracy (default: the run's SGD fine-tune; a method that retrains while it
  cuts, such as Han et al.'s rounds, does nothing here);
- ``load(member)``: the member's network and its figures (``macs``, ``params``, ``target`` ...) for evaluation.

The pipeline gives a method its `RunContext` (data splits, source network, folder, logging, training helpers).
Adding a method = a class implementing `Method` + ``register_method`` (`legr methods` lists it; a config selects it
with ``method: <name>``); its settings are config keys it declares (``config_keys``: a typed section of its own),
validated with the rest of the config when it is read.
"""

from __future__ import annotations

import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
import torch
from torch import nn

from legr.data import Splits
from legr.engine.cost import BudgetUnit
from legr.errors import ConfigError, LegrError
from legr.methods.folders import MemberFolder, MethodFolder
from legr.models import save_state_dict
from legr.paths import atomic_write_text
from legr.registry import Registry

if TYPE_CHECKING:
    from legr.engine.cost import CostModel
    from legr.graph import ChannelGraph
    from legr.training import EvalResult, TrainConfig


class RunContext(Protocol):
    """What a run offers its method (`legr.pipeline.steps.Pipeline` implements it)."""

    cfg: Any  # the run's typed configuration (`legr.pipeline.config.RunConfig`: built from every method's keys)
    method_cfg: Any  # ... as the method sees it: each target the one it cuts to (`Stage.method_target`)
    folder: MethodFolder  # the run folder (what a method reads and writes in it)
    data: Splits  # train / val / test splits, normalization, input size, classes
    device: torch.device
    progress: bool
    base: nn.Module  # the source network (trained or adapted first when the run asks), eval mode
    graph: ChannelGraph
    cost: CostModel
    # runs a method's units of work in other processes: parallel(kind, items) returns what the method's own
    # `Method.work(kind, items)` returns, computed by workers that open the run from its folder (Ray); None: here
    parallel: Callable[[str, list[Any]], list[Any]] | None

    def log(self, message: str) -> None: ...

    def timed(self, step: str) -> AbstractContextManager[None]: ...

    def train(self, model: nn.Module, cfg: TrainConfig, checkpoint: Path,
              before_step: Callable[[int], None] | None = None,
              extra_loss: Callable[[nn.Module], torch.Tensor] | None = None) -> list[dict]: ...
    # (`legr.training.finetune` on the training split, validation rows, the run's seed, device and progress)

    def accuracy(self, model: nn.Module, split: tuple[torch.Tensor, torch.Tensor]) -> EvalResult: ...

    def bn_batches(self, count: int) -> list[torch.Tensor]: ...

    def source_info(self) -> dict[str, Any]: ...


class WorkUnits(Protocol):
    """Unit times measured on the source network before a long run starts (`legr.pipeline.estimate`), from which a
    method estimates its own one-time work (`Method.prepare_seconds`); ``fraction``: a network's size as a fraction
    of the source network's MACs."""

    model: nn.Module  # the source network

    def candidate(self, fraction: float, bn_batches: int, tau: int, batch_size: int) -> float:
        """Cutting a network of this size, adaptive BN on ``bn_batches`` batches, ``tau`` SGD steps, validation."""

    def validation(self, fraction: float) -> float:
        """One pass over the validation split."""


class Method(ABC):
    """One way of compressing the source network into a family (see the module doc)."""

    name: ClassVar[str]
    description: ClassVar[str]
    budgets: ClassVar[tuple[BudgetUnit, ...]]
    # the run-config keys this method owns: key -> (type, default or pydantic Field), e.g. a section of its own
    # ``{"mymethod": (MySettings, MySettings())}`` (a `legr.settings.Settings`); the run config is built from them
    config_keys: ClassVar[dict[str, tuple[Any, Any]]] = {}
    # the keys of config_keys an entry of a comparison may set for itself (a section: as changes to the shared one)
    entry_keys: ClassVar[tuple[str, ...]] = ()

    channel_plans: ClassVar[bool] = False  # its members are channel cuts of the source (plan.json keep vectors)
    # the settings under which a run of it does no more than the source network (a comparison's source-only run)
    source_settings: ClassVar[dict[str, Any]] = {}

    @classmethod
    def member_prefix(cls, settings: Mapping[str, Any]) -> str:
        """Member folder names: ``<prefix>-<target in %>``, for a run (or comparison entry) with these settings."""
        return cls.name

    @classmethod
    def entry_label(cls, settings: Mapping[str, Any]) -> tuple[str, str]:
        """The (criterion, allocator) cells of a comparison's tables for an entry with these settings."""
        return "-", cls.name

    @classmethod
    def searches(cls, settings: Mapping[str, Any]) -> bool:
        """Whether a run with these settings runs a search (whose cost a comparison's ``pipeline_cost`` times)."""
        return False

    @classmethod
    def identity(cls, cfg: Any, held: dict[str, Any]) -> dict[str, Any]:
        """What of the run's config determines a run folder of this method (a folder refuses a config with another
        identity): ``held`` is the config's dump less the evaluation-only keys and the other methods' keys."""
        return held

    @classmethod
    def parts(cls) -> list[tuple[str, str, str]]:
        """(kind, name, description) of the registered parts its settings choose from (`legr methods` lists them)."""
        return []

    @classmethod
    def prepare_seconds(cls, cfg: Any, folder: MethodFolder, units: WorkUnits) -> float:
        """What `prepare` still has to do in ``folder`` for a run with config ``cfg``, in seconds estimated from
        ``units`` (work found finished on disk is not counted)."""
        return 0.0

    @classmethod
    def search_cost(cls, folder: MethodFolder) -> dict[str, Any]:
        """What its finished one-time work in ``folder`` cost, read from its files, e.g. ``fitness_evaluations``:
        the networks a search scored (a comparison reports it beside the work's seconds). Default: nothing."""
        return {}

    def __init__(self, run: RunContext) -> None:
        self.run = run
        wanted = run.cfg.budget_unit
        if wanted is not None and wanted not in self.budgets:
            raise ConfigError(f"method {self.name} takes budgets in {' or '.join(self.budgets)}, not {wanted}: "
                              "remove the budget key or choose another method")

    def _steps_per_epoch(self, recipe: TrainConfig) -> int:
        """The SGD steps of one epoch of ``recipe`` on the run's training split (as `legr.training.finetune` runs)."""
        n = len(self.run.data.train[1])
        full = n // recipe.batch_size if n > recipe.batch_size else 1
        return min(full, recipe.steps_per_epoch or full)

    @property
    def budget(self) -> BudgetUnit:
        """The unit of this run's targets."""
        return self.run.cfg.budget_unit or self.budgets[0]

    def validate(self) -> None:
        """Refuse (with a one-line `LegrError`) what can be checked before any training: e.g. unreachable budgets."""

    @classmethod
    def latency_probes(cls, graph: ChannelGraph, cost: CostModel, count: int, seed: int = 0) -> list[np.ndarray]:
        """The keep vectors a latency model of the source network (``graph``; ``cost``: its MACs and params) is
        fitted on: the full network and ``count`` others drawn with ``seed``. Only a method whose ``budgets`` hold
        ``latency`` is asked."""
        raise NotImplementedError(f"method {cls.name} takes latency budgets: it chooses the plans they are "
                                  "modelled on (latency_probes)")

    @property
    def prefix(self) -> str:
        """Member folder names: ``<prefix>-<target in %>``."""
        return self.member_prefix(self.run.cfg.model_dump())

    @classmethod
    def member_training(cls, cfg: Any, target: float) -> list[tuple[float, TrainConfig]]:
        """What one member of ``target`` trains, as (network size as a fraction of the source's MACs, recipe) pairs
        in order: the last is `finetune`'s recipe, any before it runs in `cut` (GDP's dynamic phase). The estimate of
        a run's wall time counts them. Default: the run's fine-tune, on the member (channel cuts) or a network of the
        source's size."""
        return [(target if cls.channel_plans else 1.0, cfg.finetune)]

    @classmethod
    def member_files(cls, folder: MethodFolder, member: MemberFolder) -> list[Path]:
        """The files a cut member's network is built from, in the run folder ``folder``: a comparison times a member
        again when they change, an estimate counts a member whose files are missing as still to cut. Default: its
        plan.json when it has one, else its weights."""
        return [member.plan if member.plan.exists() else member.weights]

    def sized_network(self, fraction: float) -> nn.Module:
        """A network of about ``fraction`` of the source MACs, built as this method builds a member (what
        `legr.pipeline.estimate` times work of that size on). Default: a copy of the source network (a method whose
        members keep the source's dense shape)."""
        return copy.deepcopy(self.run.base)

    @abstractmethod
    def prepare(self) -> Any:
        """The one-time work every member shares (resumable); returns it."""

    def work(self, kind: str, items: list[Any]) -> list[Any]:
        """Units of ``prepare``'s work a worker computes for the run (``RunContext.parallel``), one result per item
        (filters: ``candidates``, search candidates scored). Default: the method has none."""
        raise LegrError(f"method {self.name} has no work '{kind}' to hand to other processes")

    def describe(self, prepared: Any) -> str:
        """One line on what `prepare` produced (`legr rank` prints it)."""
        return f"{self.name}: prepared"

    @abstractmethod
    def cut(self, prepared: Any, target: float, member: MemberFolder) -> None:
        """Write the member for ``target`` (a fraction of the source's ``budget`` unit) into ``member``, from what `prepare` returned; a member already there and still valid is kept."""

    def finetune(self, member: MemberFolder) -> None:
        """Recover the member's accuracy with its fine-tuning recipe (`member_training`'s last; resumable;
        ``member.finetuned`` marks it done; a recipe of 0 epochs leaves the member as cut)."""
        net, info = self.load(member)
        cfg = self.member_training(self.run.cfg, info["target"])[-1][1]
        if cfg.epochs == 0:  # the members are evaluated as cut (and BN-recalibrated)
            atomic_write_text(member.finetuned, "[]")
            return
        self.run.log(f"fine-tuning {member.name} for {cfg.epochs} epochs")
        with self.run.timed("finetune"):
            history = self.run.train(net.to(self.run.device), cfg, member.finetune_checkpoint)
        save_state_dict(net.state_dict(), member.weights)
        atomic_write_text(member.finetuned, json.dumps(history, indent=1))
        member.finetune_checkpoint.unlink(missing_ok=True)

    @abstractmethod
    def load(self, member: MemberFolder) -> tuple[nn.Module, dict[str, Any]]:
        """The member's network (on the CPU, eval mode) and its figures: at least ``target``, ``macs``, ``params``
        (what the budget unit counts: for a sparse network, its non-zero parameters)."""


METHODS = Registry[type[Method]]("method")


def register_method(method: type[Method]) -> type[Method]:
    return METHODS.add(method.name, method)
