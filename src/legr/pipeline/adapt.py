"""A family adapting to the classes it sees, at run time, without fine-tuning (PCNN, issue 37).

The runtime holds a family (the source network and its pruned members, `open_family` reads a finished run folder)
with the probability layer (`legr.engine.prior.ProbabilityLayer`, by default with each network's temperature fitted on
its validation logits) on top of whichever network runs, and an online estimate of the environment's class prior
(`legr.engine.prior_estimate`). Batch by batch it

1. runs the network in use on the batch and corrects its softmax with the current prior estimate (the prediction),
2. feeds the raw softmax to the estimator (the estimate the next batch is corrected with),
3. picks the network for the next batch (`MemberSelector`): the smallest whose *expected accuracy* under the current
   estimate meets the accuracy target. A network's expected accuracy under prior ``pi`` is ``sum_i pi_i a_i(pi)``,
   ``a_i(pi)`` its accuracy with the layer at ``pi`` on the validation images of class ``i`` (`NetworkProfile`): the
   validation split only, never the stream. To avoid flapping it moves to a smaller network only when that one
   clears the target by ``hysteresis``, and to a larger one as soon as the one in use misses the target.

`AdaptiveRuntime` is this loop, one batch per `step` (`reset` forgets the stream); `replay` runs a
`legr.pipeline.streams.Stream` through it (or through one fixed network, with no layer, the
oracle prior or the estimated one: the benchmark's arms) and returns a `Trace`: per image whether it was right, the
network that classified it and its MACs, and the estimate after every batch. ``forward(name, positions)`` gives the
logits of network ``name`` on stream images; `legr stream` runs the networks, the benchmark replays cached logits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import yaml
from pydantic import Field
from torch import nn

from legr.data import Splits
from legr.engine.prior import ProbabilityLayer, class_prior, fit_calibration
from legr.engine.prior_estimate import PRIOR_ESTIMATORS, PriorEstimator, make_estimator
from legr.errors import LegrError
from legr.pipeline.streams import Stream
from legr.settings import Settings, registered

SOURCE = "source"  # the name of the family's unpruned network
PriorMode = Literal["none", "oracle", "estimated"]
Calibration = Literal["none", "temperature", "bias"]
Forward = Callable[[str, torch.Tensor], torch.Tensor]


class AdaptSettings(Settings):
    """The run-time adaptation: the layer (``omega``, ``floor``; ``calibrate``: fitted on each network's validation
    logits first, ``none``, its ``temperature``, or the temperature and per-class ``bias``es; the temperature keeps the
    layer at the training prior the identity, biases move the network's own decisions; ``estimate_calibrate``: the
    same for the posterior the estimator takes, where class biases keep a network's favoured classes from pulling
    the estimate), the prior estimator (``estimator``, ``memory`` images), the batch
    the stream arrives in (``chunk``) and member selection (``target``: top-1 as a fraction; ``hysteresis``: the
    margin a smaller network must clear the target by to be switched to)."""

    # defaults: the configuration benchmarks/class_skew.py chose on CIFAR-10-JPEG validation streams (re-tune per use)
    estimator: registered(lambda: PRIOR_ESTIMATORS) = "ema"  # type: ignore[valid-type]
    memory: int = Field(250, ge=1)
    omega: float = Field(0.999, ge=0.0, le=1.0)
    floor: float = Field(1e-5, ge=0.0, le=1.0)
    calibrate: Calibration = "temperature"
    estimate_calibrate: Calibration = "temperature"
    chunk: int = Field(32, ge=1)
    target: float | None = Field(None, ge=0.0, le=1.0)  # None: the source network's validation top-1
    hysteresis: float = Field(0.005, ge=0.0, le=1.0)

    def layer(self, train_prior: torch.Tensor, profile: NetworkProfile | None = None) -> ProbabilityLayer:
        """The probability layer for one network; given its ``profile``, calibrated on its validation logits as
        ``calibrate`` and ``estimate_calibrate`` say."""
        if profile is None:
            return ProbabilityLayer(train_prior, omega=self.omega, floor=self.floor)
        temperature, bias = profile.calibration(self.calibrate)
        estimate_temperature, estimate_bias = profile.calibration(self.estimate_calibrate)
        return ProbabilityLayer(train_prior, omega=self.omega, floor=self.floor, temperature=temperature, bias=bias,
                                estimate_temperature=estimate_temperature, estimate_bias=estimate_bias)

    def layers(self, train_prior: torch.Tensor, profiles: Sequence[NetworkProfile]) -> dict[str, ProbabilityLayer]:
        return {p.name: self.layer(train_prior, p) for p in profiles}

    def make_estimator(self, train_prior: torch.Tensor) -> PriorEstimator:
        return make_estimator(self.estimator, train_prior, memory=self.memory, floor=self.floor)


@dataclass(frozen=True)
class NetworkProfile:
    """A network of the family as the selector sees it: its MACs and its logits on the validation split."""

    name: str
    macs: float
    val_logits: torch.Tensor
    val_labels: torch.Tensor

    def calibration(self, kind: Calibration = "bias") -> tuple[float, torch.Tensor]:
        """Temperature and class biases fitted on the validation logits (`legr.engine.prior.fit_calibration`;
        ``temperature``: zero biases, ``none``: 1 and zeros), computed once."""
        if kind == "none":
            return 1.0, torch.zeros(self.val_logits.shape[1])
        cache = self.__dict__.setdefault("_calibration", {})  # a frozen dataclass: its own memo
        if kind not in cache:
            cache[kind] = fit_calibration(self.val_logits, self.val_labels, bias=kind == "bias")
        return cache[kind]

    def top1(self) -> float:
        """Validation top-1 of the network alone."""
        return float((self.val_logits.argmax(dim=1) == self.val_labels).double().mean())

    def class_accuracy(self, layer: ProbabilityLayer | None = None, prior: torch.Tensor | None = None) -> np.ndarray:
        """Validation top-1 per class (NaN for a class without validation images), with ``layer`` at ``prior``
        (no layer: the network's own)."""
        with torch.no_grad():
            out = self.val_logits if layer is None else layer(self.val_logits, None if prior is None else
                                                              prior.to(torch.float32))
        right = (out.argmax(dim=1) == self.val_labels).double()
        classes = self.val_logits.shape[1]
        counts = torch.bincount(self.val_labels, minlength=classes).double()
        hits = torch.bincount(self.val_labels, weights=right, minlength=classes)
        return (hits / counts).numpy()  # 0/0 -> NaN

    def expected_accuracy(self, layer: ProbabilityLayer | None, prior: torch.Tensor) -> float:
        """``sum_i prior_i * a_i``: the top-1 expected on a stream with class prior ``prior``, ``a_i`` the validation
        accuracy on class ``i`` with ``layer`` at ``prior`` (classes without validation images weigh nothing)."""
        acc = self.class_accuracy(layer, prior)
        weights = prior.double().numpy()
        known = ~np.isnan(acc)
        return float(np.sum(weights[known] * acc[known]) / max(np.sum(weights[known]), 1e-12))


class MemberSelector:
    """The smallest network whose expected accuracy meets ``target`` (see the module doc). ``profiles`` in any
    order, ``layers`` by network name (or one layer for all); the one in use starts as the largest. If none meets
    the target, the most accurate is used."""

    def __init__(self, profiles: Sequence[NetworkProfile], layers: Mapping[str, ProbabilityLayer] | ProbabilityLayer,
                 target: float, hysteresis: float = 0.005):
        if not profiles:
            raise LegrError("member selection needs at least one network")
        self.profiles = sorted(profiles, key=lambda p: p.macs)
        self.layers = layers if isinstance(layers, Mapping) else {p.name: layers for p in profiles}
        self.target, self.hysteresis = float(target), float(hysteresis)
        self.current = len(self.profiles) - 1

    def reset(self) -> None:
        self.current = len(self.profiles) - 1

    def select(self, prior: torch.Tensor) -> NetworkProfile:
        """The network to use under ``prior`` (and remember it as the one in use)."""
        expected = [p.expected_accuracy(self.layers[p.name], prior) for p in self.profiles]
        meeting = [i for i, e in enumerate(expected) if e >= self.target]
        if not meeting:  # nothing meets the target: the most accurate network
            self.current = int(np.argmax(expected))
        elif expected[self.current] < self.target:  # the one in use misses it: up (or down) to the smallest meeting it
            self.current = meeting[0]
        else:  # smaller only with a margin
            clear = [i for i in meeting if i < self.current and expected[i] >= self.target + self.hysteresis]
            if clear:
                self.current = clear[0]
        return self.profiles[self.current]


@dataclass
class Trace:
    """What a replay saw: per image whether the prediction was right, the network used and its MACs; after every
    batch, the position it ended at and the prior estimate then (the layer's prior for the next batch)."""

    correct: np.ndarray
    network: list[str]
    macs: np.ndarray
    batch_ends: list[int] = field(default_factory=list)
    estimates: list[np.ndarray] = field(default_factory=list)

    def accuracy(self, start: int = 0, end: int | None = None) -> float:
        part = self.correct[start:end]
        return float(part.mean()) if len(part) else float("nan")

    def mean_macs(self, start: int = 0, end: int | None = None) -> float:
        return float(self.macs[start:end].mean())


class AdaptiveRuntime:
    """The loop of the module doc, one batch at a time: `step` classifies a batch with the network in use and the
    layer at the current prior, updates the estimate, and picks the network for the next batch; `reset` forgets the
    stream (the estimate is the training prior again, the selector back at the largest network).

    ``forward(name, inputs)``: the logits of network ``name`` on ``inputs`` (images, or positions in a cached split).
    One fixed ``network`` or a ``selector``; ``prior``: no layer, the oracle prior given to each `step`, or the online
    estimate. Each network's layer: ``layers`` (default: the selector's, else one uncalibrated layer of
    ``settings``); the estimator takes the estimation posterior of the layer of the network that ran.
    """

    def __init__(self, forward: Forward, *, train_prior: torch.Tensor, settings: AdaptSettings,
                 prior: PriorMode = "estimated", network: str | None = None, selector: MemberSelector | None = None,
                 layers: Mapping[str, ProbabilityLayer] | None = None):
        if (network is None) == (selector is None):
            raise LegrError("the runtime needs one fixed network or a member selector, not both")
        self.forward, self.prior_mode, self.network, self.selector = forward, prior, network, selector
        self.layers = layers if layers is not None else selector.layers if selector is not None else None
        self._plain = settings.layer(train_prior) if self.layers is None else None
        self.estimator = settings.make_estimator(train_prior) if prior == "estimated" else None
        self.reset()

    def reset(self) -> None:
        if self.estimator is not None:
            self.estimator.reset()
        if self.selector is not None:
            self.selector.reset()
        self.current = self.network if self.network is not None else self.selector.profiles[self.selector.current].name
        self.prior = self.estimator.prior if self.estimator is not None else None

    def layer(self, name: str) -> ProbabilityLayer:
        return self._plain if self.layers is None else self.layers[name]

    def step(self, inputs: torch.Tensor, oracle: torch.Tensor | None = None) -> tuple[torch.Tensor, str]:
        """The outputs on one batch (corrected probabilities; the logits without a layer) and the network that made
        them. ``oracle``: the environment prior, for ``prior="oracle"``."""
        name = self.current
        logits = self.forward(name, inputs)
        layer = self.layer(name)
        if self.prior_mode == "oracle":
            if oracle is None:
                raise LegrError("an oracle-prior runtime needs the environment prior with every batch")
            self.prior = torch.as_tensor(oracle, dtype=torch.float64)
        with torch.no_grad():
            out = logits if self.prior_mode == "none" else layer(logits, self.prior.to(torch.float32))
            if self.estimator is not None:
                self.prior = self.estimator.update(layer.estimation_posterior(logits.double()))
        if self.selector is not None:
            self.current = self.selector.select(self.prior if self.prior is not None else
                                                self.layer(name).train_prior.double()).name
        return out, name


def replay(stream: Stream, forward: Forward, *, train_prior: torch.Tensor, settings: AdaptSettings,
           prior: PriorMode = "estimated", network: str | None = None, selector: MemberSelector | None = None,
           layers: Mapping[str, ProbabilityLayer] | None = None, macs: dict[str, float] | None = None) -> Trace:
    """Classify ``stream`` with an `AdaptiveRuntime`, ``settings.chunk`` images per batch (batches end at segment
    boundaries; the oracle prior of a batch is its segment's composition); ``forward`` takes stream positions."""
    runtime = AdaptiveRuntime(forward, train_prior=train_prior, settings=settings, prior=prior, network=network,
                              selector=selector, layers=layers)
    macs = macs or ({p.name: p.macs for p in selector.profiles} if selector else {})
    n = len(stream)
    trace = Trace(correct=np.zeros(n, dtype=bool), network=[""] * n, macs=np.zeros(n))
    for (start, end), segment_prior in zip(stream.bounds(), stream.priors):
        for lo in range(start, end, settings.chunk):
            hi = min(lo + settings.chunk, end)
            out, name = runtime.step(stream.indices[lo:hi], segment_prior)
            trace.correct[lo:hi] = (out.argmax(dim=1) == stream.labels[lo:hi]).numpy()
            trace.network[lo:hi] = [name] * (hi - lo)
            trace.macs[lo:hi] = macs.get(name, np.nan)
            trace.batch_ends.append(hi)
            trace.estimates.append((runtime.prior if runtime.prior is not None else segment_prior).numpy().copy())
    return trace


# --- a finished run folder as a family --------------------------------------------------------------------------
@dataclass
class Family:
    """The networks of a finished run (the source network first, then the members by MACs), the run's data splits
    and the training prior."""

    networks: dict[str, nn.Module]
    macs: dict[str, float]
    splits: Splits
    train_prior: torch.Tensor
    run: Path


def open_family(run: str | Path, *, log: Callable[[str], None] = print) -> Family:
    """Read a finished run folder without writing to it: its source network (the run's ``base``) and every
    fine-tuned member as its chain leaves it. A member not fine-tuned yet is a one-line `LegrError`."""
    from legr.pipeline.config_files import held_config
    from legr.pipeline.steps import Pipeline

    run = Path(run)
    path = run / "config.yaml"
    if not path.is_file():
        raise LegrError(f"{run} is not a run folder (no config.yaml)")
    pipeline = Pipeline(held_config(yaml.safe_load(path.read_text())), run, progress=False, log=log, read_only=True)
    members = pipeline.members()
    missing = [m.name for m in members if not m.finetuned.exists()]
    if missing:
        raise LegrError(f"{run}: members {', '.join(missing)} are not fine-tuned yet (finish the run first)")
    networks = {SOURCE: pipeline.base.cpu().eval()}
    macs = {SOURCE: float(pipeline.cost.base_macs)}
    for member in members:
        last, _ = pipeline.load(member)
        networks[member.name] = last.net.cpu().eval()
        macs[member.name] = float(last.figures["macs"])
    data = pipeline.data
    return Family(networks=networks, macs=macs, splits=data, train_prior=class_prior(data.train[1], data.num_classes),
                  run=run)


def family_profiles(family: Family, batch_size: int = 512) -> list[NetworkProfile]:
    """Every network's profile: its MACs and its logits on the run's validation split (computed here, once)."""
    from legr.training import predict_logits

    d = family.splits
    vx, vy = d.val
    if len(vx) == 0:
        raise LegrError(f"{family.run}: the run has no validation split (data.val_size 0): member selection needs "
                        "each network's per-class validation accuracy")
    return [NetworkProfile(name, family.macs[name], predict_logits(net, vx, d.mean, d.std, batch_size), vy.long())
            for name, net in family.networks.items()]


def live_forward(family: Family, images: torch.Tensor) -> Forward:
    """``forward(name, positions)``: network ``name`` run on ``images[positions]`` (uint8, normalized here)."""
    from legr.data import normalize

    def forward(name: str, positions: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            x = normalize(images[positions], family.splits.mean, family.splits.std)
            return family.networks[name](x).float()

    return forward


def progress_rows(trace: Trace, every: int, base_macs: float) -> list[dict[str, float | str | list[float]]]:
    """The trace every ``every`` images: images seen, top-1 over the last ``every`` images and so far, the network in
    use at the end of the period, mean MACs over the period (fraction of ``base_macs``) and the prior estimate."""
    rows, n = [], len(trace.correct)
    ends = np.asarray(trace.batch_ends)
    for end in [*range(every, n, every), n]:
        start = max(0, end - every)
        batch = int(np.searchsorted(ends, end - 1, side="right"))  # the batch holding image end - 1
        estimate = trace.estimates[min(batch, len(trace.estimates) - 1)]
        rows.append({"images": end, "top1_window": trace.accuracy(start, end), "top1_so_far": trace.accuracy(0, end),
                     "network": trace.network[end - 1], "macs_ratio": trace.mean_macs(start, end) / base_macs,
                     "prior": estimate.tolist()})
    return rows
