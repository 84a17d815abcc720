"""The tiny digits run both dynamic methods' tests share: a source trained 2 epochs, the method's one training on a
few SGD steps, every step of the pipeline (no latency)."""

import pytest

from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline


@pytest.fixture(scope="session")
def tiny_dynamic_run(tmp_path_factory):
    """``make(method, targets, section, steps)``: (pipeline, run folder) of a finished run of ``method`` (its config
    section ``section``, ``steps`` SGD steps per epoch) at ``targets``."""

    def make(method: str, targets: list[float], section: dict, steps: int):
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
