"""`Method.prepare_seconds`: each method estimates its own one-time work for a long run's estimate
(`legr.pipeline.estimate`) from unit times, counting only what its folder does not hold yet."""

import pytest
from torch import nn

from legr.methods import METHODS
from legr.methods.folders import MethodFolder
from legr.pipeline.config import parse_config


class Units:
    """Unit times made up so that every term is visible: a candidate at fraction f costs f + bn_batches / 100."""

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(16, 10))

    def candidate(self, fraction, bn_batches, tau, batch_size):
        return fraction + bn_batches / 100

    def validation(self, fraction):
        return 2.0 * fraction

    def training(self, fraction, recipe):
        return 10.0 * fraction * recipe.epochs


def test_a_search_counts_its_candidates_left_at_every_search_target(tmp_path):
    cfg = parse_config({"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "targets": [0.3, 0.5, 0.9],
                        "search": {"population": 4, "sample": 2, "evaluations": 10, "restarts": 2, "bn_batches": 20}})
    folder = MethodFolder(tmp_path)
    per_candidate = (0.3 + 0.2) + (0.5 + 0.2) + (0.9 + 0.2)  # the lowest, middle and highest targets
    filters = METHODS["filters"]
    assert filters.prepare_seconds(cfg, folder, Units()) == pytest.approx((10 * 2 + 2) * per_candidate)
    folder.search_log.write_text("{}\n" * 15)  # 15 candidates evaluated before the run was killed
    assert filters.prepare_seconds(cfg, folder, Units()) == pytest.approx((20 - 15 + 2) * per_candidate)
    folder.ranking.write_text("{}")
    assert filters.prepare_seconds(cfg, folder, Units()) == 0.0
    uniform = cfg.model_copy(update={"allocator": "uniform"})
    assert filters.prepare_seconds(uniform, MethodFolder(tmp_path / "u"), Units()) == 0.0  # no search


def test_a_sensitivity_analysis_counts_one_validation_per_fraction_and_layer(tmp_path):
    cfg = parse_config({"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "method": "magnitude",
                        "budget": "params", "targets": [0.5], "magnitude": {"fractions": [0.25, 0.5, 0.75]}})
    folder = MethodFolder(tmp_path)
    magnitude = METHODS["magnitude"]
    assert magnitude.prepare_seconds(cfg, folder, Units()) == pytest.approx(3 * 3 * 2.0)  # 2 convs + 1 linear
    folder.sensitivity.write_text("{}")
    assert magnitude.prepare_seconds(cfg, folder, Units()) == 0.0


@pytest.mark.parametrize("method", ["fbs", "rnp"])
def test_a_dynamic_method_counts_its_one_training_until_its_weights_are_there(method, tmp_path):
    cfg = parse_config({"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "method": method,
                        "targets": [0.6], "finetune": {"epochs": 3}})
    folder, cls = MethodFolder(tmp_path), METHODS[method]
    assert cls.prepare_seconds(cfg, folder, Units()) == pytest.approx(30.0)  # 3 epochs at the source's size
    assert cls.member_training(cfg, 0.6)[0][1].epochs == 0  # nothing trained per member
    (tmp_path / method).mkdir()
    (tmp_path / method / "model.safetensors").write_bytes(b"")
    assert cls.prepare_seconds(cfg, folder, Units()) == 0.0
