"""State shared by the op handlers while one traced graph is walked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import fx

from legr.errors import UnsupportedModelError
from legr.graph.channels import ChanMap, Layer, UnionFind


@dataclass
class Patch:
    """A literal argument of a graph node that depends on kept channels (e.g. the channel padding of F.pad).

    ``rewrite(node, kept_count)`` updates the node in the pruned graph; ``kept_count(ids)`` counts kept elements.
    """

    node_name: str
    rewrite: Callable[[fx.Node, Callable[[np.ndarray], int]], None]


class WalkContext:
    """Element store, recorded layers/patches and per-node values for one analysis."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.uf = UnionFind()
        self.fixed: dict[int, str] = {}
        self.layers: dict[str, Layer] = {}
        self.patches: list[Patch] = []
        self.segments: list[tuple[np.ndarray, str]] = []  # (element ids, the op taking them) that must keep >= 1
        # channel: the pieces of a channel split, channel slices
        self.values: dict[fx.Node, Any] = {}
        self.preset: dict[fx.Node, Any] = {}  # values decided by an earlier node's rule (e.g. a channel shuffle's)

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
        raise UnsupportedModelError(f"cannot prune through {self.op(node)}: {reason}")

    def require_map(self, node: fx.Node, arg: Any) -> ChanMap:
        value = self.val(arg)
        if not isinstance(value, ChanMap):
            self.refuse(node, "its input carries no tracked channels")
        return value
