"""The probability layer (PCNN) and the online prior estimators (legr.engine.prior, legr.engine.prior_estimate):
the correction is Bayes' rule, the guards do what they say, the ONNX export is the PyTorch layer, and every
estimator finds a known prior from posteriors alone."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from legr.engine.prior import (ProbabilityLayer, as_prior, bayes_correct, class_prior, export_with_layer,
                               fit_calibration)
from legr.engine.prior_estimate import PRIOR_ESTIMATORS, make_estimator
from legr.errors import LegrError


def _logits(probs):
    return torch.log(torch.tensor(probs, dtype=torch.float64)).float()


def test_the_corrected_posterior_is_bayes_rule_on_hand_made_numbers():
    # P(i|x) = [0.5, 0.3, 0.2], P(i) = [0.5, 0.25, 0.25], P_t(i) = [0.2, 0.2, 0.6]
    # ratios P_t/P = [0.4, 0.8, 2.4]; weighted = [0.20, 0.24, 0.48], sum 0.92
    layer = ProbabilityLayer([0.5, 0.25, 0.25], env_prior=[0.2, 0.2, 0.6], floor=0.0)
    out = layer(_logits([[0.5, 0.3, 0.2]]))
    expected = torch.tensor([[0.20 / 0.92, 0.24 / 0.92, 0.48 / 0.92]])
    assert torch.allclose(out, expected, atol=1e-6)
    assert out.argmax().item() == 2  # the environment makes the network's last choice the answer
    # a per-call prior overrides the held one: P_t = [0.8, 0.1, 0.1] -> [1.6, 0.4, 0.4] * p = [0.8, 0.12, 0.08]
    out = layer(_logits([[0.5, 0.3, 0.2]]), torch.tensor([0.8, 0.1, 0.1]))
    assert torch.allclose(out, torch.tensor([[0.8, 0.12, 0.08]]), atol=1e-6)


def test_the_floor_keeps_an_unseen_class_alive():
    # P_t = [0.5, 0.5, 0] with floor 0.01: class 2's ratio is 0.01 / (1/3), not 0
    layer = ProbabilityLayer([1 / 3] * 3, env_prior=[0.5, 0.5, 0.0], floor=0.01)
    p = torch.tensor([[0.001, 0.001, 0.998]])
    out = layer(torch.log(p))
    weighted = p[0] * torch.tensor([0.5, 0.5, 0.01]) * 3
    assert torch.allclose(out[0], weighted / weighted.sum(), atol=1e-6)
    assert out[0, 2] > 0.9  # overwhelming evidence still wins
    assert ProbabilityLayer([1 / 3] * 3, env_prior=[0.5, 0.5, 0.0], floor=0.0)(torch.log(p))[0, 2] == 0


def test_the_environment_prior_equal_to_the_training_prior_is_the_identity():
    torch.manual_seed(0)
    logits = torch.randn(64, 10) * 3
    uniform = ProbabilityLayer([0.1] * 10, env_prior=[0.1] * 10)
    assert torch.allclose(uniform(logits), torch.softmax(logits, dim=1), atol=1e-6)
    skewed = torch.rand(10) + 0.1
    assert torch.allclose(ProbabilityLayer(skewed, env_prior=skewed)(logits), torch.softmax(logits, dim=1), atol=1e-6)
    layer = ProbabilityLayer(skewed, env_prior=[0.5] + [0.5 / 9] * 9)
    layer.reset()  # back to the training prior
    assert torch.allclose(layer(logits), torch.softmax(logits, dim=1), atol=1e-6)


def test_confident_outputs_pass_through_unchanged():
    torch.manual_seed(1)
    logits = torch.randn(200, 5) * 4
    probs = torch.softmax(logits, dim=1)
    env = torch.tensor([0.7, 0.1, 0.1, 0.05, 0.05])
    layer = ProbabilityLayer([0.2] * 5, env_prior=env, omega=0.9)
    out = layer(logits)
    confident = probs.max(dim=1).values > 0.9
    assert 0 < confident.sum() < len(confident)  # both kinds present
    assert torch.equal(out[confident], probs[confident])
    corrected = bayes_correct(probs.double(), torch.full((5,), 0.2, dtype=torch.float64), env.double(), 1e-3)
    assert torch.allclose(out[~confident].double(), corrected[~confident], atol=1e-6)
    assert not torch.allclose(out[~confident], probs[~confident], atol=1e-3)
    assert torch.equal(ProbabilityLayer([0.2] * 5, env_prior=env, omega=0.0)(logits), probs)  # omega 0: no correction


@pytest.mark.parametrize("kwargs,message", [
    ({"omega": 1.5}, "omega must be in [0, 1]"), ({"floor": 0.5}, "floor must be in"),
    ({"env_prior": [1, 1]}, "environment prior has 2 entries"), ({"env_prior": [0, 0, 0, 0]}, "sums to zero"),
    ({"temperature": 0}, "temperature must be positive"),
])
def test_bad_layer_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(LegrError, match=message.replace("[", r"\[").replace("]", r"\]")):
        ProbabilityLayer([0.25] * 4, **kwargs)


def test_class_prior_is_the_label_frequencies_and_refuses_a_missing_class():
    assert torch.allclose(class_prior(torch.tensor([0, 0, 1, 2, 2, 2]), 3), torch.tensor([2, 1, 3], dtype=torch.float64) / 6.0,
                          atol=1e-12)
    with pytest.raises(LegrError, match=r"classes \[1\] never occur"):
        class_prior(torch.tensor([0, 2]), 3)
    assert torch.allclose(as_prior([2, 2, 4]), torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))


def test_the_onnx_export_with_the_layer_matches_pytorch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.Linear(4 * 12 * 12, 6)).eval()
    with torch.no_grad():
        net[-1].weight.mul_(25)  # spread the logits: some rows confident, some not
    train = torch.tensor([0.1, 0.2, 0.2, 0.2, 0.2, 0.1])
    layer = ProbabilityLayer(train, omega=0.95, floor=0.01, temperature=1.3, bias=[0.2, -0.1, 0.0, 0.1, -0.3, 0.1],
                             estimate_temperature=1.1, estimate_bias=[0.0, 0.3, -0.3, 0.0, 0.1, -0.1])
    info = export_with_layer(net, layer, (3, 12, 12), tmp_path / "with_layer.onnx")
    assert [i["name"] for i in info["inputs"]] == ["input", "prior"] and info["max_abs_diff"] < 1e-5
    assert [o["name"] for o in info["outputs"]] == ["output0", "output1"]
    session = ort.InferenceSession(str(tmp_path / "with_layer.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(64, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    for env in ([0.5, 0.0, 0.0, 0.25, 0.25, 0.0], [1 / 6] * 6, [0.02, 0.02, 0.9, 0.02, 0.02, 0.02]):
        prior = torch.tensor(env, dtype=torch.float32)
        got, posterior = session.run(None, {"input": x.numpy(), "prior": prior.numpy()})
        with torch.no_grad():
            expected = layer(net(x), prior).numpy()
            estimation = torch.softmax(net(x) / 1.1 + layer.estimate_bias, dim=1).numpy()
        assert np.abs(got - expected).max() < 1e-5 and np.abs(posterior - estimation).max() < 1e-5
    probs = layer.posterior(net(x)).detach()
    confident = probs.max(dim=1).values > 0.95
    assert 0 < confident.sum() < len(x)  # the gate took both branches in the exported graph


def _gaussian_stream(prior, n, seed, classes=4, spacing=2.0):
    """Labels drawn from ``prior``; 1-D features N(spacing * class, 1); the exact posteriors under a uniform training
    prior (calibrated, as the correction assumes)."""
    gen = np.random.default_rng(seed)
    labels = gen.choice(classes, size=n, p=prior)
    x = spacing * labels + gen.standard_normal(n)
    log_lik = -0.5 * (x[:, None] - spacing * np.arange(classes)[None, :]) ** 2
    return torch.softmax(torch.tensor(log_lik), dim=1), torch.tensor(labels)


@pytest.mark.parametrize("name,spacing", [("ema", 2.0), ("window", 2.0), ("em", 2.0), ("counts", 4.0)])
def test_every_estimator_converges_to_a_known_prior_and_follows_a_change(name, spacing):
    """The soft estimators on overlapping classes (16% of the images closer to another class's mean); counts, which
    is biased by its hard decisions (see the next test), on well separated ones."""
    truth = np.array([0.6, 0.3, 0.1, 0.0])
    posteriors, _ = _gaussian_stream(truth, 4000, seed=0, spacing=spacing)
    estimator = make_estimator(name, [0.25] * 4, memory=1000, floor=1e-3)
    for start in range(0, 4000, 32):
        estimator.update(posteriors[start:start + 32])
    assert np.abs(estimator.prior.numpy() - truth).sum() / 2 < 0.05  # total variation
    assert estimator.seen == 4000
    changed = np.array([0.05, 0.05, 0.3, 0.6])
    posteriors, _ = _gaussian_stream(changed, 4000, seed=1, spacing=spacing)
    for start in range(0, 4000, 32):
        estimator.update(posteriors[start:start + 32])
    assert np.abs(estimator.prior.numpy() - changed).sum() / 2 < 0.06  # ema lags most: EM steps contract slowly
    estimator.reset()
    assert torch.equal(estimator.prior, torch.full((4,), 0.25, dtype=torch.float64)) and estimator.seen == 0


def test_counts_can_send_a_confused_minority_class_to_the_floor_where_em_keeps_it():
    """Hard decisions are biased: fed online, a 10% class between a 30% one and an absent one loses its images to its
    neighbour until nothing is predicted as it, and at the floor it stays (classification EM is not consistent);
    soft EM keeps it near 10%. What counts buys instead on real networks: benchmarks/class_skew.py."""
    posteriors, _ = _gaussian_stream(np.array([0.6, 0.3, 0.1, 0.0]), 4000, seed=0)
    counts = make_estimator("counts", [0.25] * 4, memory=1000, floor=1e-3)
    em = make_estimator("em", [0.25] * 4, memory=1000, floor=1e-3)
    for start in range(0, 4000, 32):
        counts.update(posteriors[start:start + 32])
        em.update(posteriors[start:start + 32])
    assert float(counts.prior[2]) == 0.0 and 0.07 < float(em.prior[2]) < 0.13


def test_em_finds_the_maximum_likelihood_prior_of_its_window():
    """On a window it holds whole, EM's estimate is the fixed point pi = mean_x corrected(x; pi), and its
    likelihood sum_x log sum_i pi_i / P(i) * P(i|x) beats the uniform prior's and the label frequencies' (the MLE)."""
    posteriors, labels = _gaussian_stream(np.array([0.5, 0.3, 0.2, 0.0]), 800, seed=2)
    estimator = make_estimator("em", [0.25] * 4, memory=800, floor=0.0)
    estimator.update(posteriors)
    pi = estimator.prior
    assert torch.allclose(bayes_correct(posteriors, torch.full((4,), 0.25), pi).mean(0), pi, atol=1e-5)

    def log_lik(prior):
        return float(torch.log((posteriors * torch.as_tensor(prior, dtype=torch.float64) / 0.25).sum(1)).sum())

    frequencies = torch.bincount(labels, minlength=4).double() / len(labels)
    assert log_lik(pi) >= log_lik([0.25] * 4) and log_lik(pi) >= log_lik(frequencies) - 1e-6


def test_an_unknown_estimator_is_a_one_line_error_naming_the_known_ones():
    assert set(PRIOR_ESTIMATORS.names()) == {"ema", "window", "em", "counts"}
    with pytest.raises(LegrError, match="unknown prior estimator 'emm'.*did you mean em"):
        make_estimator("emm", [0.5, 0.5])
    with pytest.raises(LegrError, match=r"shape \(N, 2\)"):
        make_estimator("ema", [0.5, 0.5]).update(torch.ones(3, 4))


def test_ema_is_a_running_mean_until_its_memory_is_full():
    estimator = make_estimator("ema", [0.5, 0.5], memory=100, floor=0.0)
    estimator.update(torch.tensor([[0.5, 0.5]] * 10))  # corrected with the training prior: themselves
    assert torch.allclose(estimator.prior, torch.tensor([0.5, 0.5], dtype=torch.float64))
    estimator.update(torch.tensor([[1.0, 0.0]] * 10))
    assert torch.allclose(estimator.prior, torch.tensor([0.75, 0.25], dtype=torch.float64))  # mean of 20 images
    before = estimator.prior.clone()
    estimator.update(torch.tensor([[0.0, 1.0]] * 100))  # now full: the old estimate decays by (1 - 1/100)^n
    keep = (1 - 1 / 100) ** 100
    assert math.isclose(float(estimator.prior[0]), keep * float(before[0]), rel_tol=1e-9)


def test_calibration_recovers_a_known_temperature_and_class_bias():
    """Labels drawn from softmax(z / 2 + b): fitting on the logits z finds temperature 2 and bias b (mean zero)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20000, 4, generator=gen) * 4
    b = torch.tensor([0.6, -0.2, 0.1, -0.5])
    labels = torch.multinomial(torch.softmax(z / 2 + b, dim=1), 1, generator=gen).flatten()
    temperature, bias = fit_calibration(z, labels)
    assert temperature == pytest.approx(2.0, rel=0.05)
    assert torch.allclose(bias, b - b.mean(), atol=0.06)
    layer = ProbabilityLayer([0.25] * 4, temperature=temperature, bias=bias)
    assert torch.allclose(layer(z[:5]), torch.softmax(z[:5] / temperature + bias, dim=1), atol=1e-6)  # identity prior
    t_only, zero = fit_calibration(z, labels, bias=False)
    assert not zero.any() and t_only > 1.5


def test_an_extra_onnx_input_may_not_take_the_images_name(tmp_path):
    from legr.engine.export import export_onnx
    from legr.engine.prior import WithProbabilityLayer

    net = WithProbabilityLayer(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), ProbabilityLayer([1 / 3] * 3))
    with pytest.raises(LegrError, match="extra input may not be named 'input'"):
        export_onnx(net, (3, 2, 2), tmp_path / "x.onnx", extra_inputs={"input": torch.full((3,), 1 / 3)})
    assert not (tmp_path / "x.onnx").exists()
