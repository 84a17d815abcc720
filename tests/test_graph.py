"""The structural engine is never silently wrong: physically pruned == masked original, or a clear refusal."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import (RandomNet, assert_pruned_matches_masked, check_random_plans, equivalence_setup, random_keep,
                     randomize_all)
from torch import nn

from legr.engine.cost import CostModel, counted_macs
from legr.engine.surgery import masked_copy, prune
from legr.errors import UnsupportedModelError
from legr.graph import analyze
from legr.models import build_model

# (model name, input size): every CIFAR model of the zoo and the torchvision models the issue names
EQUIVALENCE_MODELS = [
    ("cifar_resnet20", 32), ("cifar_resnet56", 32), ("cifar_resnet20_b", 32), ("cifar_resnet56_b", 32),
    ("cifar_vgg16_bn", 32), ("cifar_mobilenet_v2", 32),
    ("resnet18", 64), ("resnet50", 64), ("mobilenet_v2", 64), ("mobilenet_v3_small", 64), ("efficientnet_b0", 64),
    ("densenet121", 64), ("googlenet", 64), ("regnet_x_400mf", 64), ("vgg11_bn", 64),
]


def assert_equivalent(model: nn.Module, size: int, plans: int = 2, seed: int = 0) -> None:
    """For random plans, the pruned model matches the masked original (float64, eval mode) and is smaller."""
    model, graph, x, original = equivalence_setup(model, size, seed)
    rng = np.random.default_rng(seed)
    for _ in range(plans):
        keep = random_keep(graph, rng)
        pruned, masked = prune(graph, keep).eval(), masked_copy(graph, keep).eval()
        with torch.no_grad():
            a, b = pruned(x), masked(x)
        assert_pruned_matches_masked(a, b, original)
        assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    # the pruned model trains: forward + backward reach every parameter
    pruned.train()
    pruned(x).sum().backward()
    assert all(p.grad is not None for p in pruned.parameters())


@pytest.mark.parametrize("name,size", EQUIVALENCE_MODELS, ids=[m for m, _ in EQUIVALENCE_MODELS])
def test_pruned_equals_masked(name, size):
    torch.manual_seed(0)
    assert_equivalent(build_model(name, num_classes=10), size)


def test_option_a_resnet_is_one_residual_chain():
    graph = analyze(build_model("cifar_resnet56"), (3, 32, 32))
    chain = graph.group_by_name["conv1"]
    # the stem + the 27 block conv2 layers share one group spanning the 64 stage-3 channels
    assert chain.size == 64 and len(chain.producers) == 28 and chain.prunable
    # stage-1 channel j is stage-3 channel j + 16 + 8 (two zero-padded shortcuts with offsets 8 and 16)
    pos = graph.producer_positions("conv1")
    assert pos.tolist() == list(range(24, 40))
    assert graph.producer_positions("layer2.0.conv2").tolist() == list(range(16, 48))
    assert graph.producer_positions("layer3.0.conv2").tolist() == list(range(64))
    # 27 block-internal groups + the chain + the classifier (fixed: network output)
    assert len(graph.groups) == 29 and not graph.group_by_name["linear"].prunable


def test_pruned_option_a_resnet_has_consistent_classifier():
    """Torch-Pruning 1.6.1 leaves the final Linear at 64 inputs here; we must shrink it with the chain."""
    model = build_model("cifar_resnet20").eval()
    graph = analyze(model, (3, 32, 32))
    keep = np.ones(graph.num_classes)
    chain = graph.group_by_name["conv1"]
    keep[chain.classes[::2]] = 0.0  # drop every other channel of the chain
    pruned = prune(graph, keep)
    assert pruned.linear.in_features == 32
    assert pruned.conv1.out_channels == 8 and pruned.get_submodule("layer3.0.conv2").out_channels == 32
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 10)


class _ChannelsLastConv(nn.Module):
    """A convolution reading a channels-last tensor: its input channels are the image's width."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.conv2 = nn.Conv2d(30, 4, 1)

    def forward(self, x):
        return self.conv2(self.conv(x).permute(0, 3, 1, 2))


