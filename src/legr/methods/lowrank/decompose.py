"""SVD low-rank decomposition of convolutions and fully connected layers, applied physically (smaller modules).

A convolution ``C_in -> C_out`` with kernel ``k`` (any stride, padding, dilation; ``groups=1``) has the weight matrix
``W`` of shape ``(C_out, C_in·Πk)``. At rank ``r`` it becomes ``nn.Sequential(first, second)``: ``first`` a
convolution ``C_in -> r`` with the same kernel, stride, padding, dilation and padding mode and no bias, ``second`` a
1x1 convolution ``r -> C_out`` carrying the original bias, with ``W ≈ U_r S_r V_r^T`` split as
``second = U_r S_r^½`` and ``first = S_r^½ V_r^T`` (the square root of the singular values goes to both factors,
so they train at similar scales). A ``Linear`` becomes two Linears the same way. At full rank
(``min(C_out, C_in·Πk)``) the product is ``W`` itself: outputs equal the original up to rounding (the SVD is done in
float64).

Which layers take part (`find_layers`): modules of exactly the types ``nn.Conv1d/2d/3d`` and ``nn.Linear`` that the
forward pass calls. Left whole, each with its reason: grouped and depthwise convolutions (their weight is not one
matrix), subclasses of those types (their forward may not be a plain convolution, e.g. weight standardization),
modules the forward never reaches, and layers where no rank saves anything (``r·(C_in·Πk + C_out) < C_out·C_in·Πk``
holds for no ``r >= 1``, e.g. a layer with one output).

Cost of a layer at rank ``r`` (per image; ``positions`` = output elements per channel, summed over the module's
calls): MACs ``r·C_in·Πk·positions + r·C_out·positions`` (the 1x1 factor runs at the output resolution), parameters
``r·(C_in·Πk + C_out)`` (+ the bias, unchanged): `LayerInfo.macs`, `LayerInfo.params`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

PLAIN = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    """A decomposable layer: its shape and how often it runs per image."""

    name: str
    kind: str  # "conv" or "linear"
    c_in: int
    c_out: int
    kernel: tuple[int, ...]  # () for a Linear
    positions: int  # output elements per output channel, per image (all calls)

    @property
    def fan_in(self) -> int:
        """Columns of the weight matrix: ``C_in·Πk``."""
        return self.c_in * math.prod(self.kernel)

    @property
    def full_rank(self) -> int:
        return min(self.c_out, self.fan_in)

    @property
    def max_rank(self) -> int:
        """The largest rank whose decomposition is cheaper than the whole layer (0: none is)."""
        whole, per_rank = self.c_out * self.fan_in, self.fan_in + self.c_out
        return (whole - 1) // per_rank

    def macs(self, rank: int | None) -> int:
        """Per-image MACs at ``rank`` (None: the whole layer)."""
        return self.positions * self.params(rank)

    def params(self, rank: int | None) -> int:
        """Weight parameters at ``rank`` (None: the whole layer); the bias is the same either way and not counted."""
        return self.c_out * self.fan_in if rank is None else rank * (self.fan_in + self.c_out)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kernel": list(self.kernel)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LayerInfo":
        return cls(d["name"], d["kind"], d["c_in"], d["c_out"], tuple(d["kernel"]), d["positions"])


def find_layers(model: nn.Module, input_size: tuple[int, ...]) -> tuple[list[LayerInfo], dict[str, str]]:
    """The decomposable layers of ``model`` (in module order) and the layers left whole with their reasons, from one
    forward pass of a zero image of ``input_size`` (on the model's device and dtype; modes restored)."""
    positions: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, PLAIN):
            def hook(mod, args, out, name=name):
                per_channel = out.numel() // (mod.out_channels if isinstance(mod, nn.modules.conv._ConvNd)
                                              else mod.out_features)
                positions[name] = positions.get(name, 0) + per_channel
            hooks.append(m.register_forward_hook(hook))
    modes = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    x = torch.zeros(1, *input_size, device=param.device if param is not None else None,
                    dtype=param.dtype if param is not None else None)
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        for m, training in modes:
            m.training = training
    layers, whole = [], {}
    for name, m in model.named_modules():
        if not isinstance(m, PLAIN):
            continue
        reason = _whole_reason(name, m, positions)
        if reason:
            whole[name] = reason
            continue
        info = _info(name, m, positions[name])
        if info.max_rank < 1:
            whole[name] = (f"no rank saves MACs: {info.c_out}x{info.fan_in} weights cost less than a rank-1 "
                           f"factorization ({info.fan_in + info.c_out} per position)")
        else:
            layers.append(info)
    return layers, whole


