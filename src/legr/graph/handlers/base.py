"""The handler registries (one per kind of graph node) and the helpers every handler uses.

A handler takes ``(ctx, node)`` and returns the node's value: a `ChanMap` for a tensor with tracked channels, a list
of them for tuple outputs, or None. Any op that receives tracked channels and has no handler is refused with an
error naming it, so an unknown op can never produce a silently wrong model.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import fx, nn
from torchvision.ops import StochasticDepth

from legr.graph import compensation
from legr.graph.channels import ChanMap
from legr.graph.context import WalkContext

Handler = Callable[[WalkContext, fx.Node], Any]
MODULE_HANDLERS: dict[type, Handler] = {}
FUNCTION_HANDLERS: dict[Any, Handler] = {}
METHOD_HANDLERS: dict[str, Handler] = {}

# Modules kept as leaves while tracing (beyond torch.nn's own): to keep their train/eval behaviour, or because
# their rule is the module's, not the ops inside it (``register(..., leaf=True)``).
LEAF_MODULES: list[type] = [StochasticDepth]


def register(modules=(), functions=(), methods=(), leaf: bool = False) -> Callable[[Handler], Handler]:
    def deco(fn: Handler) -> Handler:
        for m in modules:
            MODULE_HANDLERS[m] = fn
            if leaf:
                LEAF_MODULES.append(m)
        for f in functions:
            FUNCTION_HANDLERS[f] = fn
        for m in methods:
            METHOD_HANDLERS[m] = fn
        return fn

    return deco


def module_handler(module: nn.Module) -> Handler | None:
    for cls in type(module).__mro__:
        if cls in MODULE_HANDLERS:
            return MODULE_HANDLERS[cls]
    return None


def first_map(ctx: WalkContext, node: fx.Node) -> ChanMap:
    return ctx.require_map(node, node.args[0] if node.args else next(iter(node.kwargs.values())))


def consume(ctx: WalkContext, x: ChanMap, node: fx.Node | None = None, bias: tuple[str, str] | None = None,
            out_axis: int = 1, padded: bool = True) -> None:
    """A layer reads ``x``: channels that would not be zero once removed cannot be removed, unless the layer
    ``node`` is affine and folds their constant into a bias exactly (`legr.graph.compensation.consumer`: ``bias`` is
    its own (module, attribute), ``out_axis`` its output channel axis, ``padded`` whether it pads with zeros)."""
    if x.zero_safe or (node is not None and compensation.consumer(ctx, node, x, bias, out_axis, padded)):
        return
    if x.constant and node is not None:
        why = ("reads beside zero padding" if padded else
               "has no bias (legr gives one only to a torch.nn layer), nor a batch norm alone after it, to take")
        ctx.fix(x.ids, f"feeds {ctx.op(node)} through {x.nonzero}, which maps 0 to a non-zero constant that the "
                       f"layer {why}")
    else:
        ctx.fix(x.ids, f"feeds a layer through {x.nonzero}, which maps 0 to a non-zero value")