class _Unknown(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return torch.cumsum(self.conv(x), 1)


def _pool_over_channels(pool: nn.Module) -> nn.Module:
    """A 1d pool on the flattened (N, C) features acts on the channel axis (its 'length')."""
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), pool, nn.Linear(4, 10))


@pytest.mark.parametrize(
    "model,message",
    [
        (lambda: nn.Sequential(nn.Conv2d(3, 8, 3), nn.Unflatten(1, (2, 4)), nn.Flatten(1, 2), nn.Conv2d(8, 4, 1)),
         "mixes the channel dimension"),
        (_ChannelsLastConv, "its input channel axis is not the tracked channel axis"),
        (_Unknown, "cumsum"),
        (lambda: _pool_over_channels(nn.MaxPool1d(2)), "pools or resizes along the channel axis"),
        (lambda: _pool_over_channels(nn.AdaptiveAvgPool1d(4)), "pools or resizes along the channel axis"),
    ],
    ids=["split-channels", "channels-last-conv", "unknown-op", "maxpool1d-over-channels", "adaptive-pool-over-channels"],
)
def test_unsupported_ops_are_refused_before_anything_changes(model, message):
    model = model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match=message) as info:
        analyze(model, (3, 32, 32))
    assert "\n" not in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("padding", [1, 0])
def test_sigmoid_feeding_a_layer_is_not_pruned_unless_its_constant_folds(padding):
    """A removed channel after a sigmoid carries 0.5, not 0: the channels stay when the next convolution reads them
    beside zero padding; without padding the constant is folded into its bias (`legr.graph.compensation`)."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 3, padding=padding)

        def forward(self, x):
            return F.adaptive_avg_pool2d(self.b(torch.sigmoid(self.a(x))), 1).flatten(1)

    graph = analyze(Net(), (3, 16, 16))
    if padding:
        assert not graph.group_by_name["a"].prunable and "non-zero constant" in graph.group_by_name["a"].reason
    else:
        assert graph.group_by_name["a"].prunable
        model, graph, x, original = equivalence_setup(Net(), 16)
        keep = graph.keep_vector({"a": [1, 3]})
        with torch.no_grad():
            assert_pruned_matches_masked(prune(graph, keep).eval()(x), masked_copy(graph, keep).eval()(x), original)


class _AddsUntracked(nn.Module):
    """conv a -> (+ a per-position buffer | + a one-channel map broadcast over channels) -> conv b -> pool -> fc."""

    def __init__(self, broadcast_channel: bool):
        super().__init__()
        self.broadcast_channel = broadcast_channel
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 12, 3, padding=1), nn.Conv2d(3, 1, 1)
        self.fc = nn.Linear(12, 3)
        self.register_buffer("pos", torch.randn(1, 1, 16, 16))

    def forward(self, x):
        y = self.a(x)
        y = y + self.c(x) if self.broadcast_channel else y + self.pos
        return self.fc(F.adaptive_avg_pool2d(self.b(F.relu(y)), 1).flatten(1))


@pytest.mark.parametrize("broadcast_channel", [False, True], ids=["buffer", "one-channel"])
def test_adding_a_broadcast_tensor_keeps_the_channels(broadcast_channel):
    """A removed channel plus a broadcast tensor is not zero downstream, so the channels before the add must stay."""
    torch.manual_seed(0)
    model = _AddsUntracked(broadcast_channel)
    graph = analyze(model, (3, 16, 16))
    assert not graph.group_by_name["a"].prunable and "non-zero" in graph.group_by_name["a"].reason
    assert_equivalent(model, 16, plans=3)


def test_tied_parameters_are_refused():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    with pytest.raises(UnsupportedModelError, match="'b.weight' is the same tensor as 'a.weight'"):
        analyze(Tied(), (4, 8, 8), strict=True)


class _TiedNet(nn.Module):
    """Two branches sharing one conv weight (timm's CoaT shares a position-encoding conv between two blocks)."""

    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 6, 1)
        self.b.weight = nn.Parameter(torch.randn(6, 6, 1, 1))
        self.c = nn.Conv2d(6, 6, 1)
        self.c.weight = self.b.weight
        self.d, self.fc = nn.Conv2d(6, 8, 3, padding=1), nn.Linear(8, 4)

    def forward(self, x):
        y = F.relu(self.a(F.relu(self.stem(x))))
        y = F.relu(self.b(y) + self.c(y * 0.5))
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.d(y)), 1).flatten(1))


