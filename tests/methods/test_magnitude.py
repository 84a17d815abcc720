"""Han et al. 2015 magnitude pruning: threshold rule, masks through retraining, dropout rule, dead units, CSR."""

import math

import numpy as np
import pytest
import torch

from legr.engine.dead_units import remove_dead_units
from legr.errors import BudgetError, CheckpointError, ConfigError, LegrError
from legr.methods.magnitude.compress import MagnitudeConfig, load_magnitude, run_magnitude
from legr.methods.magnitude.pruning import (
    Masker,
    SensitivityCurve,
    adjust_dropout_,
    allocate_fractions,
    dropout_layers,
    dropout_rate,
    layer_threshold,
    prunable_layers,
    quality_for_fraction,
    reference_stds,
    schedule_fractions,
    sensitivity,
    threshold_mask,
)
from legr.methods.magnitude.sparse import (
    SparseLinear,
    load_sparse,
    save_sparse,
    sparse_kernel_copy,
    storage_report,
    to_csr,
)
from legr.models import build_model, load_state_dict
from legr.training import FinetuneConfig, evaluate, finetune


@pytest.fixture(scope="module")
def mnist():
    from conftest import shared_path

    from legr.data import load_dataset, split_train_val

    shared_path("data", "mnist")
    data = load_dataset("mnist")
    tx, ty, vx, vy = split_train_val(data.train_x[:1500], data.train_y[:1500], 300, seed=0)
    return data, tx, ty, vx, vy


