"""The one analysis every low-rank member is cut from: each decomposable layer's shape, how often it runs, and the
singular values of its weight matrix, with the source network's MACs and parameters (learn once, cut many).

Stored in the run folder as ``lowrank_analysis.json`` once complete; while it runs, each finished layer is added to
``lowrank_analysis.partial.json``, so an interrupted analysis resumes with the next layer (on a large network the
SVDs are the analysis's cost). `Analysis.cost` prices any rank assignment analytically (`LayerInfo.macs`/`params`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from legr.errors import CheckpointError
from legr.methods.lowrank.decompose import LayerInfo, find_layers, singular_values
from legr.paths import atomic_write_text

ANALYSIS_FILE = "lowrank_analysis.json"
PARTIAL_FILE = "lowrank_analysis.partial.json"
UNITS = ("macs", "params")


@dataclass(frozen=True)
class Analysis:
    """Decomposable layers (module order), their singular values (largest first), the layers left whole (name ->
    reason) and the source network's cost (``{"macs": .., "params": ..}``, torch's count)."""

    layers: tuple[LayerInfo, ...]
    singular: Mapping[str, np.ndarray]
    whole: Mapping[str, str]
    base: Mapping[str, int]

    def cost(self, ranks: Mapping[str, int], unit: str) -> int:
        """The network's cost in ``unit`` (macs or params) with each layer in ``ranks`` decomposed at its rank and
        every other layer whole."""
        if unit not in UNITS:
            raise ValueError(f"low-rank costs are in {' or '.join(UNITS)}, not {unit}")
        saved = 0
        for layer in self.layers:
            if layer.name in ranks:
                price = layer.macs if unit == "macs" else layer.params
                saved += price(None) - price(ranks[layer.name])
        return int(self.base[unit] - saved)

    def to_dict(self) -> dict[str, Any]:
        return {"base": dict(self.base), "whole": dict(self.whole),
                "layers": [{**layer.to_dict(), "singular": self.singular[layer.name].tolist()}
                           for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Analysis":
        layers = tuple(LayerInfo.from_dict(x) for x in d["layers"])
        singular = {x["name"]: np.asarray(x["singular"], dtype=np.float64) for x in d["layers"]}
        return cls(layers, singular, dict(d["whole"]), dict(d["base"]))

    def describe(self) -> str:
        return (f"{len(self.layers)} layers decomposable, {len(self.whole)} left whole"
                + (f" ({', '.join(f'{n}: {r}' for n, r in list(self.whole.items())[:3])}"
                   f"{' ...' if len(self.whole) > 3 else ''})" if self.whole else ""))


def analyze(model: nn.Module, input_size: tuple[int, ...], base: Mapping[str, int], folder: Path | None = None, *,
            svd: Callable[[nn.Module], torch.Tensor] = singular_values,
            log: Callable[[str], None] = lambda m: None) -> Analysis:
    """The analysis of ``model`` (source cost ``base``), read from ``folder`` when it holds a finished one, else
    computed layer by layer (resuming a partial one found there) and saved. ``svd``: a layer's singular values."""
    done = folder / ANALYSIS_FILE if folder is not None else None
    if done is not None and done.exists():
        return Analysis.from_dict(_read(done))
    layers, whole = find_layers(model, input_size)
    partial = folder / PARTIAL_FILE if folder is not None else None
    singular: dict[str, list[float]] = _read(partial)["singular"] if partial is not None and partial.exists() else {}
    if singular:
        log(f"low-rank analysis: resuming after {len(singular)} of {len(layers)} layers")
    for layer in layers:
        if layer.name in singular:
            continue
        singular[layer.name] = svd(model.get_submodule(layer.name)).tolist()
        if partial is not None:
            atomic_write_text(partial, json.dumps({"singular": singular}))
    analysis = Analysis(tuple(layers), {n: np.asarray(singular[n], dtype=np.float64) for n in (x.name for x in layers)},
                        whole, {u: int(base[u]) for u in UNITS})
    if done is not None:
        atomic_write_text(done, json.dumps(analysis.to_dict(), indent=1))
        partial.unlink(missing_ok=True)
    return analysis


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
