"""Stages after a method: a run's ``method:`` may be a chain, ``[filters, quantize]``, whose first name is a family
method (`legr.methods.base.Method`: source network -> one member per budget) and whose other names are stages, each
taking the previous step's member and returning a new one (``members/legr-50/quantize/``: fold, quantize, distill ...).

A stage declares the budget units whose targets its members still meet (``budgets``: a stage that changes the
latency cannot follow a latency budget; the config is refused when it is read) and whether its member needs the
run's fine-tuning after it (``needs_finetune``). ``apply`` must be deterministic: a stage's member is stored as its
weights and its ``member.json`` (the chain that made it and its figures, written last: the stage is done), and read
back by applying the stage to the previous member again and loading those weights. Adding a stage = a class
implementing `Stage` + ``register_stage``; its settings are config keys it declares (``config_keys``), as a method's.
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
    config_keys: ClassVar[dict[str, tuple[Any, Any]]] = {}  # as `Method.config_keys`

    def __init__(self, run: RunContext) -> None:
        self.run = run

    @abstractmethod
    def apply(self, member: Member) -> Member:
        """The new member (a new network: ``member.net`` is left as it is) with its figures; deterministic."""


STAGES = Registry[type[Stage]]("stage")


def register_stage(stage: type[Stage]) -> type[Stage]:
    return STAGES.add(stage.name, stage)


def method_member(method: str, folder: MemberFolder, net: nn.Module, figures: dict[str, Any]) -> Member:
    """The member the method ``method`` wrote in ``folder``, as its `Method.load` returned it: a chain's first link."""
    plan = json.loads(folder.plan.read_text()) if folder.plan.exists() else None
    return Member(net, plan, figures, (method,))


def run_stages(run: RunContext, stages: list[Stage], member: Member,
               folder: MemberFolder) -> tuple[Member, MemberFolder]:
    """The member after every stage, each stage's member in the folder of the one before it under the stage's name
    (made, fine-tuned when the stage asks, or read back when done); the last member and its folder."""
    for stage in stages:
        folder = MemberFolder(folder.root / stage.name)
        member = _stage_member(run, stage, member, folder)
    return member, folder


def _stage_member(run: RunContext, stage: Stage, previous: Member, folder: MemberFolder) -> Member:
    made = stage.apply(previous)
    chain = (*previous.chain, stage.name)
    done = folder.root / MEMBER_FILE
    if done.exists():
        load_checkpoint(made.net, folder.weights)
        return replace(made, figures=json.loads(done.read_text())["figures"], chain=chain)
    make_folder(folder.root)
    figures = {**made.figures, "method": f"{previous.figures['method']}+{stage.name}"}  # e.g. legr+quantize
    cfg = run.cfg.finetune
    if stage.needs_finetune and cfg.epochs > 0:
        run.log(f"fine-tuning {'/'.join(folder.root.parts[-len(chain):])} after {stage.name} for {cfg.epochs} epochs")
        with run.timed("finetune"):
            run.train(made.net.to(run.device), cfg, folder.finetune_checkpoint)
        made.net.cpu().eval()
        figures["finetune_epochs"] = previous.figures.get("finetune_epochs", cfg.epochs) + cfg.epochs
    save_state_dict(made.net.state_dict(), folder.weights)
    atomic_write_text(done, json.dumps({"chain": list(chain), "figures": figures}, indent=1))
    folder.finetune_checkpoint.unlink(missing_ok=True)
    return replace(made, figures=figures, chain=chain)
