"""Latency measurement and hardware stamping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from legr.engine.latency import LatencyResult, fixed_threads, measure_interleaved, measure_latencies, measure_latency
from legr.hardware import git_revision, hardware_info, hardware_label

ROOT = Path(__file__).resolve().parents[1]


def conv_stack(width: int) -> nn.Sequential:
    """Three 3x3 convs; MACs grow with width**2, so 4x the width is ~16x the work."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 10),
    )


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


def test_bigger_model_is_slower() -> None:
    torch.manual_seed(0)
    small = measure_latency(conv_stack(8), (3, 32, 32), 4, warmup=2, repeats=7)
    big = measure_latency(conv_stack(64), (3, 32, 32), 4, warmup=2, repeats=7)  # ~64x the conv MACs
    assert big.median_ms > small.median_ms


def test_result_fields_and_repeats() -> None:
    r = measure_latency(conv_stack(8), (3, 16, 16), 2, warmup=1, repeats=5, threads=1)
    assert isinstance(r, LatencyResult)
    assert r.repeats == 5 and r.batch_size == 2 and r.device == "cpu" and r.threads == 1
    assert 0 < r.min_ms <= r.median_ms <= r.max_ms
    assert r.min_ms <= r.mean_ms <= r.max_ms and r.iqr_ms >= 0
    assert r.per_image_ms == pytest.approx(r.median_ms / 2)
    d = r.to_dict()
    assert d["median_ms"] == r.median_ms and d["per_image_ms"] == r.per_image_ms
    with pytest.raises(AttributeError):
        r.median_ms = 1.0  # type: ignore[misc]


def test_min_time_extends_repeats() -> None:
    r = measure_latency(conv_stack(8), (3, 16, 16), 1, warmup=0, repeats=2, min_time_s=0.05)
    assert r.repeats >= 2 and r.mean_ms * r.repeats >= 50 * 0.99


def test_single_repeat_and_bad_args() -> None:
    r = measure_latency(nn.Identity(), (3, 4, 4), 1, warmup=0, repeats=1)
    assert r.repeats == 1 and r.iqr_ms == 0 and r.median_ms > 0
    with pytest.raises(ValueError):
        measure_latency(nn.Identity(), (3, 4, 4), 0)
    with pytest.raises(ValueError):
        measure_latency(nn.Identity(), (3, 4, 4), 1, repeats=0)


def test_threads_restored_also_on_error() -> None:
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    r = measure_latency(conv_stack(8), (3, 16, 16), 1, warmup=1, repeats=2, threads=target)
    assert r.threads == target and torch.get_num_threads() == before
    with pytest.raises(RuntimeError, match="boom"):
        measure_latency(Boom(), (3, 8, 8), 1, threads=target)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError), fixed_threads(target):
        assert torch.get_num_threads() == target
        raise ValueError
    assert torch.get_num_threads() == before


def test_mode_restored() -> None:
    model = conv_stack(8).train()
    seen: list[bool] = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(m.training))
    measure_latency(model, (3, 16, 16), 2, warmup=1, repeats=2)
    assert model.training and all(m.training for m in model.modules())
    assert seen and not any(seen)  # every timed/warm-up forward ran in eval mode
    model.eval()
    measure_latency(model, (3, 16, 16), 2, warmup=0, repeats=1)
    assert not model.training


def test_mode_restored_on_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1), Boom()).train()
    with pytest.raises(RuntimeError):
        measure_latency(model, (3, 8, 8), 1)
    assert model.training


def test_measure_latencies_default_devices() -> None:
    out = measure_latencies(conv_stack(8), (3, 16, 16), batch_sizes=(1, 3), warmup=0, repeats=2)
    assert "cpu" in out and set(out["cpu"]) == {1, 3}
    assert ("cuda" in out) == torch.cuda.is_available()
    assert out["cpu"][3].batch_size == 3


def test_hardware_info_keys() -> None:
    info = hardware_info()
    for key in ("cpu", "logical_cores", "torch_threads", "torch", "torchvision", "python", "cuda_device"):
        assert key in info
    assert info["cpu"] and info["torch"] == torch.__version__
    label = hardware_label()
    assert "torch" in label and "threads" in label and "\n" not in label


def test_git_revision(tmp_path: Path) -> None:
    assert git_revision(tmp_path) is None
    assert git_revision(tmp_path / "missing") is None
    if not (ROOT / ".git").exists():
        pytest.skip("checkout is not a git repository")
    rev = git_revision(ROOT)
    assert isinstance(rev, str) and rev.split("-")[0].isalnum()


def test_interleaved_rounds_time_every_network() -> None:
    torch.manual_seed(0)
    nets = {"small": conv_stack(8), "big": conv_stack(64)}
    out = measure_interleaved(nets, (3, 32, 32), (1, 4), rounds=3, warmup=1, repeats=4, threads=1)
    assert list(out) == ["small", "big"] and all(list(v) == [1, 4] for v in out.values())
    for per_batch in out.values():
        for b, r in per_batch.items():
            assert r.batch_size == b and r.repeats == 12 and r.threads == 1
            assert r.min_ms <= r.median_ms <= r.max_ms
    assert out["big"][4].median_ms > out["small"][4].median_ms
    with pytest.raises(ValueError, match="rounds"):
        measure_interleaved(nets, (3, 32, 32), rounds=0)
