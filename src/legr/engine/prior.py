"""The probability layer (PCNN, Feng et al., ICLR 2019 submission): adapt any network to the class prior of the
environment it is deployed in, at run time, without fine-tuning.

A classifier trained on a split whose classes occur with prior ``P(i)`` outputs ``P(i|x)``. Deployed where classes
occur with prior ``P_t(i)`` (a camera that mostly sees two kinds of objects), Bayes' rule under a pure prior shift
(``P_t(x|i) = P(x|i)``; Saerens, Latinne & Decaestecker, Neural Computation 2002) gives the posterior there::

    P_t(i|x) = P_t(i) / P(i) * P(i|x) / sum_j P_t(j) / P(j) * P(j|x)

Two guards make this safe to append to any network:

- **floor**: the environment prior is clamped to at least ``floor`` before the ratio is taken, so a class the
  environment has not shown (yet) keeps a non-zero posterior and can still be predicted when it turns up;
- **omega**: where the network is confident (its largest raw probability is above ``omega``) the raw softmax passes
  through unchanged, so a confident prediction of a class the prior calls rare is kept (PCNN's way of still seeing new
  classes). ``omega = 1`` corrects everything, ``omega = 0`` nothing.

Bayes' rule assumes the network's probabilities are calibrated; a pruned network's rarely are, and an online estimate
of the prior built from miscalibrated posteriors drifts (EM amplifies a network's bias towards some classes). The
layer therefore optionally calibrates first: ``softmax(logits / temperature + bias)``, the temperature and per-class
biases fitted on labelled validation logits (`fit_calibration`: bias-corrected temperature scaling, Alexandari,
Kundaje & Shrikumar, ICML 2020, who found it the best companion of EM under label shift). The posterior the prior
*estimator* takes may be calibrated differently from the one the layer *decides* with (``estimate_temperature``,
``estimate_bias``): class biases that make an estimate unbiased also move the network's own decisions, which a layer
at the training prior should leave alone. Not in the PCNN paper.

`ProbabilityLayer` maps logits to probabilities (the corrected posterior); `WithProbabilityLayer` appends it to a
network and takes the environment prior as a second input, so the ONNX export (`export_with_layer`) is one file the
runtime feeds with its current prior estimate. The estimators of that prior from the stream itself are
`legr.engine.prior_estimate`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from legr.errors import LegrError

PRIOR_INPUT = "prior"  # the ONNX input holding the environment prior


def as_prior(values: Sequence[float] | torch.Tensor, num_classes: int | None = None, *,
             what: str = "prior") -> torch.Tensor:
    """``values`` as a float64 probability vector (non-negative, normalized to sum 1); a wrong length, a negative or
    non-finite entry, or an all-zero vector is a one-line `LegrError` naming ``what``."""
    prior = torch.as_tensor(values, dtype=torch.float64).detach().cpu().flatten()
    if num_classes is not None and len(prior) != num_classes:
        raise LegrError(f"{what} has {len(prior)} entries, the network {num_classes} classes")
    if not torch.isfinite(prior).all() or (prior < 0).any():
        raise LegrError(f"{what} must be finite and non-negative, got {prior.tolist()}")
    total = float(prior.sum())
    if total <= 0:
        raise LegrError(f"{what} sums to zero: at least one class must have a positive probability")
    return prior / total


def class_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The class prior of a labelled split (class frequencies, float64): the training prior ``P(i)`` the network
    learned. A class absent from the split is an error (the ratio ``P_t(i) / P(i)`` would divide by zero)."""
    counts = torch.bincount(torch.as_tensor(labels).long().flatten().cpu(), minlength=num_classes).double()
    if len(counts) > num_classes:
        raise LegrError(f"labels go up to {len(counts) - 1}, but the network has {num_classes} classes")
    missing = (counts == 0).nonzero().flatten().tolist()
    if missing:
        raise LegrError(f"classes {missing} never occur in the training split: no training prior for them")
    return counts / counts.sum()


