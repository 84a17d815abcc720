"""Dataset registry: ``register_dataset`` adds a loader under a name, ``load_dataset`` calls it."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from legr.errors import LegrError
from legr.registry import Registry

if TYPE_CHECKING:
    from legr.data.stream import ImageFiles

# CIFAR checkpoints in the wild (e.g. akamaster's ResNet-20/56) were trained with ImageNet statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, eq=False)
class ImageData:
    """An image dataset: uint8 NCHW images (in memory, or `ImageFiles` streamed from disk), int64 labels, and the
    normalization to apply.

    ``mean``/``std`` are per channel, for images scaled to [0, 1] floats (see ``legr.data.normalize``).
    """

    train_x: torch.Tensor | ImageFiles
    train_y: torch.Tensor
    test_x: torch.Tensor | ImageFiles
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_x"), getattr(self, f"{split}_y")
            if x.dtype != torch.uint8 or x.dim() != 4 or y.dtype != torch.int64 or len(x) != len(y):
                raise ValueError(f"{self.name}: bad {split} tensors: x {tuple(x.shape)} {x.dtype}, "
                                 f"y {tuple(y.shape)} {y.dtype} (want uint8 NCHW, int64, same length)")
        if len(self.mean) != self.train_x.shape[1] or len(self.std) != self.train_x.shape[1]:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.train_x.shape[1]})")

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.train_x.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __repr__(self) -> str:
        return (f"ImageData({self.name!r}, train={len(self.train_x)}, test={len(self.test_x)}, "
                f"input_size={self.input_size}, num_classes={self.num_classes})")


Loader = Callable[..., ImageData]
DATASETS = Registry[Loader]("dataset")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``fn(root: Path | None, **options) -> ImageData`` under ``name``."""

    return DATASETS.register(name)


def available_datasets() -> tuple[str, ...]:
    return tuple(DATASETS.names())


def load_dataset(name: str, root: str | Path | None = None, **options) -> ImageData:
    """Load dataset ``name`` from ``root`` (None: its default place under ``legr.paths.data_dir()``).

    ``options`` go to the dataset's loader (e.g. ``image_size`` for ``imagefolder``, ``download`` for ``cifar10``).
    """
    fn = DATASETS[name.lower()]
    try:
        inspect.signature(fn).bind(root, **options)
    except TypeError:
        accepted = [p for p in list(inspect.signature(fn).parameters)[1:]]
        raise LegrError(f"dataset {name!r} does not accept options {sorted(options)}; it accepts {accepted}") from None
    return fn(None if root is None else Path(root).expanduser(), **options)
