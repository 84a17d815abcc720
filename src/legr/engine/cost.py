"""Exact MACs and parameter counts of a (pruned) network as functions of which channels are kept.

Convention (the LeGR paper's): MACs count the multiply-accumulates of convolutions
(``H_out * W_out * k_h * k_w * C_in/groups * C_out``) and fully connected layers (``in * out``), per image;
batch norm, activations, pooling, additions and biases are not counted. FLOPs in the paper's sense equal these MACs
(`torch.utils.flop_counter` reports 2 FLOPs per MAC). Parameters count every parameter used by the traced graph, and
the bias surgery gives a layer without one when a plan removes channels whose constant it takes
(`legr.graph.compensation`).

A `CostModel` is built once per `ChannelGraph`; evaluating it for a keep vector is a couple of vectorised numpy
operations (tens of microseconds for a CIFAR ResNet), so search and budget solvers can call it thousands of times.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn

from legr.errors import LegrError
from legr.graph import ChannelGraph, compensation
from legr.registry import Registry

BudgetUnit = str  # the name of a unit registered in BUDGET_UNITS ("macs", "params", "latency")


@dataclass(frozen=True)
class Unit:
    """What a budget's targets are fractions of, and how a `CostModel` prices a keep vector in it."""

    name: str
    label: str  # in messages: "MACs", "parameters", "latency"
    format: Callable[[float], str]  # a cost in this unit, e.g. "12.070M MACs"
    price: Callable[["CostModel"], Callable[[np.ndarray], float]]  # the cost of a keep vector
    base: Callable[["CostModel"], float]  # the unpruned network's
    bound: Callable[["CostModel", Callable[[np.ndarray], float]], float]  # see `CostModel.bound`
    section: bool = False  # configured by a section of its own (latency: where and how it is measured)


BUDGET_UNITS = Registry[Unit]("budget unit")
BUDGET_UNITS.add("macs", Unit("macs", "MACs", lambda v: f"{v / 1e6:.3f}M MACs", lambda c: c.macs,
                              lambda c: c.base_macs, lambda c, lower: c._macs(c._floor_widths(lower))))
BUDGET_UNITS.add("params", Unit("params", "parameters", lambda v: f"{v / 1e3:.2f}K params", lambda c: c.params,
                                lambda c: c.base_params, lambda c, lower: c._params(c._floor_widths(lower))))
BUDGET_UNITS.add("latency", Unit("latency", "latency", lambda v: f"{v:.2f} ms",
                                 lambda c: c._latency_model().predict, lambda c: c._latency_model().base_ms,
                                 lambda c, lower: c._latency_model().bound(lower), section=True))


def format_cost(value: float, unit: BudgetUnit) -> str:
    """``12.070M MACs`` / ``77.32K params`` / ``3.25 ms``."""
    return BUDGET_UNITS[unit].format(value)


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
        self._given_biases = [(graph.classes(c.in_ids), self._dim(t.ids)) for c in graph.compensations if c.created
                              for t in compensation.bias_ties(graph.layers[c.module])]
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
        return self._params_of(keep, self.widths(keep))

    def _params_of(self, keep: np.ndarray, widths: np.ndarray) -> float:
        """The parameter terms, and the biases given to layers reading removed channels' constants (surgery adds one
        when the plan removes any of them: `legr.graph.compensation.shifts`)."""
        given = sum(widths[dim] for classes, dim in self._given_biases if (keep[classes] == 0).any())
        return self._params(widths) + float(given)

    def of(self, unit: BudgetUnit) -> Callable[[np.ndarray], float]:
        """The cost a budget in ``unit`` counts, as a function of the keep vector (`macs`, `params` or `latency`)."""
        return BUDGET_UNITS[unit].price(self)

    def base(self, unit: BudgetUnit) -> float:
        """The unpruned network's cost in ``unit``."""
        return BUDGET_UNITS[unit].base(self)

    def bound(self, unit: BudgetUnit, lower: Callable[[np.ndarray], float]) -> float:
        """Cost in ``unit`` with each tracked dim at ``lower(class of each of its positions)`` kept positions. When
        ``lower`` bounds every dim's kept count from below, this bounds the cost of every such keep vector from below
        (each term is a product of non-negative counts; the latency model's coefficients are non-negative too)."""
        return BUDGET_UNITS[unit].bound(self, lower)

    def _floor_widths(self, lower: Callable[[np.ndarray], float]) -> np.ndarray:
        return np.append([lower(cls) for cls in self._pos_cls], 1.0)

    def _latency_model(self) -> LatencyPredictor:
        if self.latency is None:
            raise LegrError("a latency budget needs a latency model of the network on the target device "
                            "(`legr.engine.latency_model.build_latency_model`)")
        return self.latency

    def costs(self, keep: np.ndarray) -> tuple[float, float]:
        w = self.widths(keep)
        return self._macs(w), self._params_of(keep, w)


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


