"""Han et al. 2015 ("Learning both Weights and Connections"): unstructured magnitude pruning.

The pieces, each usable alone:

- the threshold rule: a weight of layer l survives iff ``|w| > quality_l * std_l`` (``std_l``: the standard
  deviation of the layer's weights in the dense trained model, fixed for the whole run) — ``layer_threshold``,
  ``threshold_mask``, ``quality_for_fraction`` (the quality that prunes a given fraction);
- masks that keep pruned weights at exactly zero while retraining (gradients masked by tensor hooks, so SGD with
  momentum / weight decay never moves them) with optional L1 regularisation added to the gradient — ``Masker``;
- the sensitivity analysis (accuracy vs pruned fraction, each layer pruned alone, no retraining) and the choice
  of every layer's final fraction for an overall compression target — ``sensitivity``, ``allocate_fractions``;
- the iterative schedule (geometric in the kept density over the rounds) — ``schedule_fractions``;
- the dropout rule on retraining ``D_r = D_o * sqrt(C_r / C_o)`` — ``dropout_rate``, ``adjust_dropout_``.

Prunable layers are every ``nn.Linear`` and ``nn.Conv{1,2,3}d`` weight of any model (biases are kept dense, as in
the paper's parameter counts they are a negligible share). The run-folder pipeline is in
``legr.methods.magnitude.compress``, dead-unit removal in ``legr.engine.dead_units``, the sparse storage format in ``legr.methods.magnitude.sparse``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from legr.errors import BudgetError, ConfigError, LegrError
from legr.progress import progress_bar

PRUNABLE_TYPES: tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
DEFAULT_FRACTIONS: tuple[float, ...] = (0.3, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99)


# ---------------------------------------------------------------- layers and counts


def prunable_layers(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """``{qualified name: module}`` of the Linear/Conv layers of ``model`` (all of them, or those in ``names``)."""
    found = {n: m for n, m in model.named_modules() if isinstance(m, PRUNABLE_TYPES)}
    if names is None:
        if not found:
            raise LegrError(f"{type(model).__name__} has no Linear or Conv layer to prune")
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise LegrError(f"not Linear/Conv layers of {type(model).__name__}: {', '.join(missing)} "
                        f"(prunable: {', '.join(found)})")
    return {n: found[n] for n in names}


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def layer_density(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float]:
    """Fraction of non-zero weights in each prunable layer."""
    return {n: int(torch.count_nonzero(m.weight)) / m.weight.numel() for n, m in prunable_layers(model, names).items()}


# ---------------------------------------------------------------- the threshold rule


def layer_threshold(weight: Tensor, quality: float, std: float | None = None) -> float:
    """Han's per-layer threshold: ``quality * std`` (``std`` None: the standard deviation of ``weight``)."""
    if quality < 0:
        raise ConfigError(f"quality must be >= 0, got {quality}")
    return float(quality) * (float(weight.detach().float().std()) if std is None else float(std))


def threshold_mask(weight: Tensor, quality: float, std: float | None = None) -> Tensor:
    """Boolean mask of the weights that survive: ``|w| > quality * std``."""
    return weight.detach().abs() > layer_threshold(weight, quality, std)


def quality_for_fraction(weight: Tensor, fraction: float, std: float) -> float:
    """The quality whose threshold ``quality * std`` prunes at least ``fraction`` of ``weight`` (zeros included).

    The threshold is the ``ceil(fraction * n)``-th smallest magnitude, so ``threshold_mask`` prunes exactly that
    many weights unless magnitudes tie (then more): a layer never keeps more than its share of a parameter budget.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"pruned fraction must be in [0, 1), got {fraction}")
    if std <= 0:
        raise LegrError("a layer whose weights have zero standard deviation cannot be pruned by Han's rule")
    mags = weight.detach().abs().flatten()
    k = math.ceil(fraction * mags.numel() - 1e-9)
    if k == 0:
        return 0.0
    return float(torch.kthvalue(mags.float().cpu(), k).values) / std


def reference_stds(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, float]:
    """``std_l`` of every prunable layer's weights (taken once, on the dense trained model)."""
    return {n: float(m.weight.detach().float().std()) for n, m in prunable_layers(model, names).items()}


