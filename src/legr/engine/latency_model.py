"""Predicted latency of any pruned version of a network on one device, without running it.

How the model is made (`build_latency_model`), on the device at hand (CPU at a thread count, or CUDA), at one batch
size:

1. *Probes*: a few plans (the full network and random allocations, supplied by the caller) are cut physically, put
   in their deployed form (batch norms folded), and timed in interleaved rounds: a timing interpreter records every
   graph node's time, and the whole forward is timed as usual (`measure_latency`); per node and per plan, the
   setting's statistic (median or min) over the rounds is kept.
2. *Per node*: its time is fitted by non-negative least squares as ``c0 + sum_d c_d * x_d + c_x * x_1 * x_2`` over
   the kept fractions ``x_d`` of the channel dims it writes and reads (a conv: its output and input widths, so the
   product is its MACs; a batch norm or an add: its one width). Non-negative coefficients make every node's time
   non-decreasing in every width, so a latency budget is solved like a MACs budget.
3. *Calibration*: the nodes' sum is mapped onto the whole forward, ``T = a * sum + b`` (least squares over the
   probes): this absorbs the interpreter's own overhead and what a forward costs beyond its ops.

The prediction is a sum of ``coef * width_a * width_b`` terms over tracked channel dims, the structure of the MACs
and params models (`legr.engine.cost`), so the lower bound of `CostModel.bound` holds for it too. Evaluating it takes
microseconds. Its accuracy (median and max relative error over random plans not used to fit it) is measured by
`legr.engine.latency_check.validate` and `benchmarks/latency_budget.py`; `legr.engine.latency_check.meet_measured`
corrects a member's cut by timing it.

Models are cached under ``$LEGR_CACHE/latency/`` by a key over the device fingerprint (CPU model or GPU name,
threads, batch size, torch version, clock), the setting, the architecture (graph code and parameter shapes) and the
probes; the rounds measured so far are written after each one, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import nnls
from torch import fx, nn

from legr.engine.cost import CostTerms
from legr.engine.latency import CLOCKS, clock_for, fixed_threads, measure_latency
from legr.engine.surgery import fold_batchnorm, prune
from legr.errors import LegrError
from legr.graph import ChannelGraph
from legr.hardware import hardware_info
from legr.paths import atomic_write_text, cache_dir
from legr.progress import progress_bar

MODEL_VERSION = 1
STATISTICS = {"median": statistics.median, "min": min}


@dataclass(frozen=True)
class LatencySetting:
    """Where and how latency is modelled: ``device`` ("cpu" or "cuda"), ``threads`` (CPU; None: torch's current
    count), ``batch_size``; ``repeats`` timed passes per probe (at least ``min_time_s`` seconds of them);
    ``clock`` "wall" (elapsed) or "cpu" (thread CPU time, for one thread on a busy machine:
    `legr.engine.latency.CLOCKS`); ``rounds`` interleaved rounds over all plans (a slow spell of the machine hits
    every plan alike); ``statistic``: what is modelled, the ``median`` forward or the fastest (``min``: on a machine
    shared with other work, the figure other load disturbs least); ``fold_bn``: networks are timed as deployed, batch norms folded into their convolutions
    (`legr.engine.surgery.fold_batchnorm`)."""

    batch_size: int = 1
    threads: int | None = 1
    device: str = "cpu"
    repeats: int = 3
    min_time_s: float = 0.1
    rounds: int = 5
    clock: str = "wall"
    statistic: str = "median"
    fold_bn: bool = True

    def __post_init__(self) -> None:
        if min(self.batch_size, self.repeats, self.rounds, self.threads or 1) < 1 or self.min_time_s < 0:
            raise LegrError("latency setting needs batch_size, repeats, rounds and threads (or null) >= 1 and "
                            "min_time_s >= 0")
        if self.device not in ("cpu", "cuda"):
            raise LegrError(f"latency device must be 'cpu' or 'cuda', got '{self.device}'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise LegrError("a latency model on 'cuda' was requested but CUDA is not available")
        clock_for(self.clock, self.device, self.threads)
        if self.statistic not in STATISTICS:
            raise LegrError(f"latency statistic must be {' or '.join(STATISTICS)}, got '{self.statistic}'")

    def deployed(self, net: nn.Module) -> nn.Module:
        """``net`` in the form this setting times (batch norms folded when ``fold_bn``)."""
        return fold_batchnorm(net) if self.fold_bn else net

    def timing(self) -> dict[str, Any]:
        """Keywords of `measure_latency` for this setting."""
        return {"device": self.device, "threads": self.threads, "warmup": 0, "repeats": self.repeats,
                "min_time_s": self.min_time_s, "clock": self.clock}

    @property
    def label(self) -> str:
        where = "GPU" if self.device == "cuda" else f"CPU {self.threads or torch.get_num_threads()} thread(s)"
        return f"{where}, batch {self.batch_size}" + (", CPU time" if self.clock == "cpu" else "")


def device_fingerprint(setting: LatencySetting) -> dict[str, Any]:
    """What makes timings on this device comparable: the processor, threads, batch size and torch version."""
    info = hardware_info()
    return {"device": setting.device, "processor": info["cuda_device"] if setting.device == "cuda" else info["cpu"],
            "threads": None if setting.device == "cuda" else (setting.threads or torch.get_num_threads()),
            "batch_size": setting.batch_size, "torch": str(info["torch"]), "clock": setting.clock,
            "statistic": setting.statistic}


def architecture_fingerprint(graph: ChannelGraph) -> str:
    """sha256 (16 hex) of the traced code, the parameter shapes and the input shape (not the weights' values)."""
    h = hashlib.sha256(graph.gm.code.encode())
    h.update(str(graph.input_shape).encode())
    for name, tensor in graph.gm.state_dict().items():
        h.update(f"{name}{tuple(tensor.shape)}".encode())
    return h.hexdigest()[:16]


class _Dims:
    """The channel dims whose width can change (they hold prunable channels), and which of them each node touches."""

    def __init__(self, graph: ChannelGraph) -> None:
        prunable = np.zeros(graph.num_classes, dtype=bool)
        for group in graph.prunable_groups():
            prunable[group.classes] = True
        index: dict[bytes, int] = {}
        self.classes: list[np.ndarray] = []
        self.of_node: dict[str, list[int]] = {}
        for name, arrays in graph.node_ids.items():
            mine: list[int] = []
            for ids in arrays:
                cls = graph.classes(ids)
                if not prunable[cls].any():
                    continue
                key = np.sort(cls).tobytes()
                if key not in index:
                    index[key] = len(self.classes)
                    self.classes.append(cls)
                if index[key] not in mine:
                    mine.append(index[key])
            self.of_node[name] = mine
        self.size = np.array([len(c) for c in self.classes] + [1], dtype=np.float64)
        self._pos_dim = np.concatenate([np.full(len(c), i) for i, c in enumerate(self.classes)] or [np.zeros(0, int)])
        self._pos_cls = np.concatenate(self.classes or [np.zeros(0, int)])

    def widths(self, keep: np.ndarray) -> np.ndarray:
        """Kept count of every dim, then a trailing 1 (the constant of `CostTerms`)."""
        counts = np.bincount(self._pos_dim, weights=keep[self._pos_cls], minlength=len(self.classes))
        return np.append(counts, 1.0)

    def features(self, node: str) -> list[tuple[int, int]]:
        """The (dim, dim) pairs of a node's terms (-1: the constant): 1, each width, and the first two widths'
        product."""
        dims = self.of_node.get(node, [])
        return [(-1, -1), *((d, -1) for d in dims), *([(dims[0], dims[1])] if len(dims) >= 2 else [])]


@dataclass(frozen=True)
class Probe:
    """One measured plan: the kept width of every dim, each node's time and the whole forward's (ms; the setting's
    statistic over the rounds)."""

    widths: tuple[float, ...]
    node_ms: dict[str, float]
    total_ms: float


class _NodeTimer(fx.Interpreter):
    """Runs a graph module node by node, recording each computing node's time (ms, on clock ``now``) in ``times``."""

    def __init__(self, gm: fx.GraphModule, device: torch.device, now: Callable[[], float]) -> None:
        super().__init__(gm)
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        self.now = now
        self.times: dict[str, float] = {}

    def run_node(self, n: fx.Node) -> Any:
        if n.op not in ("call_module", "call_function", "call_method"):
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)  # the interpreter's own work stays outside the timing
        self.sync()
        start = self.now()
        out = getattr(self, n.op)(n.target, args, kwargs)
        self.sync()
        self.times[n.name] = (self.now() - start) * 1e3
        return out


