"""The multiply-accumulates no plan changes: those of the channel barriers (ops the analysis could not follow, whose
channels stay whole) and of nodes that compute on untracked tensors only, counted as `torch.utils.flop_counter`
counts them, so the cost model keeps matching torch's own count."""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from legr.graph.context import WalkContext


class _NodeMacs(fx.Interpreter):
    """Runs the graph, counting the multiply-accumulates of the named nodes as `torch.utils.flop_counter` does."""

    def __init__(self, gm: fx.GraphModule, names: set[str]) -> None:
        super().__init__(gm)
        self.names = names
        self.macs: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.name not in self.names:
            return super().run_node(n)
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            out = super().run_node(n)
        self.macs[n.name] = counter.get_total_flops() / 2
        return out


_COMPUTING = ("matmul", "bmm", "mm", "addmm", "baddbmm", "einsum", "linear", "conv1d", "conv2d", "conv3d",
              "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "scaled_dot_product_attention")


def _untracked_computing(ctx: WalkContext, gm: fx.GraphModule) -> set[str]:
    """Nodes that multiply-accumulate on untracked tensors only (a position-bias MLP on a constant table): no plan
    changes them, so their MACs are a constant of every cost."""
    found = set()
    for n in gm.graph.nodes:
        if n.op not in ("call_module", "call_function", "call_method") or ctx.values.get(n) is not None:
            continue
        if n.op == "call_module":
            if next(ctx.module(n).parameters(), None) is not None:
                found.add(n.name)
        elif getattr(n.target, "__name__", str(n.target)) in _COMPUTING:
            found.add(n.name)
    return found


def count_fixed_macs(ctx: WalkContext, gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Each barrier's own MACs per image (``Barrier.macs``) and those of the untracked computing nodes (a position
    table's MLP: ``ctx.untracked_macs``), as torch counts them on one image (what the cost model counts: a
    function of constants counts once). One forward, only when there are any."""
    untracked = _untracked_computing(ctx, gm) - {b.node for b in ctx.barriers}
    if not ctx.barriers and not untracked:
        return
    names = untracked | {b.node for b in ctx.barriers}
    try:
        counter, images = _NodeMacs(gm, names), 1
        with torch.no_grad():
            counter.run(example[:1])
    except Exception:  # a graph recorded for the example's batch: count there, per image
        counter, images = _NodeMacs(gm, names), example.shape[0]
        with torch.no_grad():
            counter.run(example)
    for b in ctx.barriers:
        b.macs = counter.macs.get(b.node, 0.0) / images
    ctx.untracked_macs = sum(counter.macs.get(n, 0.0) for n in untracked) / images