def counted_macs(model: nn.Module, x: torch.Tensor, *, nonzero: bool = False) -> float:
    """Multiply-accumulates of ``model(x)`` as torch itself counts them (`FlopCounterMode` reports 2 FLOPs per MAC),
    independently of `CostModel`: the oracle the tests and benchmarks check the cost model against. With
    ``nonzero``, an op whose operand is one of the model's parameters counts only that parameter's non-zero entries
    (the MACs a sparse kernel does). Runs in eval mode without gradients and restores every module's mode."""
    return _counted_flops(model, x, nonzero)[1 if nonzero else 0] / 2


def _counted_flops(model: nn.Module, x: torch.Tensor, nonzero: bool) -> tuple[int, int]:
    """(FLOPs, FLOPs of the non-zero parameter entries; equal to the first without ``nonzero``) of ``model(x)``."""
    from torch.utils.flop_counter import FlopCounterMode, flop_registry

    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    sparse = [0]  # FLOPs the zero parameter entries save

    def saving(formula: Callable) -> Callable:
        def count(*args, out_val=None, **kwargs):
            flops = formula(*args, out_val=out_val, **kwargs)
            for a in args:  # the weight operand, not a bias (a view such as a Linear's weight.t() shares its storage)
                if isinstance(a, torch.Tensor) and a.dim() >= 2 and a.untyped_storage().data_ptr() in storages:
                    sparse[0] += flops - flops * int(torch.count_nonzero(a)) // a.numel()
                    break
            return flops
        count._get_raw = True  # type: ignore[attr-defined]
        return count

    modes = [(m, m.training) for m in model.modules()]
    counter = FlopCounterMode(display=False, custom_mapping={op: saving(f) for op, f in flop_registry.items()}
                              if nonzero else None)
    try:
        model.eval()
        with counter, torch.no_grad():
            model(x)
    finally:
        for m, training in modes:
            m.training = training
    total = counter.get_total_flops()
    return total, total - sparse[0]


@dataclass(frozen=True)
class Price:
    """What a network costs, whatever produced it (channel pruning, sparsity, low rank, lower precision)."""

    macs: int  # per image, as torch counts them
    nonzero_macs: int  # ... counting only the non-zero entries of parameter operands (a sparse kernel's)
    params: int
    nonzero_params: int
    weight_bytes: int  # the parameters at their stored precision


def price(model: nn.Module, input_size: tuple[int, ...], *, exact: tuple[CostModel, np.ndarray] | None = None) -> Price:
    """The one cost entry point for any network (one image of ``input_size``): with ``exact`` = (the source's
    `CostModel`, the keep vector the network was cut to), MACs and parameters come from the keep-vector model
    (equal to torch's count, in microseconds); otherwise torch's own counter (`counted_macs`) counts them."""
    params = list({id(p): p for p in model.parameters()}.values())
    nonzero_params = sum(int(torch.count_nonzero(p)) for p in params)
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    if exact is not None:
        cost, keep = exact
        macs, count = cost.costs(keep)
        return Price(int(macs), int(macs), int(count), nonzero_params, weight_bytes)
    dtype = params[0].dtype if params else torch.float32
    flops, nonzero_flops = _counted_flops(model, torch.zeros(1, *input_size, dtype=dtype), True)
    return Price(flops // 2, nonzero_flops // 2, sum(p.numel() for p in params), nonzero_params, weight_bytes)
