"""A family adapting to the classes it sees (legr.pipeline.adapt, legr.pipeline.streams, `legr stream`): streams are
drawn as specified, member selection never picks a network that misses the target on its validation estimate, the
replay's arms are the independent computations, and a finished run folder is read without being written to."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from legr.engine.prior import ProbabilityLayer
from legr.errors import LegrError
from legr.pipeline.adapt import (SOURCE, AdaptiveRuntime, AdaptSettings, MemberSelector, NetworkProfile,
                                 family_profiles, open_family, progress_rows, replay)
from legr.pipeline.config import parse_config
from legr.pipeline.steps import Pipeline
from legr.pipeline.streams import Segment, build_stream, skewed_prior
from legr.training import predict_logits

CONFIG = """
model: {name: digits_cnn, weights: null}
data: {name: digits, val_size: 300}
base_training: {epochs: 4, lr: 0.05, batch_size: 64, augment: false}
allocator: uniform
criterion: l1
bn_batches: 3
targets: [0.3, 0.6]
finetune: {epochs: 1, batch_size: 64, augment: false}
eval: {latency: false}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("family")
    Pipeline(parse_config(yaml.safe_load(CONFIG)), out, progress=False, log=lambda m: None).run()
    return out


def test_skewed_prior_and_errors():
    assert skewed_prior(4, [1, 3], 0.9) == pytest.approx((0.05, 0.45, 0.05, 0.45))
    assert skewed_prior(4, [], 0.9) == (0.25,) * 4
    assert skewed_prior(3, [0], 1.0) == (1.0, 0.0, 0.0)
    with pytest.raises(LegrError, match=r"dominant classes \[5\]"):
        skewed_prior(4, [5], 0.9)
    with pytest.raises(LegrError, match="share"):
        skewed_prior(4, [1], 0.0)


def test_a_stream_has_its_segments_composition_and_never_repeats_an_image():
    labels = torch.arange(10).repeat_interleave(300)[torch.randperm(3000, generator=torch.Generator().manual_seed(0))]
    segments = [Segment(skewed_prior(10, [2, 7], 0.9), 400), Segment(skewed_prior(10, [4, 5], 0.9), 400)]
    stream = build_stream(labels, segments, seed=3)
    assert len(stream) == 800 and stream.bounds() == [(0, 400), (400, 800)]
    assert len(set(stream.indices.tolist())) == 800  # without replacement across the whole stream
    assert torch.equal(stream.labels, labels[stream.indices])
    first = torch.bincount(stream.labels[:400], minlength=10)
    assert first[2] == first[7] == 180 and all(first[c] == 5 for c in range(10) if c not in (2, 7))
    assert torch.allclose(stream.priors[1], torch.bincount(stream.labels[400:], minlength=10).double() / 400)
    assert torch.equal(build_stream(labels, segments, seed=3).indices, stream.indices)  # a fixed seed, the same draw
    with pytest.raises(LegrError, match="class 2 needs 400 images, the pool has 300"):
        build_stream(labels, [Segment(skewed_prior(10, [2], 1.0), 400)])
    again = build_stream(labels, [Segment(skewed_prior(10, [2], 1.0), 400)], replace=True)
    assert (again.labels == 2).all()


