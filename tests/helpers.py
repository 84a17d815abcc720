"""Shared test utilities."""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from legr.engine.cost import CostModel, counted_macs
from legr.engine.surgery import masked_copy, prune
from legr.errors import UnsupportedModelError
from legr.graph import ChannelGraph, analyze


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every batch norm non-trivial statistics and affine parameters (layer norms and layer scales too), so masked
    channels cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.2)
            elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)) and m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and not m.weight.any():  # a zero-initialized head (ViT)
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.1)
        for name, p in model.named_parameters():  # layer scales start near 0 (ConvNeXt: 1e-6), hiding their branch
            if name.rpartition(".")[2] in ("gamma", "layer_scale"):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return model


def random_keep(graph, rng: np.random.Generator, min_keep: int = 1) -> np.ndarray:
    """A random keep vector: each prunable group keeps a random non-empty subset of its channels."""
    keep = np.ones(graph.num_classes)
    for group in graph.prunable_groups():
        k = int(rng.integers(min(min_keep, group.size), group.size + 1))
        mask = np.zeros(group.size)
        mask[rng.choice(group.size, k, replace=False)] = 1.0
        keep[group.classes] = mask
    for cls, _ in graph.keep_rules.nonempty:  # every layer and split piece keeps a channel, as prune requires
        if keep[cls].sum() == 0:
            keep[cls[0]] = 1.0
    return keep


def equivalence_setup(model: nn.Module, size: int, seed: int = 0):
    """(float64 eval model with randomized norms, its ChannelGraph, a random input, the model's output on it)."""
    model = randomize_norms(model).double().eval()
    graph = analyze(model, (3, size, size))
    assert graph.prunable_groups(), "nothing prunable was found"
    x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        original = model(x)
    return model, graph, x, original


def assert_pruned_matches_masked(a: torch.Tensor, b: torch.Tensor, original: torch.Tensor) -> None:
    """Pruned output ``a`` equals masked output ``b``, and the plan changed the network's output."""
    assert a.shape == b.shape == original.shape
    scale = b.abs().max().item()
    assert (a - b).abs().max().item() < 1e-4 and (a - b).abs().max().item() <= 1e-9 * max(1.0, scale)
    assert not torch.allclose(b, original), "the plan did not change the network: the test would prove nothing"


# --- random compositions of the supported ops (zero-safety property tests) ---------------------------------------
def check_random_plans(model: nn.Module, seed: int, rng: np.random.Generator, refused: str = "") -> ChannelGraph | None:
    """Analyze the float64 ``RandomNet`` ``model`` and check three random plans: pruned == masked (1e-9), MACs as
    torch counts them, parameters as the pruned network holds them. A refusal (one line, holding ``refused``)
    returns None."""
    try:
        graph = analyze(model, (3, 12, 12))
    except UnsupportedModelError as exc:
        assert "\n" not in str(exc) and refused in str(exc), model.kinds
        return None
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    cost = CostModel(graph)
    assert cost.base_macs == counted_macs(graph.gm, x[:1])
    for _ in range(3):
        keep = random_keep(graph, rng)
        pruned = prune(graph, keep).eval()
        with torch.no_grad():
            a, b = pruned(x), masked_copy(graph, keep).eval()(x)
        assert (a - b).abs().max().item() <= 1e-9 * max(1.0, b.abs().max().item()), (model.kinds, model.barriers)
        assert cost.macs(keep) == counted_macs(pruned, x[:1])
        assert cost.params(keep) == sum(p.numel() for p in pruned.parameters())
    return graph


ACTIVATIONS = [nn.ReLU, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.GELU, lambda: nn.GELU(approximate="tanh"),
               nn.SiLU, nn.Tanh, nn.Hardswish, nn.ELU, nn.Mish, nn.LeakyReLU]


