"""Registers every torchvision classification model under its torchvision name (random init, never downloads)."""

from __future__ import annotations

from functools import partial

import torchvision
from torch import nn

from legr.models.registry import register_model

_INPUT_SIZE = {"inception_v3": (3, 299, 299)}
_EXPLICIT_INIT = {"inception_v3", "googlenet"}  # silences torchvision's FutureWarning; keeps its current init


def _build(tv_name: str, num_classes: int = 1000, **kwargs) -> nn.Module:
    if tv_name in _EXPLICIT_INIT:
        kwargs.setdefault("init_weights", True)
    return torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **kwargs)


def torchvision_model_names() -> list[str]:
    """The classification models torchvision offers (its top-level `torchvision.models` namespace)."""
    return list(torchvision.models.list_models(module=torchvision.models))


for _name in torchvision_model_names():
    register_model(
        _name,
        num_classes=1000,
        input_size=_INPUT_SIZE.get(_name, (3, 224, 224)),
        description=f"torchvision {_name} (ImageNet layout, random init)",
        source="torchvision",
    )(partial(_build, _name))