def _sparsify(model, keep=0.2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in prunable_layers(model).values():
            m.weight.mul_((torch.rand(m.weight.shape, generator=gen) < keep).float())
    return model


# ---------------------------------------------------------------- threshold rule


def test_threshold_is_quality_times_std():
    w = torch.randn(50, 40, generator=torch.Generator().manual_seed(0))
    std = float(w.std())
    assert layer_threshold(w, 1.5) == pytest.approx(1.5 * std)
    assert layer_threshold(w, 2.0, std=0.1) == pytest.approx(0.2)
    mask = threshold_mask(w, 0.7)
    assert torch.equal(mask, w.abs() > 0.7 * std)
    with pytest.raises(ConfigError):
        layer_threshold(w, -1.0)


def test_quality_for_fraction_prunes_that_fraction():
    w = torch.randn(100, 30, generator=torch.Generator().manual_seed(1))
    std = float(w.std())
    for fraction in (0.0, 0.25, 0.9, 0.99):
        q = quality_for_fraction(w, fraction, std)
        pruned = 1 - threshold_mask(w, q, std).float().mean().item()
        assert pruned == pytest.approx(fraction, abs=1e-3)
    # on a Gaussian layer, quality 1 prunes about 68% (|w| < 1 sigma)
    big = torch.randn(200_000, generator=torch.Generator().manual_seed(2))
    assert 1 - threshold_mask(big, 1.0).float().mean().item() == pytest.approx(0.6827, abs=0.01)


def test_prunable_layers_cover_linear_and_conv_of_any_zoo_model():
    net = build_model("cifar_resnet20")
    layers = prunable_layers(net)
    assert "conv1" in layers and "linear" in layers and len(layers) == 20
    with pytest.raises(LegrError, match="not Linear/Conv"):
        prunable_layers(net, ["bn1"])


# ---------------------------------------------------------------- masks through retraining


@pytest.mark.parametrize("reg", ["l2", "l1"])
def test_masked_weights_stay_exactly_zero_through_retraining(mnist, reg):
    data, tx, ty, vx, vy = mnist
    torch.manual_seed(0)
    net = build_model("lenet_300_100", dropout=0.3)
    masker = Masker(net, l1=1e-4 if reg == "l1" else 0.0).attach()
    stds = reference_stds(net)
    for name in masker.layers:
        masker.prune_(name, quality_for_fraction(masker.layers[name].weight, 0.8, stds[name]), stds[name])
    before = {n: m.weight.detach().clone() for n, m in masker.layers.items()}
    cfg = FinetuneConfig(epochs=2, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4 if reg == "l2" else 0.0,
                         augment=False, batch_size=64, milestones=(0.5,))
    finetune(net, tx, ty, data.mean, data.std, cfg, progress=False)
    masker.detach()
    for name, module in masker.layers.items():
        mask = masker.masks[name]
        assert mask.float().mean().item() == pytest.approx(0.2, abs=0.01)
        assert torch.count_nonzero(module.weight[~mask]) == 0  # exactly zero, not merely small
        assert not torch.equal(module.weight[mask], before[name][mask])  # survivors were retrained, not re-initialised
        assert torch.allclose(module.weight[mask], before[name][mask], atol=0.5)


def test_masks_only_lose_weights():
    net = build_model("lenet_300_100")
    masker = Masker(net)
    std = reference_stds(net)["fc1"]
    first = masker.prune_("fc1", 1.0, std).clone()
    second = masker.prune_("fc1", 0.5, std)  # a lower quality never brings pruned weights back
    assert torch.equal(first, second)


# ---------------------------------------------------------------- dropout


def test_dropout_rule():
    assert dropout_rate(0.5, 100, 100) == 0.5
    assert dropout_rate(0.5, 25, 100) == pytest.approx(0.25)
    assert dropout_rate(0.4, 9, 100) == pytest.approx(0.4 * 0.3)
    with pytest.raises(ValueError):
        dropout_rate(0.5, 101, 100)


def test_adjust_dropout_follows_each_layer_connections():
    net = build_model("lenet_300_100", dropout=0.5)
    assert dropout_layers(net) == {"drop1": "fc1", "drop2": "fc2"}
    masker = Masker(net)
    stds = reference_stds(net)
    masker.prune_("fc1", quality_for_fraction(net.fc1.weight, 0.91, stds["fc1"]), stds["fc1"])
    masker.prune_("fc2", quality_for_fraction(net.fc2.weight, 0.75, stds["fc2"]), stds["fc2"])
    rates = adjust_dropout_(net, masker, {"drop1": 0.5, "drop2": 0.5})
    assert rates["drop1"] == pytest.approx(0.5 * math.sqrt(0.09), rel=1e-3) == net.drop1.p
    assert rates["drop2"] == pytest.approx(0.5 * math.sqrt(0.25), rel=1e-3) == net.drop2.p


# ---------------------------------------------------------------- sensitivity, allocation, schedule


def test_sensitivity_restores_weights_and_allocation_meets_target(mnist):
    data, tx, ty, vx, vy = mnist
    torch.manual_seed(0)
    net = build_model("lenet_300_100")
    finetune(net, tx, ty, data.mean, data.std, FinetuneConfig(epochs=1, lr=0.05, augment=False), progress=False)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    curves = sensitivity(net, lambda m: evaluate(m, vx, vy, data.mean, data.std).top1, (0.5, 0.9, 0.99),
                         progress=False)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert set(curves) == {"fc1", "fc2", "fc3"}
    assert curves["fc1"].top1[-1] <= curves["fc1"].top1[0] + 0.02  # pruning more does not help much
    total = sum(p.numel() for p in net.parameters())
    fractions, _ = allocate_fractions(curves, 5.0, total)
    removed = sum(curves[n].params * f for n, f in fractions.items())
    assert total / (total - removed) == pytest.approx(5.0, rel=1e-3)
    with pytest.raises(BudgetError):
        allocate_fractions(curves, 1000.0, total)


def test_allocation_prefers_insensitive_layers():
    flat = SensitivityCurve("a", 1000, 1.0, (0.5, 0.9), (0.7, 1.6), (0.9, 0.9), 0.9)
    steep = SensitivityCurve("b", 1000, 1.0, (0.5, 0.9), (0.7, 1.6), (0.8, 0.1), 0.9)
    for rule in ("cost", "tolerance"):
        fractions, _ = allocate_fractions({"a": flat, "b": steep}, 2.0, 2000, rule)
        assert fractions["a"] == pytest.approx(0.9) and fractions["b"] == pytest.approx(0.1)
    # a small sensitive layer buys little: the cost rule leaves it denser than a common tolerance does
    big = SensitivityCurve("big", 10_000, 1.0, (0.5, 0.9, 0.95), (0.7, 1.6, 2.0), (0.9, 0.88, 0.85), 0.9)
    small = SensitivityCurve("small", 100, 1.0, (0.5, 0.9, 0.95), (0.7, 1.6, 2.0), (0.89, 0.86, 0.80), 0.9)
    cost, _ = allocate_fractions({"big": big, "small": small}, 10.0, 10_100, "cost")
    tol, _ = allocate_fractions({"big": big, "small": small}, 10.0, 10_100, "tolerance")
    assert cost["small"] < tol["small"]
    with pytest.raises(ConfigError):
        allocate_fractions({"big": big}, 2.0, 10_000, "greedy")


def test_schedule_is_geometric_in_density():
    rounds = schedule_fractions({"fc1": 0.92}, 3)
    dens = [1 - r["fc1"] for r in rounds]
    assert dens[-1] == pytest.approx(0.08)
    assert dens[0] / 1 == pytest.approx(dens[1] / dens[0]) == pytest.approx(dens[2] / dens[1])


# ---------------------------------------------------------------- dead units


def test_dead_unit_removal_keeps_outputs_identical_lenets():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 28, 28)
    mlp = build_model("lenet_300_100").eval()
    with torch.no_grad():
        mlp.fc1.weight[:50] = 0  # no inputs (bias kept): folded into fc2's bias
        mlp.fc3.weight[:, 60:80] = 0  # fc2 units with no outputs
    small, info = remove_dead_units(mlp, (1, 28, 28))
    assert info["kept"] == {"fc1": 250, "fc2": 80} and info["folded_bias"] == 50
    assert small.fc1.weight.shape == (250, 784) and small.fc3.weight.shape == (10, 80)
    assert torch.allclose(small(x), mlp(x), atol=1e-5)
    cnn = build_model("lenet5").eval()
    with torch.no_grad():
        cnn.conv1.weight[:4] = 0  # constant maps -> max-pool -> unpadded conv2: folded
        cnn.fc1.weight[:, :48] = 0  # conv2 filters 0-2 feed nothing
        cnn.fc2.weight[:, :100] = 0
    small, info = remove_dead_units(cnn, (1, 28, 28))
    assert info["kept"] == {"conv1": 16, "conv2": 47, "fc1": 400}
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in cnn.parameters())
    assert torch.allclose(small(x), cnn(x), atol=1e-5)