def test_tied_parameters_keep_their_channels_and_stay_tied():
    """Not refused any more (issue 32): the channels of the modules sharing the tensor stay, named; the rest prunes
    == masked; the pruned network still shares the one tensor, and its parameter count is the cost model's."""
    torch.manual_seed(0)
    model, graph, x, original = equivalence_setup(_TiedNet(), 12)
    reason = "its parameter 'c.weight' is the same tensor as 'b.weight' (tied parameters are kept whole)"
    assert graph.group_by_name["a"].reason == reason and graph.group_by_name["d"].prunable
    keep = graph.keep_vector({"d": [0, 3, 4, 7], "stem": [1, 2, 5]})
    pruned = prune(graph, keep).eval()
    with torch.no_grad():
        assert_pruned_matches_masked(pruned(x), masked_copy(graph, keep).eval()(x), original)
    assert pruned.c.weight is pruned.b.weight
    assert CostModel(graph).params(keep) == sum(p.numel() for p in pruned.parameters())


# --- zero-safety: random compositions of the supported ops --------------------------------------------------------
@pytest.mark.parametrize("seed", range(60))
def test_random_compositions_pruned_equal_masked(seed):
    """Whatever the ops, a plan either prunes exactly what masking computes, or the channels are marked unprunable
    (or the op is refused with a one-line error): never a silently different model."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    check_random_plans(randomize_all(RandomNet(rng), seed).double().eval(), seed, rng)


def test_random_compositions_cover_the_ops():
    """The property test above is not vacuous: most nets are analysed and prune something."""
    analysed = pruning = 0
    for seed in range(60):
        model = RandomNet(np.random.default_rng(seed))
        try:
            graph = analyze(model, (3, 12, 12))
        except UnsupportedModelError:
            continue
        analysed += 1
        pruning += bool(graph.prunable_groups())
    assert analysed >= 55 and pruning >= 45


# --- channel barriers: an op without an exact rule freezes the groups it touches, the rest prunes (issue 32) -------
@pytest.mark.parametrize("seed", range(40))
def test_random_compositions_with_barriers_pruned_equal_masked(seed):
    """Random compositions with at least one op the engine has no exact rule for (an unknown op, an ECA Conv1d gate
    across the channels, a reshape splitting the channel axis, a module called twice, a flip), functional convs on
    a module's weight after F.pad and selective-kernel stacks: the op becomes a channel barrier naming itself, every channel it reads or
    writes is fixed, and random plans of the rest are pruned == masked (float64, 1e-9), with MACs equal to torch's
    count."""
    rng = np.random.default_rng(1000 + seed)
    torch.manual_seed(seed)
    model = RandomNet(rng, steps=5, kinds=RandomNet.BARRIER_KINDS)
    while "barrier" not in model.kinds:
        model = RandomNet(rng, steps=5, kinds=RandomNet.BARRIER_KINDS)
    model = randomize_all(model, seed).double().eval()
    # refused (in one line) only when the barriers leave nothing prunable
    graph = check_random_plans(model, seed, rng, refused="leaves nothing prunable")
    assert graph is None or len(graph.barriers) >= len(model.barriers), (model.kinds, model.barriers)


def test_barriers_leave_most_random_compositions_prunable():
    """The property test above is not vacuous: most nets with a barrier are analysed, and prune something."""
    analysed = every_kind = 0
    seen = set()
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        model = RandomNet(rng, steps=5, kinds=RandomNet.BARRIER_KINDS)
        while "barrier" not in model.kinds:
            model = RandomNet(rng, steps=5, kinds=RandomNet.BARRIER_KINDS)
        try:
            graph = analyze(model, (3, 12, 12))
        except UnsupportedModelError:
            continue
        analysed += 1
        seen.update(model.barriers)
        every_kind += bool(graph.barriers)
    assert analysed >= 30 and every_kind == analysed and seen == set(RandomNet.BARRIERS)


class _Barrier(nn.Module):
    """conv a -> relu -> conv b -> [barrier] -> conv c -> relu -> conv d -> pool -> fc: the barrier fixes b's
    filters (it reads them) and c's inputs (its output feeds c); a and c stay prunable."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.d, self.fc = nn.Conv2d(8, 6, 3, padding=1), nn.Linear(6, 3)

    def forward(self, x):
        y = self.b(F.relu(self.a(x)))
        if self.how == "unknown":
            y = torch.cumsum(y, 1)
        else:  # a global-context style block: the reshape [N, C, H, W] -> [N, C * H, W] then back
            n, c, h, w = y.shape
            y = y + torch.sigmoid(y.reshape(n, c * h, w)).reshape(n, c, h, w)
        y = self.d(F.relu(self.c(y)))
        return self.fc(F.adaptive_avg_pool2d(y, 1).flatten(1))


