"""Model registry: names -> `ModelSpec` (builder, defaults, input size). Models register with `@register_model`."""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from legr.errors import LegrError

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


_REGISTRY: dict[str, ModelSpec] = {}


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
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name, builder, num_classes, tuple(input_size), description, source, pretrained)
        return builder

    return decorate


def list_models() -> list[str]:
    """All registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model_spec(name: str) -> ModelSpec:
    """The spec of `name`; an unknown name raises `LegrError` suggesting close matches."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(close)}?" if close else "see `legr.models.list_models()`"
        raise LegrError(f"unknown model {name!r}; {hint}") from None


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
    from legr.models.checkpoint import load_checkpoint, pretrained_path

    path = pretrained_path(name) if pretrained is True else pretrained
    return load_checkpoint(model, path)