def test_dead_unit_removal_on_a_residual_network():
    torch.manual_seed(0)
    net = build_model("cifar_resnet20").eval()
    with torch.no_grad():
        net.layer1[0].conv2.weight[:, 3] = 0  # layer1.0.conv1 filter 3 feeds nothing
        net.layer2[1].conv1.weight[5] = 0  # no inputs, no bias, then BN: not foldable into a biasless conv -> kept
    small, info = remove_dead_units(net, (3, 32, 32))
    assert small.get_submodule("layer1.0.conv1").weight.shape[0] == 15
    assert small.get_submodule("layer2.1.conv1").weight.shape[0] == 32
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(small(x), net(x), atol=1e-4)


# ---------------------------------------------------------------- sparse storage


def test_sparse_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(0)
    for name, shape in (("lenet5", (1, 28, 28)), ("cifar_resnet20", (3, 32, 32))):
        net = _sparsify(build_model(name).eval(), keep=0.1)
        report = save_sparse(net, tmp_path / f"{name}.safetensors")
        back = load_state_dict(build_model(name).eval(), load_sparse(tmp_path / f"{name}.safetensors"))
        x = torch.randn(3, *shape)
        assert torch.equal(back(x), net(x))
        assert report["nonzero"] < report["params"] / 5 and report["sparse_bytes"] < report["dense_bytes"] / 3
        assert report["index_bytes"] > 0


def test_csr_index_dtype_and_errors(tmp_path):
    w = torch.zeros(4, 300)
    w[1, 299] = 1.5
    parts = to_csr(w)
    assert parts["col"].dtype == torch.int16 and parts["rowptr"].tolist() == [0, 0, 1, 1, 1]
    assert to_csr(torch.ones(2, 3, 5, 5))["col"].dtype == torch.uint8
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError):
        load_sparse(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError):
        load_sparse(tmp_path / "missing.safetensors")


def test_sparse_kernels_compute_the_same():
    net = _sparsify(build_model("lenet_300_100").eval(), keep=0.1)
    fast = sparse_kernel_copy(net)
    assert isinstance(fast.fc1, SparseLinear)
    x = torch.randn(5, 1, 28, 28)
    assert torch.allclose(fast(x), net(x), atol=1e-5)
    assert storage_report(net)["nonzero"] == sum(int(torch.count_nonzero(p)) for p in net.parameters())


# ---------------------------------------------------------------- pipeline (resumable) and CLI


