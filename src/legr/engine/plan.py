"""A pruning plan is plain data: for each channel group, the indices of the channels it keeps.

Saved as JSON next to the pruned weights (safetensors); together with the name of the source architecture they
rebuild the pruned network without unpickling any module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from legr.errors import LegrError
from legr.graph import ChannelGraph
from legr.paths import atomic_write_text

PLAN_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """``keep`` maps each prunable group name to the sorted indices it keeps (groups left out keep everything).

    ``source`` describes how to rebuild the unpruned network, e.g. ``{"model": "cifar_resnet56",
    "num_classes": 10, "input_size": [3, 32, 32]}``; ``info`` carries free-form facts (MACs, params, method).
    """

    keep: dict[str, list[int]]
    source: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_keep_vector(cls, graph: ChannelGraph, vec: np.ndarray, **kw: Any) -> "Plan":
        return cls({name: list(idx) for name, idx in graph.keep_dict(vec).items()}, **kw)

    def keep_vector(self, graph: ChannelGraph) -> np.ndarray:
        return graph.keep_vector(self.keep)

    def widths(self, graph: ChannelGraph) -> dict[str, int]:
        """Kept channels per group (every group, prunable or not)."""
        return {g.name: len(self.keep.get(g.name, range(g.size))) for g in graph.groups}

    def layer_widths(self, graph: ChannelGraph) -> dict[str, int]:
        """Output channels kept per producer layer of every prunable group, in graph order (`source_widths`: the
        unpruned ones)."""
        keep = self.keep_vector(graph)
        return {name: int(keep[graph.classes(graph.layers[name].producer_ids)].sum())
                for name in prunable_layers(graph)}

    def to_json(self) -> str:
        return json.dumps({"version": PLAN_VERSION, **asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LegrError(f"plan is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("keep"), dict):
            raise LegrError("plan JSON has no 'keep' mapping of group name -> kept channel indices")
        if data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise LegrError(f"plan version {data.get('version')} is not supported (expected {PLAN_VERSION})")
        keep = {str(k): [int(i) for i in v] for k, v in data["keep"].items()}
        return cls(keep, dict(data.get("source", {})), dict(data.get("info", {})))

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        path = Path(path)
        if not path.is_file():
            raise LegrError(f"plan file not found: {path}")
        return cls.from_json(path.read_text())


def prunable_layers(graph: ChannelGraph) -> list[str]:
    """The producer layers of every prunable group, in graph order."""
    prunable = {name for g in graph.prunable_groups() for name in g.producers}
    return [name for name in graph.layers if name in prunable]


def source_widths(graph: ChannelGraph) -> dict[str, int]:
    """Output channels per producer layer of every prunable group of the unpruned network, in graph order."""
    return {name: len(graph.layers[name].producer_ids) for name in prunable_layers(graph)}
