"""Tests of legr.data: registry, real datasets (digits, MNIST, CIFAR-10-JPEG), caching, splits, augmentation, loader."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from legr.data import (
    CIFAR10_CLASSES,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageData,
    TensorLoader,
    available_datasets,
    load_dataset,
    normalize,
    random_crop_flip,
    register_dataset,
    split_indices,
    split_train_val,
)
from legr.data.cache import cache_path
from legr.errors import DatasetError, LegrError

DATA = Path(os.environ["LEGR_DATA"])


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"shared file missing: {path}")
    return path


@pytest.fixture(scope="module")
def cifar_jpeg() -> ImageData:
    """CIFAR-10-JPEG, decoded once per session (or read from the LEGR_CACHE cache of an earlier run)."""
    return load_dataset("cifar10-jpeg", _need(DATA / "cifar10-jpeg.tar.gz"))


@pytest.fixture
def offline(monkeypatch):
    """Make every host name unresolvable, as on a machine without internet."""

    def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test: offline)")

    monkeypatch.setattr(socket, "getaddrinfo", fail)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """A private LEGR_CACHE, so caches of temporary sources do not pile up in the repo's .cache."""
    monkeypatch.setenv("LEGR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------- registry


def test_registry_names_and_unknown():
    assert set(available_datasets()) >= {"cifar10", "cifar100", "cifar10-jpeg", "imagefolder", "mnist", "digits"}
    with pytest.raises(LegrError, match="unknown dataset 'nope'.*cifar10-jpeg.*digits"):
        load_dataset("nope")
    with pytest.raises(LegrError, match="does not accept"):
        load_dataset("digits", colour="blue")


def test_register_dataset_custom():
    @register_dataset("test-tiny")
    def tiny(root, n: int = 4):
        x = torch.zeros(n, 1, 2, 2, dtype=torch.uint8)
        return ImageData(x, torch.zeros(n, dtype=torch.long), x, torch.zeros(n, dtype=torch.long),
                         ("a",), (0.5,), (0.5,), "test-tiny")

    try:
        assert len(load_dataset("test-tiny", n=3).train_x) == 3
        with pytest.raises(ValueError, match="dataset .test-tiny. is already registered"):
            register_dataset("test-tiny")(tiny)
    finally:
        from legr.data.registry import DATASETS
        DATASETS.remove("test-tiny")


# ---------------------------------------------------------------- digits + splits


def test_digits():
    data = load_dataset("digits")
    assert data.train_x.shape[1:] == (1, 8, 8) and data.input_size == (1, 8, 8)
    assert data.train_x.dtype == torch.uint8 and int(data.train_x.max()) == 255
    assert data.num_classes == 10 and data.classes == tuple("0123456789")
    assert len(data.train_x) + len(data.test_x) == 1797 and len(data.test_x) == 359
    assert torch.bincount(data.test_y).min() >= 35  # stratified: ~36 per class
    again = load_dataset("digits")
    assert torch.equal(again.train_x, data.train_x) and torch.equal(again.test_y, data.test_y)
    with pytest.raises(dataclasses.FrozenInstanceError):
        data.name = "x"
    assert "digits" in repr(data) and len(repr(data)) < 200


def test_split_deterministic_disjoint_stratified():
    y = torch.arange(1000) % 7
    tr, va = split_indices(y, 100, seed=3)
    assert len(tr) == 900 and len(va) == 100
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(1000))
    assert torch.equal(split_indices(y, 100, seed=3)[1], va)
    assert not torch.equal(split_indices(y, 100, seed=4)[1], va)
    counts = torch.bincount(y[va], minlength=7)
    assert counts.sum() == 100 and counts.min() >= 14 and counts.max() <= 15
    x = torch.arange(1000).view(1000, 1, 1, 1)
    tx, ty, vx, vy = split_train_val(x, y, 100, seed=3)
    assert torch.equal(vx.flatten(), va) and torch.equal(ty, y[tr])
    tx, ty, vx, vy = split_train_val(x, y, 0, seed=0)
    assert len(vx) == 0 and len(tx) == 1000
    with pytest.raises(DatasetError):
        split_train_val(x, y, 1000, seed=0)
    with pytest.raises(DatasetError):
        split_train_val(x, y[:10], 5, seed=0)


# ---------------------------------------------------------------- MNIST


def test_mnist_shared():
    data = load_dataset("mnist", _need(DATA / "mnist"))
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert int(data.train_y[0]) == 5 and int(data.test_y[0]) == 7
    assert set(data.train_y.unique().tolist()) == set(range(10)) and data.train_y.dtype == torch.int64
    assert data.mean == (0.1307,) and data.std == (0.3081,)


def test_mnist_torchvision_layout_uncompressed(tmp_path, tmp_cache):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        os.symlink(_need(DATA / "mnist" / f"{name}.gz"), raw / f"{name}.gz")
    import gzip
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(gzip.decompress((DATA / "mnist" / f"{name}.gz").read_bytes()))
    data = load_dataset("mnist", tmp_path)
    assert len(data.train_x) == 60000 and len(data.test_x) == 10000 and int(data.test_y[0]) == 7


