"""Issue #30: `prune`, `masked_copy`, `apply_masks_` and `load_pruned` check a keep vector (or a plan) against the
analysis before touching anything: a hand-made vector is pruned exactly (== masked) or refused with one line naming
the group, the layer and the reason; never a silently different network, never a failure at the first forward."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import RandomNet, randomize_all
from torch import nn

from legr.engine.artifacts import load_pruned
from legr.engine.plan import Plan
from legr.engine.surgery import apply_masks_, masked_copy, prune
from legr.errors import LegrError, UnsupportedModelError
from legr.graph import analyze


class _Blocked(nn.Module):
    """conv a -> <case> -> conv b -> pool -> fc: each case makes group 'a' unprunable for a different op."""

    MIDDLE = {"sigmoid-bn": lambda: nn.Sequential(nn.Sigmoid(), nn.BatchNorm2d(8, affine=False)),
              "relu-layernorm-width": lambda: nn.Sequential(nn.ReLU(), nn.LayerNorm(16)),
              "permute-layernorm": lambda: nn.LayerNorm(8), "bias-only-add": nn.Identity}

    def __init__(self, case: str):
        super().__init__()
        self.case = case
        self.a, self.mid, self.b = nn.Conv2d(3, 8, 3, padding=1), self.MIDDLE[case](), nn.Conv2d(8, 8, 3, padding=1)
        self.register_buffer("shift", torch.randn(1, 8, 1, 1))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        y = self.a(x)
        if self.case == "permute-layernorm":
            y = self.mid(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        elif self.case == "bias-only-add":
            y = y + self.shift
        else:
            y = self.mid(y)
        return self.fc(F.adaptive_avg_pool2d(self.b(y), 1).flatten(1))


REASONS = {
    "sigmoid-bn": "feeds module 'b' (Conv2d) through module 'mid.1' (BatchNorm2d) without affine parameters, after "
                  "module 'mid.0' (Sigmoid), which maps 0 to a non-zero constant that the layer reads beside zero "
                  "padding",
    "relu-layernorm-width": "feeds a layer through module 'mid.1' (LayerNorm) over a non-channel axis with a bias, "
                            "which maps 0 to a non-zero value",
    "permute-layernorm": "normalized together over the channel axis by the layer norm module 'mid' (LayerNorm)",
    "bias-only-add": "combined with the per-channel tensor 'shift' (not pruned with the channels) at op 'add' at node "
                     "'add' in the model's own forward (_Blocked)",
}


def _blocked(case: str):
    model = randomize_all(_Blocked(case), 0).double().eval()
    graph = analyze(model, (3, 16, 16))
    keep = np.ones(graph.num_classes)
    keep[graph.group_by_name["a"].classes[1::2]] = 0.0  # a hand-made vector: every other channel of 'a' removed
    return model, graph, keep


@pytest.mark.parametrize("case", list(REASONS))
def test_a_group_the_analysis_fixed_is_refused_at_prune_time(case, tmp_path):
    """The two historical repros (pruned != masked by 0.066 and 0.012) and the two that failed at the first forward
    with a RuntimeError: refused by every entry point, naming the group, the layer and the op that blocks it."""
    model, graph, keep = _blocked(case)
    group = graph.group_by_name["a"]
    assert not group.prunable and group.reason == REASONS[case] and graph.group_by_name["b"].prunable
    message = f"keep vector removes channel 1 of group 'a' (layer 'a'), which cannot be pruned: {REASONS[case]}"
    for apply in (prune, masked_copy):
        with pytest.raises(LegrError) as info:
            apply(graph, keep)
        assert str(info.value) == message
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LegrError, match="cannot be pruned"):
        apply_masks_(model, graph, keep)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was zeroed
    # a plan file is input too
    Plan({"a": [0, 2, 4, 6]}, source={"input_size": [3, 16, 16]}).save(tmp_path / "plan.json")
    with pytest.raises(LegrError) as info:
        load_pruned(tmp_path, model)
    assert str(info.value) == message.replace("keep vector", "plan")


def test_the_full_network_and_the_other_groups_still_prune():
    model, graph, _ = _blocked("sigmoid-bn")
    keep = np.ones(graph.num_classes)
    keep[graph.group_by_name["b"].classes[:3]] = 0.0
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(prune(graph, keep)(x), masked_copy(graph, keep)(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("keep,message", [
    (lambda n: np.ones(n - 1), r"keep vector has shape \(\d+,\); expected \(\d+,\): one 0/1 entry per channel class"),
    (lambda n: np.ones((1, n)), r"keep vector has shape \(1, \d+\)"),
    (lambda n: np.array(["1"] * n), "keep vector has dtype <U1; expected 0/1 numbers"),
    (lambda n: np.ones(n) * (1 + 1j), "keep vector has dtype complex128"),
    (lambda n: np.r_[np.ones(n - 1), 0.5], r"keep vector holds 0.5 at index \d+; expected only 0 \(remove\) and 1"),
    (lambda n: np.r_[np.ones(n - 1), np.nan], r"keep vector holds nan at index"),
    (lambda n: [1] * (n - 1) + [[1]], "keep vector is not an array of 0/1 values"),
], ids=["short", "2-d", "strings", "complex", "half", "nan", "ragged"])
def test_malformed_keep_vectors_are_one_line(keep, message):
    _, graph, _ = _blocked("sigmoid-bn")
    with pytest.raises(LegrError, match=message) as info:
        prune(graph, keep(graph.num_classes))
    assert "\n" not in str(info.value)


def test_bool_and_integer_vectors_are_accepted():
    _, graph, _ = _blocked("sigmoid-bn")
    keep = np.ones(graph.num_classes, dtype=bool)
    keep[graph.group_by_name["b"].classes[:2]] = False
    assert prune(graph, keep).b.out_channels == 6 and prune(graph, keep.astype(int)).b.out_channels == 6


class _Split(nn.Module):
    """conv a (6) -> chunk into 3 + 3 -> relu on the first piece -> cat -> conv b -> pool -> fc."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 4, 3, padding=1), nn.Linear(4, 10)

    def forward(self, x):
        p, q = self.a(x).chunk(2, 1)
        return self.fc(F.adaptive_avg_pool2d(self.b(torch.cat([F.relu(p), q], 1)), 1).flatten(1))


