"""Trace a model and find its channel groups: the sets of channels that must be removed together."""

from __future__ import annotations

import contextlib
import io
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from legr.errors import LegrError, UnsupportedModelError
from legr.graph import handlers
from legr.graph.channels import ChanMap, Compensation, Layer, UnionFind
from legr.graph.context import Barrier, ChannelRefusal, Patch, WalkContext
from legr.graph.fixed_macs import count_fixed_macs
from legr.graph.keep import KeepRules
from legr.graph.tracing import OPAQUE, trace


@dataclass(frozen=True)
class Group:
    """Channels removed together. ``classes`` lists the group's channels (global class ids) in group order:
    a plan's kept indices index this array. ``producers`` are the layers whose output filters create them."""

    name: str
    classes: np.ndarray
    producers: tuple[str, ...]
    prunable: bool
    reason: str | None = None

    @property
    def size(self) -> int:
        return len(self.classes)


class ChannelGraph:
    """Result of `analyze`: the traced module, its layers, channel classes and groups."""

    def __init__(self, gm: fx.GraphModule, ctx: WalkContext, input_shape: tuple[int, ...]) -> None:
        self.gm = gm
        self.input_shape = input_shape
        self.layers: dict[str, Layer] = ctx.layers
        self.node_ids = _node_ids(gm, ctx)
        self.patches: list[Patch] = ctx.patches
        self.compensations: list[Compensation] = ctx.compensations  # constants of removed channels to fold into biases
        self.barriers: list[Barrier] = ctx.barriers
        self.untracked_macs: float = ctx.untracked_macs
        roots = ctx.uf.roots()
        _, self.class_of = np.unique(roots, return_inverse=True)  # element -> class
        self.num_classes = int(self.class_of.max()) + 1 if len(self.class_of) else 0
        self.fixed = {int(self.class_of[e]): reason for e, reason in sorted(ctx.fixed.items(), reverse=True)}
        self.groups = self._build_groups(self.fixed)
        self.group_by_name = {g.name: g for g in self.groups}
        self.segments = [np.unique(self.class_of[ids]) for ids, _ in ctx.segments]  # floors apply to each, too
        self.segment_ops = [op for _, op in ctx.segments]  # the split or slice taking each segment
        self.local_index = np.full(self.num_classes, -1, dtype=np.int64)
        for g in self.groups:
            self.local_index[g.classes] = np.arange(g.size)

    def _build_groups(self, fixed: Mapping[int, str]) -> list[Group]:
        producers = [layer for layer in self.layers.values() if layer.producer_ids is not None]
        guf = UnionFind()
        guf.add(self.num_classes)
        for layer in producers:
            cls = self.classes(layer.producer_ids)
            for c in cls[1:].tolist():
                guf.union(int(cls[0]), c)
        members: dict[int, list[Layer]] = {}
        for layer in producers:
            members.setdefault(guf.find(int(self.classes(layer.producer_ids)[0])), []).append(layer)
        groups = []
        for layers in members.values():
            widest = max(layers, key=lambda layer: len(np.unique(self.classes(layer.producer_ids))))
            order = [widest] + [layer for layer in layers if layer is not widest]
            classes = _unique_in_order(np.concatenate([self.classes(layer.producer_ids) for layer in order]))
            reasons = [fixed[c] for c in classes.tolist() if c in fixed]
            groups.append(
                Group(layers[0].name, classes, tuple(layer.name for layer in layers), not reasons, reasons[0] if reasons else None)
            )
        return groups

    # --- element / class helpers ----------------------------------------------------------------------------
    def classes(self, ids: np.ndarray) -> np.ndarray:
        return self.class_of[ids]

    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def producer_positions(self, layer_name: str) -> np.ndarray:
        """For each output filter of a producer layer, its index in its group."""
        return self.local_index[self.classes(self.layers[layer_name].producer_ids)]

    def group_of(self, layer_name: str) -> Group:
        cls = int(self.classes(self.layers[layer_name].producer_ids)[0])
        return next(g for g in self.groups if cls in set(g.classes.tolist()))

    # --- plans <-> keep vectors -----------------------------------------------------------------------------
    @cached_property
    def keep_rules(self) -> KeepRules:
        """What every keep vector must respect (`legr.graph.keep`)."""
        return KeepRules(self)

    def check_keep(self, keep: Any, what: str = "keep vector") -> np.ndarray:
        """``keep`` as a float 0/1 vector, or `LegrError` naming the first rule it breaks (`KeepRules.check`)."""
        return self.keep_rules.check(keep, what)

    def keep_vector(self, keep: Mapping[str, Sequence[int]]) -> np.ndarray:
        """1.0 for each kept class, 0.0 for each removed one, from ``{group name: kept indices}`` (checked like any
        keep vector: `check_keep`)."""
        vec = np.ones(self.num_classes)
        for name, kept in keep.items():
            group = self.group_by_name.get(name)
            if group is None:
                raise LegrError(f"plan names unknown channel group '{name}' (the plan does not fit this model)")
            kept = np.asarray(kept, dtype=np.int64)
            if len(kept) and (kept.min() < 0 or kept.max() >= group.size or len(np.unique(kept)) != len(kept)):
                raise LegrError(f"plan for group '{name}' has invalid or repeated indices (group size {group.size})")
            mask = np.zeros(group.size)
            mask[kept] = 1.0
            vec[group.classes] = mask
        return self.check_keep(vec, "plan")

    def keep_dict(self, vec: np.ndarray) -> dict[str, tuple[int, ...]]:
        return {g.name: tuple(np.flatnonzero(vec[g.classes] > 0).tolist()) for g in self.prunable_groups()}

    def kept_positions(self, ids: np.ndarray, vec: np.ndarray) -> np.ndarray:
        return np.flatnonzero(vec[self.classes(ids)] > 0)

    @property
    def barrier_macs(self) -> float:
        """Multiply-accumulates per image that no plan changes (`legr.engine.cost.CostModel` adds them to every
        cost): those of the barrier ops themselves (attention matmuls ...) and of ops on untracked tensors only."""
        return float(sum(b.macs for b in self.barriers)) + self.untracked_macs

    def coverage(self) -> dict[str, Any]:
        """How much of the network a plan can shrink: MACs per image in total and in layers that read or write a
        channel of a prunable group, their share, and the barriers (op and reason)."""
        prunable = np.zeros(self.num_classes, dtype=bool)
        for g in self.prunable_groups():
            prunable[g.classes] = True
        total = self.barrier_macs
        shrinking = 0.0
        for layer in self.layers.values():
            macs = layer.macs_coef * math.prod(len(ids) for ids in layer.macs_dims)
            total += macs
            if any(prunable[self.classes(ids)].any() for ids in layer.macs_dims):
                shrinking += macs
        return {"macs": total, "prunable_macs": shrinking, "prunable_share": shrinking / total if total else 0.0,
                "barriers": [{"node": b.node, "op": b.op, "reason": b.why, "macs": b.macs} for b in self.barriers]}

    def summary_rows(self) -> Iterator[dict[str, Any]]:
        for g in self.groups:
            yield {"group": g.name, "channels": g.size, "producers": len(g.producers), "prunable": g.prunable,
                   "reason": g.reason or ""}


