"""`legr stream RUN_DIR`: replay a class-skewed stream of the run's test images through its family with the
probability layer and run-time member selection (`legr.pipeline.adapt`), printing accuracy, the network in use and
its MACs over time. Registered on the `legr` app by `legr.cli`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from legr.cli_options import QuietOpt, console
from legr.errors import LegrError


def _classes(text: str, option: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise LegrError(f"{option} takes class indices separated by commas, e.g. 3,5; got '{text}'") from None


def stream(
    run: Annotated[Path, typer.Argument(help="a finished run folder (its source network and fine-tuned members)")],
    dominant: Annotated[str, typer.Option(help="the dominant classes (indices, comma-separated)")] = "0,1",
    share: Annotated[float, typer.Option(help="share of the images from the dominant classes")] = 0.9,
    images: Annotated[int, typer.Option(help="stream length (test images, drawn without replacement)")] = 2000,
    then: Annotated[Optional[str], typer.Option(help="dominant classes after the halfway point (a changing "
                                                     "environment)")] = None,
    target: Annotated[Optional[float], typer.Option(help="top-1 target, a fraction (default: the source network's "
                                                         "validation top-1)")] = None,
    estimator: Annotated[str, typer.Option(help="prior estimator: ema, window, em or counts")] = "ema",
    memory: Annotated[int, typer.Option(help="images the prior estimate remembers")] = 250,
    omega: Annotated[float, typer.Option(help="outputs more confident than this pass through uncorrected")] = 0.999,
    floor: Annotated[float, typer.Option(help="least prior any class is given")] = 1e-5,
    calibrate: Annotated[str, typer.Option(help="fit on each network's validation logits first: none, temperature, "
                                                "or bias (temperature and per-class biases)")] = "temperature",
    estimate_calibrate: Annotated[str, typer.Option(help="the same for the posterior the estimator takes")] = \
        "temperature",
    hysteresis: Annotated[float, typer.Option(help="margin a smaller network must clear the target by")] = 0.005,
    chunk: Annotated[int, typer.Option(help="images per batch (the prior and the network change between batches)")] = 32,
    every: Annotated[int, typer.Option(help="print a row every this many images")] = 250,
    seed: Annotated[int, typer.Option(help="seed of the stream's draw")] = 0,
    reference: Annotated[bool, typer.Option(help="also run the source network alone, without the layer")] = True,
    quiet: QuietOpt = False,
) -> None:
    """Replay a class-skewed test stream through a run's family with the probability layer (PCNN) and run-time
    member selection: accuracy, the network in use and MACs over time."""
    from legr.pipeline.adapt import (SOURCE, AdaptSettings, MemberSelector, family_profiles, live_forward,
                                     open_family, progress_rows, replay)
    from legr.pipeline.streams import Segment, build_stream, skewed_prior

    if every < 1 or images < 1:
        raise LegrError("--every and --images must be positive")
    settings = AdaptSettings(estimator=estimator, memory=memory, omega=omega, floor=floor, calibrate=calibrate,
                             estimate_calibrate=estimate_calibrate, chunk=chunk, target=target, hysteresis=hysteresis)
    family = open_family(run, log=lambda m: None if quiet else console.print(m, highlight=False))
    classes = family.splits.num_classes
    phases = [_classes(dominant, "--dominant")] + ([_classes(then, "--then")] if then else [])
    lengths = [images // len(phases)] * (len(phases) - 1) + [images - images // len(phases) * (len(phases) - 1)]
    segments = [Segment(skewed_prior(classes, c, share), n) for c, n in zip(phases, lengths)]
    test_x, test_y = family.splits.test
    replayed = build_stream(test_y, segments, seed=seed, name="cli")
    profiles = family_profiles(family)
    source = next(p for p in profiles if p.name == SOURCE)
    goal = settings.target if settings.target is not None else source.top1()
    selector = MemberSelector(profiles, settings.layers(family.train_prior, profiles), goal, settings.hysteresis)
    forward = live_forward(family, test_x)
    trace = replay(replayed, forward, train_prior=family.train_prior, settings=settings, selector=selector)
    base = family.macs[SOURCE]
    table = Table("images", "top-1 % (last)", "top-1 % (so far)", "network", "MACs %", "prior estimate (top 3)")
    for row in progress_rows(trace, every, base):
        top = sorted(enumerate(row["prior"]), key=lambda kv: -kv[1])[:3]
        table.add_row(str(row["images"]), f"{100 * row['top1_window']:.1f}", f"{100 * row['top1_so_far']:.1f}",
                      str(row["network"]), f"{100 * row['macs_ratio']:.1f}", " ".join(f"{c}:{p:.2f}" for c, p in top))
    Console().print(table)
    summary = (f"{len(replayed)} images, dominant {phases[0]}" + (f" then {phases[1]}" if then else "") +
               f" at {share:.0%}: top-1 {100 * trace.accuracy():.2f}% at {100 * trace.mean_macs() / base:.1f}% of the "
               f"source's MACs on average (target {100 * goal:.2f}% on validation)")
    if reference:
        alone = replay(replayed, forward, train_prior=family.train_prior, settings=settings, prior="none",
                       network=SOURCE)
        summary += f"; the source network alone, without the layer: {100 * alone.accuracy():.2f}%"
    typer.echo(summary)
