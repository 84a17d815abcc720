"""Image folders streamed from disk (issue 17): the same batches as in memory, reproducible augmentation whatever
the workers, ImageNet transforms at ImageNet sizes, and a family cut and fine-tuned from a streamed CIFAR-10-JPEG
tree."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from legr.data import ImageFiles, StreamLoader, TensorLoader, in_memory, load_dataset, make_loader
from legr.data import sources
from legr.errors import DatasetError, LegrError
from conftest import shared_path

pytestmark = pytest.mark.usefixtures("one_thread")


def _write_tree(root: Path, images: dict[str, list[tuple[str, np.ndarray]]], fmt: str = "PNG") -> Path:
    """``images[split]`` = [(class, HxW or HxWx3 uint8)] written as ``root/<split>/<class>/<i>.png|jpg``."""
    for split, items in images.items():
        for i, (cls, arr) in enumerate(items):
            path = root / split / cls / f"{i:04d}.{fmt.lower().replace('jpeg', 'jpg')}"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path, fmt)
    return root


def digits_tree(root: Path) -> Path:
    """300 of scikit-learn's 8x8 digit scans (classes 0-4) as PNGs: 240 train, 60 test."""
    d = load_digits()
    x = np.round(d.images * (255 / 16)).astype(np.uint8)
    keep = np.flatnonzero(d.target < 5)[:300]
    items = [(str(d.target[i]), x[i]) for i in keep]
    return _write_tree(root, {"train": items[:240], "test": items[240:]})


def _archive(tree: Path, kind: str) -> Path:
    if kind == "dir":
        return tree
    out = tree.with_suffix(f".{kind}")
    if kind == "zip":
        with zipfile.ZipFile(out, "w") as zf:
            for f in sorted(tree.rglob("*.png")):
                zf.write(f, f.relative_to(tree.parent))
    else:
        with tarfile.open(out, "w:gz" if kind == "tar.gz" else "w") as tf:
            tf.add(tree, arcname=tree.name)
    return out


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    return digits_tree(tmp_path_factory.mktemp("digits") / "digits")


@pytest.mark.parametrize("kind", ["dir", "zip", "tar"])
def test_streamed_batches_equal_the_in_memory_ones(digits_root, kind):
    source = _archive(digits_root, kind)
    memory = load_dataset("imagefolder", source, stream=False)
    streamed = load_dataset("imagefolder", source, stream=True, workers=2)
    assert isinstance(streamed.train_x, ImageFiles) and isinstance(memory.train_x, torch.Tensor)
    assert streamed.classes == memory.classes and streamed.input_size == memory.input_size == (1, 8, 8)
    assert torch.equal(streamed.train_y, memory.train_y) and torch.equal(streamed.test_y, memory.test_y)
    assert torch.equal(streamed.test_x[torch.arange(7, 19)], memory.test_x[7:19])  # indexing decodes
    assert torch.equal(streamed.test_x[np.int64(3)], memory.test_x[3]) and streamed.test_x[torch.tensor(3)].dim() == 3
    for epoch in (0, 3):
        a = TensorLoader(memory.train_x, memory.train_y, 32, (0.3,), (0.2,), shuffle=True, seed=5, drop_last=True)
        b = make_loader(streamed.train_x, streamed.train_y, 32, (0.3,), (0.2,), shuffle=True, seed=5, drop_last=True)
        assert isinstance(b, StreamLoader) and len(a) == len(b) == 7
        a.set_epoch(epoch), b.set_epoch(epoch)
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert torch.equal(ya, yb) and torch.equal(xa, xb)


