"""Data-parallel fine-tuning (issue 17): two gloo processes on CPU end with the weights one process reaches on the
combined batches, and only rank 0 writes the checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

from legr.data import ImageFiles, TensorLoader, load_dataset
from legr.errors import ConfigError, LegrError
from legr.training import FinetuneConfig, finetune
from legr.training.distributed import World, check_batch

CFG = FinetuneConfig(epochs=2, lr=0.05, batch_size=32, steps_per_epoch=6, milestones=[0.5], augment=True)


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled digits (real 8x8 scans), as uint8 images."""
    d = load_digits()
    x = torch.from_numpy(np.round(d.images * (255 / 16)).astype(np.uint8))[:, None]
    return x[:480], torch.from_numpy(d.target[:480]).long()


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.0), nn.Linear(64, 10))


def streamed(folder: Path) -> tuple[ImageFiles, torch.Tensor]:
    """The same 480 digits as PNGs in an image folder (written on the first call), streamed from disk by 2
    DataLoader workers."""
    if not folder.exists():
        x, y = digits()
        for i, (img, label) in enumerate(zip(x, y)):
            (folder / "train" / str(int(label))).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0].numpy()).save(folder / "train" / str(int(label)) / f"{i:03d}.png")
        (folder / "test" / "0").mkdir(parents=True)
        Image.fromarray(x[0, 0].numpy()).save(folder / "test" / "0" / "0.png")
    data = load_dataset("imagefolder", folder, stream=True, workers=2)
    return data.train_x, data.train_y


def _worker(rank: int, world: int, folder: str, source: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world)
    try:
        model = net()
        seen = []
        model.register_forward_pre_hook(lambda _, args: seen.append(len(args[0])))
        x, y = digits() if source == "memory" else streamed(Path(folder) / "images")
        history = finetune(model, x, y, (0.5,), (0.25,), CFG, checkpoint=Path(folder) / "ft.pt", progress=False)
        torch.save(model.state_dict(), Path(folder) / f"rank{rank}.pt")
        (Path(folder) / f"history{rank}.json").write_text(json.dumps(history))
        (Path(folder) / f"seen{rank}.json").write_text(json.dumps(seen))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or sys.platform == "win32", reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("source", ["memory", "stream"])
def test_two_processes_reach_the_weights_of_one_on_the_combined_batches(tmp_path, source):
    if source == "stream":
        streamed(tmp_path / "images")  # written once, before the processes read it
    mp.spawn(_worker, args=(2, str(tmp_path), source), nprocs=2, join=True)
    single = net()
    x, y = digits() if source == "memory" else streamed(tmp_path / "images")
    alone = finetune(single, x, y, (0.5,), (0.25,), CFG, progress=False)
    for rank in (0, 1):
        state = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, value in single.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=f"rank {rank}: {name}")
    histories = [[{k: v for k, v in row.items() if k != "seconds"} for row in
                  json.loads((tmp_path / f"history{r}.json").read_text())] for r in (0, 1)]
    assert histories[0] == histories[1]  # summed over the ranks: every rank reports the whole batch
    for dp, one in zip(histories[0], alone):
        assert dp["train_top1"] == one["train_top1"] and dp["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
    for rank in (0, 1):  # each rank really trained on half of every batch
        assert json.loads((tmp_path / f"seen{rank}.json").read_text()) == [CFG.batch_size // 2] * (6 * CFG.epochs)
    saved = torch.load(tmp_path / "ft.pt", weights_only=True)  # rank 0's checkpoint, of the unwrapped network
    assert saved["epoch"] == CFG.epochs - 1 and set(saved["model"]) == set(single.state_dict())
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_batches_must_split_equally():
    with pytest.raises(ConfigError, match="multiple of the 3"):
        check_batch(32, World(0, 3))
    x, y = torch.arange(12, dtype=torch.uint8).view(12, 1, 1, 1), torch.arange(12)
    parts = [[yb.tolist() for _, yb in TensorLoader(x, y, 12, shard=(r, 3))] for r in range(3)]
    assert parts == [[[0, 1, 2, 3]], [[4, 5, 6, 7]], [[8, 9, 10, 11]]]
    with pytest.raises(LegrError, match="cannot be split equally"):
        list(TensorLoader(x[:10], y[:10], 12, shard=(1, 3)))


RUN = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 300}
base_training: {epochs: 2, lr: 0.05, batch_size: 64, augment: false}
search: {population: 4, sample: 2, evaluations: 6, restarts: 1, bn_batches: 2}
targets: [0.3, 0.6]
finetune: {epochs: 2, lr: 0.01, batch_size: 64, augment: false}
eval: {latency: false}
seed: 0
"""


def _legr(*args: str, env: dict | None = None, torchrun: int = 0) -> subprocess.CompletedProcess:
    launcher = [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={torchrun}"] \
        if torchrun else [sys.executable]
    return subprocess.run([*launcher, "-m", "legr", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun is not installed")
def test_torchrun_finetunes_a_family_that_rank0_writes(tmp_path):
    config, out = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(RUN)
    cut = _legr("prune", str(config), "--out", str(out), "--quiet")
    assert cut.returncode == 0, cut.stderr[-2000:]
    done = _legr("finetune", str(config), "--out", str(out), "--quiet", torchrun=2)
    assert done.returncode == 0, done.stderr[-3000:]
    members = sorted((out / "members").iterdir())
    assert len(members) == 2
    for member in members:
        assert len(json.loads((member / "finetuned.json").read_text())) == 2 and not (member / "finetune.pt").exists()
        assert (done.stdout + done.stderr).count(f"fine-tuning {member.name} ") == 1  # logged by rank 0 only
    assert not list(out.rglob(".*.tmp"))
    shown = _legr("eval", str(config), "--out", str(out), env={"WORLD_SIZE": "2"})  # only finetune runs data-parallel
    assert shown.returncode == 2 and "only `legr finetune` runs data-parallel" in shown.stdout + shown.stderr


@pytest.mark.skipif(not Path(sys.executable).with_name("torchrun").exists(), reason="torchrun is not installed")
def test_torchrun_trains_the_source_network_data_parallel_then_rank0_cuts(tmp_path):
    """No `legr prune` first: both processes train the source network together (base_training, each on half of
    every batch), then rank 0 searches and cuts while rank 1 waits, then both fine-tune."""
    config, out = tmp_path / "run.yaml", tmp_path / "run"
    config.write_text(RUN.replace("finetune: {epochs: 2", "finetune: {epochs: 1"))
    done = _legr("finetune", str(config), "--out", str(out), torchrun=2)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert log.count("training the source network for 2 epochs") == 1  # rank 0 speaks for both
    assert (out / "base" / "model.safetensors").exists()  # (rank 0 alone, inside its cut, would hang in DDP)
    assert len(list(out.glob("members/*/finetuned.json"))) == 2
