"""Shared test utilities."""

import numpy as np
import torch
from torch import nn

from legr.graph import analyze


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
    # every producer layer (and every piece of a channel split) keeps at least one filter: the network stays connected
    dims = [graph.classes(layer.producer_ids) for layer in graph.layers.values() if layer.producer_ids is not None]
    for cls in dims + list(graph.segments):
        if len(cls) and keep[cls].sum() == 0:
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
