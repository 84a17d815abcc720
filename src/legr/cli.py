"""The `legr` command. Only the CLI modules (this one, `legr.cli_options`: the shared option types, `legr.cli_stream`:
`legr stream`) read YAML and flags; errors print one line and exit with code 2."""

from __future__ import annotations

import importlib
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from legr.cli_options import (ConfigArg, InputSizeOpt, KwargsOpt, ModelArg, NumClassesOpt, OutOpt, QuietOpt, RayOpt,
                              SetOpt, console, finetune_family, open_pipeline, overrides,
                              rank_family)
from legr.cli_stream import stream
from legr.errors import LegrError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Learned global filter ranking (LeGR): one trained ConvNet in, a family of pruned ones out.")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"legr {version('legr')}")
        except PackageNotFoundError as exc:
            raise LegrError("legr is not installed (pip install -e .): it has no version") from exc
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                                   help="print the version and exit")] = False) -> None:
    pass


@app.command()
def models(contains: Annotated[str, typer.Argument(help="only names containing this")] = "") -> None:
    """List the registered models."""
    from legr.models import get_model_spec, list_models

    table = Table("name", "input", "classes", "source", "description")
    for name in list_models():
        if contains in name:
            s = get_model_spec(name)
            table.add_row(name, "x".join(map(str, s.input_size)), str(s.num_classes), s.source, s.description)
    Console().print(table)


@app.command()
def analyze(
    model: ModelArg,
    weights: Annotated[Optional[str], typer.Option(help="checkpoint path or 'pretrained'")] = None,
    num_classes: NumClassesOpt = None,
    input_size: InputSizeOpt = None,
    kwargs: KwargsOpt = None,
) -> None:
    """Show a model's channel groups (what is pruned together), its MACs and parameters."""
    from legr.engine.cost import CostModel
    from legr.graph import analyze as analyze_model
    from legr.graph.tracing import SPECIALIZED
    from legr.models import model_from_options

    graph = analyze_model(*model_from_options(model, input_size, kwargs, num_classes, weights))
    cost = CostModel(graph)
    table = Table("group", "channels", "producers", "prunable", "why not")
    for row in graph.summary_rows():
        table.add_row(row["group"], str(row["channels"]), str(row["producers"]), "yes" if row["prunable"] else "no", row["reason"])
    Console().print(table)
    coverage = graph.coverage()
    Console().print(f"{model}: {cost.base_macs / 1e6:.2f}M MACs, {cost.base_params / 1e6:.3f}M params, "
                    f"{len(graph.prunable_groups())}/{len(graph.groups)} groups prunable, "
                    f"{coverage['prunable_share']:.1%} of the MACs in layers a plan can shrink")
    if graph.barriers:
        barriers = Table("channel barrier (op)", "why", "MACs")
        for b in coverage["barriers"]:
            barriers.add_row(b["op"], b["reason"], f"{b['macs'] / 1e6:.2f}M")
        Console().print(barriers)
        Console().print(f"{len(graph.barriers)} channel barrier(s): ops legr has no exact channel rule for; every "
                        "group whose channels they read or write stays whole, the rest is pruned as usual")
    if SPECIALIZED in graph.gm.meta:
        Console().print(f"its forward branches on tensor shapes: traced for input {graph.gm.meta[SPECIALIZED]}, "
                        "pruned networks hold for that input size")


