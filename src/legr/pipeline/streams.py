"""Class-skewed image streams replayed from a labelled split: what a deployed network sees in an environment whose
class prior is not the training split's (`legr.pipeline.adapt` replays them through a family with the probability
layer; `legr stream`, ``benchmarks/class_skew.py``).

A stream is one or more segments, each with its own class prior (``skewed_prior``: ``k`` dominant classes share
``share`` of the images, the other classes the rest); its images are drawn from the split's pool with a fixed seed,
class by class in the numbers the prior asks (largest-remainder rounding, so a segment's composition *is* its prior
up to one image per class), without replacement across the whole stream unless ``replace`` (a small validation
split), and shuffled within each segment. The oracle prior of an image is its segment's exact composition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from legr.errors import LegrError


@dataclass(frozen=True)
class Segment:
    """``length`` images drawn with class prior ``prior``."""

    prior: tuple[float, ...]
    length: int


@dataclass(frozen=True)
class Stream:
    """Positions in a pool of images (``indices``), their labels, and the segments they were drawn from (``starts``:
    each segment's first position; ``priors``: each segment's exact composition, its oracle prior)."""

    name: str
    indices: torch.Tensor
    labels: torch.Tensor
    starts: tuple[int, ...]
    priors: tuple[torch.Tensor, ...]

    def __len__(self) -> int:
        return len(self.indices)

    def bounds(self) -> list[tuple[int, int]]:
        """(start, end) of every segment."""
        ends = (*self.starts[1:], len(self))
        return list(zip(self.starts, ends))


def skewed_prior(num_classes: int, dominant: Sequence[int], share: float) -> tuple[float, ...]:
    """``dominant`` classes share ``share`` of the images equally, the others ``1 - share`` equally (no dominant
    classes: the uniform prior)."""
    dominant = sorted(set(int(c) for c in dominant))
    if any(not 0 <= c < num_classes for c in dominant):
        raise LegrError(f"dominant classes {dominant} must be in [0, {num_classes})")
    if not dominant:
        return tuple([1.0 / num_classes] * num_classes)
    if not 0.0 < share <= 1.0:
        raise LegrError(f"share of the dominant classes must be in (0, 1], got {share}")
    others = num_classes - len(dominant)
    if others == 0 and share < 1.0:
        raise LegrError("every class is dominant: the share must be 1")
    rest = (1.0 - share) / others if others else 0.0
    return tuple(share / len(dominant) if c in dominant else rest for c in range(num_classes))


def _counts(prior: Sequence[float], length: int) -> torch.Tensor:
    """Images per class for ``length`` images at ``prior`` (largest remainder, ties to the lower class)."""
    p = torch.as_tensor(prior, dtype=torch.float64)
    exact = p / p.sum() * length
    counts = exact.floor().long()
    rest = length - int(counts.sum())
    if rest > 0:
        counts[torch.argsort(counts - exact, stable=True)[:rest]] += 1
    return counts


def build_stream(labels: torch.Tensor, segments: Sequence[Segment], *, seed: int = 0, replace: bool = False,
                 name: str = "") -> Stream:
    """A stream of positions into the pool whose labels are ``labels`` (see the module doc). Asking a class for more
    images than the pool has left is a one-line `LegrError` (use fewer images, or ``replace``)."""
    labels = torch.as_tensor(labels).long().cpu()
    classes = int(labels.max()) + 1 if len(labels) else 0
    gen = torch.Generator().manual_seed(seed)
    pools = {c: (labels == c).nonzero().flatten() for c in range(classes)}
    pools = {c: idx[torch.randperm(len(idx), generator=gen)] for c, idx in pools.items()}
    used = {c: 0 for c in pools}
    picked, starts, priors, position = [], [], [], 0
    for segment in segments:
        if len(segment.prior) != classes:
            raise LegrError(f"a segment's prior has {len(segment.prior)} classes, the pool {classes}")
        if segment.length < 1:
            raise LegrError(f"a segment needs at least one image, got {segment.length}")
        counts = _counts(segment.prior, segment.length)
        chunk = []
        for c, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            if replace:
                chunk.append(pools[c][torch.randint(len(pools[c]), (n,), generator=gen)])
                continue
            if used[c] + n > len(pools[c]):
                raise LegrError(f"stream {name or '?'}: class {c} needs {used[c] + n} images, the pool has "
                                f"{len(pools[c])} (fewer images, or draw with replacement)")
            chunk.append(pools[c][used[c]:used[c] + n])
            used[c] += n
        chunk = torch.cat(chunk)
        picked.append(chunk[torch.randperm(len(chunk), generator=gen)])
        starts.append(position)
        priors.append(counts.double() / counts.sum())
        position += len(chunk)
    indices = torch.cat(picked)
    return Stream(name=name, indices=indices, labels=labels[indices], starts=tuple(starts), priors=tuple(priors))
