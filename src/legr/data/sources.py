"""The built-in datasets: official CIFAR-10/100 and MNIST files, CIFAR-10-JPEG, any ImageFolder tree, sklearn digits.

Everything decoded from files is cached as .npz in ``legr.paths.cache_dir()`` (see ``legr.data.cache``).
"""

from __future__ import annotations

import gzip
import math
import os
from pathlib import Path

import numpy as np
import torch

from legr.data.cache import cache_path, cached_arrays
from legr.data.folder import read_image_folders
from legr.data.registry import IMAGENET_MEAN, IMAGENET_STD, ImageData, register_dataset
from legr.data.split import split_train_val
from legr.data.stream import LARGE, open_image_folders, random_access
from legr.errors import DatasetError
from legr.paths import data_dir

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _image_data(name: str, arrays: dict[str, np.ndarray], mean: tuple[float, ...] | None = None,
                std: tuple[float, ...] | None = None) -> ImageData:
    train_x = torch.from_numpy(arrays["train_x"])
    if mean is None or std is None:
        mean, std = channel_stats(train_x)
    return ImageData(name=name, train_x=train_x, train_y=torch.from_numpy(arrays["train_y"]),
                     test_x=torch.from_numpy(arrays["test_x"]), test_y=torch.from_numpy(arrays["test_y"]),
                     classes=tuple(str(c) for c in arrays["classes"]), mean=tuple(mean), std=tuple(std))


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images, on the [0, 1] scale."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for chunk in x.split(4096):
        c = chunk.to(torch.float64) / 255.0
        total += c.sum((0, 2, 3))
        squares += (c * c).sum((0, 2, 3))
    count = x.numel() / x.shape[1]
    mean = total / count
    std = (squares / count - mean**2).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


@register_dataset("cifar10-jpeg")
def load_cifar10_jpeg(root: Path | None) -> ImageData:
    """CIFAR-10-JPEG (the project's lossy JPEG copy of CIFAR-10), ImageNet normalization.

    ``root``: the archive ``cifar10-jpeg.tar.gz`` or its extracted ``cifar10-jpeg/`` folder, or a folder holding
    either (default ``data_dir()``); the archive is read directly, without extraction.
    """
    base = root or data_dir()
    if base.is_file() or (base / "train").is_dir():
        candidates = [base]
    else:
        candidates = [base / "cifar10-jpeg.tar.gz", base / "cifar10-jpeg"]
    source = next((c for c in candidates if c.exists()), None)
    if source is None:
        raise DatasetError(f"cifar10-jpeg: found neither {' nor '.join(map(str, candidates))}")
    arrays = cached_arrays(cache_path("cifar10-jpeg", source), lambda: read_image_folders(source))
    if tuple(arrays["classes"]) != CIFAR10_CLASSES or arrays["train_x"].shape[1:] != (3, 32, 32):
        raise DatasetError(f"cifar10-jpeg: {source} does not hold the 10 CIFAR-10 classes as 32x32 RGB images")
    return _image_data("cifar10-jpeg", arrays, IMAGENET_MEAN, IMAGENET_STD)


@register_dataset("imagefolder")
def load_imagefolder(root: Path | None, image_size: int | tuple[int, int] | None = None,
                     mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None,
                     stream: bool | None = None, workers: int | None = None) -> ImageData:
    """Any directory or .tar(.gz)/.zip archive with ``train/<class>/*`` and ``test/`` (or ``val/``) subfolders.

    ``stream``: read the images from disk batch by batch (`legr.data.stream`: a directory, .zip or uncompressed
    .tar), with ``workers`` DataLoader processes (default: the CPUs, at most 8); false: decode everything into memory
    once (cached); null (default): stream when the images are ImageNet-size (``image_size`` >= 96 px: their
    RandomResizedCrop needs the originals) or would fill over a quarter of this machine's memory, if the source can
    be read at random. In memory, images must share one size unless ``image_size`` (int or (H, W)) is given, then
    they are resized to it; streamed, every image is transformed to ``image_size`` (default: the first one's).
    ``mean``/``std`` default to the per-channel statistics of the training images (streamed: of 1,000 of them).
    """
    if root is None:
        raise DatasetError("imagefolder: give a root (a directory or archive with train/ and test/ subfolders)")
    if not root.exists():
        raise DatasetError(f"imagefolder: {root}: no such file or directory")
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    size = None if size is None else tuple(size)
    if stream or (stream is None and random_access(root)):
        train_x, train_y, test_x, test_y, classes = open_image_folders(root, size, _workers(workers))
        decoded = (len(train_x) + len(test_x)) * math.prod(train_x.shape[1:])
        if stream or min(train_x.size) >= LARGE or decoded > _memory_bytes() // 4:
            if mean is None or std is None:
                sample = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))[:1000]
                mean, std = channel_stats(train_x[sample.sort().values])
            return ImageData(name="imagefolder", train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                             classes=tuple(classes), mean=tuple(mean), std=tuple(std))
    path = cache_path("imagefolder", root, image_size=size)
    return _image_data("imagefolder", cached_arrays(path, lambda: read_image_folders(root, size)), mean, std)


def _workers(workers: int | None) -> int:
    if workers is not None and workers < 0:
        raise DatasetError(f"imagefolder: workers must be >= 0, got {workers}")
    return min(8, len(os.sched_getaffinity(0))) if workers is None else workers