@app.command()
def latency(
    model: ModelArg,
    batch_size: Annotated[int, typer.Option(help="batch the latency is measured at")] = 1,
    threads: Annotated[int, typer.Option(help="CPU threads")] = 1,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    probes: Annotated[int, typer.Option(help="random allocations the model is fitted on")] = 16,
    check: Annotated[int, typer.Option(help="fresh random allocations it is checked on (0: none)")] = 10,
    clock: Annotated[str, typer.Option(help="wall, or cpu (thread CPU time, 1 thread: busy machines)")] = "wall",
    statistic: Annotated[str, typer.Option(help="median or min (the fastest forward)")] = "median",
    method: Annotated[str, typer.Option(help="the method whose plans the model is fitted on")] = "filters",
    num_classes: NumClassesOpt = None,
    input_size: InputSizeOpt = None,
    kwargs: KwargsOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Measure a model's latency model on this machine (or read it from the cache) and check its predictions
    against fresh timings of random allocations (what `budget: latency` relies on)."""
    import numpy as np

    from legr.engine.cost import CostModel
    from legr.engine.latency_check import validate
    from legr.engine.latency_model import LatencySetting, build_latency_model
    from legr.graph import analyze as analyze_model
    from legr.methods import METHODS
    from legr.models import model_from_options

    if probes < 2 or check < 0:
        raise LegrError("--probes must be >= 2 and --check >= 0")
    if "latency" not in METHODS[method].budgets:
        raise LegrError(f"method {method} takes no latency budget: nothing of it is timed (try --method filters)")
    setting = LatencySetting(batch_size=batch_size, threads=threads, device=device, clock=clock, statistic=statistic)
    graph = analyze_model(*model_from_options(model, input_size, kwargs, num_classes))
    cost = CostModel(graph)
    probe = METHODS[method].latency_probes
    lat = build_latency_model(graph, setting, probe(graph, cost, probes), progress=not quiet, log=console.print)
    fit = lat.info["fit"]
    console.print(f"{model} ({setting.label}): full network {lat.base_ms:.3f} ms predicted; fit on {fit['probes']} "
                  f"probes: median error {fit['median_rel_err']:.1%}, max {fit['max_rel_err']:.1%}")
    if check:
        plans = probe(graph, cost, check, seed=1000)[1:]  # fresh ones, the full network left out
        pairs = validate(lat, plans, setting)
        table = Table("plan", "MACs %", "predicted ms", "measured ms", "error")
        errors = []
        for i, ((p, m), keep) in enumerate(zip(pairs, plans)):
            errors.append(abs(p - m) / m)
            table.add_row(str(i), f"{100 * cost.macs(keep) / cost.base_macs:.1f}", f"{p:.3f}", f"{m:.3f}",
                          f"{(p - m) / m:+.1%}")
        Console().print(table)
        console.print(f"check on {check} new random allocations: median error {float(np.median(errors)):.1%}, "
                      f"max {max(errors):.1%}")


@app.command()
def rank(config: ConfigArg, out: OutOpt = None, set_: SetOpt = None, quiet: QuietOpt = False,
         ray: RayOpt = None) -> None:
    """Learn the global ranking, or the method's one-time work (resumable: rerun the same command to go on; --ray
    local or a cluster's address: each CMA-ES generation, or aging evolution's in_flight children, as Ray tasks)."""
    pipeline = open_pipeline(config, out, set_, quiet)
    console.print(pipeline.method.describe(rank_family(pipeline, ray)))


@app.command()
def prune(config: ConfigArg, out: OutOpt = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Cut the learned ranking at every target: one pruned network (plan + weights) per target (method magnitude:
    each member's prune -> retrain rounds)."""
    for directory in open_pipeline(config, out, set_, quiet).prune():
        console.print(str(directory))


@app.command()
def finetune(config: ConfigArg, out: OutOpt = None, set_: SetOpt = None, quiet: QuietOpt = False,
             ray: RayOpt = None) -> None:
    """Fine-tune every pruned network (each resumes from its last finished epoch); data-parallel on N GPUs or CPU
    processes: `torchrun --nproc-per-node N -m legr finetune CONFIG` (1/N of every batch each; rank 0 writes);
    or each member as a Ray task: --ray local (or a cluster's address)."""
    from legr.training.distributed import data_parallel

    with data_parallel() as w:
        finetune_family(open_pipeline(config, out, set_, quiet, main=w.main), ray)


