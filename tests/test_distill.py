"""Knowledge distillation in fine-tuning: the loss is Hinton et al.'s, the teacher never changes, alpha 0 is plain
cross-entropy bit for bit, and a run distils its members from the source network (never the source from itself)."""

import copy
import math

import numpy as np
import pytest
import torch
import yaml

from legr.errors import CheckpointError, ConfigError
from legr.pipeline.config import parse_config
from legr.training import FinetuneConfig
from legr.training.distill import DistillConfig, Teacher, distill_loss
from test_train import TinyCNN, digits, fit, quick_cfg, same_weights  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_equals_a_hand_computation():
    student = torch.tensor([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]])
    teacher = torch.tensor([[1.5, 0.0, -0.5], [-1.0, 2.5, 1.0]])
    targets = torch.tensor([0, 2])
    alpha, t = 0.7, 3.0

    def softmax(v):
        e = np.exp(v - v.max())
        return e / e.sum()

    ce = np.mean([-math.log(softmax(s.numpy())[y]) for s, y in zip(student, targets)])
    kl = np.mean([sum(p * math.log(p / q) for p, q in zip(softmax(tt.numpy() / t), softmax(s.numpy() / t)))
                  for s, tt in zip(student, teacher)])
    expected = (1 - alpha) * ce + alpha * t * t * kl
    got = distill_loss(student, teacher, targets, DistillConfig(alpha=alpha, temperature=t))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert distill_loss(student, teacher, targets, DistillConfig(alpha=0.0)).item() == pytest.approx(ce, rel=1e-6)


def test_teacher_is_unchanged_and_alpha_zero_is_cross_entropy(digits):  # noqa: F811
    teacher = TinyCNN(seed=1)
    fit(teacher, digits, quick_cfg(epochs=2))
    teacher.train()  # the teacher's own mode comes back after every batch it answers
    frozen = copy.deepcopy(teacher)
    student = TinyCNN(seed=2)
    history = fit(student, digits, quick_cfg(distill=DistillConfig(alpha=0.9, temperature=4)), teacher=teacher)
    assert same_weights(teacher, frozen) and teacher.training  # weights and BN running statistics
    assert all(0 < row["teacher_seconds"] < row["seconds"] for row in history)
    # alpha 0: the distilled loop is the plain one, bit for bit; alpha > 0 trains another network
    plain, zero = TinyCNN(seed=2), TinyCNN(seed=2)
    fit(plain, digits, quick_cfg())
    fit(zero, digits, quick_cfg(distill=DistillConfig(alpha=0.0)), teacher=teacher)
    assert same_weights(plain, zero) and not same_weights(plain, student)


def test_a_checkpoint_remembers_the_distillation(digits, tmp_path):  # noqa: F811
    teacher = TinyCNN(seed=1)
    fit(TinyCNN(seed=2), digits, quick_cfg(epochs=1), checkpoint=tmp_path / "ft.pt")
    with pytest.raises(CheckpointError, match="distill"):
        fit(TinyCNN(seed=2), digits, quick_cfg(epochs=2, distill=DistillConfig()), checkpoint=tmp_path / "ft.pt",
            teacher=teacher)
    with pytest.raises(ValueError, match="teacher"):
        fit(TinyCNN(seed=2), digits, quick_cfg(distill=DistillConfig()))


def test_config_sections():
    base = {"model": {"name": "digits_cnn", "weights": None}, "data": {"name": "digits"}, "targets": [0.5]}
    cfg = parse_config({**base, "finetune": {"distill": {"alpha": 0.5, "temperature": 2}}})
    assert cfg.finetune.distill == DistillConfig(alpha=0.5, temperature=2)
    assert parse_config(base).finetune.distill is None
    with pytest.raises(ConfigError, match="base_training.distill"):
        parse_config({**base, "base_training": {"epochs": 1, "distill": {}}})
    with pytest.raises(ConfigError, match="finetune.distill.alpha"):
        parse_config({**base, "finetune": {"distill": {"alpha": 1.5}}})
    with pytest.raises(ConfigError, match="finetune.distill.beta"):
        parse_config(yaml.safe_load("{finetune: {distill: {beta: 1}}}") | base)
    assert FinetuneConfig(distill={"alpha": 0.3}).distill.alpha == 0.3


def test_teacher_answers_without_gradients():
    net = TinyCNN()
    out = Teacher(net)(torch.randn(2, 1, 8, 8))
    assert not out.requires_grad and net.training


RUN = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 200}
base_training: {epochs: 2, lr: 0.05, batch_size: 64, augment: false}
search: {population: 4, sample: 2, evaluations: 4, batch_size: 64, bn_batches: 2, restarts: 1}
targets: [0.5]
finetune: {epochs: 1, batch_size: 64, augment: false, distill: {alpha: 0.5, temperature: 2}}
eval: {latency: false}
"""


def test_a_run_distils_its_members_from_the_source(tmp_path):
    import json

    from legr.models import load_checkpoint
    from legr.pipeline.steps import Pipeline

    pipe = Pipeline(parse_config(yaml.safe_load(RUN)), tmp_path, progress=False, log=lambda m: None)
    rows = pipe.run() and json.loads((tmp_path / "results.json").read_text())
    history = json.loads((tmp_path / "members" / "legr-50" / "finetuned.json").read_text())
    assert history and all(row["teacher_seconds"] > 0 for row in history)
    source = copy.deepcopy(pipe.base)
    load_checkpoint(source, tmp_path / "base" / "model.safetensors")
    assert same_weights(source, pipe.base)  # the teacher left the source network as it was trained
    assert rows[0]["top1"] > 0.5 and rows[1]["top1"] > 0.5