def _memory_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _torchvision_cifar(name: str, root: Path | None, download: bool) -> ImageData:
    """CIFAR-10/100 in torchvision's official python format (``<root>/cifar-10-batches-py`` etc.)."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    base = root or data_dir()
    folder = base / cls.base_folder
    missing = [f for f, _ in cls.train_list + cls.test_list if not (folder / f).is_file()]
    if missing:
        if not download:
            raise DatasetError(f"{name}: official files {missing} not found in {folder} (download disabled)")
        try:
            cls(str(base), train=True, download=True)
        except Exception as exc:
            raise DatasetError(f"{name}: official files not found in {folder} and download failed "
                               f"({_one_line(exc)})") from None

    def build() -> dict[str, np.ndarray]:
        try:
            train, test = cls(str(base), train=True), cls(str(base), train=False)
        except Exception as exc:
            raise DatasetError(f"{name}: cannot read {folder} ({_one_line(exc)})") from None
        return {"train_x": np.ascontiguousarray(train.data.transpose(0, 3, 1, 2)),
                "train_y": np.asarray(train.targets, dtype=np.int64),
                "test_x": np.ascontiguousarray(test.data.transpose(0, 3, 1, 2)),
                "test_y": np.asarray(test.targets, dtype=np.int64), "classes": np.array(train.classes, dtype=str)}

    return _image_data(name, cached_arrays(cache_path(name, folder), build), IMAGENET_MEAN, IMAGENET_STD)


@register_dataset("cifar10")
def load_cifar10(root: Path | None, download: bool = True) -> ImageData:
    """Official CIFAR-10 via torchvision (``<root>/cifar-10-batches-py``, downloaded if missing), ImageNet norm."""
    return _torchvision_cifar("cifar10", root, download)


@register_dataset("cifar100")
def load_cifar100(root: Path | None, download: bool = True) -> ImageData:
    """Official CIFAR-100 (fine labels) via torchvision (``<root>/cifar-100-python``), ImageNet normalization."""
    return _torchvision_cifar("cifar100", root, download)


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST format), gzipped or not, as a uint8 array."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DatasetError(f"mnist: cannot read {path} ({_one_line(exc)})") from None
    ndim = data[3] if len(data) >= 4 else 0
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    if data[:3] != b"\x00\x00\x08" or len(data) != 4 + 4 * ndim + int(np.prod(dims)):
        raise DatasetError(f"mnist: {path} is not a uint8 idx file")
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_mnist(base: Path) -> list[Path] | None:
    for folder in (base, base / "MNIST" / "raw", base / "mnist", base / "raw"):
        found = [next((p for p in (folder / f, folder / f"{f}.gz") if p.is_file()), None) for f in MNIST_FILES]
        if all(found):
            return found
    return None


@register_dataset("mnist")
def load_mnist(root: Path | None, download: bool = True) -> ImageData:
    """MNIST from the four idx files (.gz or not) in ``root`` or ``root/MNIST/raw`` (default ``data_dir()/mnist``).

    If they are missing and ``download``, torchvision downloads them to ``root/MNIST/raw``. Mean 0.1307, std 0.3081.
    """
    base = root or data_dir() / "mnist"
    files = _find_mnist(base)
    if files is None and download:
        from torchvision import datasets

        try:
            datasets.MNIST(str(base), train=True, download=True)
        except Exception as exc:
            raise DatasetError(f"mnist: idx files not found in {base} or {base / 'MNIST' / 'raw'} and download "
                               f"failed ({_one_line(exc)})") from None
        files = _find_mnist(base)
    if files is None:
        raise DatasetError(f"mnist: idx files not found in {base} or {base / 'MNIST' / 'raw'}")

    def build() -> dict[str, np.ndarray]:
        tx, ty, vx, vy = (_read_idx(p) for p in files)
        if tx.ndim != 3 or len(tx) != len(ty) or vx.ndim != 3 or len(vx) != len(vy):
            raise DatasetError(f"mnist: idx files in {files[0].parent} do not match (images vs labels)")
        return {"train_x": tx[:, None].copy(), "train_y": ty.astype(np.int64), "test_x": vx[:, None].copy(),
                "test_y": vy.astype(np.int64), "classes": np.array([str(i) for i in range(10)])}

    return _image_data("mnist", cached_arrays(cache_path("mnist", files[0].parent), build), MNIST_MEAN, MNIST_STD)


@register_dataset("digits")
def load_digits(root: Path | None = None, seed: int = 0) -> ImageData:
    """scikit-learn's bundled 8x8 digits (1797 images, 0..16 scaled to 0..255), stratified 80/20 split by ``seed``.

    ``root`` is ignored (the data ships with scikit-learn). Mean/std are computed from the training split.
    """
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None])
    y = torch.from_numpy(bunch.target.astype(np.int64))
    train_x, train_y, test_x, test_y = split_train_val(x, y, val_size=round(0.2 * len(y)), seed=seed)
    mean, std = channel_stats(train_x)
    return ImageData(name="digits", train_x=train_x.contiguous(), train_y=train_y, test_x=test_x.contiguous(),
                     test_y=test_y, classes=tuple(str(i) for i in range(10)), mean=mean, std=std)