@app.command("eval")
def eval_(config: ConfigArg, out: OutOpt = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Evaluate the baseline and every family member on the test set; write results.json/.csv."""
    open_pipeline(config, out, set_, quiet).evaluate()


@app.command()
def report(run: Annotated[Path, typer.Argument(help="run folder (results.json) or comparison (compare.json)")]) -> None:
    """Print the table, draw pareto.png and write report.html (offline, interactive); a comparison: report.html only."""
    from legr.reporting import format_table, plot_pareto, read_results
    from legr.reporting.html import is_comparison, write_report_html
    if not is_comparison(run):
        rows = read_results(run)
        plot_pareto(rows, run / "pareto.png", title=f"{rows[0]['model']} on {rows[0]['dataset']}" if rows else None)
        typer.echo(format_table(rows))
    console.print(f"report: {write_report_html(run)}")


@app.command()
def run(config: ConfigArg, out: OutOpt = None, set_: SetOpt = None, quiet: QuietOpt = False,
        ray: RayOpt = None) -> None:
    """All steps: (train base) -> rank -> prune -> finetune (--ray: each member a Ray task) -> eval -> report."""
    pipeline = finetune_family(open_pipeline(config, out, set_, quiet), ray)
    typer.echo(pipeline.run())
    console.print(f"results: {pipeline.out / 'results.csv'}  report: {pipeline.out / 'report.html'}")


@app.command()
def methods() -> None:
    """List the compression methods, the stages that may follow one (``method: [filters, <stage>]``), and the parts
    each method combines (filter pruning: criteria and budget allocators; any criterion combines with any allocator)."""
    from legr.methods import METHODS, STAGES

    table = Table("kind", "name", "budgets", "description")
    for name, method in METHODS.items():
        table.add_row("method", name, ", ".join(method.budgets), method.description)
    for name, stage in STAGES.items():
        then = "; fine-tuned after it" if stage.needs_finetune else ""
        table.add_row("stage", name, ", ".join(stage.budgets), stage.description + then)
    for _, method in METHODS.items():
        for kind, name, description in method.parts():
            table.add_row(kind, name, "", description)
    Console().print(table)


@app.command()
def compare(config: ConfigArg, out: OutOpt = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Compare methods under equal budgets (same network, splits, targets, fine-tuning, seeds); see configs/compare_*."""
    from legr.pipeline.compare import Comparison
    from legr.pipeline.compare_config import CompareConfig
    from legr.pipeline.config_files import load_config

    cfg = load_config(config, overrides(set_), schema=CompareConfig)
    folder = out or Path("runs") / config.stem
    Comparison(cfg, folder, progress=not quiet, log=lambda m: console.print(m, highlight=False)).run()
    typer.echo((folder / "summary.md").read_text())
    console.print(f"report: {folder / 'report.html'}  plots: {folder / 'accuracy_vs_macs.png'}")


@app.command()
def demo(out: OutOpt = None, set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """The whole pipeline on scikit-learn's bundled digits: train a small CNN, learn a ranking, prune to five
    budgets, fine-tune, then print the table and draw the plot (about a minute on 2 idle CPU cores)."""
    config = resources.files("legr") / "configs" / "demo.yaml"
    with resources.as_file(config) as path:
        pipeline = open_pipeline(Path(path), out or Path("runs/demo"), set_, quiet)
    typer.echo(pipeline.run())
    console.print(f"results: {pipeline.out / 'results.csv'}  report: {pipeline.out / 'report.html'}")


@app.command()
def export(
    member: Annotated[Path, typer.Argument(help="a pruned network folder (plan.json + model.safetensors)")],
    output: Annotated[Path, typer.Argument(help="ONNX file to write")],
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
    int8: Annotated[bool, typer.Option("--int8", help="the member in int8 (`legr quantize MEMBER_DIR` first for "
                                                      "settings other than the defaults)")] = False,
) -> None:
    """Export a pruned network to ONNX and check it in onnxruntime against PyTorch (--int8: quantized)."""
    from legr.engine.artifacts import load_pruned
    from legr.engine.export import export_onnx
    from legr.paths import atomic_write_bytes
    from legr.pipeline.quantize import int8_file

    if int8:
        atomic_write_bytes(output, int8_file(member, log=lambda m: console.print(m, highlight=False)).read_bytes())
        console.print(f"wrote {output} (int8, QDQ; its figures: {member / 'int8.json'})")
        return
    net, plan = load_pruned(member)
    info = export_onnx(net, tuple(plan.source["input_size"]), output, opset=opset)
    console.print(f"wrote {output} (onnxruntime max abs diff vs PyTorch: {info['max_abs_diff']:.2e})")


@app.command()
def quantize(
    path: Annotated[Path, typer.Argument(help="a finished run folder, or one member folder of it")],
    calibration: Annotated[str, typer.Option(help="minmax, entropy or percentile")] = "minmax",
    calibration_images: Annotated[int, typer.Option(help="training images the ranges are calibrated on")] = 512,
    exclude: Annotated[Optional[list[str]], typer.Option(help="ONNX node kept in fp32 (repeatable)")] = None,
    max_drop: Annotated[float, typer.Option(help="val top-1 drop that triggers a per-layer sensitivity")] = 0.01,
    threads: Annotated[int, typer.Option(help="onnxruntime threads for the timings")] = 1,
    clock: Annotated[str, typer.Option(help="wall, or cpu (thread CPU time, 1 thread: busy machines)")] = "wall",
    quiet: QuietOpt = False,
) -> None:
    """int8 of a run's networks: ONNX Runtime static quantization (QDQ, per-channel int8 weights) calibrated on
    training images, top-1 and latency measured in onnxruntime beside fp32 (resumable, idempotent)."""
    from legr.engine.int8 import Int8Settings
    from legr.pipeline.quantize import quantize_run
    from legr.reporting import format_table

    settings = Int8Settings(calibration=calibration, calibration_images=calibration_images,
                            exclude=tuple(exclude or ()), max_drop=max_drop)
    typer.echo(format_table(quantize_run(path, settings, threads=threads, clock=clock, progress=not quiet,
                                         log=lambda m: console.print(m, highlight=False))))


app.command()(stream)


@app.command(hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def magnitude() -> None:
    """Gone: Han et al.'s experiment is a run of the method ``magnitude`` (its arguments are ignored)."""
    raise LegrError("`legr magnitude` is gone: use `legr run CONFIG.yaml` with `method: magnitude` (Han et al.'s "
                    "MNIST setting: configs/han_lenet_300_100_mnist.yaml)")


def _click_errors() -> tuple[type[Exception], ...]:
    """click's ``ClickException`` as typer raises it: recent typer's own copy of click (``typer._click``) and/or click
    itself (older typer)."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


INTERRUPTED = 130


def main() -> None:
    """The `legr` entry point. Outside click's standalone mode the exit code of a `typer.Exit` (--help, --version,
    and Ctrl-C in recent typer) is returned; older click turns Ctrl-C into `typer.Abort`."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and sys.argv[1:2] != ["finetune"]:
            raise LegrError("only `legr finetune` runs data-parallel under torchrun; run this command as one process")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and any(a.split("=")[0] == "--ray" for a in sys.argv):
            raise LegrError("--ray runs each member as a Ray task: launch it as one process, not under torchrun")
        code = app(standalone_mode=False)
    except LegrError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        code = INTERRUPTED
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort as exc:
        code = INTERRUPTED if isinstance(exc.__context__, KeyboardInterrupt) else 1
    except _click_errors() as exc:  # usage errors: unknown command or option, missing argument, bad value
        exc.show()
        sys.exit(2)
    if code == INTERRUPTED:
        console.print("interrupted; rerun the same command to resume where it stopped")
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