# ---------------------------------------------------------------- masks


class Masker:
    """Masks for the weights of ``layers``; pruned weights are zero and receive zero gradient.

    ``attach()`` registers one gradient hook per weight: ``grad -> (grad + l1 * sign(w)) * mask``, so plain SGD
    (with momentum and L2 weight decay, whose term ``wd * w`` is zero where ``w`` is) never moves a pruned weight,
    and ``l1 > 0`` adds the subgradient of ``l1 * |w|`` (L1 regularisation) to the surviving ones.
    """

    def __init__(self, model: nn.Module, layers: Sequence[str] | None = None, l1: float = 0.0) -> None:
        self.model = model
        self.layers = prunable_layers(model, layers)
        self.masks: dict[str, Tensor] = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in self.layers.items()}
        self.l1 = float(l1)
        self._handles: list = []

    def attach(self) -> "Masker":
        self.detach()
        for name, module in self.layers.items():
            self._handles.append(module.weight.register_hook(self._hook(name, module.weight)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str, weight: Tensor) -> Callable[[Tensor], Tensor]:
        def hook(grad: Tensor) -> Tensor:
            if self.l1:
                grad = grad + self.l1 * weight.detach().sign()
            return grad * self.masks[name].to(grad.dtype)

        return hook

    def apply_(self) -> None:
        """Zero every pruned weight in place."""
        with torch.no_grad():
            for name, module in self.layers.items():
                module.weight.mul_(self.masks[name].to(module.weight.dtype))

    def prune_(self, name: str, quality: float, std: float) -> Tensor:
        """Prune layer ``name`` with the threshold ``quality * std`` (masks only ever lose weights); returns the mask."""
        self.masks[name] = self.masks[name] & threshold_mask(self.layers[name].weight, quality, std)
        self.apply_()
        return self.masks[name]

    def load(self, masks: Mapping[str, Tensor]) -> None:
        for name in self.layers:
            if name not in masks or masks[name].shape != self.masks[name].shape:
                raise LegrError(f"mask for layer {name!r} missing or of the wrong shape")
            self.masks[name] = masks[name].to(torch.bool).to(self.masks[name].device)
        self.apply_()

    def density(self) -> dict[str, float]:
        return {n: float(m.float().mean()) for n, m in self.masks.items()}

    def kept_connections(self) -> tuple[int, int]:
        """(surviving, total) weights over the masked layers."""
        return sum(int(m.sum()) for m in self.masks.values()), sum(m.numel() for m in self.masks.values())


# ---------------------------------------------------------------- dropout


def dropout_rate(original: float, kept: float, total: float) -> float:
    """Han's retraining dropout ``D_r = D_o * sqrt(C_r / C_o)`` (``kept``/``total``: connections retained/original)."""
    if total <= 0 or not 0 <= kept <= total:
        raise ValueError(f"need 0 <= kept <= total and total > 0, got {kept}, {total}")
    return float(original) * math.sqrt(kept / total)


def dropout_layers(model: nn.Module) -> dict[str, str]:
    """``{dropout module name: prunable layer name}``: each Dropout is tied to the closest Linear/Conv registered
    before it (the layer whose output units it drops), else the closest one after it."""
    order = [(n, m) for n, m in model.named_modules()
             if isinstance(m, (nn.modules.dropout._DropoutNd, *PRUNABLE_TYPES))]
    out: dict[str, str] = {}
    for i, (name, module) in enumerate(order):
        if isinstance(module, nn.modules.dropout._DropoutNd):
            before = [n for n, m in order[:i] if isinstance(m, PRUNABLE_TYPES)]
            after = [n for n, m in order[i + 1:] if isinstance(m, PRUNABLE_TYPES)]
            if before or after:
                out[name] = before[-1] if before else after[0]
    return out


def adjust_dropout_(model: nn.Module, masker: Masker, original: Mapping[str, float]) -> dict[str, float]:
    """Set every Dropout's ``p`` to ``D_o * sqrt(C_r / C_o)`` of its layer (``original``: name -> D_o); returns them."""
    modules = dict(model.named_modules())
    rates = {}
    for name, layer in dropout_layers(model).items():
        if name not in original or layer not in masker.masks:
            continue
        mask = masker.masks[layer]
        rates[name] = modules[name].p = dropout_rate(original[name], int(mask.sum()), mask.numel())
    return rates


# ---------------------------------------------------------------- sensitivity


@dataclass(frozen=True)
class SensitivityCurve:
    """Accuracy of the model with only ``layer`` pruned to each ``fractions[i]`` (threshold ``qualities[i] * std``)."""

    layer: str
    params: int
    std: float
    fractions: tuple[float, ...]
    qualities: tuple[float, ...]
    top1: tuple[float, ...]
    base_top1: float

    def to_dict(self) -> dict:
        return asdict(self)

    def max_fraction(self, tolerance: float) -> float:
        """Largest pruned fraction whose accuracy drop stays within ``tolerance``, linearly interpolated on the
        monotone envelope of the drops (a fraction counts only if every smaller one is also within tolerance)."""
        drops = np.maximum.accumulate(np.maximum(self.base_top1 - np.asarray(self.top1), 0.0))
        fr = np.asarray(self.fractions)
        xs, ys = np.concatenate([[0.0], drops]), np.concatenate([[0.0], fr])
        if tolerance >= xs[-1]:
            return float(ys[-1])
        i = int(np.searchsorted(xs, tolerance, side="right"))  # xs[i-1] <= tolerance < xs[i]
        lo, hi = xs[i - 1], xs[i]
        t = 0.0 if hi == lo else (tolerance - lo) / (hi - lo)
        return float(ys[i - 1] + t * (ys[i] - ys[i - 1]))


def sensitivity(model: nn.Module, evaluate: Callable[[nn.Module], float],
                fractions: Sequence[float] = DEFAULT_FRACTIONS, layers: Sequence[str] | None = None,
                stds: Mapping[str, float] | None = None, progress: bool = True) -> dict[str, SensitivityCurve]:
    """Prune each layer alone to each fraction (Han's threshold rule), call ``evaluate(model) -> top1``, restore.

    ``evaluate`` should score on a validation split carved from the training data, never the test set.
    """
    fractions = tuple(sorted(float(f) for f in fractions))
    modules = prunable_layers(model, layers)
    stds = dict(stds) if stds is not None else reference_stds(model, list(modules))
    base = float(evaluate(model))
    curves = {}
    with progress_bar("sensitivity", len(modules) * len(fractions), enabled=progress) as advance:
        for name, module in modules.items():
            saved = module.weight.detach().clone()
            qualities, accs = [], []
            for fraction in fractions:
                q = quality_for_fraction(saved, fraction, stds[name])
                with torch.no_grad():
                    module.weight.copy_(saved * threshold_mask(saved, q, stds[name]))
                qualities.append(q)
                accs.append(float(evaluate(model)))
                advance(f"{name} {fraction:.2f}: {100 * accs[-1]:.2f}%")
            with torch.no_grad():
                module.weight.copy_(saved)
            curves[name] = SensitivityCurve(name, saved.numel(), stds[name], fractions, tuple(qualities),
                                            tuple(accs), base)
    return curves


def _envelope(curve: SensitivityCurve) -> tuple[np.ndarray, np.ndarray]:
    """(fractions, accuracy drops) with the point (0, 0) prepended; drops made non-decreasing."""
    drops = np.maximum.accumulate(np.maximum(curve.base_top1 - np.asarray(curve.top1), 0.0))
    return np.concatenate([[0.0], curve.fractions]), np.concatenate([[0.0], drops])


def allocate_fractions(curves: Mapping[str, SensitivityCurve], target: float, total_params: int,
                       rule: str = "cost", iters: int = 100) -> tuple[dict[str, float], float]:
    """Per-layer final pruned fractions reaching an overall compression ``target`` (dense params / non-zeros).

    ``rule="cost"`` (default): each layer takes the grid fraction minimising ``drop_l(f) - lam * params_l * f /
    total_params`` (its prune-only accuracy drop against the share of the network it removes), ``lam`` bisected
    to meet the target: large insensitive layers are pruned hardest, small ones stay dense-ish as they buy little.
    ``rule="tolerance"``: every layer takes the largest fraction whose drop is within one common tolerance.
    Either way the two bracketing solutions are blended so the removed weights meet the target exactly. Returns
    ``(fractions, knob)`` (``lam`` or the tolerance); a target beyond the grid raises ``BudgetError``.
    """
    if target < 1:
        raise ConfigError(f"compression target must be >= 1, got {target}")
    if rule not in ("cost", "tolerance"):
        raise ConfigError(f"allocation rule must be 'cost' or 'tolerance', got {rule!r}")
    need = total_params - total_params / target  # weights to remove
    envelopes = {n: _envelope(c) for n, c in curves.items()}

    def choose(knob: float) -> dict[str, float]:
        if rule == "tolerance":
            return {n: c.max_fraction(knob) for n, c in curves.items()}
        out = {}
        for n, (fr, dr) in envelopes.items():
            obj = dr - knob * curves[n].params * fr / total_params
            out[n] = float(fr[len(obj) - 1 - int(np.argmin(obj[::-1]))])  # ties: the larger fraction
        return out

    def removed(fractions: Mapping[str, float]) -> float:
        return sum(curves[n].params * f for n, f in fractions.items())

    top = 1e9 if rule == "cost" else 1.0 + 1e-9
    if removed(choose(top)) < need:
        best = total_params / (total_params - removed(choose(top)))
        raise BudgetError(f"compression {target:g}x is beyond the sensitivity grid (at most {best:.2f}x with every "
                          f"layer at its largest fraction); add larger fractions")
    lo, hi = 0.0, top
    if removed(choose(lo)) >= need:  # free pruning (no measured drop) suffices: scale it down to the target
        f_hi = choose(lo)
        a = need / removed(f_hi) if removed(f_hi) > 0 else 0.0
        return {n: a * f for n, f in f_hi.items()}, 0.0
    for _ in range(iters):
        if hi - lo <= 1e-9 * max(1.0, hi):
            break
        mid = math.sqrt(max(lo, 1e-12) * hi) if rule == "cost" and hi > 1e3 * max(lo, 1e-12) else (lo + hi) / 2
        lo, hi = (lo, mid) if removed(choose(mid)) >= need else (mid, hi)
    f_hi, f_lo = choose(hi), choose(lo)
    r_hi, r_lo = removed(f_hi), removed(f_lo)
    # the choice jumps at some knob values: blend the two sides to hit the target
    a = 1.0 if r_hi <= r_lo or r_lo >= need else (need - r_lo) / (r_hi - r_lo)
    return {n: f_lo[n] + a * (f_hi[n] - f_lo[n]) for n in curves}, hi


def schedule_fractions(final: Mapping[str, float], rounds: int) -> list[dict[str, float]]:
    """Pruned fraction of every layer after each round: the kept density falls geometrically to ``1 - final``."""
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    return [{n: 1.0 - (1.0 - f) ** (r / rounds) for n, f in final.items()} for r in range(1, rounds + 1)]


# ---------------------------------------------------------------- progress