def _whole_reason(name: str, m: nn.Module, positions: dict[str, int]) -> str | None:
    if type(m) not in PLAIN:
        return f"{type(m).__name__} subclasses {type(m).__mro__[1].__name__}: its forward may not be a plain product"
    if isinstance(m, nn.modules.conv._ConvNd) and m.groups != 1:
        kind = "depthwise" if m.groups == m.in_channels == m.out_channels else "grouped"
        return f"{kind} convolution (groups={m.groups}): its weight is not one matrix"
    if name not in positions:
        return "not called by the forward pass"
    return None


def _info(name: str, m: nn.Module, positions: int) -> LayerInfo:
    if isinstance(m, nn.Linear):
        return LayerInfo(name, "linear", m.in_features, m.out_features, (), positions)
    return LayerInfo(name, "conv", m.in_channels, m.out_channels, tuple(m.kernel_size), positions)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as a float64 ``(C_out, C_in·Πk)`` matrix on the CPU."""
    w = module.weight.detach().to("cpu", torch.float64)
    return w.reshape(w.shape[0], -1)


def singular_values(module: nn.Module) -> torch.Tensor:
    """Singular values of the layer's weight matrix, largest first (float64)."""
    return torch.linalg.svdvals(weight_matrix(module))


def factored_shape(module: nn.Module, rank: int) -> nn.Sequential:
    """``nn.Sequential(first, second)`` of ``module`` at ``rank``, with fresh weights (what a saved member's weights
    are loaded into): same device and dtype as ``module``."""
    kw = {"device": module.weight.device, "dtype": module.weight.dtype}
    bias = module.bias is not None
    if isinstance(module, nn.Linear):
        return nn.Sequential(nn.Linear(module.in_features, rank, bias=False, **kw),
                             nn.Linear(rank, module.out_features, bias=bias, **kw))
    conv = type(module)
    first = conv(module.in_channels, rank, module.kernel_size, module.stride, module.padding, module.dilation,
                 groups=1, bias=False, padding_mode=module.padding_mode, **kw)
    second = conv(rank, module.out_channels, 1, bias=bias, **kw)
    return nn.Sequential(first, second)


def factor(module: nn.Module, rank: int) -> nn.Sequential:
    """``module`` decomposed at ``rank`` (1 <= rank <= full rank): the truncated SVD, sqrt(S) split to both factors."""
    full = min(module.weight.shape[0], weight_matrix(module).shape[1])
    if not 1 <= rank <= full:
        raise ValueError(f"rank {rank} outside 1..{full}")
    u, s, vh = torch.linalg.svd(weight_matrix(module), full_matrices=False)
    root = s[:rank].sqrt()
    out = factored_shape(module, rank)
    first, second = out[0], out[1]
    with torch.no_grad():
        first.weight.copy_((root[:, None] * vh[:rank]).reshape(first.weight.shape))
        second.weight.copy_((u[:, :rank] * root).reshape(second.weight.shape))
        if module.bias is not None:
            second.bias.copy_(module.bias)
    out.train(module.training)
    return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_ranks(model: nn.Module, ranks: dict[str, int], *, weights: bool = True) -> nn.Module:
    """Replace every layer named in ``ranks`` by its decomposition at that rank, in place; returns ``model``.
    ``weights=False`` builds the factored shapes only (to load a saved member's weights into)."""
    for name, rank in ranks.items():
        module = model.get_submodule(name)
        if type(module) not in PLAIN:
            raise ValueError(f"{name} is a {type(module).__name__}, not a plain convolution or Linear")
        _replace(model, name, factor(module, rank) if weights else factored_shape(module, rank))
    return model