@pytest.mark.parametrize("how", ["unknown", "split-axis"])
def test_a_barrier_freezes_only_the_groups_it_touches(how):
    model = _Barrier(how)
    graph = analyze(model, (3, 16, 16))
    groups = graph.group_by_name
    assert groups["a"].prunable and groups["c"].prunable and groups["d"].prunable
    assert not groups["b"].prunable and groups["b"].reason.startswith("channel barrier at ")
    op = "op 'cumsum' at node 'cumsum'" if how == "unknown" else "method '.reshape()' at node 'reshape_1'"
    assert op in groups["b"].reason and graph.barriers[0].op.startswith(op)
    cov = graph.coverage()  # every conv reads or writes a prunable group (b reads a's filters, c writes its own)
    assert cov["prunable_share"] == 1.0 and cov["barriers"][0]["op"].startswith(op)
    assert_equivalent(model, 16, plans=3)
    with pytest.raises(UnsupportedModelError, match=re.escape(f"cannot prune through {op}")):
        analyze(model, (3, 16, 16), strict=True)


def test_a_module_called_twice_is_a_barrier_and_never_sliced():
    """The second call of a shared conv is refused by its rule; the barrier must also freeze the first call's
    filters and inputs, or slicing the shared weight would break the second call."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.shared = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
            self.c, self.fc = nn.Conv2d(8, 16, 1), nn.Linear(16, 3)

        def forward(self, x):
            y = self.shared(F.relu(self.shared(F.relu(self.a(x)))))
            return self.fc(F.adaptive_avg_pool2d(F.relu(self.c(F.relu(y))), 1).flatten(1))

    graph = analyze(Twice(), (3, 16, 16))
    groups = graph.group_by_name
    assert not groups["a"].prunable and not groups["shared"].prunable and groups["c"].prunable
    assert "called more than once" in groups["shared"].reason
    assert_equivalent(randomize_all(Twice(), 0), 16, plans=2)


class _SizedByAnother(nn.Module):
    """Lambda-layer style: ``B, C, H, W = x.shape``, attention through ops legr has no rule for, then the result
    reshaped to ``(B, C, H, W)``: C is read from x, whose channels the attention output does not hold. Pruning x's
    group would change C for a tensor whose width stays: x keeps its channels (found by a crash in timm's
    lambda_resnet26t)."""

    def __init__(self):
        super().__init__()
        self.a, self.qkv = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 24, 1)
        self.c, self.fc = nn.Conv2d(8, 16, 1), nn.Linear(16, 3)

    def forward(self, x):
        x = F.relu(self.a(x))
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).flatten(2).chunk(3, 1)
        out = torch.matmul(torch.softmax(torch.matmul(q.transpose(1, 2), k), -1), v.transpose(1, 2))
        out = out.transpose(1, 2).reshape(b, c, h, w)
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.c(out)), 1).flatten(1))


def test_a_channel_count_read_for_other_channels_keeps_them():
    model = _SizedByAnother()
    graph = analyze(model, (3, 8, 8))
    assert not graph.group_by_name["a"].prunable and graph.group_by_name["c"].prunable
    assert_equivalent(randomize_all(_SizedByAnother(), 0), 8, plans=2)


def test_a_barrier_that_freezes_everything_refuses_naming_the_op():
    with pytest.raises(UnsupportedModelError, match=r"^cannot prune through op 'cumsum' at node 'cumsum' .* leaves "
                                                     r"nothing prunable in this model: legr needs a channel rule for "
                                                     r"this op$"):
        analyze(_Unknown(), (3, 16, 16))


@pytest.mark.parametrize("case", ["bn-no-affine", "layernorm-bias", "pad-value"])
def test_norms_and_padding_that_map_zero_elsewhere_keep_the_channels(case):
    """Issue #11: sigmoid -> BatchNorm(affine=False), a LayerNorm over the width with a bias and a pad with a
    non-zero value all turn a removed channel into a non-zero value that the next conv reads."""
    middle = {"bn-no-affine": nn.Sequential(nn.Sigmoid(), nn.BatchNorm2d(8, affine=False)),
              "layernorm-bias": nn.LayerNorm(16), "pad-value": nn.Identity()}[case]

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.mid, self.b = nn.Conv2d(3, 8, 3, padding=1), middle, nn.Conv2d(8, 8, 3, padding=1)
            self.fc = nn.Linear(8, 10)

        def forward(self, x):
            y = self.mid(self.a(x))
            y = F.pad(y, (1, 1, 1, 1), value=0.5) if case == "pad-value" else y
            return self.fc(F.adaptive_avg_pool2d(self.b(y), 1).flatten(1))

    model = randomize_all(Net(), 0).double().eval()
    graph = analyze(model, (3, 16, 16))
    assert not graph.group_by_name["a"].prunable and "non-zero" in graph.group_by_name["a"].reason
    assert graph.group_by_name["b"].prunable


def test_affine_batch_norm_makes_a_removed_channel_zero_again():
    """Masking zeroes an affine norm's gamma and beta, so channels after a sigmoid stay prunable behind one."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Sigmoid(), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, padding=1),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    assert_equivalent(model, 16, plans=3)
    assert analyze(model, (3, 16, 16)).group_by_name["0"].prunable


