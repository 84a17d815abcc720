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


def _fake_timer(monkeypatch: pytest.MonkeyPatch, slow_calls: set[int]) -> list[str]:
    """Replace the timer behind `measure_interleaved`: every network takes 10 ms, except the calls numbered in
    ``slow_calls`` (a busy spell: 30 ms). Returns the log of which network each call timed."""
    import legr.engine.latency as latency

    calls: list[str] = []

    def fake(model, input_size, batch_size, **kw):
        calls.append(model.name)
        ms = 30.0 if len(calls) - 1 in slow_calls else 10.0
        return LatencyResult(ms, ms, ms, ms, 0.0, 1, batch_size, "cpu", 1)

    monkeypatch.setattr(latency, "measure_latency", fake)
    return calls


class _Named(nn.Identity):
    def __init__(self, name: str):
        super().__init__()
        self.name = name


def test_a_slow_round_is_measured_again_and_forgotten(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_timer(monkeypatch, slow_calls={3})  # round 2 of "b" (rounds interleave a, b)
    out = measure_interleaved({"a": _Named("a"), "b": _Named("b")}, (3, 8, 8), (1,), rounds=3)
    assert calls == ["a", "b"] * 3 + ["b"] * 3  # only the disagreeing figure is measured again
    assert out["b"][1].median_ms == 10.0 and out["b"][1].spread == 0.0 and not out["b"][1].noisy
    assert out["a"][1].spread == 0.0 and not out["a"][1].noisy


def test_a_figure_that_stays_noisy_is_flagged_in_rows_and_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    from legr.reporting import BUSY_MACHINE, format_table, latency_columns, markdown_table

    _fake_timer(monkeypatch, slow_calls={3, 7})  # "b" slow in its first measurement and in its re-measurement
    out = measure_interleaved({"a": _Named("a"), "b": _Named("b")}, (3, 8, 8), (1,), rounds=3)
    assert out["b"][1].noisy and out["b"][1].spread == pytest.approx(2.0) and not out["a"][1].noisy
    rows = [{"name": n, "method": "x", "model": "m", "dataset": "d", "macs": 1.0, "params": 1.0, "top1": 0.5,
             **latency_columns("cpu", out[n])} for n in ("a", "b")]
    assert rows[1]["latency_cpu_b1_ms_noisy"] is True and "latency_cpu_b1_ms_noisy" not in rows[0]
    assert rows[1]["latency_cpu_b1_ms_spread"] == pytest.approx(2.0)
    table = format_table(rows)
    assert "10.00?" in table.splitlines()[3] and "?" not in table.splitlines()[2] and BUSY_MACHINE in table
    assert BUSY_MACHINE in markdown_table(rows)
    assert BUSY_MACHINE not in format_table(rows[:1])
