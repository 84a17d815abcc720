"""Model registry: names -> `ModelSpec` (builder, defaults, input size). Models register with `@register_model`."""

from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

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
FACTORY_PREFIX = "factory:"  # factory:<package.module:callable> or factory:<path/to/file.py:callable>


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
    """Build `name` with random init (`num_classes=None`: the spec's default), extra kwargs go to the builder;
    ``factory:<target>`` is the user's own model (`build_from_factory`: the kwargs are the factory's).

    `pretrained=True` loads the spec's published checkpoint (see `legr.models.pretrained_path`);
    `pretrained=<path>` loads that file with `legr.models.load_checkpoint` (strict).
    """
    if name.startswith(FACTORY_PREFIX):
        return build_from_factory(name[len(FACTORY_PREFIX):], kwargs, num_classes, pretrained)
    spec = get_model_spec(name)
    model = spec.builder(num_classes=spec.num_classes if num_classes is None else num_classes, **kwargs)
    if pretrained is False or pretrained is None:
        return model
    path = pretrained_path(name) if pretrained is True else pretrained
    return load_checkpoint(model, path)


def model_from_options(name: str, input_size: str | None = None, kwargs: str | None = None,
                       num_classes: int | None = None, weights: str | None = None) -> tuple[nn.Module, tuple[int, ...]]:
    """The model a command names (`legr analyze`, `legr latency`) and the input size to analyse it at, from the
    options' text: ``input_size`` ``"3x32x32"`` (required for ``factory:`` names, else the registered model's by
    default), ``kwargs`` a JSON object (a factory's arguments), ``weights`` a checkpoint path or ``"pretrained"``.
    `LegrError` in one line for a malformed option, and as `build_model` raises."""
    factory = name.startswith(FACTORY_PREFIX)
    if input_size is None and factory:
        raise LegrError(f"{name}: a factory's model needs --input-size (channels x height x width, e.g. 3x32x32)")
    if input_size is not None and not re.fullmatch(r"[1-9][0-9]*(x[1-9][0-9]*)*", input_size):
        raise LegrError(f"--input-size {input_size!r}: expected positive whole numbers joined by 'x', e.g. 3x32x32")
    size = tuple(map(int, input_size.split("x"))) if input_size else get_model_spec(name).input_size
    if kwargs is not None and not factory:
        raise LegrError("--kwargs are a factory's arguments: name the model factory:<module or file>:<callable>")
    try:
        args = json.loads(kwargs or "{}")
    except json.JSONDecodeError as exc:
        raise LegrError(f"--kwargs {kwargs!r} is not JSON ({exc})") from None
    if not isinstance(args, dict):
        raise LegrError(f"--kwargs {kwargs!r}: expected a JSON object of keyword arguments, e.g. '{{\"width\": 64}}'")
    pretrained = {"pretrained": True, None: False}.get(weights, weights)
    return build_model(name, num_classes=num_classes, pretrained=pretrained, **args), size


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


# --- bring your own model: a factory the user names ---------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def resolve_factory(target: str) -> str:
    """``target`` with a file form's path made absolute (``net.py:build`` -> ``/abs/net.py:build``), so a saved plan
    rebuilds the model from any working directory; a module form is returned as it is."""
    module, sep, attr = target.rpartition(":")
    if sep and (module.endswith(".py") or "/" in module or os.sep in module):
        return f"{Path(module).expanduser().resolve()}:{attr}"
    return target


def load_factory(target: str) -> Callable[..., Any]:
    """The callable ``target`` names: ``"package.module:callable"`` (imported) or ``"path/to/file.py:callable"`` (the
    file is run as a module). This runs the user's code. `LegrError` (one line) when it cannot be found."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise LegrError(f"model factory {target!r}: expected 'package.module:callable' or 'path/to/file.py:callable'")
    if module_name.endswith(".py") or "/" in module_name or os.sep in module_name:
        path = Path(module_name).expanduser().resolve()
        if not path.is_file():
            raise LegrError(f"model factory {target!r}: file {path} not found")
        name = "legr_user_model_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses and pickling look the module up
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise LegrError(f"model factory {target!r}: running {path} failed ({_first_line(exc)})") from exc
    else:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise LegrError(f"model factory {target!r}: cannot import module '{module_name}' ({_first_line(exc)})") \
                from exc
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise LegrError(f"model factory {target!r}: '{module_name}' has no callable '{attr}'")
    return obj


def _accepts(fn: Callable[..., Any], keyword: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def build_from_factory(target: str, kwargs: Mapping[str, Any] | None = None, num_classes: int | None = None,
                       pretrained: bool | str | os.PathLike = False) -> nn.Module:
    """Your own architecture: ``target(**kwargs)`` (see `load_factory`), with ``num_classes`` passed too when the
    callable takes it and ``kwargs`` does not set it; ``pretrained=<path>`` loads a checkpoint like `build_model`.
    Every failure is a one-line `LegrError`: the target cannot be imported, the call raises, or it returns
    something that is not an ``nn.Module``."""
    fn = load_factory(target)
    args = dict(kwargs or {})
    if num_classes is not None and "num_classes" not in args and _accepts(fn, "num_classes"):
        args["num_classes"] = num_classes
    try:
        model = fn(**args)
    except Exception as exc:
        raise LegrError(f"model factory {target!r} raised {_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise LegrError(f"model factory {target!r} returned {type(model).__name__}, not a torch.nn.Module")
    if pretrained is True:
        raise CheckpointError("a model built by a factory has no published weights: give weights a checkpoint path "
                              "(or null)")
    if pretrained is False or pretrained is None:
        return model
    return load_checkpoint(model, pretrained)
