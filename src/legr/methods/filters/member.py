"""Saving a channel-pruned member, shared by every filter method's ``cut`` (filters, gdp): its test top-1 as cut and
after adaptive BN (reported, chooses nothing), its costs, its plan with the method's info, and one log line."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from legr.engine.artifacts import save_pruned
from legr.engine.plan import Plan
from legr.methods.folders import MemberFolder
from legr.training import recalibrate_bn


def save_member(run: Any, member: MemberFolder, net: nn.Module, keep: np.ndarray, info: dict[str, Any], *,
                bn_batches: int, how: str = "", note: str = "") -> dict[str, Any]:
    """Save ``net`` (pruned from ``run.graph`` to ``keep``) into ``member`` with ``info`` plus ``macs``, ``params``,
    ``top1_before_ft``/``top5_before_ft`` (test, as cut) and ``top1_after_bn`` (test, after re-estimating the BN
    statistics on ``bn_batches`` training batches; None when 0). ``how`` and ``note`` go into the log line after the
    member's name and after its costs. Returns the plan's info."""
    before = run.accuracy(net, run.data.test)
    after_bn = None
    if bn_batches:
        recalibrate_bn(net, run.bn_batches(bn_batches))
        after_bn = run.accuracy(net, run.data.test).top1
    macs, params = run.cost.costs(keep)
    info = {**info, "macs": macs, "params": params, "top1_before_ft": before.top1, "top5_before_ft": before.top5,
            "top1_after_bn": after_bn}
    save_pruned(member.root, net, Plan.from_keep_vector(run.graph, keep, source=run.source_info(), info=info))
    run.log(f"pruned {member.name}{how}: {macs / 1e6:.2f}M MACs ({macs / run.cost.base_macs:.1%}), "
            f"{params / 1e3:.1f}K params{note}, top-1 before fine-tuning {before.top1:.2%}"
            + (f" ({after_bn:.2%} after adaptive BN)" if after_bn is not None else ""))
    return info