# --- functional batch norm (timm's BatchNormAct2d and other norm + activation modules) ----------------------------
class _BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in miniature: F.batch_norm with the module's own tensors, then an activation."""

    def __init__(self, n: int, act: nn.Module, affine: bool = True):
        super().__init__(n, affine=affine)
        self.act = act

    def forward(self, x):
        y = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, self.eps)
        return self.act(y)


class _NormActNet(nn.Module):
    def __init__(self, act: nn.Module, affine: bool = True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _BatchNormAct(8, nn.SiLU(), affine))
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), _BatchNormAct(8, act),
                                   nn.Conv2d(8, 8, 3, padding=1), _BatchNormAct(8, nn.Identity()))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.relu(x + self.block(x)))


@pytest.mark.parametrize("act,affine", [(nn.ReLU(), True), (nn.Sigmoid(), True), (nn.ReLU(), False)],
                         ids=["relu", "sigmoid", "no-affine"])
def test_functional_batch_norm_of_a_module_is_pruned_with_it(act, affine):
    torch.manual_seed(0)
    model = _NormActNet(act, affine)
    assert_equivalent(model, 16, plans=3, seed=1)
    graph = analyze(model, (3, 16, 16))
    assert {"stem.1", "block.1", "block.3"} <= set(graph.layers)  # the norms' tensors are sliced with their channels
    assert graph.group_by_name["stem.0"].prunable
    assert graph.group_by_name["block.0"].prunable == (not isinstance(act, nn.Sigmoid))  # sigmoid(0) feeds a conv


class _Linear(nn.Linear):
    """timm's Linear: an nn.Linear subclass outside torch.nn, so tracing goes through it to F.linear."""