def measure_probes(graph: ChannelGraph, plans: Sequence[np.ndarray], setting: LatencySetting, *,
                   state: Path | None = None, progress: bool = True) -> list[Probe]:
    """Cut every plan physically and time it on ``setting``'s device in ``setting.rounds`` interleaved rounds (each
    round times every plan once: a pass of the timing interpreter, then whole forwards), so that a slow spell of the
    machine hits all plans alike; each figure is the setting's statistic over rounds. The rounds done so far are
    saved in ``state`` after each one, and a restarted measurement of the same plans continues from there."""
    dims = _Dims(graph)
    device = torch.device(setting.device)
    nets = [setting.deployed(prune(graph, keep)).to(device).eval() for keep in plans]
    x = torch.randn((setting.batch_size, *graph.input_shape), generator=torch.Generator().manual_seed(0)).to(device)
    now = CLOCKS[setting.clock]
    rounds = _read_rounds(state, len(plans))
    with progress_bar(f"latency model ({setting.label})", setting.rounds * len(plans), done=len(rounds) * len(plans),
                      enabled=progress) as advance, \
            fixed_threads(setting.threads if setting.device == "cpu" else None), torch.inference_mode():
        for net in nets:
            net(x)  # warm-up
        while len(rounds) < setting.rounds:
            this = []
            for net in nets:
                timer = _NodeTimer(net, device, now)
                timer.run(x)
                result = measure_latency(net, graph.input_shape, setting.batch_size, **setting.timing())
                total = getattr(result, f"{setting.statistic}_ms")
                this.append({"node_ms": timer.times, "total_ms": total})
                advance(f"{total:.2f} ms")
            rounds.append(this)
            if state is not None:
                atomic_write_text(state, json.dumps(rounds))
    pick = STATISTICS[setting.statistic]
    return [Probe(tuple(float(w) for w in dims.widths(keep)[:-1]),
                  {n: pick([r[i]["node_ms"][n] for r in rounds]) for n in rounds[0][i]["node_ms"]},
                  pick([r[i]["total_ms"] for r in rounds]))
            for i, keep in enumerate(plans)]


