"""Tests of legr.training: evaluation, tau-step fine-tune, full fine-tune (accuracy, lr schedule, resumable checkpoint)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from legr.data import TensorLoader, load_dataset, normalize
from legr.engine.cost import CostModel
from legr.engine.surgery import prune
from legr.errors import CheckpointError, ConfigError
from legr.graph import analyze
from legr.methods.filters.legr.ranking import Ranking, ranked_layers
from legr.models import build_model
from legr.training import (
    EvalResult,
    FinetuneConfig,
    bn_batches,
    evaluate,
    finetune,
    make_sgd,
    recalibrate_bn,
    train_steps,
)


class TinyCNN(nn.Module):
    """A small CNN for 8x8 grayscale digits (BN and dropout, so resume must restore buffers and RNG use)."""

    def __init__(self, width: int = 16, classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1),
        )
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def quick_cfg(**kw) -> FinetuneConfig:
    return FinetuneConfig(**{"epochs": 4, "lr": 0.05, "batch_size": 32, "steps_per_epoch": 6, **kw})


def fit(model, data, cfg, **kw):
    return finetune(model, data.train_x, data.train_y, data.mean, data.std, cfg, progress=False, **kw)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_seconds(history):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


# ---------------------------------------------------------------- config


def test_config_defaults_and_validation():
    cfg = FinetuneConfig()
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.nesterov, cfg.batch_size) == (
        60, 0.01, 0.9, 5e-4, True, 128)
    assert (cfg.milestones, cfg.gamma, cfg.augment, cfg.steps_per_epoch) == ((0.3, 0.6, 0.8), 0.2, True, None)
    assert cfg.milestone_epochs() == [18, 36, 48]
    assert FinetuneConfig(milestones=[0.5]).milestones == (0.5,)  # lists are normalized (hashable, comparable)
    for bad in ({"epochs": -1}, {"lr": 0.0}, {"batch_size": 0}, {"milestones": (0.6, 0.3)}, {"milestones": (1.5,)},
                {"steps_per_epoch": 0}):
        with pytest.raises(ConfigError):
            FinetuneConfig(**bad)


# ---------------------------------------------------------------- evaluate


def test_evaluate_matches_manual_computation(digits):
    model = TinyCNN()
    model.train()
    model.features[1].eval()  # a module in another mode than its parent: must be restored as it was
    x, y = digits.test_x[:7], digits.test_y[:7]
    result = evaluate(model, x, y, digits.mean, digits.std, batch_size=3)
    assert isinstance(result, EvalResult) and result.n == 7
    assert model.training and not model.features[1].training and model.features[4].training
    model.eval()
    with torch.no_grad():
        logits = model(normalize(x, digits.mean, digits.std))
    assert result.loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert result.top1 == pytest.approx((logits.argmax(1) == y).float().mean().item())
    top5 = (logits.topk(5, 1).indices == y[:, None]).any(1).float().mean().item()
    assert result.top5 == pytest.approx(top5)
    assert 0.0 <= result.top1 <= result.top5 <= 1.0


def test_evaluate_few_classes_top5_is_top_k(digits):
    model = TinyCNN(classes=3)
    x, y = digits.test_x[:20], digits.test_y[:20] % 3
    result = evaluate(model, x, y, digits.mean, digits.std)
    assert result.top5 == 1.0 and 0.0 <= result.top1 <= 1.0 and model.training  # mode restored


# ---------------------------------------------------------------- train_steps


def test_train_steps_runs_exactly_steps_across_epochs(digits):
    model = TinyCNN()
    loader = TensorLoader(digits.train_x[:50], digits.train_y[:50], 16, digits.mean, digits.std, shuffle=True)
    assert len(loader) == 4
    optimizer = make_sgd(model, lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    assert optimizer.param_groups[0]["nesterov"] and optimizer.param_groups[0]["weight_decay"] == 5e-4
    calls = []
    optimizer.register_step_post_hook(lambda opt, args, kwargs: calls.append(1))
    model.eval()
    loss = train_steps(model, loader, 10, optimizer)
    assert len(calls) == 10 and model.training
    assert loader.epoch == 3  # cycled: 4 + 4 + 2 batches
    assert math.isfinite(loss) and loss > 0
    assert math.isnan(train_steps(model, loader, 0, optimizer)) and len(calls) == 10


# ---------------------------------------------------------------- finetune


def test_finetune_learns_digits(digits):
    model = TinyCNN()
    cfg = FinetuneConfig(epochs=6, lr=0.05, batch_size=64, augment=False)
    before = evaluate(model, digits.test_x, digits.test_y, digits.mean, digits.std)
    history = fit(model, digits, cfg, val=(digits.test_x, digits.test_y))
    after = evaluate(model, digits.test_x, digits.test_y, digits.mean, digits.std)
    assert [row["epoch"] for row in history] == list(range(6))
    assert set(history[0]) == {"epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "seconds"}
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert after.top1 > 0.8 and after.top1 > before.top1 + 0.3
    assert history[-1]["val_top1"] == after.top1  # the final weights are the result
    assert not model.training


def test_lr_follows_milestones(digits):
    cfg = FinetuneConfig(epochs=10, lr=0.01, batch_size=32, steps_per_epoch=1)
    history = fit(TinyCNN(width=4), digits, cfg)
    expected = [0.01] * 3 + [0.002] * 3 + [0.0004] * 2 + [0.00008] * 2
    assert [row["lr"] for row in history] == pytest.approx(expected)
    assert "val_top1" not in history[0]


@pytest.mark.parametrize("epochs, milestones", [(10, (0.3, 0.6, 0.8)), (4, (0.3, 0.6, 0.8)), (2, (0.3, 0.6, 0.8)),
                                                (6, (0.5,)), (5, (0.2, 0.2, 0.9))])
def test_a_window_of_a_recipe_trains_at_the_recipe_s_learning_rates(digits, epochs, milestones):
    """lr_at and window against the scheduler that trains: every window's epochs run at the full recipe's rates."""
    cfg = FinetuneConfig(epochs=epochs, lr=0.01, batch_size=32, steps_per_epoch=1, milestones=milestones)
    full = [row["lr"] for row in fit(TinyCNN(width=4), digits, cfg)]
    assert [cfg.lr_at(e) for e in range(epochs)] == pytest.approx(full)
    for start in range(epochs):
        for stop in range(start + 1, epochs + 1):
            part = [row["lr"] for row in fit(TinyCNN(width=4), digits, cfg.window(start, stop))]
            assert part == pytest.approx(full[start:stop]), (start, stop)
    with pytest.raises(ValueError, match="not within"):
        cfg.window(0, epochs + 1)


def test_before_step_sees_every_step_once_across_epochs_and_a_resume(digits, tmp_path):
    """The hook is called with 0, 1, ... before each optimizer step; a resumed run calls it for the steps it runs."""
    cfg = quick_cfg(epochs=3, steps_per_epoch=4)
    seen = []
    fit(TinyCNN(width=4), digits, cfg, before_step=seen.append)
    assert seen == list(range(12))
    seen.clear()

    def stop_in_epoch_two(step):
        if step == 9:
            raise KeyboardInterrupt
        seen.append(step)

    ckpt = tmp_path / "ft.pt"
    with pytest.raises(KeyboardInterrupt):
        fit(TinyCNN(width=4), digits, cfg, checkpoint=ckpt, before_step=stop_in_epoch_two)
    again = []
    fit(TinyCNN(width=4), digits, cfg, checkpoint=ckpt, before_step=again.append)
    assert seen == list(range(9)) and again == list(range(8, 12))


def killed_at_epoch_2(monkeypatch, run) -> None:
    """Run ``run()`` as if the process were killed when epoch 2 starts (its checkpoint then holds epochs 0-1)."""
    original = TensorLoader.set_epoch

    def set_epoch(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(TensorLoader, "set_epoch", set_epoch)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(TensorLoader, "set_epoch", original)


class WithPenalty(TinyCNN):
    """TinyCNN with a parameter its forward never uses: only an extra loss moves it."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(width=4, seed=seed)
        self.extra = nn.Parameter(torch.zeros(3))


