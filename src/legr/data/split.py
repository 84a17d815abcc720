"""Deterministic stratified train/validation split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from legr.data.stream import ImageFiles
from legr.errors import DatasetError


@dataclass(frozen=True)
class Splits:
    """A run's data: train / validation / test (images, labels), normalization, input size and classes. Training
    and test images may be streamed from disk (`ImageFiles`); validation images, which the search scores every
    candidate on, are always in memory."""

    train: tuple[torch.Tensor | ImageFiles, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor | ImageFiles, torch.Tensor]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_size: tuple[int, int, int]
    num_classes: int


def split_indices(y: torch.Tensor, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val) of a stratified random split; both ascending (the original order is kept).

    Each class gives ``val_size * count / N`` samples to val (largest-remainder rounding, ties to the lower class),
    drawn at random by a ``torch.Generator`` seeded with ``seed``: same inputs + seed -> same split, on any machine.
    """
    n = len(y)
    if not 0 <= val_size < n:
        raise DatasetError(f"val_size {val_size} must be in [0, {n}) for a set of {n} samples")
    labels = y.detach().cpu().long()
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    exact = counts.double() * val_size / n
    quota = exact.floor().long()
    rest = val_size - int(quota.sum())
    if rest > 0:
        quota[torch.argsort(quota - exact, stable=True)[:rest]] += 1
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    by_class = perm[torch.argsort(inverse[perm], stable=True)]  # grouped by class, random order inside each
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(n, dtype=torch.long)
    rank[by_class] = torch.arange(n) - starts.repeat_interleave(counts)
    is_val = rank < quota[inverse]
    return (~is_val).nonzero().squeeze(1), is_val.nonzero().squeeze(1)


def split_train_val(x: torch.Tensor | ImageFiles, y: torch.Tensor, val_size: int, seed: int = 0
                    ) -> tuple[torch.Tensor | ImageFiles, torch.Tensor, torch.Tensor | ImageFiles, torch.Tensor]:
    """Split (x, y) into disjoint (train_x, train_y, val_x, val_y), stratified by label (see ``split_indices``).
    Images on disk (`ImageFiles`) are split without decoding them."""
    if len(x) != len(y):
        raise DatasetError(f"x has {len(x)} samples but y has {len(y)}")
    train_idx, val_idx = split_indices(y, val_size, seed)

    def take(idx: torch.Tensor) -> torch.Tensor | ImageFiles:
        return x.subset(idx) if isinstance(x, ImageFiles) else x[idx.to(x.device)]

    return take(train_idx), y[train_idx.to(y.device)], take(val_idx), y[val_idx.to(y.device)]
