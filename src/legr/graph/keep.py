"""The rules a keep vector must respect, checked before any network is pruned or masked.

A keep vector holds one 0 (remove) or 1 (keep) per channel class of a `ChannelGraph`. It may only remove channels
of prunable groups (the analysis fixed the others, each with its reason), and must leave at least one channel to
every producer layer (a convolution with zero filters cannot run) and to every piece of a channel split or slice (a
convolution reading zero channels returns zero channels). The budget floors of the solvers hold for the same sets,
so every plan a solver cuts passes; a keep vector built by hand is checked the same way by `prune`, `masked_copy`,
`apply_masks_` and `load_pruned`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from legr.errors import LegrError


class KeepRules:
    """The rules of one `ChannelGraph` (``graph.keep_rules``), prepared once: checking a vector then costs a few
    vectorized passes."""

    def __init__(self, graph: Any) -> None:
        self.graph = graph
        self.group_of = np.full(graph.num_classes, -1, dtype=np.int64)  # class -> index in graph.groups
        for i, group in enumerate(graph.groups):
            self.group_of[group.classes] = i
        prunable = np.array([g.prunable for g in graph.groups] + [False])  # [-1]: classes of no group
        self.fixed = ~prunable[self.group_of]
        self.producers = {name: np.unique(graph.classes(layer.producer_ids))
                          for name, layer in graph.layers.items() if layer.producer_ids is not None}
        # class sets that keep >= 1 channel: each producer's filters, then each split piece / channel slice
        self.nonempty = [(cls, f"layer '{name}'") for name, cls in self.producers.items() if len(cls)]
        self.nonempty += [(cls, f"the piece taken by {op}") for cls, op in zip(graph.segments, graph.segment_ops)
                          if len(cls)]
        sizes = [len(cls) for cls, _ in self.nonempty]
        self._flat = np.concatenate([cls for cls, _ in self.nonempty]) if sizes else np.zeros(0, dtype=np.int64)
        self._starts = np.cumsum([0] + sizes[:-1])

    def check(self, keep: Any, what: str = "keep vector") -> np.ndarray:
        """``keep`` as a float64 vector of 0/1, or `LegrError` (one line, starting with ``what``) naming the first
        rule it breaks, the group, the layer and, for a fixed group, the analysis' reason."""
        vec = self._values(keep, what)
        removed = np.flatnonzero((vec == 0) & self.fixed)
        if len(removed):
            raise LegrError(self._fixed_message(int(removed[0]), what))
        if len(self._flat):
            empty = np.flatnonzero(np.maximum.reduceat(vec[self._flat], self._starts) == 0)
            if len(empty):
                cls, where = self.nonempty[int(empty[0])]
                group = self.graph.groups[int(self.group_of[cls[0]])]
                layer = "" if where.startswith("layer") else f", layer '{self._producer(cls)}'"
                raise LegrError(f"{what} keeps no channel of {where} (group '{group.name}'{layer}): at least one "
                                "channel must stay")
        return vec

    def _values(self, keep: Any, what: str) -> np.ndarray:
        try:
            arr = np.asarray(keep)
        except Exception as exc:  # a ragged list, a tensor on an accelerator, ...
            raise LegrError(f"{what} is not an array of 0/1 values ({type(exc).__name__}: {exc})") from exc
        if arr.shape != (self.graph.num_classes,):
            raise LegrError(f"{what} has shape {arr.shape}; expected ({self.graph.num_classes},): one 0/1 entry per "
                            "channel class of the analysed model")
        if arr.dtype.kind not in "biuf":
            raise LegrError(f"{what} has dtype {arr.dtype}; expected 0/1 numbers (bool, integer or float)")
        vec = arr.astype(np.float64)
        bad = np.flatnonzero((vec != 0) & (vec != 1))
        if len(bad):
            raise LegrError(f"{what} holds {arr[bad[0]].item()} at index {bad[0]}; expected only 0 (remove) and 1 "
                            "(keep)")
        return vec

    def _fixed_message(self, cls: int, what: str) -> str:
        index = int(self.group_of[cls])
        if index < 0:
            reason = self.graph.fixed.get(cls, "no layer produces it")
            return f"{what} removes channel class {cls}, which is in no channel group ({reason}): it cannot be pruned"
        group, layer = self.graph.groups[index], self._producer(np.array([cls]))
        return (f"{what} removes channel {self.graph.local_index[cls]} of group '{group.name}' (layer '{layer}'), "
                f"which cannot be pruned: {group.reason}")

    def _producer(self, cls: np.ndarray) -> str:
        """The first producer layer creating any of the classes ``cls``."""
        return next(name for name, own in self.producers.items() if np.isin(cls, own).any())