class _Shift(nn.Module):
    """Adds a per-channel buffer: not pruned with the channels, so the analysis keeps them."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("offset", torch.randn(1, width, 1, 1))

    def forward(self, x):
        return x + self.offset


class ScalarAffine(nn.Module):
    """timm's LearnableAffineBlock (PP-HGNetV2): a learnable scalar scale and bias, ``x * s + b``: a removed channel
    leaves it as ``b``."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.bias = nn.Parameter(torch.tensor([bias]))

    def forward(self, x):
        return self.scale * x + self.bias


class RandomNet(nn.Module):
    """conv stem -> a random sequence of channel-preserving steps -> conv -> pool -> linear, on 3x12x12 inputs.

    Steps: activations (zero-preserving or not), batch norms with/without affine parameters and running stats,
    LayerNorm over the width with/without bias, convs, depthwise convs, residual adds, sigmoid-style gates, adding,
    subtracting from, multiplying or dividing by a scalar, adding a one-channel map broadcast over the channels,
    concatenation (then a 1x1 conv), spatial padding with a zero or non-zero value (then a conv), spatial softmax,
    average pooling; with ``kinds=RandomNet.ALL_KINDS`` also a LayerNorm over the channels (channels-last, through
    permutes), adding a per-channel buffer, a chunk along the channels (one piece activated, then concatenated back)
    and a channel slice (the first two channels added to the last two); with ``kinds=RandomNet.BARRIER_KINDS`` also
    an op the engine has no exact rule for (``BARRIERS``: the analysis makes it a channel barrier), a functional
    conv on a module's weight after ``F.pad`` and a selective-kernel style stack; with ``kinds=RandomNet.AFFINE_KINDS``
    also a learnable scalar affine and 1x1 convs (with a bias, without, or without one before a batch norm).
    """

    KINDS = ("act", "bn", "ln", "conv", "dw", "res", "gate", "scalar", "rsub", "scale", "div", "bcast", "cat", "pad",
             "softmax", "pool")
    ALL_KINDS = KINDS + ("lnc", "shift", "chunk", "slice")
    # ops the engine has no exact rule for (channel barriers): an unknown op on the channels, a Conv1d gate across
    # the channel axis (ECA), a reshape splitting the channel axis, a module called twice, a flip of the channels;
    # beside them two rules of issue 32: a functional conv on a module's own weight after F.pad (TF "same" padding;
    # dense or depthwise) and a selective-kernel style stack (softmax over the stacked branches, then their sum)
    BARRIERS = ("unknown", "eca", "split-axis", "twice", "flip")
    BARRIER_KINDS = KINDS + ("barrier", "fconv", "stack")
    # a learnable scalar affine (its constant folded into the next layer's bias where that is exact), 1x1 convs
    # with or without a bias, and without one before a batch norm (which takes the constant in its running mean)
    AFFINE_KINDS = KINDS + ("lab", "lab", "conv1", "conv1bn")

    def __init__(self, rng: np.random.Generator, steps: int = 4, width: int = 6, size: int = 12,
                 kinds: tuple[str, ...] = KINDS):
        super().__init__()
        act = lambda: ACTIVATIONS[rng.integers(len(ACTIVATIONS))]()  # noqa: E731
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.kinds = [str(k) for k in rng.choice(kinds, steps)]
        self.steps = nn.ModuleList()
        self.values = []
        self.barriers: list[str] = []
        for kind in self.kinds:
            flag = lambda: bool(rng.integers(2))  # noqa: E731
            self.values.append(float(rng.choice([0.0, 0.5])))
            if kind == "act":
                step = act()
            elif kind == "bn":
                step = nn.BatchNorm2d(width, affine=flag(), track_running_stats=flag())
            elif kind == "ln":
                step = nn.LayerNorm(size, elementwise_affine=flag(), bias=flag())
            elif kind == "conv":
                step = nn.Conv2d(width, width, 3, padding=1, bias=flag())
            elif kind == "dw":
                step = nn.Conv2d(width, width, 3, padding=1, groups=width, bias=flag())
            elif kind in ("res", "gate"):
                step = nn.Sequential(act(), nn.Conv2d(width, width, 1), act())
            elif kind == "pad":
                step = nn.Conv2d(width, width, 3)
            elif kind == "bcast":
                step = nn.Conv2d(width, 1, 1)
            elif kind == "cat":
                step = nn.ModuleList([act(), nn.Conv2d(2 * width, width, 1)])
            elif kind == "lnc":
                step = nn.LayerNorm(width, elementwise_affine=flag(), bias=flag())
            elif kind == "shift":
                step = _Shift(width)
            elif kind == "chunk":
                step = act()
            elif kind == "barrier":
                self.barriers.append(str(rng.choice(self.BARRIERS)))
                how = self.barriers[-1]
                step = (nn.Conv1d(1, 1, 3, padding=1, bias=False) if how == "eca" else
                        nn.Conv2d(width, width, 3, padding=1) if how == "twice" else nn.Identity())
            elif kind == "fconv":
                step = nn.Conv2d(width, width, 3, groups=int(rng.choice([1, width])), bias=flag())
            elif kind == "stack":
                step = act()
            elif kind == "lab":
                step = ScalarAffine()
            elif kind == "conv1":
                step = nn.Conv2d(width, width, 1, bias=flag())
            elif kind == "conv1bn":
                step = nn.Sequential(nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
            else:
                step = nn.Identity()
            self.steps.append(step)
        self.head = nn.Conv2d(width, 5, 3, padding=1)
        self.fc = nn.Linear(5, 4)

    def forward(self, x):
        x = self.stem(x)
        barriers = iter(self.barriers)
        for kind, step, value in zip(self.kinds, self.steps, self.values):
            if kind == "barrier":
                x = _barrier(next(barriers), step, x)
            elif kind == "fconv":
                x = F.conv2d(F.pad(x, (1, 1, 1, 1)), step.weight, step.bias, 1, 0, 1, step.groups)
            elif kind == "stack":
                branches = torch.stack([x, step(x)], 1)
                x = (branches * torch.softmax(branches, 1)).sum(1)
            elif kind == "res":
                x = x + step(x)
            elif kind == "gate":
                x = x * step(F.adaptive_avg_pool2d(x, 1))
            elif kind == "scalar":
                x = x + 1.0
            elif kind == "rsub":
                x = 1.0 - x
            elif kind == "scale":
                x = x * 2.0
            elif kind == "div":
                x = x / 2.0
            elif kind == "bcast":
                x = x + step(x)
            elif kind == "cat":
                x = step[1](torch.cat([x, step[0](x)], 1))
            elif kind == "pad":
                x = step(F.pad(x, (1, 1, 1, 1), value=value))
            elif kind == "softmax":
                x = torch.softmax(x, -1)
            elif kind == "pool":
                x = F.avg_pool2d(x, 3, 1, 1)
            elif kind == "lnc":
                x = step(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            elif kind == "chunk":
                a, b = x.chunk(2, 1)
                x = torch.cat([step(a), b], 1)
            elif kind == "slice":
                x = torch.cat([x[:, :2] + x[:, -2:], x[:, 2:]], 1)
            else:
                x = step(x)
        return self.fc(F.adaptive_avg_pool2d(self.head(x), 1).flatten(1))


def _barrier(how: str, step: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if how == "unknown":
        return torch.cumsum(x, 1)
    if how == "eca":
        y = step(x.mean((2, 3)).unsqueeze(1))  # (N, 1, C): the Conv1d runs across the channels
        return x * torch.sigmoid(y).transpose(1, 2).unsqueeze(-1)
    if how == "split-axis":
        n, c, h, w = x.shape
        return torch.softmax(x.reshape(n, c * h, w), 1).reshape(n, c, h, w)
    if how == "twice":
        return step(F.relu(step(x)))
    return torch.flip(x, [1])  # "flip"


def randomize_all(model: nn.Module, seed: int) -> nn.Module:
    """Random parameters and statistics everywhere, so a channel that is not zero after masking cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if "running_var" in name:
                tensor.copy_(torch.rand(tensor.shape, generator=g) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=g) * 0.5)
    return model