def _read_rounds(path: Path | None, plans: int) -> list[list[dict[str, Any]]]:
    if path is None or not path.exists():
        return []
    try:
        rounds = json.loads(path.read_text())
        return [r for r in rounds if len(r) == plans and all(float(p["total_ms"]) > 0 and p["node_ms"] for p in r)]
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return []  # a damaged state file: measure again


class LatencyModel:
    """Predicted latency (ms) of the network ``graph`` pruned to any keep vector, on the device it was measured on
    (see the module doc). ``coefs[node]`` are the node's fitted coefficients over `_Dims.features` (on kept
    fractions); ``scale``/``offset`` the calibration onto whole forwards."""

    def __init__(self, graph: ChannelGraph, coefs: dict[str, list[float]], scale: float, offset: float,
                 info: dict[str, Any]) -> None:
        self.graph, self.coefs, self.scale, self.offset, self.info = graph, coefs, scale, offset, info
        self.dims = _Dims(graph)
        terms: list[tuple[float, list[int]]] = [(offset, [])]
        for node, values in coefs.items():
            for (a, b), c in zip(self.dims.features(node), values):
                norm = self.dims.size[a] * self.dims.size[b]  # fractions -> counts (size[-1] is 1)
                terms.append((scale * c / norm, [d for d in (a, b) if d >= 0]))
        self._terms = CostTerms(terms)
        self.base_ms = self.predict(np.ones(graph.num_classes))

    def predict(self, keep: np.ndarray) -> float:
        """Predicted milliseconds of one forward of a batch."""
        return self._terms(self.dims.widths(keep))

    def bound(self, lower: Callable[[np.ndarray], float]) -> float:
        """The prediction with every dim at ``lower(its classes)`` kept channels: a lower bound on the prediction of
        every plan whose dims keep at least that many (every term is non-decreasing in each width)."""
        return self._terms(np.append([lower(c) for c in self.dims.classes], 1.0))

    def to_json(self) -> str:
        return json.dumps({"version": MODEL_VERSION, **self.info, "scale": self.scale, "offset": self.offset,
                           "coefs": self.coefs}, indent=1)

    @classmethod
    def from_json(cls, text: str, graph: ChannelGraph) -> "LatencyModel":
        """Read a model back; refuse one made for another architecture or an unreadable file."""
        try:
            data = json.loads(text)
            if data.get("version") != MODEL_VERSION:
                raise ValueError(f"version {data.get('version')} (this legr reads {MODEL_VERSION})")
            info = {k: v for k, v in data.items() if k not in ("version", "scale", "offset", "coefs")}
            coefs = {str(k): [float(c) for c in v] for k, v in data["coefs"].items()}
            scale, offset = float(data["scale"]), float(data["offset"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise LegrError(f"not a valid latency model ({type(exc).__name__}: {exc})") from None
        if info.get("architecture") != architecture_fingerprint(graph):
            raise LegrError("the latency model was measured on another architecture")
        return cls(graph, coefs, scale, offset, info)


def fit_latency_model(graph: ChannelGraph, probes: Sequence[Probe], info: dict[str, Any] | None = None) -> LatencyModel:
    """Fit the per-node models and the calibration on ``probes`` (see the module doc); needs two probes or more."""
    if len(probes) < 2:
        raise LegrError("a latency model needs at least two probes")
    dims = _Dims(graph)
    widths = np.array([[*p.widths, 1.0] for p in probes]) / dims.size
    coefs: dict[str, list[float]] = {}
    fitted = np.zeros(len(probes))
    for node in probes[0].node_ms:
        pairs = dims.features(node)
        x = np.stack([widths[:, a] * widths[:, b] for a, b in pairs], axis=1)
        y = np.array([p.node_ms[node] for p in probes])
        c, _ = nnls(x, y)
        coefs[node] = [float(v) for v in c]
        fitted += x @ c
    totals = np.array([p.total_ms for p in probes])
    (scale, offset), *_ = np.linalg.lstsq(np.stack([fitted, np.ones_like(fitted)], axis=1), totals, rcond=None)
    if not scale > 0:  # degenerate probes (all equal): keep the node sum, shift it onto the forwards
        scale, offset = 1.0, float(np.mean(totals - fitted))
    model = LatencyModel(graph, coefs, float(scale), float(offset),
                         {"architecture": architecture_fingerprint(graph), **(info or {})})
    rel = np.abs(scale * fitted + offset - totals) / totals
    model.info["fit"] = {"probes": len(probes), "median_rel_err": float(np.median(rel)),
                         "max_rel_err": float(rel.max())}
    return model


def latency_model_path(graph: ChannelGraph, setting: LatencySetting, plans: Sequence[np.ndarray], *,
                       cache: Path | None = None) -> Path:
    """Where `build_latency_model` caches the model of ``graph`` measured on ``setting`` with ``plans`` (exists once
    it was measured on this device)."""
    h = hashlib.sha256(json.dumps([device_fingerprint(setting), asdict(setting)], sort_keys=True).encode()
                       + architecture_fingerprint(graph).encode())
    for keep in plans:
        h.update(np.asarray(keep, dtype=np.float64).tobytes())
    return (cache or cache_dir() / "latency") / f"{h.hexdigest()[:16]}.json"


def build_latency_model(graph: ChannelGraph, setting: LatencySetting, plans: Sequence[np.ndarray], *,
                        cache: Path | None = None, progress: bool = True,
                        log: Callable[[str], None] = lambda _: None) -> LatencyModel:
    """Measure ``plans`` (the first should be the full network) on ``setting``'s device and fit a `LatencyModel`,
    or read it from the cache (default ``$LEGR_CACHE/latency``) when this device, architecture and plans were
    measured before. The rounds are saved after each one, so an interrupted build resumes."""
    fingerprint = device_fingerprint(setting)
    path = latency_model_path(graph, setting, plans, cache=cache)
    key, partial = path.stem, path.with_suffix(".probes.json")
    if path.exists():
        try:
            return LatencyModel.from_json(path.read_text(), graph)
        except LegrError as exc:
            log(f"measuring the latency model again: the cached {path} is unusable ({exc})")
    probes = measure_probes(graph, plans, setting, state=partial, progress=progress)
    model = fit_latency_model(graph, probes, {"device": fingerprint, "setting": asdict(setting), "key": key})
    atomic_write_text(path, model.to_json())
    partial.unlink(missing_ok=True)
    return model
