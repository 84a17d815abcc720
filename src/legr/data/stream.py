"""Image folders streamed from disk: each image read, decoded and transformed when a batch needs it, by
``torch.utils.data.DataLoader`` workers, for data that does not fit in memory (ImageNet: ~190 GB decoded at 224 px).

`ImageFiles` stands where an in-memory uint8 NCHW tensor stands in a dataset (``len``, ``shape``, ``dtype``, and
indexing, which decodes), and `make_loader` gives it a `StreamLoader` where a tensor gets a `TensorLoader`: same
batches (order from the same seeded permutation; without augmentation the very same pixels), same interface.

Transforms follow the image size: at ``LARGE`` px and above the ImageNet recipe (training: RandomResizedCrop +
horizontal flip; evaluation: resize the short side to size / 0.875, center crop), below it the CIFAR one (resize to
the size; training: 4-px padded random crop + flip). Every random draw comes from a per-image seed drawn by the
loader's seeded generator, so an epoch is the same whatever the number of workers, and a resumed run sees the same
images. Sources: a directory or a .zip, or an uncompressed .tar (indexed once; a compressed tar cannot be read at
random, so it is decoded into memory instead).
"""

from __future__ import annotations

import functools
import hashlib
import operator
import os
import tarfile
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from legr.data.cache import cached_arrays, source_fingerprint
from legr.data.folder import _decode_batch, _decode_pil, group_image_folders, image_parts
from legr.data.loader import EpochBatches, TensorLoader, normalize, shard_slice
from legr.errors import DatasetError
from legr.paths import cache_dir
from legr.progress import progress_bar

LARGE = 96  # output side (px) from which images get the ImageNet transforms rather than the CIFAR ones
CROP_RATIO = 0.875  # evaluation: the center crop's share of the resized short side (224 of 256)


class _Reader:
    """Random access to the files of a directory, a .zip or an uncompressed .tar; the archive is opened once per
    process (DataLoader workers each open their own: a handle shared across a fork would share its file position)."""

    def __init__(self, source: Path) -> None:
        self.source = source
        if not random_access(source):
            raise DatasetError(f"{source}: streaming reads a directory, a .zip or an uncompressed .tar (a compressed "
                               "tar cannot be read at random: extract it, or set stream: false to decode it into "
                               "memory)")
        self.kind = "dir" if source.is_dir() else "zip" if zipfile.is_zipfile(source) else "tar"
        self._handle: Any = None
        self._pid = -1

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handle": None, "_pid": -1}

    def locations(self) -> Iterator[tuple[tuple[str, ...], Any]]:
        """(path parts, locator) of every ``<split>/<class>/<image>`` file, without reading them."""
        if self.kind == "dir":
            for dirpath, dirnames, filenames in os.walk(self.source, followlinks=True):
                dirnames.sort()
                for fname in filenames:
                    rel = os.path.relpath(os.path.join(dirpath, fname), self.source)
                    parts = image_parts(rel)
                    if parts:
                        yield parts, rel
        elif self.kind == "zip":
            with zipfile.ZipFile(self.source) as zf:
                for info in zf.infolist():
                    parts = None if info.is_dir() else image_parts(info.filename)
                    if parts:
                        yield parts, info.filename
        else:
            with tarfile.open(self.source, "r:") as tf:
                for member in tf:
                    parts = image_parts(member.name) if member.isfile() else None
                    if parts:
                        yield parts, (member.offset_data, member.size)

    def read(self, locator: Any) -> bytes:
        if self.kind == "dir":
            return (self.source / locator).read_bytes()
        if self._pid != os.getpid():
            self._handle = zipfile.ZipFile(self.source) if self.kind == "zip" else open(self.source, "rb")
            self._pid = os.getpid()
        if self.kind == "zip":
            return self._handle.read(locator)
        offset, size = locator
        self._handle.seek(offset)
        return self._handle.read(size)


def is_plain_tar(path: Path) -> bool:
    """An uncompressed tar archive (readable at random)."""
    try:
        with tarfile.open(path, "r:"):
            return True
    except (tarfile.TarError, OSError):
        return False