def test_augmented_epochs_do_not_depend_on_the_workers_and_shards_split_them(digits_root):
    files = load_dataset("imagefolder", digits_root, stream=True, workers=0)

    def epoch(workers: int, e: int, shard=(0, 1)) -> list[torch.Tensor]:
        x = ImageFiles(**{**files.train_x.__dict__, "workers": workers})
        loader = StreamLoader(x, files.train_y, 40, shuffle=True, augment=True, seed=1, shard=shard)
        loader.set_epoch(e)
        return [xb for xb, _ in loader]

    first = epoch(0, 2)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(2, 2), strict=True))  # same draws in the workers
    assert not torch.equal(first[0], epoch(0, 3)[0])  # another epoch, other crops and flips
    plain = TensorLoader(files.train_x[:], files.train_y, 40, shuffle=True, seed=1)
    plain.set_epoch(2)
    assert not all(torch.equal(a, b) for a, b in zip(first, [xb for xb, _ in plain]))  # it did augment
    halves = [epoch(2, 2, (rank, 2)) for rank in (0, 1)]
    for whole, a, b in zip(first, *halves, strict=True):
        assert torch.equal(torch.cat([a, b]), whole)  # each process decodes its share of the same global batch
    with pytest.raises(LegrError, match="cannot be split equally over 3 processes"):
        epoch(0, 0, (1, 3))


def test_imagenet_size_gets_the_imagenet_transforms(tmp_path):
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    photos = [(c, rng.integers(0, 256, (120 + 7 * i, 150, 3), dtype=np.uint8)) for i, c in enumerate("aabb")]
    root = _write_tree(tmp_path / "big", {"train": photos, "val": photos[:2]})
    data = load_dataset("imagefolder", root, image_size=96, workers=0)  # stream: null -> streamed at this size
    assert isinstance(data.train_x, ImageFiles) and data.input_size == (3, 96, 96) and data.test_x.names[0] == \
        "test/a/0000.png"
    original = torch.from_numpy(photos[1][1]).permute(2, 0, 1)
    expected = v2.CenterCrop(96)(v2.Resize(round(96 / 0.875), antialias=True)(original))  # 110 px short side
    assert torch.equal(data.train_x[1], expected)
    crops = [data.train_x.image(1, train=True, seed=s) for s in range(4)]
    assert all(c.shape == (3, 96, 96) for c in crops) and not torch.equal(crops[0], crops[1])
    assert torch.equal(crops[2], data.train_x.image(1, train=True, seed=2))


def test_stream_is_chosen_where_it_must_be_and_refused_where_it_cannot_be(digits_root, monkeypatch):
    assert isinstance(load_dataset("imagefolder", digits_root).train_x, torch.Tensor)  # small: in memory
    monkeypatch.setattr(sources, "_memory_bytes", lambda: 4 * 300 * 64 - 1)  # a quarter no longer holds them
    assert isinstance(load_dataset("imagefolder", digits_root).train_x, ImageFiles)
    packed = _archive(digits_root, "tar.gz")
    assert isinstance(load_dataset("imagefolder", packed).train_x, torch.Tensor)  # cannot be read at random
    with pytest.raises(DatasetError, match="compressed tar cannot be read at random"):
        load_dataset("imagefolder", packed, stream=True)
    with pytest.raises(DatasetError, match="workers must be >= 0"):
        load_dataset("imagefolder", digits_root, stream=True, workers=-1)


def test_in_memory_decodes_once_then_reads_the_cache(digits_root, monkeypatch):
    files = load_dataset("imagefolder", digits_root, stream=True, workers=0).train_x.subset(torch.arange(50, 90))
    decoded = in_memory(files)
    assert decoded.dtype == torch.uint8 and torch.equal(decoded, files[:])
    assert in_memory(files.subset([])).shape == (0, 1, 8, 8)  # data.val_size 0: an empty validation split
    monkeypatch.setattr(ImageFiles, "image", lambda *a, **k: pytest.fail("decoded again"))
    assert torch.equal(in_memory(files), decoded)


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory) -> Path:
    """CIFAR-10-JPEG images of three classes resized up to 112 px: 40 per class for training, 10 for testing."""
    cifar = load_dataset("cifar10-jpeg", shared_path("data", "cifar10-jpeg.tar.gz"))

    def items(x, y, per_class):
        picked = [i for c in range(3) for i in torch.nonzero(y == c).flatten()[:per_class].tolist()]
        big = torch.nn.functional.interpolate(x[picked].float(), size=(112, 112), mode="bilinear")
        big = big.round().clamp(0, 255).to(torch.uint8)
        return [(cifar.classes[int(y[i])], img.permute(1, 2, 0).numpy()) for i, img in zip(picked, big)]

    return _write_tree(tmp_path_factory.mktemp("cifar") / "tree", {"train": items(cifar.train_x, cifar.train_y, 40),
                                                                    "val": items(cifar.test_x, cifar.test_y, 10)}, "JPEG")


