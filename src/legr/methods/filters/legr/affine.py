"""LeGR's search space: one affine transform ``alpha_l * score + kappa_l`` per layer (LCP: alpha fixed at 1).

Random members: ``alpha = exp(N(0, 1))``, ``kappa = N(0, std_l)``; a mutation redraws ``max(1, int(f * L))`` distinct
layers with ``alpha *= exp(N(0, s * sigma))``, ``sigma = 1 - step / (1.25 * total)``, and ``kappa += N(0, s * std_l)``,
where ``std_l`` is the standard deviation of layer l's criterion scores (times ``kappa_scale``) and ``s`` the
``mutation_scale`` (the paper: 1; smaller: a more local search).
`legr.methods.filters.criteria.normalized_scores` may put every layer's scores on one scale first (``search.normalize``).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from legr.errors import ConfigError


def _frozen_array(values: Any, name: str) -> np.ndarray:
    arr = np.array(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ConfigError(f"{name} must be finite, got {arr.tolist()}")
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class AffineTransform:
    """Per-layer ``alpha`` and ``kappa`` (float64, read-only, in the space's ``layer_names`` order)."""

    alpha: np.ndarray
    kappa: np.ndarray

    def __post_init__(self) -> None:
        alpha, kappa = _frozen_array(self.alpha, "alpha"), _frozen_array(self.kappa, "kappa")
        if alpha.shape != kappa.shape:
            raise ConfigError(f"alpha and kappa differ in length ({alpha.size} != {kappa.size})")
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "kappa", kappa)

    def apply(self, layer_index: int, scores: np.ndarray) -> np.ndarray:
        """Transformed scores of layer ``layer_index``: ``alpha * scores + kappa``."""
        return self.alpha[layer_index] * np.asarray(scores) + self.kappa[layer_index]

    __call__ = apply

    def __len__(self) -> int:
        return int(self.alpha.size)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AffineTransform):
            return NotImplemented
        return np.array_equal(self.alpha, other.alpha) and np.array_equal(self.kappa, other.kappa)

    def __hash__(self) -> int:
        return hash((self.alpha.tobytes(), self.kappa.tobytes()))


class AffineSpace:
    """`SearchSpace` of `AffineTransform` over ``layer_names``; ``learn_alpha=False`` gives LCP (alpha == 1)."""

    def __init__(self, layer_names: Sequence[str], score_std: Sequence[float], mutate_fraction: float = 0.1,
                 kappa_scale: float = 1.0, learn_alpha: bool = True, mutation_scale: float = 1.0) -> None:
        self.layer_names = tuple(str(n) for n in layer_names)
        self.score_std = _frozen_array(score_std, "score_std")
        if not self.layer_names:
            raise ConfigError("AffineSpace needs at least one layer")
        if len(set(self.layer_names)) != len(self.layer_names):
            raise ConfigError("AffineSpace layer names must be unique")
        if self.score_std.size != len(self.layer_names):
            raise ConfigError(f"score_std has {self.score_std.size} entries for {len(self.layer_names)} layers")
        if np.any(self.score_std < 0):
            raise ConfigError("score_std must be >= 0")
        if not 0.0 < mutate_fraction <= 1.0:
            raise ConfigError(f"mutate_fraction must be in (0, 1], got {mutate_fraction}")
        for name, value in (("kappa_scale", kappa_scale), ("mutation_scale", mutation_scale)):
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be finite and >= 0, got {value}")
        self.mutation_scale = float(mutation_scale)
        self.mutate_fraction = float(mutate_fraction)
        self.kappa_scale = float(kappa_scale)
        self.learn_alpha = bool(learn_alpha)
        self._kappa_std = self.score_std * self.kappa_scale

    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def mutate_layers(self) -> int:
        """How many distinct layers one mutation changes: ``max(1, int(mutate_fraction * L))``."""
        return max(1, int(self.mutate_fraction * self.num_layers))

    @property
    def fingerprint(self) -> str:
        """sha256 (16 hex) of layer names, score stds and options: a state file is only resumed by the same space."""
        desc = {"layers": self.layer_names, "score_std": [repr(float(s)) for s in self.score_std],
                "mutate_fraction": self.mutate_fraction, "kappa_scale": self.kappa_scale,
                "learn_alpha": self.learn_alpha,
                **({"mutation_scale": self.mutation_scale} if self.mutation_scale != 1.0 else {})}
        return hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:16]

    def identity(self) -> AffineTransform:
        return AffineTransform(np.ones(self.num_layers), np.zeros(self.num_layers))

    def random(self, rng: np.random.Generator) -> AffineTransform:
        n = self.num_layers
        alpha = np.exp(rng.normal(0.0, 1.0, n)) if self.learn_alpha else np.ones(n)
        return AffineTransform(alpha, rng.normal(0.0, self._kappa_std))

    @staticmethod
    def sigma(step: int, total: int) -> float:
        """Std of log-alpha mutations at evaluation ``step`` of ``total``: ``1 - step / (1.25 * total)``, >= 0."""
        return max(0.0, 1.0 - step / (1.25 * total))

    def mutate(self, parent: AffineTransform, rng: np.random.Generator, step: int, total: int) -> AffineTransform:
        layers = rng.choice(self.num_layers, size=self.mutate_layers, replace=False)
        alpha, kappa = parent.alpha.copy(), parent.kappa.copy()
        if self.learn_alpha:
            alpha[layers] *= np.exp(rng.normal(0.0, self.mutation_scale * self.sigma(step, total), layers.size))
        kappa[layers] += rng.normal(0.0, self.mutation_scale * self._kappa_std[layers])
        return AffineTransform(alpha, kappa)

    def to_vector(self, candidate: AffineTransform) -> np.ndarray:
        """Unit coordinates, in which a `random` member is a standard normal: ``log alpha`` (when learned), then
        ``kappa`` over its random spread (1 where a layer's spread is 0)."""
        kappa = candidate.kappa / self._unit
        return np.concatenate([np.log(candidate.alpha), kappa]) if self.learn_alpha else kappa

    def from_vector(self, x: np.ndarray) -> AffineTransform:
        x = np.asarray(x, dtype=np.float64)
        n = self.num_layers
        if self.learn_alpha:
            return AffineTransform(np.exp(np.clip(x[:n], -30.0, 30.0)), x[n:] * self._unit)
        return AffineTransform(np.ones(n), x * self._unit)

    @property
    def _unit(self) -> np.ndarray:
        return np.where(self._kappa_std > 0, self._kappa_std, 1.0)

    def to_json(self, candidate: AffineTransform) -> dict[str, list[float]]:
        return {"alpha": [float(a) for a in candidate.alpha], "kappa": [float(k) for k in candidate.kappa]}

    def from_json(self, obj: Any) -> AffineTransform:
        try:
            t = AffineTransform(np.asarray(obj["alpha"], dtype=np.float64), np.asarray(obj["kappa"], dtype=np.float64))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not an affine transform: {exc}") from exc
        if len(t) != self.num_layers:
            raise ConfigError(f"affine transform has {len(t)} layers, the space has {self.num_layers}")
        return t

    def as_dict(self, candidate: AffineTransform) -> dict[str, tuple[float, float]]:
        """``{layer name: (alpha, kappa)}`` for building a ranking artifact."""
        return {n: (float(a), float(k)) for n, a, k in zip(self.layer_names, candidate.alpha, candidate.kappa)}
