"""What every `legr` command shares: the argument and option types, and the console that errors and progress go to
(stderr). Separate from `legr.cli` so that a command in its own module (`legr.cli_stream`) uses them too."""

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