def _node_ids(gm: fx.GraphModule, ctx: WalkContext) -> dict[str, list[np.ndarray]]:
    """Per computing node, the element arrays of the channels it writes, then of those it reads (the widths its cost
    depends on: `legr.engine.latency_model`)."""
    out: dict[str, list[np.ndarray]] = {}
    for node in gm.graph.nodes:
        if node.op not in ("call_module", "call_function", "call_method"):
            continue
        found: list[np.ndarray] = []
        _collect_ids(ctx.values.get(node), found)
        fx.node.map_arg((node.args, node.kwargs), lambda n: _collect_ids(ctx.val(n), found) or n)
        out[node.name] = found
    return out


def _collect_ids(value: Any, found: list[np.ndarray]) -> None:
    if isinstance(value, ChanMap):
        found.append(value.ids)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _collect_ids(v, found)


def _unique_in_order(values: np.ndarray) -> np.ndarray:
    _, first = np.unique(values, return_index=True)
    return values[np.sort(first)]


def _tracked(ctx: WalkContext, node: fx.Node) -> bool:
    found = []
    fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(ctx.val(n)) or n)
    return any(isinstance(v, ChanMap) or (isinstance(v, list) and v) for v in found)


def _visit(ctx: WalkContext, node: fx.Node) -> Any:
    if node in ctx.preset:
        return ctx.preset.pop(node)
    if node.op == "placeholder":
        shape = ctx.shape(node)
        return ChanMap(1, ctx.new(shape[1], fixed="network input")) if shape and len(shape) >= 2 else None
    if node.op == "get_attr":
        return None
    if node.op == "output":
        fx.node.map_arg(node.args, lambda n: _fix_output(ctx, ctx.val(n)) or n)
        return None
    if not _tracked(ctx, node):  # a function of parameters and constants only (a layer scale reshaped, a position
        return None             # table's MLP): nothing to follow; a tracked op that reads it decides
    if node.op == "call_module" and node.target in ctx.gm.meta.get(OPAQUE, {}):
        ctx.refuse(node, f"torch.fx cannot trace its forward ({ctx.gm.meta[OPAQUE][node.target]}); kept whole")
    if node.op == "call_module":
        handler = handlers.module_handler(ctx.module(node))
    elif node.op == "call_function":
        handler = handlers.FUNCTION_HANDLERS.get(node.target)
    else:
        handler = handlers.METHOD_HANDLERS.get(node.target)
    if handler is None:
        ctx.refuse(node, "legr has no channel rule for it")
    return handler(ctx, node)


