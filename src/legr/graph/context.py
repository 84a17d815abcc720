"""State shared by the op handlers while one traced graph is walked."""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import fx

from legr.errors import UnsupportedModelError
from legr.graph.channels import ChanMap, Compensation, Layer, UnionFind


class ChannelRefusal(UnsupportedModelError):
    """An op whose channels the engine cannot follow exactly (`WalkContext.refuse`): the analysis makes it a channel
    barrier (`WalkContext.barrier`), or, with ``strict=True``, refuses the model with this one-line message."""

    def __init__(self, op: str, reason: str) -> None:
        super().__init__(f"cannot prune through {op}: {reason}")
        self.op, self.reason = op, reason


@dataclass
class Barrier:
    """An op the analysis could not follow exactly. Every channel that reaches it (as an input, or a parameter of a
    module it uses) and every channel it writes is fixed with ``reason``; ``macs`` (per image, as torch counts them)
    are the op's own multiply-accumulates, which no plan changes."""

    node: str
    op: str
    why: str
    macs: float = 0.0

    @property
    def reason(self) -> str:
        return f"channel barrier at {self.op}: {self.why}"

    @property
    def message(self) -> str:
        return f"cannot prune through {self.op}: {self.why}"


@dataclass
class Patch:
    """A literal argument of a graph node that depends on kept channels (e.g. the channel padding of F.pad).

    ``rewrite(node, kept_count)`` updates the node in the pruned graph; ``kept_count(ids)`` counts kept elements.
    """

    node_name: str
    rewrite: Callable[[fx.Node, Callable[[np.ndarray], int]], None]