def test_mnist_missing_offline(tmp_path, offline):
    with pytest.raises(DatasetError, match="mnist: idx files not found in .*download failed"):
        load_dataset("mnist", tmp_path / "none")


# ---------------------------------------------------------------- CIFAR-10-JPEG


def test_cifar10_jpeg(cifar_jpeg):
    data = cifar_jpeg
    assert data.train_x.shape == (50000, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert data.train_x.dtype == torch.uint8 and data.train_y.dtype == torch.int64
    assert data.classes == CIFAR10_CLASSES and data.num_classes == 10
    assert torch.bincount(data.train_y).tolist() == [5000] * 10
    assert torch.bincount(data.test_y).tolist() == [1000] * 10
    assert data.mean == IMAGENET_MEAN and data.std == IMAGENET_STD


def test_cifar10_jpeg_cache(cifar_jpeg):
    archive = DATA / "cifar10-jpeg.tar.gz"
    path = cache_path("cifar10-jpeg", archive)
    assert path.is_file() and path.parent == Path(os.environ["LEGR_CACHE"])
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    start = time.perf_counter()
    again = load_dataset("cifar10-jpeg")  # default root: LEGR_DATA
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0, f"cached load took {elapsed:.1f} s"
    assert torch.equal(again.test_x, cifar_jpeg.test_x) and torch.equal(again.train_y, cifar_jpeg.train_y)


def test_cifar10_jpeg_matches_exact_test_images(cifar_jpeg):
    exact = np.load(_need(DATA / "cifar10-test-exact-first1017.npz"))
    images, labels = exact["images"], exact["labels"]
    assert tuple(exact["classes"]) == CIFAR10_CLASSES
    seen = [0] * 10
    diffs = []
    for i in range(200):  # official index i -> file <class>/<rank within class>.jpg -> position class*1000 + rank
        c = int(labels[i])
        pos = c * 1000 + seen[c]
        seen[c] += 1
        assert int(cifar_jpeg.test_y[pos]) == c
        jpeg = cifar_jpeg.test_x[pos].permute(1, 2, 0).numpy().astype(np.float64)
        diffs.append(np.abs(jpeg - images[i]).mean())
    assert max(diffs) < 15 and np.mean(diffs) < 8, (max(diffs), np.mean(diffs))


# ---------------------------------------------------------------- imagefolder


def _make_tree(root: Path, sizes=None, mode="RGB") -> dict:
    """train/{cat,dog}/ 3 images each, test/{cat,dog}/ 1 each; returns the pixels by relative path."""
    rng = np.random.default_rng(0)
    pixels = {}
    for split, n in (("train", 3), ("test", 1)):
        for cls in ("dog", "cat"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for k in range(n):
                rel = f"{split}/{cls}/{k:02d}.png"
                h, w = (sizes or {}).get(rel, (6, 5))
                arr = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
                Image.fromarray(arr).save(root / rel)
                pixels[rel] = arr
    return pixels


def test_imagefolder_dir_tar_zip(tmp_path, tmp_cache):
    tree = tmp_path / "tree"
    pixels = _make_tree(tree / "inner")
    (tree / "inner" / "train" / "cat" / "notes.txt").write_text("not an image")
    with tarfile.open(tmp_path / "tree.tar.gz", "w:gz") as tf:
        tf.add(tree, arcname="tree")
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as zf:
        for path in sorted(tree.rglob("*")):
            zf.write(path, path.relative_to(tree))
    results = [load_dataset("imagefolder", p) for p in (tree, tmp_path / "tree.tar.gz", tmp_path / "tree.zip")]
    for data in results:
        assert data.classes == ("cat", "dog") and data.input_size == (3, 6, 5)
        assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1] and data.test_y.tolist() == [0, 1]
        assert np.array_equal(data.train_x[4].permute(1, 2, 0).numpy(), pixels["train/dog/01.png"])
        assert np.array_equal(data.test_x[0].permute(1, 2, 0).numpy(), pixels["test/cat/00.png"])
        assert torch.equal(data.train_x, results[0].train_x)
        assert len(data.mean) == 3 and 0.3 < data.mean[0] < 0.7
    assert len(list(tmp_cache.glob("imagefolder-*.npz"))) == 3


def test_imagefolder_val_grayscale_and_resize(tmp_path, tmp_cache):
    _make_tree(tmp_path, sizes={"train/cat/01.png": (8, 8)}, mode="L")
    (tmp_path / "test").rename(tmp_path / "val")
    with pytest.raises(DatasetError, match=r"train/cat/01.png is \(8, 8\).*image_size"):
        load_dataset("imagefolder", tmp_path)
    data = load_dataset("imagefolder", tmp_path, image_size=4)
    assert data.input_size == (1, 4, 4) and len(data.test_x) == 2 and len(data.mean) == 1


def test_cache_key_follows_source(tmp_path, tmp_cache):
    _make_tree(tmp_path / "t")
    first = load_dataset("imagefolder", tmp_path / "t")
    img = tmp_path / "t" / "train" / "cat" / "00.png"
    Image.fromarray(np.zeros((6, 5, 3), np.uint8)).save(img)
    os.utime(img, ns=(1, 1))
    second = load_dataset("imagefolder", tmp_path / "t")
    assert int(first.train_x[0].sum()) > 0 and int(second.train_x[0].sum()) == 0


# ---------------------------------------------------------------- errors


def test_bad_inputs(tmp_path, tmp_cache):
    missing = tmp_path / "missing"
    for name in ("cifar10-jpeg", "imagefolder"):
        with pytest.raises(DatasetError, match="missing"):
            load_dataset(name, missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no train/"):
        load_dataset("imagefolder", tmp_path / "empty")
    flat = tmp_path / "flat"
    (flat / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(flat / "cat" / "0.png")
    shutil.make_archive(str(tmp_path / "flat"), "gztar", flat)
    with pytest.raises(DatasetError, match=r"flat.tar.gz: no train/"):
        load_dataset("imagefolder", tmp_path / "flat.tar.gz")
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="not a directory"):
        load_dataset("imagefolder", tmp_path / "junk.bin")
    _make_tree(tmp_path / "bad")
    (tmp_path / "bad" / "test" / "dog" / "00.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DatasetError, match="cannot decode .*test/dog/00.png"):
        load_dataset("imagefolder", tmp_path / "bad")


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_official_cifar_missing_offline(tmp_path, offline, name, folder):
    with pytest.raises(DatasetError, match=f"{name}: official files not found in .*{folder} and download failed"):
        load_dataset(name, tmp_path)
    with pytest.raises(DatasetError, match="download disabled"):
        load_dataset(name, tmp_path, download=False)


# ---------------------------------------------------------------- augmentation


def test_random_crop_flip_padding0_is_identity_or_mirror():
    x = torch.randint(0, 256, (64, 3, 5, 7), dtype=torch.uint8)
    out = random_crop_flip(x, padding=0, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all()) and same.any() and mirrored.any()
    assert torch.equal(random_crop_flip(x, 0, generator=torch.Generator().manual_seed(0), flip=False), x)


def test_random_crop_flip_windows_and_reproducible():
    x = torch.rand(300, 2, 6, 6)
    gen = torch.Generator().manual_seed(1)
    out = random_crop_flip(x, padding=2, generator=gen)
    assert out.shape == x.shape and out.dtype == torch.float32
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    found = set()
    for i in range(len(x)):
        match = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                 if torch.equal(out[i], (lambda w: w.flip(-1) if f else w)(padded[i, :, dy:dy + 6, dx:dx + 6]))]
        assert len(match) == 1, f"image {i} is not one crop of its padded version"
        found.add(match[0])
    assert len(found) > 40  # offsets and flips vary across the batch
    again = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(1))
    other = random_crop_flip(x, padding=2, generator=torch.Generator().manual_seed(2))
    assert torch.equal(out, again) and not torch.equal(out, other)


# ---------------------------------------------------------------- loader


def test_normalize_matches_manual():
    x = torch.randint(0, 256, (4, 3, 2, 2), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 2.0)
    want = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(normalize(x, mean, std), want)
    xf = x.float() / 255
    assert torch.allclose(normalize(xf, mean, std), want) and torch.equal(xf, x.float() / 255)  # input untouched


def test_tensor_loader_epoch_coverage_and_normalization():
    n = 103
    x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    y = torch.arange(n)
    loader = TensorLoader(x, y, 10, IMAGENET_MEAN, IMAGENET_STD, shuffle=True, seed=5)
    assert len(loader) == 11
    for _ in range(2):
        labels = torch.cat([yb for _, yb in loader])
        assert torch.equal(labels.sort().values, y) and not torch.equal(labels, y)
    plain = TensorLoader(x, y, 10, IMAGENET_MEAN, IMAGENET_STD)
    xb, yb = next(iter(plain))
    assert xb.dtype == torch.float32 and torch.equal(yb, y[:10])
    assert torch.allclose(xb, normalize(x[:10], IMAGENET_MEAN, IMAGENET_STD))
    dropped = TensorLoader(x, y, 10, shuffle=True, drop_last=True)
    batches = list(dropped)
    assert len(dropped) == len(batches) == 10 and all(len(b) == 10 for _, b in batches)
    assert float(batches[0][0].max()) <= 1.0  # no mean/std: just [0, 1]


def test_tensor_loader_reproducible():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50)

    def epochs(seed, count=2, **kw):
        loader = TensorLoader(x, y, 16, (0.5,) * 3, (0.5,) * 3, shuffle=True, augment=True, seed=seed, **kw)
        return [[b for b in loader] for _ in range(count)], loader

    (a0, a1), loader = epochs(7)
    (b0, b1), _ = epochs(7)
    (c0,), _ = epochs(8, 1)
    for (xa, ya), (xb, yb) in zip(a0 + a1, b0 + b1):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a0[0][1], a1[0][1]) and not torch.equal(a0[0][1], c0[0][1])
    loader.set_epoch(1)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(loader, a1))
    gen_loader = TensorLoader(x, y, 16, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(next(iter(gen_loader))[1], next(iter(gen_loader))[1])  # explicit generator advances
