"""Remove dead units (neurons / filters) of a sparse network for real, with the structural engine.

A channel (a class of ``legr.graph``: a neuron, a filter, or a residual-chain channel) is dead when

- **no output**: every weight that reads it (the input slices of all consuming Linear/Conv layers) is zero —
  removing it changes nothing; or
- **no input**: every weight that creates it (the output slices of all its producing Linear/Conv layers) is zero.
  It then carries a value independent of the input (bias -> activation ...). That value's contribution to each
  consumer is folded into the consumer's bias — exact for a Linear consumer, and for a Conv consumer when the
  contribution is the same at every output position (no zero padding touching it); otherwise the unit stays.

Removal repeats until nothing changes (removing one layer's units can kill the next layer's) and keeps at least
one channel per layer and per split piece (as every keep vector must). The result is
``legr.engine.surgery.prune(graph, keep)``: a physically smaller ``torch.fx.GraphModule`` with the original parameter
names; its outputs equal the input model's (checked on a random batch; a mismatch raises ``LegrError`` instead of
returning a wrong model).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, fx, nn

from legr.engine.surgery import prune
from legr.errors import LegrError
from legr.graph import ChannelGraph, analyze

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _nonzero_per_class(graph: ChannelGraph, role: str) -> tuple[np.ndarray, np.ndarray]:
    """(non-zero count, seen) per class over the ``weight`` ties of Linear/Conv layers with ``role``."""
    nz = np.zeros(graph.num_classes, dtype=np.int64)
    seen = np.zeros(graph.num_classes, dtype=bool)
    for layer in graph.layers.values():
        module = graph.gm.get_submodule(layer.name)
        if not isinstance(module, _WEIGHTED):
            continue
        for t in layer.ties:
            if t.role != role or t.param != "weight":
                continue
            w = getattr(module, t.param).detach()
            per_pos = (w != 0).movedim(t.dim, 0).reshape(w.shape[t.dim], -1).sum(1).cpu().numpy()
            cls = graph.classes(t.ids)
            np.add.at(nz, cls, per_pos)
            seen[cls] = True
    return nz, seen


def _capture_inputs(graph: ChannelGraph, names: set[str]) -> dict[str, Tensor]:
    """Input of each named module on a random batch of 2."""
    captured: dict[str, Tensor] = {}
    handles = [graph.gm.get_submodule(n).register_forward_pre_hook(
        lambda m, args, n=n: captured.__setitem__(n, args[0].detach())) for n in names]
    param = next(graph.gm.parameters())
    x = torch.randn(2, *graph.input_shape, generator=torch.Generator().manual_seed(0)).to(param)
    try:
        with torch.no_grad():
            graph.gm(x)
    finally:
        for h in handles:
            h.remove()
    return captured


def _consumers(graph: ChannelGraph, cls: int) -> list[tuple[str, int, np.ndarray]]:
    """(module name, dim, positions) of every Linear/Conv weight input slice reading class ``cls``."""
    out = []
    for layer in graph.layers.values():
        for t in layer.ties:
            if t.role == "in" and t.param == "weight":
                pos = np.flatnonzero(graph.classes(t.ids) == cls)
                if len(pos):
                    out.append((layer.name, t.dim, pos))
    return out


def _fold_contribution(module: nn.Module, x: Tensor, dim: int, pos: np.ndarray) -> Tensor | None:
    """The constant (per output unit) that the input positions ``pos`` add to ``module``'s output, or None."""
    if module.bias is None or dim != 1:
        return None
    idx = torch.as_tensor(pos, device=x.device)
    w = module.weight.detach()
    if isinstance(module, nn.Linear):
        part = x.index_select(-1, idx)
    elif isinstance(module, _WEIGHTED) and module.groups == 1:
        part = x.index_select(1, idx)
    else:
        return None
    if not torch.equal(part[0], part[1]):  # the value depends on the input: not a dead unit after all
        return None
    if isinstance(module, nn.Linear):
        contrib = nn.functional.linear(part[:1], w.index_select(1, idx))
        flat = contrib.reshape(-1, contrib.shape[-1])
    else:
        contrib = module._conv_forward(part[:1], w.index_select(1, idx), None)
        flat = contrib.movedim(1, -1).reshape(-1, contrib.shape[1])
    const = flat[0]
    scale = float(const.abs().max()) + 1e-12
    if float((flat - const).abs().max()) > 1e-6 * max(scale, 1.0):
        return None  # position-dependent (zero padding): cannot go into a bias
    return const