def test_extra_loss_is_added_to_every_step_and_resumes(digits, tmp_path, monkeypatch):
    """An extra loss c * sum(extra) moves `extra` by exactly lr * c per SGD step (no momentum, no decay) and nothing
    else; the rows' train_loss includes it; a run killed and resumed with it ends bit-identical."""
    cfg = quick_cfg(epochs=3, steps_per_epoch=4, momentum=0.0, weight_decay=0.0, nesterov=False)
    c = 0.5
    penalty = lambda model: c * model.extra.sum()  # noqa: E731
    plain, pushed = WithPenalty(), WithPenalty()
    base_rows, rows = fit(plain, digits, cfg), fit(pushed, digits, cfg, extra_loss=penalty)
    lrs = [cfg.lr_at(step // 4) for step in range(12)]  # the recipe's rate at each step
    assert torch.allclose(pushed.extra, torch.full((3,), -c * sum(lrs)), atol=1e-6)
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in pushed.state_dict().items() if k != "extra")
    # the penalty of each batch is c * sum(extra) before its step
    for e, (a, b) in enumerate(zip(base_rows, rows)):
        added = sum(c * 3 * -c * sum(lrs[:s]) for s in range(4 * e, 4 * e + 4)) / 4
        assert b["train_loss"] == pytest.approx(a["train_loss"] + added, abs=1e-6)

    ckpt = tmp_path / "ft.pt"
    killed_at_epoch_2(monkeypatch, lambda: fit(WithPenalty(), digits, cfg, checkpoint=ckpt, extra_loss=penalty))
    resumed = WithPenalty(seed=7)
    again = fit(resumed, digits, cfg, checkpoint=ckpt, extra_loss=penalty)
    assert same_weights(resumed, pushed) and without_seconds(again) == without_seconds(rows)


def test_resume_is_bit_identical(digits, tmp_path, monkeypatch):
    cfg = quick_cfg()
    reference = TinyCNN()
    rng_before = torch.get_rng_state()
    full = fit(reference, digits, cfg, val=(digits.test_x[:64], digits.test_y[:64]))
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's global RNG is left alone

    ckpt = tmp_path / "ft.pt"
    killed_at_epoch_2(monkeypatch, lambda: fit(TinyCNN(), digits, cfg, checkpoint=ckpt,
                                               val=(digits.test_x[:64], digits.test_y[:64])))
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ft.pt"]  # no temporary files left behind

    resumed_model = TinyCNN(seed=123)  # other initial weights: the checkpoint's must win
    resumed = fit(resumed_model, digits, cfg, checkpoint=ckpt, val=(digits.test_x[:64], digits.test_y[:64]))
    assert same_weights(resumed_model, reference)
    assert without_seconds(resumed) == without_seconds(full)

    # a finished checkpoint: no training at all, the stored weights and history come back
    again_model = TinyCNN(seed=7)
    forwards = []
    again_model.register_forward_hook(lambda *args: forwards.append(1))
    again = fit(again_model, digits, cfg, checkpoint=ckpt, val=(digits.test_x[:64], digits.test_y[:64]))
    assert forwards == [] and again == resumed
    assert same_weights(again_model, reference) and not again_model.training


def test_mismatched_checkpoint_raises(digits, tmp_path):
    ckpt = tmp_path / "ft.pt"
    cfg = quick_cfg(epochs=2, steps_per_epoch=1)
    fit(TinyCNN(width=4), digits, cfg, checkpoint=ckpt)
    with pytest.raises(CheckpointError, match=r"another FinetuneConfig \(lr=0\.05 vs 0\.02\)") as err:
        fit(TinyCNN(width=4), digits, quick_cfg(epochs=2, steps_per_epoch=1, lr=0.02), checkpoint=ckpt)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="does not fit") as err:
        fit(TinyCNN(width=8), digits, cfg, checkpoint=ckpt)
    assert "\n" not in str(err.value)
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        fit(TinyCNN(width=4), digits, cfg, checkpoint=ckpt)


