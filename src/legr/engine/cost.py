"""Exact MACs and parameter counts of a (pruned) network as functions of which channels are kept.

Convention (the LeGR paper's): MACs count the multiply-accumulates of convolutions
(``H_out * W_out * k_h * k_w * C_in/groups * C_out``) and fully connected layers (``in * out``), per image;
batch norm, activations, pooling, additions and biases are not counted. FLOPs in the paper's sense equal these MACs
(`torch.utils.flop_counter` reports 2 FLOPs per MAC). Parameters count every parameter used by the traced graph.

A `CostModel` is built once per `ChannelGraph`; evaluating it for a keep vector is a couple of vectorised numpy
operations (tens of microseconds for a CIFAR ResNet), so search and budget solvers can call it thousands of times.
"""

from __future__ import annotations

import math
from typing import Callable, Literal, Protocol

import numpy as np
import torch
from torch import nn

from legr.errors import LegrError
from legr.graph import ChannelGraph

BudgetUnit = Literal["macs", "params", "latency"]
UNIT_NAMES = {"macs": "MACs", "params": "parameters", "latency": "latency"}


def format_cost(value: float, unit: BudgetUnit) -> str:
    """``12.070M MACs`` / ``77.32K params`` / ``3.25 ms``."""
    return {"macs": f"{value / 1e6:.3f}M MACs", "params": f"{value / 1e3:.2f}K params",
            "latency": f"{value:.2f} ms"}[unit]


class LatencyPredictor(Protocol):
    """What the cost model needs of a latency model (`legr.engine.latency_model.LatencyModel`)."""

    base_ms: float  # the unpruned network

    def predict(self, keep: np.ndarray) -> float: ...

    def bound(self, lower: Callable[[np.ndarray], float]) -> float: ...


class CostModel:
    """MACs and params of any keep vector; with a latency model (``latency``), its predicted latency too (unit
    ``latency``, in ms)."""

    def __init__(self, graph: ChannelGraph, latency: LatencyPredictor | None = None) -> None:
        self.graph = graph
        self.latency = latency
        self._dims: dict[int, int] = {}  # id(ids array) -> dim index
        self._pos_dim: list[np.ndarray] = []
        self._pos_cls: list[np.ndarray] = []
        macs, params = [], []
        for layer in graph.layers.values():
            macs.append((layer.macs_coef, [self._dim(ids) for ids in layer.macs_dims]))
        if getattr(graph, "barrier_macs", 0.0):  # the barrier ops' own (attention matmuls ...): no plan changes them
            macs.append((graph.barrier_macs, []))
        ties = {(layer.name, t.param): [] for layer in graph.layers.values() for t in layer.ties}
        for layer in graph.layers.values():
            for t in layer.ties:
                ties[(layer.name, t.param)].append(t)
        seen: set[int] = set()
        for module_name, module in graph.gm.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                if id(p) in seen:
                    continue
                seen.add(id(p))
                tied = ties.get((module_name, pname), [])
                untied = math.prod(s for d, s in enumerate(p.shape) if d not in {t.dim for t in tied})
                params.append((float(untied), [self._dim(t.ids) for t in tied]))
        self._macs = CostTerms(macs)
        self._params = CostTerms(params)
        self._pos_dim_arr = np.concatenate(self._pos_dim) if self._pos_dim else np.zeros(0, dtype=np.int64)
        self._pos_cls_arr = np.concatenate(self._pos_cls) if self._pos_cls else np.zeros(0, dtype=np.int64)
        full = np.ones(graph.num_classes)
        self.base_macs, self.base_params = self.macs(full), self.params(full)

    def _dim(self, ids: np.ndarray) -> int:
        key = id(ids)
        if key not in self._dims:
            self._dims[key] = len(self._pos_dim)
            self._pos_dim.append(np.full(len(ids), len(self._pos_dim), dtype=np.int64))
            self._pos_cls.append(self.graph.classes(ids))
        return self._dims[key]

    def widths(self, keep: np.ndarray) -> np.ndarray:
        """Kept count of every tracked dimension (plus a trailing 1 used by terms with fewer dims)."""
        counts = np.bincount(self._pos_dim_arr, weights=keep[self._pos_cls_arr], minlength=len(self._pos_dim))
        return np.append(counts, 1.0)

    def macs(self, keep: np.ndarray) -> float:
        return self._macs(self.widths(keep))

    def params(self, keep: np.ndarray) -> float:
        return self._params(self.widths(keep))

    def of(self, unit: BudgetUnit) -> Callable[[np.ndarray], float]:
        """The cost a budget in ``unit`` counts, as a function of the keep vector (`macs`, `params` or `latency`)."""
        return self._latency_model().predict if unit == "latency" else {"macs": self.macs, "params": self.params}[unit]

    def base(self, unit: BudgetUnit) -> float:
        """The unpruned network's cost in ``unit``."""
        return self._latency_model().base_ms if unit == "latency" else \
            {"macs": self.base_macs, "params": self.base_params}[unit]

    def bound(self, unit: BudgetUnit, lower: Callable[[np.ndarray], float]) -> float:
        """Cost in ``unit`` with each tracked dim at ``lower(class of each of its positions)`` kept positions. When
        ``lower`` bounds every dim's kept count from below, this bounds the cost of every such keep vector from below
        (each term is a product of non-negative counts; the latency model's coefficients are non-negative too)."""
        if unit == "latency":
            return self._latency_model().bound(lower)
        terms = {"macs": self._macs, "params": self._params}[unit]
        return terms(np.append([lower(cls) for cls in self._pos_cls], 1.0))

    def _latency_model(self) -> LatencyPredictor:
        if self.latency is None:
            raise LegrError("a latency budget needs a latency model of the network on the target device "
                            "(`legr.engine.latency_model.build_latency_model`)")
        return self.latency

    def costs(self, keep: np.ndarray) -> tuple[float, float]:
        w = self.widths(keep)
        return self._macs(w), self._params(w)


class CostTerms:
    """Sum over terms of ``coef * width[a] * width[b]`` (index -1 = the constant 1)."""

    def __init__(self, terms: list[tuple[float, list[int]]]) -> None:
        if any(len(dims) > 2 for _, dims in terms):
            raise ValueError("cost terms with more than two tracked dims are not supported")
        self.coef = np.array([c for c, _ in terms], dtype=np.float64)
        self.a = np.array([dims[0] if len(dims) > 0 else -1 for _, dims in terms], dtype=np.int64)
        self.b = np.array([dims[1] if len(dims) > 1 else -1 for _, dims in terms], dtype=np.int64)

    def __call__(self, widths: np.ndarray) -> float:
        return float(np.dot(self.coef, widths[self.a] * widths[self.b]))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def counted_macs(model: nn.Module, x: torch.Tensor) -> float:
    """Multiply-accumulates of ``model(x)`` as torch itself counts them (`FlopCounterMode` reports 2 FLOPs per MAC),
    independently of `CostModel`: the oracle the tests and benchmarks check the cost model against. Runs in eval
    mode without gradients and restores every module's mode."""
    from torch.utils.flop_counter import FlopCounterMode

    modes = [(m, m.training) for m in model.modules()]
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with counter, torch.no_grad():
            model(x)
    finally:
        for m, training in modes:
            m.training = training
    return counter.get_total_flops() / 2