def find_dead(graph: ChannelGraph, keep: np.ndarray) -> tuple[list[int], list[int]]:
    """Classes (still kept, in prunable groups) with no output weights / with no input weights."""
    prunable = np.zeros(graph.num_classes, dtype=bool)
    for g in graph.prunable_groups():
        prunable[g.classes] = True
    in_nz, in_seen = _nonzero_per_class(graph, "in")
    out_nz, out_seen = _nonzero_per_class(graph, "out")
    alive = prunable & (keep > 0)
    no_out = np.flatnonzero(alive & in_seen & (in_nz == 0))
    no_in = np.flatnonzero(alive & out_seen & (out_nz == 0) & ~(in_seen & (in_nz == 0)))
    return no_out.tolist(), no_in.tolist()


def _zero_inputs(graph: ChannelGraph, consumers: list[tuple[str, int, np.ndarray]]) -> None:
    with torch.no_grad():
        for name, dim, pos in consumers:
            w = graph.gm.get_submodule(name).weight
            w.index_fill_(dim, torch.as_tensor(pos, device=w.device), 0.0)


def remove_dead_units(model: nn.Module, input_size: Sequence[int], max_rounds: int = 20,
                      atol: float = 1e-5) -> tuple[fx.GraphModule, dict]:
    """A physically smaller copy of ``model`` without its dead units, and ``{group: [removed indices]}`` info.

    ``model`` is not modified. See the module docstring for what counts as dead and how exactness is kept.
    """
    work = copy.deepcopy(model).eval()
    graph = analyze(work, input_size)
    ref_x = torch.randn(4, *graph.input_shape, generator=torch.Generator().manual_seed(1)).to(next(work.parameters()))
    with torch.no_grad():
        reference = graph.gm(ref_x)
    keep = np.ones(graph.num_classes)
    folded: list[int] = []
    for _ in range(max_rounds):
        no_out, no_in = find_dead(graph, keep)
        dead = list(no_out)
        if no_in:
            plans = {c: _consumers(graph, c) for c in no_in}
            inputs = _capture_inputs(graph, {name for cons in plans.values() for name, _, _ in cons})
            for c, cons in plans.items():
                consts = [_fold_contribution(graph.gm.get_submodule(n), inputs[n], d, p) for n, d, p in cons]
                if any(k is None for k in consts):
                    continue
                with torch.no_grad():
                    for (name, _, _), const in zip(cons, consts):
                        graph.gm.get_submodule(name).bias.add_(const)
                _zero_inputs(graph, cons)
                dead.append(c)
                folded.append(c)
        if not dead:
            break
        keep[dead] = 0.0
    for cls, _ in graph.keep_rules.nonempty:  # a layer or split piece keeps a channel (its readers are zero: exact)
        if not (keep[cls] > 0).any():
            keep[cls[0]] = 1.0
    pruned = prune(graph, keep)
    with torch.no_grad():
        diff = float((pruned(ref_x) - reference).abs().max())
    tol = atol * max(1.0, float(reference.abs().max()))
    if diff > tol:
        raise LegrError(f"dead-unit removal changed the outputs by {diff:.3g} (> {tol:.3g}); not removing them")
    removed = {g.name: np.flatnonzero(keep[g.classes] == 0).tolist() for g in graph.prunable_groups()}
    info = {"removed": {k: v for k, v in removed.items() if v},
            "kept": {g.name: int((keep[g.classes] > 0).sum()) for g in graph.prunable_groups()},
            "sizes": {g.name: g.size for g in graph.prunable_groups()},
            "folded_bias": len(folded), "max_abs_diff": diff,
            "keep": graph.keep_dict(keep)}
    return pruned, info
