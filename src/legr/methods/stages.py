"""Stages after a method: a run's ``method:`` may be a chain, ``[filters, quantize]``, whose first name is a family
method (`legr.methods.base.Method`: source network -> one member per budget) and whose other names are stages, each
taking the previous step's member and returning a new one (``members/legr-50/quantize/``: fold, quantize, distill ...).

A stage declares the budget units whose targets its members still meet (``budgets``: a stage that changes the
latency cannot follow a latency budget; the config is refused when it is read) and whether its member needs the
run's fine-tuning after it (``needs_finetune``). ``apply`` gets the member's folder (made before): a stage whose
network is a file of its own (the ``int8`` stage's ONNX model) writes it there. A stage's member is stored by the
stage's ``save`` (default: its weights) and its ``member.json`` (the chain that made it and its figures, written last:
the stage is done), and read back by the stage's ``load`` (default: ``apply`` again to the previous member — it must
be deterministic — and those weights loaded; a stage with its own file opens it instead, redoing nothing). A stage
may take part of a member's budget itself (``method_target``: the method then cuts to a looser target) and may take
the method's member as cut rather than fine-tuned (``finetune_before``). Adding a stage = a class implementing
`Stage` + ``register_stage``; its settings are config keys it declares (``config_keys``), as a method's.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from torch import nn

from legr.engine.cost import BudgetUnit
from legr.methods.base import RunContext
from legr.methods.folders import MemberFolder
from legr.models import load_checkpoint, save_state_dict
from legr.paths import atomic_write_text, make_folder
from legr.registry import Registry

MEMBER_FILE = "member.json"


@dataclass(frozen=True)
class Member:
    """A family member as the next stage takes it: its network (CPU, eval mode), the plan of the method that cut it
    (its ``plan.json``, None when it wrote none), its figures (``method``, ``target``, ``macs``, ``params`` ...) and
    the chain of steps that made it."""

    net: nn.Module
    plan: dict[str, Any] | None
    figures: dict[str, Any]
    chain: tuple[str, ...]


class Stage(ABC):
    """One step applied to every member of a family after its method (see the module doc)."""

    name: ClassVar[str]
    description: ClassVar[str]
    budgets: ClassVar[tuple[BudgetUnit, ...]]  # the budget units whose targets its members still meet
    needs_finetune: ClassVar[bool] = False  # its member is fine-tuned with the run's recipe after it
    last: ClassVar[bool] = False  # it ends a chain: its member is no PyTorch network another stage could take
    config_keys: ClassVar[dict[str, tuple[Any, Any]]] = {}  # as `Method.config_keys`
    entry_keys: ClassVar[tuple[str, ...]] = ()  # as `Method.entry_keys`: what a comparison entry may set for itself

    def __init__(self, run: RunContext) -> None:
        self.run = run

    @classmethod
    def method_target(cls, cfg: Any, target: float) -> float:
        """The target the step before this stage cuts to for a member of target ``target`` under the run config
        ``cfg`` (a stage that takes part of the budget itself, like ``decompose``, asks for a looser cut); default:
        the same."""
        return target

    @classmethod
    def finetune_before(cls, cfg: Any) -> bool:
        """Whether the method's member is fine-tuned before this stage (as the first stage of a chain) or goes into
        it as cut; default: fine-tuned."""
        return True

    @abstractmethod
    def apply(self, member: Member, folder: MemberFolder) -> Member:
        """The new member (a new network: ``member.net`` is left as it is) with its figures; deterministic.
        ``folder`` is where it is stored: what the network needs on disk (an ONNX file it runs) goes there."""

    def save(self, net: nn.Module, folder: MemberFolder) -> None:
        """Store the finished member's network (fine-tuned when the stage asks) in ``folder``: its weights."""
        save_state_dict(net.state_dict(), folder.weights)

    def load(self, previous: Member, folder: MemberFolder) -> Member:
        """The member `save` stored in ``folder`` (its figures are read from ``member.json``): the stage applied to
        ``previous`` again, then the stored weights loaded."""
        made = self.apply(previous, folder)
        load_checkpoint(made.net, folder.weights)
        return made


STAGES = Registry[type[Stage]]("stage")


def register_stage(stage: type[Stage]) -> type[Stage]:
    return STAGES.add(stage.name, stage)


def method_member(method: str, folder: MemberFolder, net: nn.Module, figures: dict[str, Any]) -> Member:
    """The member the method ``method`` wrote in ``folder``, as its `Method.load` returned it: a chain's first link."""
    plan = json.loads(folder.plan.read_text()) if folder.plan.exists() else None
    return Member(net, plan, figures, (method,))


def method_target(cfg: Any, target: float) -> float:
    """The target a chain's method cuts a member of target ``target`` to: its stages, last first, may each take part
    of the budget (`Stage.method_target`)."""
    for name in reversed(cfg.chain[1:]):
        target = STAGES[name].method_target(cfg, target)
    return target


def run_stages(run: RunContext, stages: list[Stage], member: Member,
               folder: MemberFolder) -> tuple[Member, MemberFolder]:
    """The member after every stage, each stage's member in the folder of the one before it under the stage's name
    (made, fine-tuned when the stage asks, or read back when done); the last member and its folder."""
    for stage in stages:
        folder = MemberFolder(folder.root / stage.name)
        member = _stage_member(run, stage, member, folder)
    return member, folder


def _stage_member(run: RunContext, stage: Stage, previous: Member, folder: MemberFolder) -> Member:
    chain = (*previous.chain, stage.name)
    done = folder.root / MEMBER_FILE
    if done.exists():
        return replace(stage.load(previous, folder), figures=json.loads(done.read_text())["figures"], chain=chain)
    make_folder(folder.root)
    made = stage.apply(previous, folder)
    figures = {**made.figures, "method": f"{previous.figures['method']}+{stage.name}"}  # e.g. legr+quantize
    cfg = run.cfg.finetune
    if stage.needs_finetune and cfg.epochs > 0:
        run.log(f"fine-tuning {'/'.join(folder.root.parts[-len(chain):])} after {stage.name} for {cfg.epochs} epochs")
        with run.timed("finetune"):
            run.train(made.net.to(run.device), cfg, folder.finetune_checkpoint)
        made.net.cpu().eval()
        tuned = cfg.epochs if len(previous.chain) > 1 or stage.finetune_before(run.cfg) else 0  # the method's
        figures["finetune_epochs"] = previous.figures.get("finetune_epochs", tuned) + cfg.epochs
    stage.save(made.net, folder)
    atomic_write_text(done, json.dumps({"chain": list(chain), "figures": figures}, indent=1))
    folder.finetune_checkpoint.unlink(missing_ok=True)
    return replace(made, figures=figures, chain=chain)