def test_run_magnitude_end_to_end_and_resume(mnist, tmp_path):
    data, tx, ty, vx, vy = mnist
    torch.manual_seed(0)
    dense = build_model("lenet_300_100")
    finetune(dense, tx, ty, data.mean, data.std, FinetuneConfig(epochs=1, lr=0.05, augment=False), progress=False)
    cfg = MagnitudeConfig(target=6.0, rounds=2, fractions=(0.5, 0.8, 0.9, 0.95, 0.98),
                          retrain=FinetuneConfig(epochs=1, lr=0.01, augment=False, milestones=(0.5,)))
    net = build_model("lenet_300_100")
    net.load_state_dict(dense.state_dict())
    result = run_magnitude(net, (1, 28, 28), (tx, ty), (vx, vy), data.mean, data.std, cfg, tmp_path, progress=False)
    total = sum(p.numel() for p in dense.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in result.model.parameters())
    assert total / nonzero >= 6.0 * 0.98
    assert [r["round"] for r in result.rounds] == [1, 2]
    assert result.rounds[0]["kept_fraction"] > result.rounds[1]["kept_fraction"]
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(result.model(x), result.masked.eval()(x), atol=1e-5)
    rebuilt = load_magnitude(tmp_path, build_model("lenet_300_100"))
    assert torch.equal(rebuilt(x), result.model(x))
    # rerun: every round is loaded from the run folder (no training), same weights
    again = build_model("lenet_300_100")
    again.load_state_dict(dense.state_dict())
    resumed = run_magnitude(again, (1, 28, 28), (tx, ty), (vx, vy), data.mean, data.std, cfg, tmp_path,
                            progress=False)
    assert torch.equal(resumed.model(x), result.model(x)) and resumed.rounds == result.rounds
    with pytest.raises(ConfigError, match="another configuration"):
        run_magnitude(build_model("lenet_300_100"), (1, 28, 28), (tx, ty), (vx, vy), data.mean, data.std,
                      MagnitudeConfig(target=7.0), tmp_path, progress=False)


def test_explicit_qualities_and_config_errors(mnist, tmp_path):
    data, tx, ty, vx, vy = mnist
    cfg = MagnitudeConfig(qualities={"fc1": 1.5, "fc2": 1.0}, rounds=1, remove_dead=False,
                          retrain=FinetuneConfig(epochs=1, lr=0.01, augment=False, milestones=(0.5,)))
    net = build_model("lenet_300_100")
    std = reference_stds(net)
    result = run_magnitude(net, (1, 28, 28), (tx[:256], ty[:256]), (vx, vy), data.mean, data.std, cfg, tmp_path,
                           progress=False)
    assert result.rounds[0]["thresholds"]["fc1"] == pytest.approx(1.5 * std["fc1"])
    assert result.rounds[0]["density"]["fc3"] == 1.0
    with pytest.raises(ConfigError):
        MagnitudeConfig(regularization="l3")
    with pytest.raises(ConfigError):
        MagnitudeConfig(rounds=0)


def test_han_benchmark_runs_the_paper_setting_as_a_run(tmp_path):
    """benchmarks/han_mnist.py: the committed config as a `legr run` of method magnitude (smoke setting), completed
    with the paper's figures; a second call resumes the finished run."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import shared_path

    shared_path("data", "mnist")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "han_mnist.py"
    cmd = [sys.executable, str(script), "--quick", "--models", "lenet_300_100", "--threads", "1", "--out", str(tmp_path)]
    for _ in range(2):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training the source network" not in proc.stderr  # the second call found the run done
    rows = json.loads((tmp_path / "han_mnist.json").read_text())["models"]["lenet_300_100"]["rows"]
    assert [r["method"] for r in rows] == ["baseline", "han2015"] and rows[1]["dataset"] == "MNIST"
    assert rows[1]["compression"] >= 12.5 * 0.98 and np.isfinite(rows[1]["storage_compression"])
    assert rows[1]["sparse_kernel_latency_cpu_b1_ms"] > 0 and (tmp_path / "han_mnist.md").exists()


def test_precomputed_sensitivity_is_used(mnist, tmp_path):
    data, tx, ty, vx, vy = mnist
    net = build_model("lenet_300_100")
    curves = {n: SensitivityCurve(n, m.weight.numel(), 0.05, (0.5, 0.9), (0.7, 1.6), (0.5, 0.5), 0.5)
              for n, m in prunable_layers(net).items()}  # flat curves: every layer goes to 90%
    cfg = MagnitudeConfig(target=5.0, rounds=1, fractions=(0.5, 0.9), remove_dead=False,
                          retrain=FinetuneConfig(epochs=1, lr=0.01, augment=False, milestones=(0.5,)))
    result = run_magnitude(net, (1, 28, 28), (tx[:128], ty[:128]), (vx[:64], vy[:64]), data.mean, data.std, cfg,
                           tmp_path, progress=False, curves=curves)
    assert result.sensitivity == curves
    # no measured drop anywhere: every layer is pruned alike, just enough for the target (not to the grid's end)
    assert all(f == pytest.approx(result.fractions["fc1"]) for f in result.fractions.values())
    total = sum(p.numel() for p in net.parameters())
    removed = sum(curves[n].params * f for n, f in result.fractions.items())
    assert total / (total - removed) == pytest.approx(5.0, rel=1e-6)