@pytest.mark.parametrize("removed,message", [
    ({"a": [3, 4, 5]}, "keep vector keeps no channel of the piece taken by method '.chunk()' at node 'chunk' in the "
                       "model's own forward (_Split) (group 'a', layer 'a'): at least one channel must stay"),
    ({"b": [0, 1, 2, 3]}, None),  # 'b' feeds the classifier: fixed, not emptied
    ({"a": range(6)}, "keep vector keeps no channel of layer 'a' (group 'a'): at least one channel must stay"),
    ({"input": [0]}, "keep vector removes channel class 0, which is in no channel group (network input): it cannot "
                     "be pruned"),
])
def test_a_layer_or_a_split_piece_is_never_emptied(removed, message):
    """A conv with zero filters cannot run, and a conv reading zero channels returns zero channels: the floors of
    every solver hold for each layer and each split piece, and so does the check."""
    graph = analyze(_Split(), (3, 8, 8))
    keep = np.ones(graph.num_classes)
    for name, positions in removed.items():
        classes = np.arange(3) if name == "input" else graph.group_by_name[name].classes
        keep[classes[list(positions)]] = 0.0
    if message is None:
        assert graph.group_by_name["b"].prunable
        message = "keep vector keeps no channel of layer 'b' (group 'b'): at least one channel must stay"
    with pytest.raises(LegrError) as info:
        prune(graph, keep)
    assert str(info.value) == message


def test_a_plan_that_empties_a_group_names_the_layer():
    graph = analyze(_Split(), (3, 8, 8))
    with pytest.raises(LegrError, match=r"^plan keeps no channel of layer 'b' \(group 'b'\)"):
        graph.keep_vector({"b": []})


# --- property: hand-made keep vectors on random compositions ------------------------------------------------------
def _hand_made(graph, rng: np.random.Generator) -> np.ndarray:
    """A keep vector as a user might build it, not through `keep_vector` nor any solver: any class removed at
    random; or whole groups, fixed ones too, cut to a random subset (empty included); or only prunable groups."""
    mode = rng.integers(3)
    if mode == 0:
        return (rng.random(graph.num_classes) > rng.uniform(0.02, 0.3)).astype(float)
    keep = np.ones(graph.num_classes)
    for group in graph.groups if mode == 1 else graph.prunable_groups():
        if rng.random() < (0.15 if mode == 1 and not group.prunable else 0.7):
            keep[group.classes[rng.permutation(group.size)[: rng.integers(group.size + 1)]]] = 0.0
    return keep


def _breaks_a_rule(graph, keep: np.ndarray) -> bool:
    """The rules, restated from the analysis' own records: a removed class outside every prunable group, or a
    producer layer or a split piece left without channels."""
    prunable = np.zeros(graph.num_classes, dtype=bool)
    for group in graph.prunable_groups():
        prunable[group.classes] = True
    dims = [graph.classes(layer.producer_ids) for layer in graph.layers.values() if layer.producer_ids is not None]
    return bool(((keep == 0) & ~prunable).any()) or any(len(c) and not keep[c].any() for c in dims + graph.segments)


def _property(models: int, vectors: int) -> dict[str, int]:
    figures = {"models": 0, "pairs": 0, "refused": 0, "equal": 0}
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for seed in range(models):
        rng = np.random.default_rng(1000 + seed)
        model = randomize_all(RandomNet(rng, steps=5, size=8, kinds=RandomNet.ALL_KINDS), seed).double().eval()
        try:
            graph = analyze(model, (3, 8, 8))
        except UnsupportedModelError:
            continue
        figures["models"] += 1
        for _ in range(vectors):
            keep = _hand_made(graph, rng)
            figures["pairs"] += 1
            try:
                pruned = prune(graph, keep).eval()
            except LegrError as exc:  # refused: only when a rule is broken, in one line, by masking too
                assert _breaks_a_rule(graph, keep) and "\n" not in str(exc), (model.kinds, str(exc))
                with pytest.raises(LegrError):
                    masked_copy(graph, keep)
                figures["refused"] += 1
                continue
            assert not _breaks_a_rule(graph, keep), model.kinds
            with torch.no_grad():  # any exception here is a forward-time failure: the test fails
                a, b = pruned(x), masked_copy(graph, keep).eval()(x)
            assert (a - b).abs().max().item() <= 1e-9 * max(1.0, b.abs().max().item()), model.kinds
            figures["equal"] += 1
    return figures


def test_hand_made_keep_vectors_are_pruned_exactly_or_refused():
    """>= 500 (random model, hand-made keep vector) pairs: every one pruned == masked (float64, 1e-9) or refused by
    prune with a LegrError; no forward-time exception, no silent difference, and both outcomes are common."""
    start = time.perf_counter()
    figures = _property(models=100, vectors=6)
    print(figures, f"{time.perf_counter() - start:.1f} s")
    assert figures["models"] >= 90 and figures["pairs"] >= 500
    assert figures["refused"] + figures["equal"] == figures["pairs"]
    assert figures["equal"] >= 0.2 * figures["pairs"] and figures["refused"] >= 0.2 * figures["pairs"]
