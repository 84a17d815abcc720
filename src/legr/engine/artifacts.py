"""Pruned networks as files: ``plan.json`` (which channels each group keeps + how to rebuild the source model) and
``model.safetensors`` (the pruned weights). Loading rebuilds the source architecture from the model registry (or
takes it from the caller), applies the plan physically and loads the weights; nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import fx, nn

from legr.engine.plan import Plan
from legr.engine.surgery import prune
from legr.errors import LegrError
from legr.graph import ChannelGraph, analyze
from legr.models import build_from_factory, build_model, load_checkpoint, save_state_dict

PLAN_FILE, WEIGHTS_FILE = "plan.json", "model.safetensors"


def save_pruned(directory: str | Path, module: nn.Module, plan: Plan) -> Path:
    """Write the pruned ``module`` and its ``plan`` into ``directory`` (weights first, the plan last, both atomic:
    a folder with a plan always has matching weights)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_state_dict({k: v.detach().contiguous() for k, v in module.state_dict().items()}, directory / WEIGHTS_FILE)
    plan.save(directory / PLAN_FILE)
    return directory


def build_pruned(plan: Plan, base: nn.Module | None = None) -> tuple[fx.GraphModule, ChannelGraph]:
    """The pruned architecture of ``plan`` (weights of ``base``, or random ones when the source is rebuilt)."""
    graph = source_graph(plan.source, base)
    return prune(graph, plan.keep_vector(graph)), graph


def source_graph(source: dict[str, Any], base: nn.Module | None = None) -> ChannelGraph:
    """The channel graph of the unpruned network a plan's ``source`` describes (``base``: that network, for
    architectures not in the registry)."""
    if base is None:
        if "model" not in source:
            raise LegrError("plan has no source model name; pass the unpruned model to load it")
        if source.get("factory"):  # the user's own architecture: their factory again
            base = build_from_factory(source["factory"], source.get("kwargs"), num_classes=source.get("num_classes"))
        else:
            base = build_model(source["model"], num_classes=source.get("num_classes"))
    if "input_size" not in source:
        raise LegrError("plan has no source input_size (C, H, W)")
    return analyze(base, source["input_size"])


def load_pruned(directory: str | Path, base: nn.Module | None = None) -> tuple[fx.GraphModule, Plan]:
    """Load a network saved by `save_pruned`; ``base`` is the unpruned model for architectures not in the registry."""
    directory = Path(directory)
    if not (directory / PLAN_FILE).is_file():
        raise LegrError(f"no {PLAN_FILE} in {directory}: not a saved pruned network")
    plan = Plan.load(directory / PLAN_FILE)
    module, _ = build_pruned(plan, base)
    load_checkpoint(module, directory / WEIGHTS_FILE)
    return module, plan
