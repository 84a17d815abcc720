"""Tracing a model into a `torch.fx` graph whose modules are the model's own (so surgery can slice their weights).

`trace` tries symbolic tracing first: the graph then holds for any input size. Symbolic tracing cannot follow Python
control flow on a tensor's shape (timm's VGG head: ``if x.shape[-2] < 7: x = F.adaptive_avg_pool2d(x, 7)``), so on
that failure `trace` records the model again on the example input: every node also gets its concrete value, and a
branch on values computed from shapes alone takes the way this input size takes (the graph, and the pruned models
built from it, then hold for this input size: `ChannelGraph.input_shape`). A branch on tensor *data* is still
refused: its way could differ for the next input.

A submodule whose forward neither tracer can follow (control flow on tensor data, a traced value passed where Python
needs a real one) is then kept whole: the model is traced again with that module as a leaf (one call in the graph),
until the trace succeeds; the analysis makes each such module a channel barrier (its channels stay, the rest of the
network is pruned). Only a failure in the model's own forward, outside every submodule, refuses the model.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn
from torch.fx._symbolic_trace import _maybe_revert_all_patches
from torch.utils._pytree import tree_map

from legr.errors import UnsupportedModelError
from legr.graph import handlers

SPECIALIZED = "legr_traced_for_input"  # GraphModule.meta key: the input shape a recorded trace holds for
OPAQUE = "legr_opaque_modules"  # GraphModule.meta key: {module kept whole because fx cannot trace it: why}
_SHAPE_METHODS = ("size", "dim", "numel")
_SHAPE_ATTRS = ("shape", "ndim", "dtype", "device")


class _Tracer(fx.Tracer):
    """Symbolic tracing that keeps ``leaves`` (qualified names) whole and remembers the innermost module whose
    forward raised (``failed_in``)."""

    def __init__(self, leaves: frozenset[str] = frozenset()) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed_in: str | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or isinstance(m, tuple(handlers.LEAF_MODULES)) \
            or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.path_of_module(m)
            raise


class _ShapeTracer(_Tracer):
    """Symbolic tracing that also runs every node on the example input, so shape-only control flow is decided."""

    def __init__(self, example: torch.Tensor, leaves: frozenset[str] = frozenset()) -> None:
        super().__init__(leaves)
        self.example = example
        self.values: dict[fx.Node, Any] = {}
        self.shape_only: set[fx.Node] = set()  # nodes whose value depends on input shapes and constants only

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        with _maybe_revert_all_patches():  # run the real modules and functions, not their tracing patches
            self.values[node] = self._run(node)
        inputs = node.all_input_nodes
        if (kind == "call_method" and target in _SHAPE_METHODS) \
                or (kind == "call_function" and target is getattr and node.args[1] in _SHAPE_ATTRS) \
                or (kind in ("call_function", "call_method") and inputs and all(n in self.shape_only for n in inputs)
                    and not isinstance(self.values[node], torch.Tensor)):
            self.shape_only.add(node)
        return proxy

    def _run(self, node: fx.Node) -> Any:
        if node.op == "placeholder":
            if any(n.op == "placeholder" for n in self.values):
                if node.args:  # an optional argument (``forward(x, mask=None)``): its default
                    return node.args[0]
                raise UnsupportedModelError("the model's forward takes more than one input")
            return self.example
        if node.op == "output":
            return None
        if node.op == "get_attr":
            return self._attribute(node)
        # copies: an in-place op must not change the value an earlier node recorded
        args, kwargs = tree_map(_copy, fx.node.map_arg((node.args, node.kwargs), self._value))
        if node.op == "call_module":
            return self.root.get_submodule(str(node.target))(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], str(node.target))(*args[1:], **kwargs)
        return node.target(*args, **kwargs)

    def _attribute(self, node: fx.Node) -> Any:
        value: Any = self.root
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return value

    def _value(self, node: fx.Node) -> Any:
        if node not in self.values and node.op == "get_attr":  # constants fx stores on the root without a proxy
            self.values[node] = self._attribute(node)
        return self.values[node]

    def to_bool(self, obj: fx.Proxy) -> bool:
        if obj.node in self.shape_only:
            return bool(self.values[obj.node])
        return super().to_bool(obj)  # control flow on tensor data: refused

    def iter(self, obj: fx.Proxy):
        if obj.node in self.shape_only:  # e.g. ``for s in x.shape``: one getitem node per element
            return iter([operator.getitem(obj, i) for i in range(len(self.values[obj.node]))])
        return super().iter(obj)


def _copy(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) else value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def trace(model: nn.Module, example: torch.Tensor | None = None, max_opaque: int = 64) -> fx.GraphModule:
    """Trace ``model`` (its Python control flow is evaluated in its current train/eval mode). With ``example``, a
    model that symbolic tracing cannot follow is recorded on that input instead (see the module doc). A submodule
    whose forward neither can follow (control flow on tensor data, a proxy passed where a value is needed) is kept
    whole, as one call, and traced around; up to ``max_opaque`` such modules are listed, with the first line of the
    error, in ``gm.meta[OPAQUE]`` (the analysis makes each one a channel barrier). `UnsupportedModelError` in one
    line when the failure is in the model's own forward, outside any submodule."""
    handlers.register_library_rules()  # before deciding which modules are leaves
    opaque: dict[str, str] = {}
    while True:
        try:
            gm = _trace_once(model, example, frozenset(opaque))
            gm.meta[OPAQUE] = dict(opaque)
            return gm
        except _Untraceable as failure:
            if not failure.module or failure.module in opaque or len(opaque) >= max_opaque:
                raise UnsupportedModelError(f"cannot trace {type(model).__name__} with torch.fx: "
                                            f"{_first_line(failure.error)}") from failure.error
            opaque[failure.module] = _first_line(failure.error)


class _Untraceable(Exception):
    def __init__(self, error: BaseException, module: str | None) -> None:
        super().__init__(str(error))
        self.error, self.module = error, module


def _trace_once(model: nn.Module, example: torch.Tensor | None, leaves: frozenset[str]) -> fx.GraphModule:
    try:
        tracer = _Tracer(leaves)
        graph = tracer.trace(model)
        return fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises many types; the user needs to know tracing is the problem
        symbolic, where = exc, tracer.failed_in
    if example is not None and isinstance(symbolic, fx.proxy.TraceError):
        try:
            tracer = _ShapeTracer(example, leaves)
            with torch.no_grad():
                graph = tracer.trace(model)
            gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
            gm.meta[SPECIALIZED] = tuple(int(s) for s in example.shape[1:])
            return gm
        except UnsupportedModelError:
            raise
        except Exception:  # the recorded trace fails too: in the module it failed in (shape-only flow passes)
            where = tracer.failed_in or where
    raise _Untraceable(symbolic, where)