def bayes_correct(probs: torch.Tensor, train_prior: torch.Tensor, env_prior: torch.Tensor,
                  floor: float | torch.Tensor = 0.0) -> torch.Tensor:
    """The prior-shift correction of posteriors ``probs`` (N, C): ``probs * max(env_prior, floor) / train_prior``,
    renormalized per row. Pure tensor ops (exports to ONNX); no confidence gate (see `ProbabilityLayer`)."""
    ratio = torch.clamp(env_prior.to(probs.dtype), min=floor) / train_prior.to(probs.dtype)
    weighted = probs * ratio
    return weighted / weighted.sum(dim=-1, keepdim=True)


class ProbabilityLayer(nn.Module):
    """Logits -> the environment's posterior (PCNN's probability layer; see the module doc).

    ``train_prior``: the training split's class prior (`class_prior`). ``env_prior``: the environment's prior held
    in the layer (default: the training prior, i.e. the identity); `forward` may take another per call (what the
    runtime's estimator gives, and the ONNX input). ``omega`` in [0, 1]: rows whose largest raw probability exceeds
    it pass through unchanged. ``floor`` in [0, 1 / classes]: the least prior any class is given. ``temperature``
    divides the logits and ``bias`` (per class) is added before the softmax (1 and none: the network's own
    probabilities; `fit_calibration` fits both); ``estimate_temperature`` and ``estimate_bias`` make the posterior
    an online prior estimator takes (`estimation_posterior`; default: the same as the layer's).
    """

    def __init__(self, train_prior: Sequence[float] | torch.Tensor, *, env_prior: Sequence[float] | torch.Tensor |
                 None = None, omega: float = 1.0, floor: float = 1e-3, temperature: float = 1.0,
                 bias: Sequence[float] | torch.Tensor | None = None, estimate_temperature: float | None = None,
                 estimate_bias: Sequence[float] | torch.Tensor | None = None):
        super().__init__()
        train = as_prior(train_prior, what="training prior")
        if (train <= 0).any():
            raise LegrError("training prior must be positive for every class (the correction divides by it)")
        classes = len(train)
        if not 0.0 <= omega <= 1.0:
            raise LegrError(f"omega must be in [0, 1], got {omega}")
        if not 0.0 <= floor <= 1.0 / classes:
            raise LegrError(f"floor must be in [0, 1/classes = {1.0 / classes:.4g}], got {floor}")
        estimate_temperature = temperature if estimate_temperature is None else estimate_temperature
        if not (temperature > 0 and estimate_temperature > 0):
            raise LegrError(f"temperature must be positive, got {temperature} and {estimate_temperature}")
        env = train if env_prior is None else as_prior(env_prior, classes, what="environment prior")
        self.num_classes, self.omega, self.floor, self.temperature = classes, float(omega), float(floor), \
            float(temperature)
        bias = _bias(bias, classes)
        estimate_bias = bias if estimate_bias is None else _bias(estimate_bias, classes)
        self.estimate_temperature = float(estimate_temperature)
        self.register_buffer("train_prior", train.float())
        self.register_buffer("env_prior", env.float())
        self.register_buffer("bias", bias.float())
        self.register_buffer("estimate_bias", estimate_bias.float())

    def set_prior(self, env_prior: Sequence[float] | torch.Tensor) -> None:
        """Hold ``env_prior`` as the environment's prior (used when `forward` gets none)."""
        self.env_prior.copy_(as_prior(env_prior, self.num_classes, what="environment prior").float())

    def reset(self) -> None:
        """Back to the identity: the environment prior is the training prior again."""
        self.env_prior.copy_(self.train_prior)

    def posterior(self, logits: torch.Tensor) -> torch.Tensor:
        """The network's (calibrated) posterior under the training prior: ``softmax(logits / temperature + bias)``."""
        return _calibrated(logits, self.temperature, self.bias)

    def estimation_posterior(self, logits: torch.Tensor) -> torch.Tensor:
        """The posterior an online prior estimator takes (``estimate_temperature``, ``estimate_bias``)."""
        return _calibrated(logits, self.estimate_temperature, self.estimate_bias)

    def forward(self, logits: torch.Tensor, env_prior: torch.Tensor | None = None) -> torch.Tensor:
        probs = self.posterior(logits)
        prior = self.env_prior if env_prior is None else env_prior.reshape(-1)
        corrected = bayes_correct(probs, self.train_prior, prior, self.floor)
        confident = probs.max(dim=-1, keepdim=True).values > self.omega
        return torch.where(confident, probs, corrected)

    def extra_repr(self) -> str:
        calibrated = ", bias" if self.bias.any() else ""
        return f"classes={self.num_classes}, omega={self.omega:g}, floor={self.floor:g}, T={self.temperature:g}" + \
            calibrated


