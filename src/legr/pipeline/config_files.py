"""Config files: YAML in (with ``--set KEY=VALUE`` overrides), YAML out, and which part of a config identifies what a
run folder holds (so that a folder refuses a config that would mix two runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from legr.errors import ConfigError
from legr.methods import METHODS, STAGES
from legr.pipeline.config import RunConfig, parse_config


def load_config(path: str | Path, overrides: dict[str, Any] | None = None, schema: type[RunConfig] = RunConfig) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{_yaml_position(exc)} is not valid YAML: {problem}") from None
    return parse_config(data or {}, overrides, schema)


def _yaml_position(exc: yaml.YAMLError) -> str:
    """``:line:column`` (1-based) of a YAML error, where PyYAML marks one."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    return f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """``["search.tau=0", "targets=[0.3, 0.5]"]`` -> ``{"search.tau": 0, "targets": [0.3, 0.5]}`` (values are YAML)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key.strip()}: '{value}' is not a valid YAML value") from None
    return out


# sections that do not change what a run folder holds: a finished run may be evaluated elsewhere with other settings
EVAL_ONLY = ("eval", "device")


def artifact_config(cfg: RunConfig) -> dict[str, Any]:
    """The part of the config that determines a run folder's source network, ranking and members: the config less
    the evaluation-only keys and the keys of the methods and stages it does not run, as the run's method reads it
    (`Method.identity`)."""
    method = METHODS[cfg.chain[0]]
    others = {key for registry in (METHODS, STAGES) for name, step in registry.items() if name not in cfg.chain
              for key in step.config_keys}
    held = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in EVAL_ONLY and k not in others}
    return method.identity(cfg, held)


def held_config(raw: Any) -> RunConfig:
    """A run folder's stored config.yaml, read as written by the version that ran it: a search block from before
    ``search.restarts`` existed ran one search, one from before ``search.fallback_criterion`` fell back to the
    uniform allocation of the ranking's own criterion, and one from before ``optimizer``, ``normalize`` or
    ``guard_weight`` existed searched by aging evolution over raw scores with the hard guard."""
    if isinstance(raw, dict) and isinstance(raw.get("search"), dict):
        legacy = {"restarts": 1, "fallback_criterion": None, "optimizer": "evolution", "normalize": "none",
                  "guard_weight": None}
        raw = {**raw, "search": {**legacy, **raw["search"]}}
    return parse_config(raw)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
