"""Model registry: names -> `ModelSpec` (builder, defaults, input size). Models register with `@register_model`."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from legr.errors import CheckpointError, LegrError
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
    source: str = "legr"  # "legr" (our CIFAR code), "torchvision" or "timm"
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


TIMM_PREFIX = "timm:"


def get_model_spec(name: str) -> ModelSpec:
    """The spec of `name`; an unknown name raises `LegrError` suggesting close matches. ``timm:<architecture>`` is
    any model of the timm zoo (optional: ``pip install -e ".[timm]"``), built with random weights (never
    downloaded; pass a checkpoint path for trained ones)."""
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    return MODELS[name]


def _timm_spec(name: str) -> ModelSpec:
    arch = name[len(TIMM_PREFIX):]
    try:
        import timm
    except ImportError:
        raise LegrError(f"model {name!r} needs timm: pip install -e \".[timm]\"") from None
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        raise LegrError(f"unknown timm model {arch!r}" + (f"; did you mean {', '.join(TIMM_PREFIX + c for c in close)}?"
                                                           if close else "; see timm.list_models()"))
    cfg = timm.get_pretrained_cfg(arch)
    input_size = tuple(int(v) for v in getattr(cfg, "input_size", None) or (3, 224, 224))
    num_classes = int(getattr(cfg, "num_classes", None) or 1000)

    def builder(num_classes: int, **kwargs: Any) -> nn.Module:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)

    return ModelSpec(name, builder, num_classes, input_size, f"timm {arch}", source="timm")


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
