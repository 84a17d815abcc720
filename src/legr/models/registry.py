"""Model registry: names -> `ModelSpec` (builder, defaults, input size). Models register with `@register_model`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from legr.errors import CheckpointError
from legr.models.checkpoint import load_checkpoint
from legr.paths import weights_dir
from legr.registry import Registry

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """What legr knows about a model name. `builder(num_classes=..., **kwargs)` returns a randomly initialised model."""

    name: str
    builder: Builder
    num_classes: int
    input_size: tuple[int, int, int]
    description: str
    source: str = "legr"  # "legr" (our CIFAR code) or "torchvision"
    pretrained: str | None = None  # checkpoint path relative to legr.paths.weights_dir(), if one is published


MODELS = Registry[ModelSpec]("model", hint="see `legr models` or `legr.models.list_models()`")


def register_model(
    name: str,
    *,
    num_classes: int,
    input_size: tuple[int, int, int],
    description: str,
    source: str = "legr",
    pretrained: str | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator registering `builder` under `name`; `builder(num_classes=..., **kwargs) -> nn.Module`."""

    def decorate(builder: Builder) -> Builder:
        MODELS.add(name, ModelSpec(name, builder, num_classes, tuple(input_size), description, source, pretrained))
        return builder

    return decorate


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return MODELS.names()


def get_model_spec(name: str) -> ModelSpec:
    """The spec of `name`; an unknown name raises `LegrError` suggesting close matches."""
    return MODELS[name]


def build_model(
    name: str,
    num_classes: int | None = None,
    pretrained: bool | str | os.PathLike = False,
    **kwargs: Any,
) -> nn.Module:
    """Build `name` with random init (`num_classes=None`: the spec's default), extra kwargs go to the builder.

    `pretrained=True` loads the spec's published checkpoint (see `legr.models.pretrained_path`);
    `pretrained=<path>` loads that file with `legr.models.load_checkpoint` (strict).
    """
    spec = get_model_spec(name)
    model = spec.builder(num_classes=spec.num_classes if num_classes is None else num_classes, **kwargs)
    if pretrained is False or pretrained is None:
        return model
    path = pretrained_path(name) if pretrained is True else pretrained
    return load_checkpoint(model, path)


def pretrained_path(name: str) -> Path:
    """Path of the published checkpoint of model `name` under `legr.paths.weights_dir()` (env `LEGR_WEIGHTS`)."""
    spec = get_model_spec(name)
    if spec.pretrained is None:
        known = [n for n in list_models() if get_model_spec(n).pretrained]
        raise CheckpointError(
            f"no pretrained weights known for {name!r} (known: {', '.join(known)}); pass pretrained=<path>"
        )
    path = weights_dir() / spec.pretrained
    if not path.is_file():
        raise CheckpointError(
            f"pretrained weights for {name!r} not found at {path.resolve()}; "
            f"set LEGR_WEIGHTS to the folder holding {spec.pretrained}"
        )
    return path