def test_a_family_is_cut_and_finetuned_from_a_streamed_cifar10_jpeg_tree(cifar_tree, tmp_path):
    """Streamed at 96 px (ImageNet transforms, 2 workers): search, cut, fine-tune, evaluate."""
    from legr.pipeline.config import parse_config
    from legr.pipeline.steps import Pipeline

    cfg = parse_config({
        "model": {"name": "cifar_resnet20", "weights": None},
        "data": {"name": "imagefolder", "root": str(cifar_tree), "val_size": 30,
                 "options": {"image_size": 96, "workers": 2}},
        "base_training": {"epochs": 1, "lr": 0.05, "batch_size": 30},
        "search": {"population": 3, "sample": 2, "evaluations": 4, "restarts": 1, "bn_batches": 1, "batch_size": 30},
        "bn_batches": 1, "targets": [0.5], "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 30},
        "eval": {"latency": False}})
    pipe = Pipeline(cfg, tmp_path / "run", progress=False, log=lambda _: None)
    assert isinstance(pipe.data.train[0], ImageFiles) and pipe.data.input_size == (3, 96, 96)
    assert isinstance(pipe.data.val[0], torch.Tensor) and pipe.data.val[0].shape == (30, 3, 96, 96)
    assert isinstance(pipe.data.test[0], ImageFiles) and len(pipe.data.test[0]) == 30
    pipe.run()
    base, member = json.loads((tmp_path / "run" / "results.json").read_text())
    assert member["macs"] <= 0.5 * base["macs"] and member["finetune_epochs"] == 1
    assert 0 <= member["top1"] <= 1 and np.isfinite(member["loss"])


@pytest.mark.parametrize("name", ["legr_resnet50_imagenet", "legr_mobilenetv2_imagenet"])
def test_the_imagenet_configs_run_once_root_and_weights_point_at_real_files(cifar_tree, tmp_path, name):
    """The shipped ImageNet configs with only data.root and model.weights changed: the run opens (network built and
    loaded, data streamed at 224 px, channel groups found, budgets accepted)."""
    import yaml

    from legr.models import build_model
    from legr.pipeline.config import parse_config
    from legr.pipeline.steps import Pipeline

    raw = yaml.safe_load((Path(__file__).parents[1] / "configs" / f"{name}.yaml").read_text())
    weights = tmp_path / "weights.pth"
    torch.save(build_model(raw["model"]["name"], num_classes=3).state_dict(), weights)
    raw["model"]["weights"], raw["data"]["root"], raw["data"]["val_size"] = str(weights), str(cifar_tree), 30
    raw["data"]["options"]["workers"] = 2  # this machine's cores
    pipe = Pipeline(parse_config(raw), tmp_path / "run", progress=False, log=lambda _: None)
    assert isinstance(pipe.data.train[0], ImageFiles) and pipe.data.input_size == (3, 224, 224)
    assert pipe.data.mean == (0.485, 0.456, 0.406) and len(pipe.graph.groups) > 10


def test_a_streamed_finetune_killed_midway_resumes_bit_identical(digits_root, tmp_path, monkeypatch):
    from legr.training import FinetuneConfig, finetune

    data = load_dataset("imagefolder", digits_root, stream=True, workers=2)
    cfg = FinetuneConfig(epochs=3, lr=0.05, batch_size=32, steps_per_epoch=4, augment=True)

    def fit(**kw):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                  torch.nn.Flatten(), torch.nn.Linear(8, 5))
        history = finetune(net, data.train_x, data.train_y, data.mean, data.std, cfg, progress=False, **kw)
        return net, [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    whole, rows = fit()
    original = StreamLoader.set_epoch

    def killed(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(StreamLoader, "set_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(checkpoint=tmp_path / "ft.pt")
    monkeypatch.setattr(StreamLoader, "set_epoch", original)
    resumed, again = fit(checkpoint=tmp_path / "ft.pt")
    assert again == rows
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), whole.state_dict().values()))
