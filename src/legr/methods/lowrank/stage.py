"""``method: [filters, decompose]``: prune + decompose. The method cuts each member part of the way to its target,
then the member's convolutions and Linears are decomposed by truncated SVD to the target itself, at the ranks ENC
chooses (`legr.methods.lowrank.method.decompose`, with the run's ``lowrank`` section: selection, energy, floors).

``decompose.share`` splits each member's reduction ``1 - target``: the method cuts to ``1 - (1 - share)(1 -
target)`` of the source's cost and the SVD takes the rest, so a chain's member meets the same budget (MACs or
parameters, from below) as any other method's and is compared at the same cost. The decomposed member is then
fine-tuned with the run's recipe; by default the pruned member is *not* fine-tuned before it
(``finetune_before: false``), so the chain spends the same fine-tuning steps as a single method. The stage's folder
(``members/<name>/decompose/``) holds the analysis of the pruned network (``lowrank_analysis.json``, resumable),
``ranks.json`` and the fine-tuned weights; a finished member is rebuilt from its ranks and weights, not decomposed
again.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import Field

from legr.engine.cost import price
from legr.methods.base import METHODS
from legr.methods.folders import MemberFolder
from legr.methods.lowrank.analysis import analyze
from legr.methods.lowrank.artifacts import RANKS_FILE, read_record
from legr.methods.lowrank.decompose import apply_ranks
from legr.methods.lowrank.method import decompose
from legr.methods.stages import Member, Stage, register_stage
from legr.models import load_checkpoint
from legr.paths import atomic_write_text
from legr.settings import Settings


class DecomposeSection(Settings):
    """The run-config section ``decompose: {...}`` of the stage (rank selection: the ``lowrank`` section)."""

    share: float = Field(0.5, gt=0, lt=1, description="the part of each member's reduction (1 - target) that the "
                                                      "decomposition takes: the method cuts to 1 - (1 - share) * "
                                                      "(1 - target), the SVD to the target")
    finetune_before: bool = Field(False, description="fine-tune the pruned member before decomposing it too (off: "
                                                     "one fine-tuning per member, as a single method's)")

    def before(self, target: float) -> float:
        """The method's target for a member of target ``target``."""
        return 1.0 - (1.0 - self.share) * (1.0 - target)

    def after(self, before: float) -> float:
        """The member's target from the method's (`before` inverted)."""
        return 1.0 - (1.0 - before) / (1.0 - self.share)


DECOMPOSE_CONFIG: dict[str, tuple[Any, Any]] = {"decompose": (DecomposeSection, DecomposeSection())}


@register_stage
class DecomposeStage(Stage):
    """Prune + decompose (see the module doc): keeps MACs and parameter budgets, fine-tunes the decomposed member."""

    name = "decompose"
    description = ("SVD decomposition of each member to its target, ranks by ENC (section lowrank); the method "
                   "cuts part of the way (decompose.share): prune + decompose")
    budgets = ("macs", "params")
    needs_finetune = True
    config_keys = DECOMPOSE_CONFIG
    entry_keys = ("decompose",)

    @property
    def section(self) -> DecomposeSection:
        return self.run.cfg.decompose

    @classmethod
    def method_target(cls, cfg: Any, target: float) -> float:
        return cfg.decompose.before(target)

    @classmethod
    def finetune_before(cls, cfg: Any) -> bool:
        return cfg.decompose.finetune_before

    def apply(self, member: Member, folder: MemberFolder) -> Member:
        run = self.run
        unit = run.cfg.budget_unit or METHODS[run.cfg.chain[0]].budgets[0]
        target = self.section.after(member.figures["target"])
        cost = price(member.net, run.data.input_size)
        analysis = analyze(member.net, run.data.input_size, {"macs": cost.macs, "params": cost.params}, folder.root,
                           log=run.log)
        source = {"macs": run.cost.base_macs, "params": run.cost.base_params}[unit]
        with run.timed("decompose"):
            net, record, made = decompose(run, run.cfg.lowrank, analysis, member.net, unit, target * source)
        figures = {**member.figures, **made, "target": target, "pruned_target": member.figures["target"],
                   "pruned_macs": member.figures["macs"], "pruned_params": member.figures["params"],
                   "top1_after_bn": None,  # the pruned network's: not this one's
                   "top1_before_ft": run.accuracy(net.to(run.device), run.data.test).top1}  # reported only
        net.cpu()
        run.log(f"decompose: {folder.root.parent.name}: {len(record['ranks'])} layers decomposed, "
                f"{made['macs'] / run.cost.base_macs:.1%} of the source MACs (pruned: "
                f"{member.figures['macs'] / run.cost.base_macs:.1%})")
        atomic_write_text(folder.root / RANKS_FILE, json.dumps({"format": "legr-lowrank/1", **record,
                                                                "figures": figures}, indent=1))
        return Member(net, member.plan, figures, member.chain)

    def load(self, previous: Member, folder: MemberFolder) -> Member:
        """The finished member rebuilt from its ranks (``ranks.json``) and its weights (no SVD, no selection)."""
        record = read_record(folder.root)
        net = apply_ranks(copy.deepcopy(previous.net), {k: int(v) for k, v in record["ranks"].items()}, weights=False)
        load_checkpoint(net, folder.weights)
        return Member(net.eval(), previous.plan, dict(record["figures"]), previous.chain)