def test_functional_linear_of_a_module_is_pruned_with_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), _BatchNormAct(8, nn.ReLU()), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), _Linear(8, 12), nn.ReLU(), _Linear(12, 10))
    assert_equivalent(model, 16, plans=3, seed=2)
    graph = analyze(model, (3, 16, 16))
    assert graph.group_by_name["4"].prunable and graph.layers["4"].kind == "linear"
    keep = np.ones(graph.num_classes)
    keep[graph.group_by_name["4"].classes[:5]] = 0
    keep[graph.group_by_name["0"].classes[:3]] = 0
    pruned = prune(graph, keep)
    kept = pruned.get_submodule("4").weight.shape[0]  # traced through: a plain holder of the tensors
    assert kept == pruned.get_submodule("4").bias.shape[0] == pruned.get_submodule("6").weight.shape[1] == 7
    cost = CostModel(graph)
    assert cost.macs(keep) == counted_macs(pruned, torch.randn(1, 3, 16, 16, dtype=torch.float64))


class _ComputedGamma(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.gamma = nn.Parameter(torch.ones(8))

    def forward(self, x):
        return F.batch_norm(self.conv(x), None, None, self.gamma * 2, None, True)


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(_Unknown())

    def forward(self, x):
        return self.features(x)


@pytest.mark.parametrize("model,message", [
    (_ComputedGamma,
     r"op 'batch_norm' at node 'batch_norm' in the model's own forward \(_ComputedGamma\): its weight is computed"),
    (_Nested, r"op 'cumsum' at node 'cumsum' in module 'features.0' \(_Unknown\): legr has no channel rule"),
], ids=["computed-gamma", "nested-unknown-op"])
def test_refusals_name_the_module_that_holds_the_op(model, message):
    with pytest.raises(UnsupportedModelError, match=message):
        analyze(model(), (3, 16, 16))


# --- splits along channels (CSPNet, Res2Net, MixNet) --------------------------------------------------------------
class _SplitNet(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.how = how
        first = 3 if how == "sizes" else 4
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = nn.Conv2d(first, 6, 3, padding=1), nn.Conv2d(8 - first, 6, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10))

    def forward(self, x):
        y = torch.relu(self.stem(x))
        if self.how == "sizes":
            p, q = torch.split(y, [3, 5], dim=1)
        elif self.how == "chunk":
            p, q = y.chunk(2, 1)
        else:  # an equal split size as a method, then a split along the width
            p, q = y.split(4, dim=1)
            p = torch.cat(p.split(8, dim=3), dim=3)
        return self.head(torch.cat([self.a(p), self.b(q)], 1))


@pytest.mark.parametrize("how", ["sizes", "chunk", "method-and-width"])
def test_split_along_channels_prunes_each_piece(how):
    torch.manual_seed(0)
    model = _SplitNet(how)
    assert_equivalent(model, 16, plans=3, seed=3)
    graph = analyze(model, (3, 16, 16))
    first = 3 if how == "sizes" else 4
    assert [len(s) for s in graph.segments] == [first, 8 - first]
    keep = np.ones(graph.num_classes)
    keep[graph.group_by_name["stem"].classes[[0, 1, 6]]] = 0
    pruned = prune(graph, keep)
    assert pruned.a.weight.shape[1] == first - 2 and pruned.b.weight.shape[1] == 8 - first - 1
    assert CostModel(graph).macs(keep) == counted_macs(pruned, torch.randn(1, 3, 16, 16, dtype=torch.float64))


def test_budget_solvers_never_empty_a_split_piece():
    """Scores that rank one piece's channels lowest: without a floor per piece the solver would remove it whole."""
    from legr.methods.filters.allocate import Floors, GlobalSolver, solve_uniform

    graph = analyze(_SplitNet("sizes"), (3, 16, 16))
    cost = CostModel(graph)
    scores = {name: np.arange(len(graph.layers[name].producer_ids), dtype=float) + 1
              for name, layer in graph.layers.items() if layer.producer_ids is not None}
    scores["stem"] = np.array([1, 2, 3, 10, 11, 12, 13, 14], dtype=float)  # piece [0:3] lowest
    floors = Floors(safeguard=0.0, min_channels=1)
    target = 0.3 * cost.base_macs
    for keep in (GlobalSolver(graph, cost, scores, floors).solve(target),
                 solve_uniform(graph, cost, scores, target, floors)[0]):
        stem = keep[graph.group_by_name["stem"].classes]
        assert stem[:3].sum() >= 1 and stem[3:].sum() >= 1
        assert prune(graph, keep)(torch.randn(1, 3, 16, 16)).shape == (1, 10)