def test_progress_bar_in_non_tty_logs(digits, capfd):
    history = finetune(TinyCNN(width=4), digits.train_x, digits.train_y, digits.mean, digits.std,
                       quick_cfg(epochs=2, steps_per_epoch=1), progress=True)
    out, err = capfd.readouterr()
    assert len(history) == 2 and out == ""  # the bar goes to stderr, never into stdout
    assert "2/2" in err and "loss" in err


# ---------------------------------------------------------------- adaptive batch norm


def _bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Dropout(0.5), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.Sequential(nn.Conv2d(6, 4, 1), nn.BatchNorm2d(4)),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():  # stale statistics, as after pruning
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.fill_(5.0)
                m.running_var.fill_(9.0)
    return net


def test_recalibrate_bn_changes_only_bn_statistics_and_restores_modes():
    net = _bn_net()
    net.train()
    net[4].eval()  # a mixed state must come back exactly
    modes = {name: m.training for name, m in net.named_modules()}
    before = {k: v.clone() for k, v in net.state_dict().items()}
    batches = [torch.randn(8, 3, 10, 10) * 2 + 1 for _ in range(3)]
    assert recalibrate_bn(net, [(b, None) for b in batches]) == 3
    after = net.state_dict()
    bn_stats = {k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    for key in before:
        if key not in bn_stats:
            assert torch.equal(before[key], after[key]), f"{key} changed"
    assert {name: m.training for name, m in net.named_modules()} == modes
    assert all(m.momentum == 0.1 for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    # cumulative average over the batches, computed with dropout off (eval) and the first norm's input exact
    with torch.no_grad():
        feats = [net[0](b) for b in batches]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(net[2].running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[2].running_var, var, rtol=1e-5, atol=1e-5)
    assert int(net[2].num_batches_tracked) == 3


def test_recalibrate_bn_repairs_a_pruned_network(digits):
    """Un-tuned pruned networks score near chance with the source's statistics; adaptive BN recovers much of it."""
    x, y, mean, std = digits.train_x, digits.train_y, digits.mean, digits.std
    torch.manual_seed(0)
    net = build_model("digits_cnn", num_classes=10)
    finetune(net, x, y, mean, std, FinetuneConfig(epochs=6, lr=0.05, batch_size=64, augment=False), progress=False)
    graph = analyze(net.eval(), (1, 8, 8))
    solver = Ranking.identity(ranked_layers(graph)).solver(graph, CostModel(graph), net)
    pruned = prune(graph, solver.solve(0.35 * CostModel(graph).base_macs))
    raw = evaluate(pruned, digits.test_x, digits.test_y, mean, std)
    recalibrate_bn(pruned, bn_batches(x, y, mean, std, 10, 64, augment=False))
    fixed = evaluate(pruned, digits.test_x, digits.test_y, mean, std)
    assert fixed.loss < raw.loss and fixed.top1 > raw.top1


def test_recalibrate_bn_edge_cases():
    assert recalibrate_bn(nn.Sequential(nn.Linear(2, 2)), [torch.randn(3, 2)]) == 0  # no BN: untouched
    with pytest.raises(ValueError, match="no batches"):
        recalibrate_bn(_bn_net(), [])
    b = bn_batches(torch.zeros(300, 3, 8, 8, dtype=torch.uint8), torch.zeros(300, dtype=torch.int64), None, None, 5,
                   128)
    assert len(b) == 5 and all(t.shape == (128, 3, 8, 8) for t in b)  # cycles past one epoch, full batches only