def _visit_or_barrier(ctx: WalkContext, node: fx.Node, strict: bool) -> Any:
    """The node's value; an op the rules refuse becomes a channel barrier (`WalkContext.barrier`), after whatever
    its rule recorded before refusing is forgotten."""
    mark = ctx.mark()
    try:
        value = _visit(ctx, node)
    except ChannelRefusal as refusal:
        if strict:
            raise
        ctx.rollback(mark)
        value = _retrack(ctx, node, refusal)
        if value is None:
            return ctx.barrier(node, refusal)
    if node.op in ("call_module", "call_function", "call_method"):
        ctx.check_count_reads(node, value)
    return value


def _retrack(ctx: WalkContext, node: fx.Node, refusal: ChannelRefusal) -> Any:
    """A node refused while its only tracked input holds nothing but a barrier's output channels (fixed, on axis 1
    for want of knowing better): try that input with its channels on each other axis (fresh fixed elements: any
    choice is exact, none is ever pruned), so a Linear over the last axis after an attention barrier still creates
    prunable channels. None if every axis is refused too."""
    tracked = [n for n in node.all_input_nodes if isinstance(ctx.val(n), (ChanMap, list, tuple))]
    if len(tracked) != 1 or not ctx.is_opaque(ctx.val(tracked[0])) or ctx.shape(tracked[0]) is None:
        return None
    arg, value, shape = tracked[0], ctx.val(tracked[0]), ctx.shape(tracked[0])
    for axis in sorted(range(1, len(shape)), key=lambda a: -a):
        if axis == value.axis:
            continue
        mark = ctx.mark()
        ctx.values[arg] = ctx.opaque_map(shape[axis], axis, f"channel barrier at {refusal.op}: {refusal.reason}")
        try:
            return _visit(ctx, node)
        except ChannelRefusal:
            ctx.rollback(mark)
        finally:
            ctx.values[arg] = value
    return None


def _fix_output(ctx: WalkContext, value: Any) -> None:
    if isinstance(value, ChanMap):
        ctx.fix(value.ids, "network output")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _fix_output(ctx, v)


def _shared_parameters(model: nn.Module, strict: bool) -> dict[str, str]:
    """Modules holding a tensor that another module holds too (tied weights), each with the reason its channels
    stay: slicing the tensor for one module would cut it for the other, so surgery keeps it whole (and shared).
    ``strict``: refused, as before channel barriers."""
    owner: dict[int, str] = {}
    shared: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first = owner.setdefault(id(param), name)
        if first != name:
            if strict:
                raise UnsupportedModelError(
                    f"parameter '{name}' is the same tensor as '{first}': legr cannot prune tied (shared) parameters")
            why = f"its parameter '{name}' is the same tensor as '{first}' (tied parameters are kept whole)"
            for held in (first, name):
                shared.setdefault(held.rpartition(".")[0], why)
    return shared


def analyze(model: nn.Module, input_shape: Sequence[int], batch_size: int = 2,
            strict: bool = False) -> ChannelGraph:
    """Trace ``model`` in eval mode on a random input of shape ``(batch_size, *input_shape)`` and find its groups.

    An op whose channels cannot be followed exactly becomes a *channel barrier* (``graph.barriers``): every group
    whose channels it reads, or that its output reaches, is fixed with the op named as the reason, and the rest of the
    network is analysed as usual; so are the channels of modules whose parameters are tied to another's (kept whole).
    `UnsupportedModelError` (one line, naming the module/op) when the model cannot be traced, or when the barriers
    leave nothing prunable; with ``strict=True`` at the first op that would be a barrier, or at tied parameters. The
    model itself is never modified (its train/eval mode is restored).
    """
    input_shape = tuple(int(s) for s in input_shape)
    shared = _shared_parameters(model, strict)
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        example = torch.randn(batch_size, *input_shape, dtype=getattr(param, "dtype", None), device=getattr(param, "device", None))
        gm = trace(model, example)
        try:
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):  # ShapeProp prints a traceback
                ShapeProp(gm).propagate(example)
        except Exception as exc:
            cause = str(exc.__cause__ or exc).strip().splitlines()
            raise LegrError(
                f"forward pass on an input of shape {tuple(example.shape)} failed (does the model take this input "
                f"size?): {cause[0] if cause else type(exc).__name__}"
            ) from exc
        ctx = WalkContext(gm, batch_size)
        for node in gm.graph.nodes:
            ctx.values[node] = _visit_or_barrier(ctx, node, strict)
        ctx.close_barriers()
        for layer in ctx.layers.values():  # tied parameters: whole
            for t in layer.ties if layer.name in shared else ():
                ctx.fix(t.ids, shared[layer.name])
        count_fixed_macs(ctx, gm, example)
        graph = ChannelGraph(gm, ctx, input_shape)
        if ctx.barriers and not graph.prunable_groups():
            first = ctx.barriers[0]
            more = f" (and {len(ctx.barriers) - 1} more barrier(s))" if len(ctx.barriers) > 1 else ""
            raise UnsupportedModelError(f"{first.message}{more}; as a channel barrier it leaves nothing prunable "
                                        "in this model: legr needs a channel rule for this op")
        return graph
    finally:
        model.train(was_training)
