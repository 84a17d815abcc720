"""Measured inference latency: eval mode, inference_mode, warm-up, fixed threads, median of timed forwards."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from legr.errors import LegrError

NOISY_SPREAD = 0.15  # rounds of one measurement disagreeing by more (relative) are measured again, then flagged
# "wall": elapsed time (what a deployment sees); "cpu": the timing thread's CPU time, which a busy or oversubscribed
# machine cannot inflate by preempting it (meaningful for one CPU thread only)
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}


def clock_for(clock: str, device: torch.device | str, threads: int | None) -> Callable[[], float]:
    """The timer of ``clock``; the CPU clock is refused where it does not measure latency."""
    if clock not in CLOCKS:
        raise LegrError(f"unknown clock '{clock}' (choose {' or '.join(CLOCKS)})")
    if clock == "cpu" and (torch.device(device).type != "cpu" or threads != 1):
        raise LegrError("clock 'cpu' (thread CPU time) measures latency only on the CPU with threads: 1")
    return CLOCKS[clock]


@dataclass(frozen=True)
class LatencyResult:
    """Timing of one forward pass of a whole batch, in milliseconds. `median_ms` is the reported figure."""

    median_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    iqr_ms: float
    repeats: int
    batch_size: int
    device: str
    threads: int
    spread: float = 0.0  # relative disagreement: (max - min) / median of the rounds' medians, else IQR / median
    noisy: bool = False  # the spread stayed above the limit after a re-measurement (a busy machine)

    @property
    def per_image_ms(self) -> float:
        """Median latency divided by the batch size."""
        return self.median_ms / self.batch_size

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready), including `per_image_ms`."""
        return {**asdict(self), "per_image_ms": self.per_image_ms}


@contextmanager
def fixed_threads(n: int | None) -> Iterator[int]:
    """Run the block with `torch.set_num_threads(n)` (no change if None); restore the previous value after."""
    previous = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads must be >= 1, got {n}")
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_latency(
    model: nn.Module,
    input_size: tuple[int, ...],
    batch_size: int,
    *,
    device: str | torch.device = "cpu",
    threads: int | None = None,
    warmup: int = 5,
    repeats: int = 20,
    min_time_s: float = 0.0,
    clock: str = "wall",
) -> LatencyResult:
    """Time `model` on a random `(batch_size, *input_size)` input; the model's mode and device are restored after.

    Warm-up forwards are not timed; each repeat times one forward with `time.perf_counter` (synchronising
    CUDA first). With `min_time_s > 0`, repeats continue until both `repeats` and `min_time_s` are reached.
    ``clock``: "wall" (elapsed) or "cpu" (this thread's CPU time; one CPU thread only, see `CLOCKS`).
    """
    if batch_size < 1 or repeats < 1 or warmup < 0 or min_time_s < 0:
        raise ValueError("need batch_size >= 1, repeats >= 1, warmup >= 0, min_time_s >= 0")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise LegrError("latency on 'cuda' requested but CUDA is not available")
    now = clock_for(clock, dev, threads)
    first = next(model.parameters(), None)
    home = first.device if first is not None else dev
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((batch_size, *input_size), generator=gen, dtype=dtype).to(dev)
    was_training = model.training
    times: list[float] = []
    try:
        model.to(dev).eval()
        with fixed_threads(threads) as n_threads, torch.inference_mode():
            for _ in range(warmup):
                model(x)
            _sync(dev)
            total = 0.0
            while len(times) < repeats or total < min_time_s:
                start = now()
                model(x)
                _sync(dev)
                elapsed = now() - start
                times.append(elapsed * 1e3)
                total += elapsed
    finally:
        model.train(was_training)
        model.to(home)
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else (times[0],) * 3
    median = statistics.median(times)
    return LatencyResult(
        median_ms=median,
        mean_ms=statistics.fmean(times),
        min_ms=min(times),
        max_ms=max(times),
        iqr_ms=q3 - q1,
        repeats=len(times),
        batch_size=batch_size,
        device=str(dev),
        threads=n_threads,
        spread=(q3 - q1) / median if median > 0 else 0.0,
    )


def measure_latencies(
    model: nn.Module,
    input_size: tuple[int, ...],
    batch_sizes: Sequence[int] = (1, 64),
    devices: Sequence[str | torch.device] | None = None,
    **kw: Any,
) -> dict[str, dict[int, LatencyResult]]:
    """`measure_latency` for every device x batch size: `{"cpu": {1: LatencyResult, 64: ...}, "cuda": ...}`.

    Devices default to `["cpu"]` plus `"cuda"` when CUDA is available.
    """
    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {
        str(d): {b: measure_latency(model, input_size, b, device=d, **kw) for b in batch_sizes} for d in devices
    }


def measure_interleaved(
    models: Mapping[str, nn.Module],
    input_size: tuple[int, ...],
    batch_sizes: Sequence[int] = (1, 64),
    *,
    device: str | torch.device = "cpu",
    rounds: int = 3,
    max_spread: float = NOISY_SPREAD,
    **kw: Any,
) -> dict[str, dict[int, LatencyResult]]:
    """Time several networks fairly: `rounds` rounds, each timing every network at every batch size once.

    Comparing networks timed one after another on a shared machine compares the machine's load, not the networks;
    interleaving spreads a slow spell over all of them. Per network and batch size, `median_ms` is the median of the
    rounds' medians (min/max over all forwards, repeats summed) and `spread` how far the rounds disagree ((max - min)
    / median of their medians). A figure whose rounds disagree by more than ``max_spread`` is measured again (the same
    number of rounds, interleaved with the other such figures) and replaced; if it still disagrees, it is marked
    ``noisy``. Other keywords go to `measure_latency`.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    wanted = [(name, b) for b in batch_sizes for name in models]
    out = _rounds(models, input_size, wanted, device, rounds, kw)
    again = [key for key in wanted if out[key].spread > max_spread] if rounds > 1 else []
    if again:
        retried = _rounds(models, input_size, again, device, rounds, kw)
        out.update({key: replace(r, noisy=r.spread > max_spread) for key, r in retried.items()})
    return {name: {b: out[(name, b)] for b in batch_sizes} for name in models}


def _rounds(models: Mapping[str, nn.Module], input_size: tuple[int, ...], wanted: list[tuple[str, int]],
            device: str | torch.device, rounds: int, kw: dict[str, Any]) -> dict[tuple[str, int], LatencyResult]:
    runs: dict[tuple[str, int], list[LatencyResult]] = {key: [] for key in wanted}
    for _ in range(rounds):
        for name, b in wanted:
            runs[(name, b)].append(measure_latency(models[name], input_size, b, device=device, **kw))
    return {key: _combine(rs) for key, rs in runs.items()}


def _combine(results: list[LatencyResult]) -> LatencyResult:
    medians = [r.median_ms for r in results]
    median = statistics.median(medians)
    return LatencyResult(
        median_ms=median,
        mean_ms=statistics.fmean(r.mean_ms for r in results),
        min_ms=min(r.min_ms for r in results),
        max_ms=max(r.max_ms for r in results),
        iqr_ms=statistics.median(r.iqr_ms for r in results),
        repeats=sum(r.repeats for r in results),
        batch_size=results[0].batch_size,
        device=results[0].device,
        threads=results[0].threads,
        spread=(max(medians) - min(medians)) / median if len(results) > 1 and median > 0 else results[0].spread,
    )