def _bias(values: Sequence[float] | torch.Tensor | None, classes: int) -> torch.Tensor:
    bias = torch.zeros(classes) if values is None else torch.as_tensor(values, dtype=torch.float32).flatten()
    if len(bias) != classes or not torch.isfinite(bias).all():
        raise LegrError(f"bias must be {classes} finite numbers, got {bias.tolist()}")
    return bias


def _calibrated(logits: torch.Tensor, temperature: float, bias: torch.Tensor) -> torch.Tensor:
    scaled = logits / temperature if temperature != 1.0 else logits
    return torch.softmax(scaled + bias.to(scaled.dtype) if bias.any() else scaled, dim=-1)


def fit_calibration(logits: torch.Tensor, labels: torch.Tensor, *, bias: bool = True) -> tuple[float, torch.Tensor]:
    """The temperature and per-class biases (mean zero; zeros without ``bias``) that minimize the cross-entropy of
    ``softmax(logits / temperature + bias)`` on labelled logits (a validation split): bias-corrected temperature
    scaling (BCTS). Convex in (1 / temperature, bias); L-BFGS in float64."""
    x = torch.as_tensor(logits).detach().double().cpu()
    y = torch.as_tensor(labels).detach().long().cpu()
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise LegrError(f"calibration needs logits (N, classes) and N labels, got {tuple(x.shape)} and {len(y)}")
    inverse = torch.ones(1, dtype=torch.float64, requires_grad=True)
    shift = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=bias)
    params = [inverse, shift] if bias else [inverse]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x * inverse + shift, y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    scale = float(inverse.detach())
    if not scale > 0:
        raise LegrError("calibration failed: the fitted temperature is not positive (are the logits informative?)")
    return 1.0 / scale, (shift.detach() - shift.detach().mean()).float()


class WithProbabilityLayer(nn.Module):
    """A network with the probability layer appended: ``(images, env_prior) -> (corrected probabilities, the
    posterior a prior estimator takes)`` (``env_prior`` omitted: the layer's own), everything a runtime needs."""

    def __init__(self, net: nn.Module, layer: ProbabilityLayer):
        super().__init__()
        self.net, self.layer = net, layer

    def forward(self, x: torch.Tensor, env_prior: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return self.layer(logits, env_prior), self.layer.estimation_posterior(logits)


def export_with_layer(net: nn.Module, layer: ProbabilityLayer, input_size: Sequence[int],
                      path: str | os.PathLike[str], *, env_prior: Sequence[float] | torch.Tensor | None = None,
                      opset: int = 17, atol: float = 1e-5) -> dict[str, Any]:
    """Export ``net`` + ``layer`` to one ONNX file with two inputs, ``input`` (images, dynamic batch) and ``prior``
    (the environment prior, ``classes`` floats), and two outputs, ``output0`` the corrected probabilities and
    ``output1`` the posterior the runtime's prior estimator takes (`legr.engine.prior_estimate`); checked in
    onnxruntime against PyTorch at ``env_prior`` (default: a skewed prior, so that the check exercises the
    correction) before the file is written (`legr.engine.export.export_onnx`)."""
    from legr.engine.export import export_onnx

    classes = layer.num_classes
    if env_prior is None:  # one class 10x the others: every part of the correction moves the output
        env_prior = torch.ones(classes, dtype=torch.float64).index_fill_(0, torch.tensor([0]), 10.0)
    prior = as_prior(env_prior, classes, what="environment prior").float()
    return export_onnx(WithProbabilityLayer(net, layer), input_size, path, opset=opset, atol=atol,
                       extra_inputs={PRIOR_INPUT: prior})