def _profiles(seed=0, classes=5, n=400):
    """Networks of growing MACs whose validation logits are right more often the larger they are, each with its own
    per-class strengths (so that which one meets a target depends on the prior)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(n // classes)
    profiles = []
    for k, (macs, skill) in enumerate([(10.0, 1.0), (20.0, 2.0), (40.0, 3.0), (100.0, 5.0)]):
        strength = skill * (0.3 + torch.rand(classes, generator=gen))
        logits = torch.randn(len(labels), classes, generator=gen)
        logits[torch.arange(len(labels)), labels] += strength[labels]
        profiles.append(NetworkProfile(f"net{k}", macs, logits, labels))
    return profiles


def test_class_accuracy_and_expected_accuracy_are_the_validation_counts():
    p = _profiles()[1]
    pred = p.val_logits.argmax(1)
    for c in range(5):
        assert p.class_accuracy()[c] == pytest.approx(float((pred[p.val_labels == c] == c).double().mean()))
    prior = torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    layer = ProbabilityLayer([0.2] * 5, floor=0.0)
    corrected = layer(p.val_logits, prior.float()).argmax(1)
    by_hand = 0.5 * float((corrected[p.val_labels == 0] == 0).double().mean()) + \
        0.5 * float((corrected[p.val_labels == 1] == 1).double().mean())
    assert p.expected_accuracy(layer, prior) == pytest.approx(by_hand)
    assert p.top1() == pytest.approx(float((pred == p.val_labels).double().mean()))


def test_calibration_modes_of_the_layer():
    assert (AdaptSettings().calibrate, AdaptSettings().estimate_calibrate) == ("temperature", "temperature")
    profile = _profiles()[1]
    train = torch.full((5,), 0.2)
    none = AdaptSettings(calibrate="none", estimate_calibrate="none").layer(train, profile)
    temperature = AdaptSettings(calibrate="temperature", estimate_calibrate="bias").layer(train, profile)
    bias = AdaptSettings(calibrate="bias", estimate_calibrate="temperature").layer(train, profile)
    assert none.temperature == none.estimate_temperature == 1.0 and not none.bias.any() and not none.estimate_bias.any()
    assert temperature.temperature == pytest.approx(profile.calibration("temperature")[0])
    assert not temperature.bias.any()  # the estimator's posterior with class biases, the decisions without
    assert torch.equal(temperature.estimate_bias, profile.calibration("bias")[1]) and temperature.estimate_bias.any()
    assert torch.equal(bias.bias, profile.calibration("bias")[1]) and bias.bias.any() and not bias.estimate_bias.any()
    logits = profile.val_logits
    assert torch.allclose(temperature.estimation_posterior(logits), torch.softmax(
        logits / temperature.estimate_temperature + temperature.estimate_bias, dim=1), atol=1e-6)
    with torch.no_grad():  # a temperature alone never changes a decision at the training prior; biases may
        assert torch.equal(temperature(profile.val_logits).argmax(1), profile.val_logits.argmax(1))
        out = bias(profile.val_logits)
    assert torch.allclose(out, torch.softmax(profile.val_logits / bias.temperature + bias.bias, dim=1), atol=1e-6)
    with pytest.raises(LegrError, match="calibrate"):
        AdaptSettings(calibrate="yes")


def test_member_selection_never_picks_a_member_that_misses_the_target_on_its_validation_estimate():
    profiles = _profiles()
    layer = ProbabilityLayer([0.2] * 5, floor=1e-3)
    gen = np.random.default_rng(0)
    switched = set()
    for target in (0.5, 0.7, 0.8, 0.9):
        selector = MemberSelector(profiles, layer, target, hysteresis=0.01)
        for _ in range(60):
            prior = torch.tensor(gen.dirichlet(np.full(5, 0.3)), dtype=torch.float64)
            chosen = selector.select(prior)
            switched.add(chosen.name)
            expected = {p.name: p.expected_accuracy(layer, prior) for p in profiles}
            if any(e >= target for e in expected.values()):
                assert expected[chosen.name] >= target
                # and it is the smallest meeting it, or a larger one held by hysteresis
                smallest = min((p for p in profiles if expected[p.name] >= target), key=lambda p: p.macs)
                assert chosen.macs >= smallest.macs
            else:
                assert expected[chosen.name] == max(expected.values())
    assert len(switched) >= 3  # the priors really moved the choice


def test_a_smaller_member_is_only_switched_to_when_it_clears_the_hysteresis():
    labels = torch.arange(2).repeat(100)
    right = torch.nn.functional.one_hot(labels, 2).float() * 10

    def profile(name, macs, wrong):  # wrong: how many validation images of each class it misclassifies
        logits = right.clone()
        for c in range(2):
            idx = (labels == c).nonzero().flatten()[:wrong]
            logits[idx] = logits[idx].flip(1)
        return NetworkProfile(name, macs, logits, labels)

    small, large = profile("small", 1.0, 9), profile("large", 2.0, 0)  # 91% and 100% on validation
    layer = ProbabilityLayer([0.5, 0.5], omega=0.0)  # the layer off: expected accuracy is the validation top-1
    uniform = torch.tensor([0.5, 0.5], dtype=torch.float64)
    assert MemberSelector([small, large], layer, 0.90, hysteresis=0.005).select(uniform).name == "small"
    assert MemberSelector([small, large], layer, 0.90, hysteresis=0.02).select(uniform).name == "large"
    selector = MemberSelector([small, large], layer, 0.90, hysteresis=0.005)
    selector.select(uniform)
    selector.target = 0.95  # the small one now misses: up at once, no margin asked
    assert selector.select(uniform).name == "large"


def test_open_family_reads_a_finished_run_without_writing_and_its_networks_are_the_evaluated_ones(run):
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    stamps = {p: p.stat().st_mtime_ns for p in before}
    family = open_family(run, log=lambda m: None)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert {p: p.stat().st_mtime_ns for p in before} == stamps
    rows = {r["name"]: r for r in json.loads((run / "results.json").read_text())}
    assert list(family.networks) == [SOURCE, "uniform-30", "uniform-60"]
    d = family.splits
    for name, net in family.networks.items():
        logits = predict_logits(net, *d.test[:1], d.mean, d.std)
        top1 = float((logits.argmax(1) == d.test[1]).double().mean())
        assert top1 == pytest.approx(rows["baseline" if name == SOURCE else name]["top1"], abs=1e-9)
        assert family.macs[name] == pytest.approx(rows["baseline" if name == SOURCE else name]["macs"])
    counts = torch.bincount(d.train[1], minlength=10).double()
    assert torch.allclose(family.train_prior, counts / counts.sum())


def test_open_family_refuses_a_run_whose_members_are_not_fine_tuned(run, tmp_path):
    import shutil

    copy = tmp_path / "unfinished"
    shutil.copytree(run, copy)
    (copy / "members" / "uniform-60" / "finetuned.json").unlink()
    with pytest.raises(LegrError, match="uniform-60 are not fine-tuned yet"):
        open_family(copy, log=lambda m: None)
    with pytest.raises(LegrError, match="not a run folder"):
        open_family(tmp_path, log=lambda m: None)


def test_replay_arms_are_the_independent_computations(run):
    family = open_family(run, log=lambda m: None)
    d = family.splits
    test_x, test_y = d.test
    logits = {n: predict_logits(net, test_x, d.mean, d.std) for n, net in family.networks.items()}
    stream = build_stream(test_y, [Segment(skewed_prior(10, [3, 8], 0.9), 60),
                                   Segment(skewed_prior(10, [1, 6], 0.9), 60)], seed=0)
    forward = lambda name, positions: logits[name][positions]  # noqa: E731
    settings = AdaptSettings(estimator="em", memory=40, chunk=8, floor=0.01)
    plain = replay(stream, forward, train_prior=family.train_prior, settings=settings, prior="none", network=SOURCE)
    assert np.array_equal(plain.correct, (logits[SOURCE][stream.indices].argmax(1) == stream.labels).numpy())
    oracle = replay(stream, forward, train_prior=family.train_prior, settings=settings, prior="oracle",
                    network="uniform-30")
    layer = settings.layer(family.train_prior)
    for (lo, hi), prior in zip(stream.bounds(), stream.priors):
        out = layer(logits["uniform-30"][stream.indices[lo:hi]], prior.float())
        assert np.array_equal(oracle.correct[lo:hi], (out.argmax(1) == stream.labels[lo:hi]).numpy())
    assert oracle.batch_ends[-1] == 120 and 60 in oracle.batch_ends  # batches end at the segment boundary
    # estimated: each batch corrected with the estimate the batches before it left (the first: the identity)
    estimated = replay(stream, forward, train_prior=family.train_prior, settings=settings, network="uniform-30")
    first = logits["uniform-30"][stream.indices[:8]].argmax(1) == stream.labels[:8]
    assert np.array_equal(estimated.correct[:8], first.numpy())
    assert len(estimated.estimates) == len(estimated.batch_ends) == 16
    # with selection: every batch ran the network the selector picked after the batch before
    profiles = family_profiles(family)
    selector = MemberSelector(profiles, layer, target=0.97, hysteresis=0.0)
    chosen = replay(stream, forward, train_prior=family.train_prior, settings=settings, selector=selector)
    check = MemberSelector(profiles, layer, target=0.97, hysteresis=0.0)
    names = [check.profiles[check.current].name] + [check.select(torch.as_tensor(e)).name
                                                     for e in chosen.estimates[:-1]]
    starts = [0] + chosen.batch_ends[:-1]
    assert [chosen.network[s] for s in starts] == names
    assert chosen.mean_macs() == pytest.approx(np.mean([family.macs[n] for n in chosen.network]))
    rows = progress_rows(chosen, 50, family.macs[SOURCE])
    assert [r["images"] for r in rows] == [50, 100, 120]
    assert rows[-1]["top1_so_far"] == pytest.approx(chosen.accuracy())


def test_the_runtime_forgets_the_stream_when_reset():
    profiles = _profiles()
    logits = {p.name: p.val_logits for p in profiles}
    forward = lambda name, positions: logits[name][positions]  # noqa: E731
    settings = AdaptSettings(estimator="em", memory=100, floor=0.01)
    layers = settings.layers(torch.full((5,), 0.2), profiles)
    selector = MemberSelector(profiles, layers, target=0.6)
    runtime = AdaptiveRuntime(forward, train_prior=torch.full((5,), 0.2), settings=settings, selector=selector)
    first = [runtime.step(torch.arange(i, i + 20)) for i in range(0, 100, 20)]
    skewed = profiles[0].val_labels < 2
    for i in range(0, 200, 20):  # a stream of classes 0 and 1 moves the estimate (and the network)
        runtime.step(skewed.nonzero().flatten()[i:i + 20])
    assert runtime.prior[:2].sum() > 0.8
    runtime.reset()
    assert torch.equal(runtime.prior, torch.full((5,), 0.2, dtype=torch.float64))
    again = [runtime.step(torch.arange(i, i + 20)) for i in range(0, 100, 20)]
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(first, again))
    with pytest.raises(LegrError, match="needs the environment prior"):
        AdaptiveRuntime(forward, train_prior=torch.full((5,), 0.2), settings=settings, prior="oracle",
                        network="net0").step(torch.arange(5))


def _legr(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "legr.cli", *args], capture_output=True, text=True, env=env)


def test_legr_stream_prints_accuracy_network_and_macs_over_time(run):
    proc = _legr("stream", str(run), "--dominant", "3,8", "--then", "1,6", "--images", "120", "--every", "40",
                 "--chunk", "8", "--memory", "40", "--estimator", "window")
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "120 images, dominant [3, 8] then [1, 6] at 90%: top-1" in out
    assert "the source network alone, without the layer" in out
    assert all(f"│ {n} " in out for n in (40, 80, 120))
    for args, message in [(["--dominant", "a,b"], "--dominant takes class indices"),
                          (["--dominant", "12"], r"dominant classes \[12\]"),
                          (["--estimator", "emm"], "unknown prior estimator 'emm'"),
                          (["--omega", "2"], "omega"), (["--calibrate", "yes"], "'calibrate'.*temperature")]:
        proc = _legr("stream", str(run), "--images", "40", *args)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert __import__("re").search(message, proc.stderr), proc.stderr
