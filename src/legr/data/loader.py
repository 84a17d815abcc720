"""Fast batches from in-memory tensors: shuffle, augment and normalize per batch, no worker processes."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from legr.data.augment import random_crop_flip
from legr.errors import LegrError


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(N, C, H, W) uint8 in [0, 255] (or float in [0, 1]) -> new float32 tensor ``(x / 255 - mean) / std``."""
    out = x.to(torch.float32, copy=True)
    if x.dtype == torch.uint8:
        out.div_(255.0)
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return out.sub_(m).div_(s)


def shard_slice(n: int, shard: tuple[int, int]) -> slice:
    """Process ``rank``'s contiguous equal share of a batch of ``n`` for ``shard`` = (rank, processes)."""
    rank, size = shard
    if n % size:
        raise LegrError(f"a batch of {n} images cannot be split equally over {size} processes (fewer training images "
                        "than finetune.batch_size?)")
    return slice(rank * n // size, (rank + 1) * n // size)


class EpochBatches:
    """What both loaders share: ``len`` (batches per epoch) and ``set_epoch`` (the epoch the next ``iter()`` draws:
    its order and augmentation, from a generator seeded with (seed, epoch))."""

    x: object
    batch_size: int
    drop_last: bool
    epoch: int

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """The next ``iter()`` produces epoch ``epoch`` (its order and augmentation)."""
        self.epoch = epoch


class TensorLoader(EpochBatches):
    """Iterate ``(inputs, labels)`` batches: inputs float32 normalized NCHW, labels int64, both on ``device``.

    The uint8 images are moved to ``device`` once; each batch is gathered, optionally augmented
    (``random_crop_flip`` with ``padding``) and normalized there. Epoch ``e`` draws its order and augmentation from
    a generator seeded with ``(seed, e)`` (reproducible, resumable via ``set_epoch``), unless ``generator`` is given,
    which is then used as is. ``mean``/``std`` None means inputs are just scaled to [0, 1]. ``shard`` = (rank,
    processes): each batch is drawn whole and process ``rank`` gets its contiguous equal share (data parallelism).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, *,
                 shuffle: bool = False, augment: bool = False, drop_last: bool = False, seed: int = 0,
                 generator: torch.Generator | None = None, device: str | torch.device | None = None,
                 padding: int = 4, shard: tuple[int, int] = (0, 1)) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else x.device
        self.x, self.y = x.to(self.device), y.to(self.device)
        channels = x.shape[1]
        self.mean = tuple(mean) if mean is not None else (0.0,) * channels
        self.std = tuple(std) if std is not None else (1.0,) * channels
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.seed, self.generator, self.padding, self.shard = seed, generator, padding, shard
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = self.generator or torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n = len(self.x)
        order = torch.randperm(n, generator=gen).to(self.device) if self.shuffle else None
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, n)
            if order is None:
                xb, yb = self.x[start:stop], self.y[start:stop]
            else:
                idx = order[start:stop]
                xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                xb = random_crop_flip(xb, self.padding, gen)
            part = shard_slice(len(yb), self.shard)
            yield normalize(xb[part], self.mean, self.std), yb[part]
