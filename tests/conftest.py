"""Test configuration: point legr at the project's shared real data and weights (../shared beside the checkout)."""

import os
from pathlib import Path

import pytest

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads slow tests 10-50x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("LEGR_SHARED", ROOT.parent / "shared"))
os.environ.setdefault("LEGR_DATA", str(SHARED / "data"))
os.environ.setdefault("LEGR_WEIGHTS", str(SHARED / "weights"))
os.environ.setdefault("LEGR_CACHE", str(ROOT / ".cache"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared file missing: {path}")
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread: with 2 threads on 2 busy shared cores, OpenMP spin-waits make training tests ~50x slower.
    Modules that train use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def shared():
    return shared_path


@pytest.fixture(scope="session")
def tiny_dynamic_run(tmp_path_factory):
    """``make(method, targets, section, steps)``: (pipeline, run folder) of a finished run of ``method`` (its config
    section ``section``, ``steps`` SGD steps per epoch) at ``targets``."""

    def make(method: str, targets: list[float], section: dict, steps: int):
        from legr.pipeline.config import parse_config
        from legr.pipeline.steps import Pipeline

        cfg = parse_config({"model": {"name": "digits_cnn", "weights": None},
                            "data": {"name": "digits", "val_size": 200},
                            "base_training": {"epochs": 2, "lr": 0.05, "batch_size": 64, "augment": False},
                            "method": method, "targets": targets, method: section,
                            "finetune": {"epochs": 2, "steps_per_epoch": steps, "batch_size": 64, "augment": False},
                            "eval": {"latency": False}})
        out = tmp_path_factory.mktemp(method)
        pipeline = Pipeline(cfg, out, progress=False, log=lambda m: None)
        pipeline.run()
        return pipeline, out

    return make