class WalkContext:
    """Element store, recorded layers/patches and per-node values for one analysis."""

    def __init__(self, gm: fx.GraphModule, batch_size: int = 1) -> None:
        self.gm = gm
        self.batch_size = batch_size
        self.modules = dict(gm.named_modules())
        self.uf = UnionFind()
        self.fixed: dict[int, str] = {}
        self.layers: dict[str, Layer] = {}
        self.patches: list[Patch] = []
        self.compensations: list[Compensation] = []  # layers folding removed channels' constants into a bias
        self.segments: list[tuple[np.ndarray, str]] = []  # (element ids, the op taking them) that must keep >= 1
        # channel: the pieces of a channel split, channel slices
        self.values: dict[fx.Node, Any] = {}
        self.preset: dict[fx.Node, Any] = {}  # values decided by an earlier node's rule (e.g. a channel shuffle's)
        self.barriers: list[Barrier] = []
        self.untracked_macs = 0.0  # MACs per image of ops on untracked tensors only (`analysis._count_fixed_macs`)
        self.opaque: set[int] = set()
        self._reads: dict[fx.Node, list[ChanMap]] = {}  # untracked node -> values whose channel count it carries  # elements a barrier wrote: fixed, on an axis chosen without knowing its meaning
        self.barrier_modules: dict[str, str] = {}  # modules a barrier uses (never sliced) -> its reason

    # --- elements -------------------------------------------------------------------------------------------
    def new(self, n: int, fixed: str | None = None) -> np.ndarray:
        ids = self.uf.add(n)
        if fixed:
            self.fix(ids, fixed)
        return ids

    def fix(self, ids: np.ndarray, reason: str) -> None:
        for e in ids.tolist():
            self.fixed.setdefault(e, reason)

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            self.uf.union(x, y)

    # --- values and shapes ----------------------------------------------------------------------------------
    def val(self, arg: Any) -> Any:
        return self.values.get(arg) if isinstance(arg, fx.Node) else None

    @staticmethod
    def shape(node: Any) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        shape = getattr(meta, "shape", None)
        return tuple(int(s) for s in shape) if shape is not None else None

    def per_image(self, shape: tuple[int, ...]) -> float:
        """Images per row of a layer's output: 1, except after a barrier folded other axes into the first one
        (attention over patches: ``(batch * patches, tokens, channels)``)."""
        return shape[0] / self.batch_size if len(shape) >= 2 else 1.0

    def module(self, node: fx.Node) -> torch.nn.Module:
        return self.modules[node.target]

    def add_layer(self, node: fx.Node, layer: Layer) -> Layer:
        if layer.name in self.layers:
            self.refuse(node, "the module is called more than once (shared weights are not supported)")
        self.layers[layer.name] = layer
        return layer

    @staticmethod
    def describe(node: fx.Node, modules: dict[str, torch.nn.Module] | None = None) -> str:
        """The node for a message; a function or method call also names the innermost module whose forward made
        it (qualified name and class), e.g. ``op 'batch_norm' at node 'batch_norm_3' in module 'stem.bn'
        (BatchNormAct2d)``."""
        if node.op == "call_module" and modules is not None:
            return f"module '{node.target}' ({type(modules[node.target]).__name__})"
        if node.op == "call_method":
            what = f"method '.{node.target}()' at node '{node.name}'"
        else:
            what = f"op '{getattr(node.target, '__name__', str(node.target))}' at node '{node.name}'"
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, cls = list(stack.values())[-1]
            what += f" in module '{path}' ({getattr(cls, '__name__', cls)})"
        elif modules is not None and "" in modules:  # the traced root keeps its class name
            what += f" in the model's own forward ({type(modules['']).__name__})"
        return what

    def op(self, node: fx.Node) -> str:
        """The node as reasons and refusals name it: ``module 'act' (Sigmoid)``, ``op 'add' at node 'add' in ...``."""
        return self.describe(node, self.modules)

    def refuse(self, node: fx.Node, reason: str) -> None:
        raise ChannelRefusal(self.op(node), reason)

    # --- channel barriers -----------------------------------------------------------------------------------
    def mark(self) -> tuple[set[str], int, int, set[fx.Node], int]:
        """What a handler may record before it refuses (`rollback` undoes it)."""
        return set(self.layers), len(self.patches), len(self.segments), set(self.preset), len(self.compensations)

    def rollback(self, mark: tuple[set[str], int, int, set[fx.Node], int]) -> None:
        """Forget the layers, patches, segments, compensations and preset values recorded since ``mark`` (unions and
        fixed elements stay: they only make the analysis more conservative)."""
        layers, patches, segments, preset, compensations = mark
        for name in set(self.layers) - layers:
            del self.layers[name]
        del self.patches[patches:], self.segments[segments:], self.compensations[compensations:]
        for n in set(self.preset) - preset:
            del self.preset[n]

    def barrier(self, node: fx.Node, refusal: ChannelRefusal) -> Any:
        """Make ``node`` a channel barrier: fix every tracked channel it reads, remember the modules whose
        parameters it uses (directly or through untracked ops), and return fresh fixed channels for what it writes
        (axis 1 of every output of rank >= 2, like a network input)."""
        barrier = Barrier(node.name, refusal.op, refusal.reason)
        self.barriers.append(barrier)
        reason = barrier.reason
        found: list[ChanMap] = []

        def collect(value: Any) -> None:
            if isinstance(value, ChanMap):
                found.append(value)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    collect(v)

        def collect_fix(value: Any) -> None:
            found.clear()
            collect(value)
            for m in found:
                self.fix(m.ids, reason)

        fx.node.map_arg((node.args, node.kwargs), lambda n: collect_fix(self.values.get(n)) or n)
        if node.op == "call_module":
            self.barrier_modules.setdefault(str(node.target), reason)
        stack, seen = list(node.all_input_nodes), set()
        while stack:  # parameters reaching the op through untracked ops (``self.weight.view(..)``, a padded weight)
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "get_attr":
                self.barrier_modules.setdefault(str(n.target).rpartition(".")[0], reason)
            elif n.op not in ("call_module", "call_function", "call_method") or self.values.get(n) is not None:
                continue
            elif self._channel_count_read(n, reason):
                continue
            else:
                if n.op == "call_module":
                    self.barrier_modules.setdefault(str(n.target), reason)
                for inp in n.all_input_nodes:  # a tensor's shape read by the op (``B, C, H, W = x.shape``)
                    tracked = self.values.get(inp)
                    if isinstance(tracked, (ChanMap, list, tuple)):
                        collect_fix(tracked)
                    else:
                        stack.append(inp)

        def fresh(meta: Any) -> Any:
            shape = getattr(meta, "shape", None)
            if shape is not None:
                return self.opaque_map(int(shape[1]), 1, reason) if len(shape) >= 2 else None
            if isinstance(meta, (list, tuple)):
                return [fresh(m) for m in meta]
            return None

        return fresh(node.meta.get("tensor_meta"))

    def opaque_map(self, width: int, axis: int, reason: str) -> ChanMap:
        """Fresh fixed elements on ``axis`` of a barrier's output (or of a value computed from one only)."""
        ids = self.new(width, fixed=reason)
        self.opaque.update(ids.tolist())
        return ChanMap(axis, ids)

    def is_opaque(self, value: Any) -> bool:
        return isinstance(value, ChanMap) and len(value.ids) > 0 and all(e in self.opaque for e in value.ids.tolist())

    def count_reads(self, n: fx.Node) -> list[ChanMap]:
        """The tracked values whose channel count flows into the untracked node ``n`` (``x.shape[1]``,
        ``x.size(1)``, ``x.shape`` itself, arithmetic on them): after pruning it reads their kept count."""
        if n in self._reads:
            return self._reads[n]
        self._reads[n] = []  # guards against revisiting
        found: list[ChanMap] = []
        source, dim = self._shape_source(n)
        if source is not None:
            value = self.values.get(source)
            shape = self.shape(source)
            if isinstance(value, ChanMap) and shape and (dim is None or dim % len(shape) == value.axis):
                found.append(value)
        elif n.op in ("call_function", "call_method", "call_module"):
            for inp in n.all_input_nodes:
                if self.values.get(inp) is None:
                    found += self.count_reads(inp)
        self._reads[n] = found
        return found

    @staticmethod
    def _shape_source(n: fx.Node) -> tuple[fx.Node | None, int | None]:
        """(x, k) for ``x.shape[k]`` / ``x.size(k)``, (x, None) for ``x.shape`` / ``x.size()`` (or a slice of
        them); (None, None) for any other node."""
        def whole(s: Any) -> fx.Node | None:
            if isinstance(s, fx.Node) and ((s.op == "call_function" and s.target is getattr and s.args[1] == "shape")
                                           or (s.op == "call_method" and s.target == "size" and len(s.args) == 1
                                               and not s.kwargs)):
                return s.args[0]
            return None

        if whole(n) is not None:
            return whole(n), None
        if n.op == "call_method" and n.target == "size" and len(n.args) == 2:
            return n.args[0], n.args[1] if isinstance(n.args[1], int) else None
        if n.op == "call_function" and n.target is operator.getitem and whole(n.args[0]) is not None:
            return whole(n.args[0]), n.args[1] if isinstance(n.args[1], int) else None
        return None, None

    def check_count_reads(self, node: fx.Node, value: Any = None) -> None:
        """A node sized by the channel count of a tensor whose channels are not its own input's (``B, C, H, W =
        x.shape`` and later ``attention_out.reshape(B, C, H, W)``) would get the other tensor's kept count after
        pruning: both keep their channels."""
        reads = [m for inp in node.all_input_nodes if self.values.get(inp) is None for m in self.count_reads(inp)]
        if not reads:
            return
        own: list[ChanMap] = [value] if isinstance(value, ChanMap) else []  # the node's output (a shuffle's view)
        fx.node.map_arg((node.args, node.kwargs),
                        lambda a: own.append(self.values[a]) if isinstance(self.values.get(a), ChanMap) else None)
        if not own:  # the count only flows on (``C // groups``): the node using it is checked
            return
        for m in reads:
            channels = np.unique(m.ids)
            if any(np.array_equal(np.unique(o.ids), channels) for o in own):  # the same channels: the same count
                continue
            reason = f"its channel count is read at {self.op(node)}, which sizes a tensor of other channels with it"
            self.fix(m.ids, reason)
            for o in own:
                self.fix(o.ids, reason)

    def _channel_count_read(self, n: fx.Node, reason: str) -> bool:
        """``x.shape[k]`` / ``x.size(k)`` of a tracked ``x``: the channels of ``x`` are fixed when ``k`` is its
        channel axis (the op would read the kept count), else nothing is. False for any other node."""
        source, dim = None, None
        if n.op == "call_method" and n.target == "size" and len(n.args) == 2 and isinstance(n.args[1], int):
            source, dim = n.args[0], n.args[1]
        elif n.target is operator.getitem and isinstance(n.args[1], int) and isinstance(n.args[0], fx.Node):
            shape = n.args[0]
            if (shape.op == "call_function" and shape.target is getattr and shape.args[1] == "shape") or (
                    shape.op == "call_method" and shape.target == "size" and len(shape.args) == 1):
                source, dim = shape.args[0], n.args[1]
        value = self.values.get(source) if isinstance(source, fx.Node) else None
        if not isinstance(value, ChanMap) or self.shape(source) is None:
            return False
        if dim % len(self.shape(source)) == value.axis:
            self.fix(value.ids, reason)
        return True

    def close_barriers(self) -> None:
        """Fix every channel tied to a parameter of a module a barrier uses: slicing it would change the op."""
        for layer in self.layers.values():
            if layer.name in self.barrier_modules:
                for t in layer.ties:
                    self.fix(t.ids, self.barrier_modules[layer.name])

    def require_map(self, node: fx.Node, arg: Any) -> ChanMap:
        value = self.val(arg)
        if not isinstance(value, ChanMap):
            self.refuse(node, "its input carries no tracked channels")
        return value