def random_access(source: Path) -> bool:
    """Whether images in ``source`` can be streamed: a directory, a .zip or an uncompressed .tar."""
    return source.is_dir() or zipfile.is_zipfile(source) or is_plain_tar(source)


@functools.lru_cache(maxsize=16)
def image_transform(size: tuple[int, int], train: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-image transform of a (C, H, W) uint8 tensor to ``size`` (see the module's doc); random draws from
    torch's global generator (`ImageFiles.image` seeds it per image)."""
    from torchvision.transforms import v2

    if min(size) >= LARGE:
        if train:
            return v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])
        return v2.Compose([v2.Resize(round(min(size) / CROP_RATIO), antialias=True), v2.CenterCrop(size)])
    if train:
        return v2.Compose([v2.Resize(size, antialias=True), v2.RandomCrop(size, padding=4), v2.RandomHorizontalFlip()])
    return v2.Resize(size, antialias=True)


@dataclass(frozen=True, eq=False)
class ImageFiles:
    """Images on disk standing in for a uint8 (N, C, H, W) tensor: ``len``, ``shape``, ``dtype``, ``dim()``;
    indexing decodes (evaluation transform) and returns a tensor; `subset` selects without decoding. ``workers``:
    DataLoader worker processes of its `StreamLoader` (0: decode in the calling process)."""

    reader: _Reader
    names: tuple[str, ...]
    locators: tuple[Any, ...]
    size: tuple[int, int]
    channels: int
    workers: int = 0
    dtype: ClassVar[torch.dtype] = torch.uint8

    def __len__(self) -> int:
        return len(self.names)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), self.channels, *self.size))

    def dim(self) -> int:
        return 4

    def subset(self, index: torch.Tensor | slice | Sequence[int]) -> ImageFiles:
        """The images at ``index``, still on disk."""
        picked = range(len(self))[index] if isinstance(index, slice) else [int(i) for i in index]
        return replace(self, names=tuple(self.names[i] for i in picked),
                       locators=tuple(self.locators[i] for i in picked))

    def image(self, i: int, train: bool = False, seed: int = 0) -> torch.Tensor:
        """Image ``i`` read, decoded and transformed (training transform drawn from ``seed``)."""
        name = self.names[i]
        try:
            blob = self.reader.read(self.locators[i])
        except (OSError, KeyError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{self.reader.source}: cannot read {name} ({exc})") from None
        img = _decode_batch(self.reader.source, [(name, blob)], "L" if self.channels == 1 else "RGB")[0]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return image_transform(self.size, train)(img)

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> torch.Tensor:
        if not isinstance(index, slice) and (isinstance(index, int) or getattr(index, "ndim", 1) == 0):
            return self.image(operator.index(index))  # one image, (C, H, W), as a tensor's x[i]
        part = self.subset(index)
        if len(part) == 0:
            return torch.empty((0, self.channels, *self.size), dtype=torch.uint8)
        return torch.stack([part.image(i) for i in range(len(part))])

    def fingerprint(self) -> str:
        """Changes when any of these images changes: the archive's, or each file's, path, size and time."""
        if self.reader.kind != "dir":
            return source_fingerprint(self.reader.source)
        return "\n".join(source_fingerprint(self.reader.source / loc) for loc in self.locators)


def open_image_folders(source: Path, image_size: tuple[int, int] | None, workers: int
                       ) -> tuple[ImageFiles, torch.Tensor, ImageFiles, torch.Tensor, list[str]]:
    """Index an ImageFolder tree (see `legr.data.folder.read_image_folders`) for streaming: (train images, labels,
    test images, labels, classes); ``image_size`` None takes the first training image's size."""
    reader = _Reader(source)
    classes, train, test = group_image_folders(source, reader.locations())
    index = {c: i for i, c in enumerate(classes)}
    first = _decode_pil(source, f"train/{train[0][0]}/{train[0][1]}", reader.read(train[0][2]), None)
    channels = first.shape[0]  # as `read_image_folders`: the first image decides, for all
    size = image_size or (int(first.shape[1]), int(first.shape[2]))
    out: list[Any] = []
    for split, items in (("train", train), ("test", test)):
        out.append(ImageFiles(reader, tuple(f"{split}/{c}/{f}" for c, f, _ in items), tuple(loc for _, _, loc in items),
                              tuple(size), channels, workers))
        out.append(torch.tensor([index[c] for c, _, _ in items], dtype=torch.int64))
    return (*out, classes)


def in_memory(x: torch.Tensor | ImageFiles, progress: bool = False) -> torch.Tensor:
    """``x`` as a uint8 tensor: a tensor as is; images on disk decoded (evaluation transform, by its workers) once
    and cached in ``legr.paths.cache_dir()`` (e.g. a validation split the search scores every candidate on)."""
    if isinstance(x, torch.Tensor):
        return x
    if len(x) == 0:
        return x[:]
    key = f"stream|{x.size}|{x.channels}|{x.fingerprint()}"
    path = cache_dir() / f"stream-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"

    def build() -> dict[str, np.ndarray]:
        loader = StreamLoader(x, torch.zeros(len(x), dtype=torch.int64), 256)
        return {"x": torch.cat([xb for _, xb in loader.raw_batches(progress)]).numpy()}

    return torch.from_numpy(cached_arrays(path, build)["x"])


class _Decode(Dataset):
    def __init__(self, files: ImageFiles, train: bool) -> None:
        self.files, self.train = files, train

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[int, torch.Tensor]:
        i, seed = item
        return i, self.files.image(i, self.train, seed)


def _collate(items: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([i for i, _ in items]), torch.stack([img for _, img in items])


class StreamLoader(EpochBatches):
    """`TensorLoader` for `ImageFiles`: the same arguments and batches (order from the same seeded permutation;
    ``augment``: the files' training transform, drawn per image), decoded by ``files.workers`` processes."""

    def __init__(self, x: ImageFiles, y: torch.Tensor, batch_size: int = 128,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, *,
                 shuffle: bool = False, augment: bool = False, drop_last: bool = False, seed: int = 0,
                 generator: torch.Generator | None = None, device: str | torch.device | None = None,
                 shard: tuple[int, int] = (0, 1)) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.x, self.y = x, y.cpu()
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.mean = tuple(mean) if mean is not None else (0.0,) * x.channels
        self.std = tuple(std) if std is not None else (1.0,) * x.channels
        self.batch_size, self.shuffle, self.augment, self.drop_last = batch_size, shuffle, augment, drop_last
        self.seed, self.generator, self.shard = seed, generator, shard
        self.epoch = 0

    def _plan(self) -> list[list[tuple[int, int]]]:
        """Per batch, this shard's (image index, transform seed) pairs: the epoch's draws, as TensorLoader's."""
        gen = self.generator or torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        self.epoch += 1
        n = len(self.x)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        seeds = torch.randint(0, 2**62, (n,), generator=gen) if self.augment else torch.zeros(n, dtype=torch.int64)
        plan = []
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            stop = min(start + self.batch_size, n)
            part = shard_slice(stop - start, self.shard)
            plan.append(list(zip(order[start:stop][part].tolist(), seeds[start:stop][part].tolist())))
        return plan

    def raw_batches(self, progress: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(image indices, uint8 images) per batch, decoded by the workers in order."""
        plan = self._plan()
        loader = DataLoader(_Decode(self.x, self.augment), batch_sampler=plan, num_workers=self.x.workers,
                            collate_fn=_collate, pin_memory=self.device.type == "cuda")
        with progress_bar("decode", len(plan), enabled=progress) as advance:
            for idx, xb in loader:
                yield idx, xb
                advance()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for idx, xb in self.raw_batches():
            xb = xb.to(self.device, non_blocking=True)
            yield normalize(xb, self.mean, self.std), self.y[idx].to(self.device)


Loader = TensorLoader | StreamLoader


def make_loader(x: torch.Tensor | ImageFiles, y: torch.Tensor, batch_size: int = 128,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **options: Any) -> Loader:
    """A `StreamLoader` for images on disk, a `TensorLoader` for a tensor (same options, same batches)."""
    cls = StreamLoader if isinstance(x, ImageFiles) else TensorLoader
    return cls(x, y, batch_size, mean, std, **options)
