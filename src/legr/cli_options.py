"""What every `legr` command shares: the argument and option types, the console that errors and progress go to
(stderr), and opening a run from a config file (+ ``--set`` overrides). Separate from `legr.cli` so that a command in
its own module (`legr.cli_stream`) uses them too."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="run configuration (YAML); see configs/ and `legr demo`")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="run folder (default: runs/<config name>)")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", help="override a config key: --set search.tau=0")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
ModelArg = Annotated[str, typer.Argument(help="registered model name (`legr models`), timm:<name>, or your own model: "
                                              "factory:<package.module:callable> or factory:<path/to/net.py:callable> "
                                              "(runs that code)")]
InputSizeOpt = Annotated[Optional[str], typer.Option(help="input size CxHxW, e.g. 3x32x32 (required for factory: "
                                                          "models; default: the registered model's)")]
KwargsOpt = Annotated[Optional[str], typer.Option("--kwargs", help="a factory's keyword arguments, a JSON object: "
                                                                   "'{\"width\": 64}'")]
NumClassesOpt = Annotated[Optional[int], typer.Option(help="classifier width")]
RayOpt = Annotated[Optional[str], typer.Option("--ray", help="score the search's candidates and fine-tune each member "
                                                      "as Ray tasks: 'local' starts a "
                                                      "local Ray, 'auto' or host:port joins a cluster")]


def overrides(items: list[str] | None) -> dict:
    from legr.pipeline.config_files import parse_set_options

    return parse_set_options(items or [])


def open_pipeline(config: Path, out: Path | None, items: list[str] | None, quiet: bool, *, main: bool = True):
    # main False: a data-parallel rank other than 0, which prints nothing
    from legr.pipeline.config_files import load_config
    from legr.pipeline.steps import Pipeline

    return Pipeline(load_config(config, overrides(items)), out or Path("runs") / config.stem,
                    progress=main and not quiet, log=(lambda m: console.print(m)) if main else (lambda m: None))


def rank_family(pipeline, ray: str | None):
    """``pipeline``'s one-time work (the ranking), its search candidates scored as Ray tasks with ``ray``."""
    if ray is None:
        return pipeline.rank()
    from legr.pipeline.ray_dispatch import RaySettings, on_ray

    with on_ray(pipeline, RaySettings(address=None if ray == "local" else ray)):
        return pipeline.rank()


def finetune_family(pipeline, ray: str | None):
    """``pipeline`` after fine-tuning its family: in this process (or data-parallel), or as Ray tasks (``ray``)."""
    if ray is None:
        pipeline.finetune()
    else:
        from legr.pipeline.ray_dispatch import RaySettings, finetune_on_ray

        finetune_on_ray(pipeline, RaySettings(address=None if ray == "local" else ray))
    return pipeline
