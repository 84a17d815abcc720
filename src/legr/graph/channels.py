"""Channel bookkeeping used while walking a traced graph.

Every channel of every tensor is an *element*; elements that must be removed together are merged in a union-find.
A tensor value that carries channels is described by a `ChanMap`: which axis is the channel axis and, for each
position along it, the element it holds. A `Layer` records how a module's parameters are tied to elements, which is
all the surgery and the cost model need.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class UnionFind:
    """Union-find over integer elements with path halving; elements are created on demand with `add`."""

    def __init__(self) -> None:
        self.parent: list[int] = []

    def add(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def roots(self) -> np.ndarray:
        return np.fromiter((self.find(i) for i in range(len(self.parent))), dtype=np.int64, count=len(self.parent))


@dataclass
class ChanMap:
    """Channel axis of a tensor value and the element held at each position along it.

    ``nonzero`` names the op (and the ops before it) through which a removed (all-zero) channel would hold a
    non-zero value here, e.g. ``module 'act' (Sigmoid)``; None when it stays zero (the value is *zero-safe*). Such a
    value may only be multiplied with a zero-safe tensor before it reaches a layer. ``constant`` (meaningful with
    ``nonzero``): a removed channel holds one value here that depends on parameters only, the same at every position
    and for every input (a learnable scalar affine ``x * s + b`` after an activation: ``b``); a layer reading it
    without zero padding can fold that value into a bias (`legr.graph.compensation`). False unless a rule proved it.
    """

    axis: int
    ids: np.ndarray
    nonzero: str | None = None
    constant: bool = False

    @property
    def zero_safe(self) -> bool:
        return self.nonzero is None

    @property
    def uniform(self) -> bool:
        """A removed channel holds one input-independent value at every position (zero or ``constant``)."""
        return self.nonzero is None or self.constant

    def with_ids(self, ids: np.ndarray) -> "ChanMap":
        return ChanMap(self.axis, ids, self.nonzero, self.constant)

    def moved(self, axis: int, ids: np.ndarray | None = None) -> "ChanMap":
        """The same channels (or ``ids``) on another axis, with the same removed-channel value."""
        return ChanMap(axis, self.ids if ids is None else ids, self.nonzero, self.constant)


@dataclass
class Tie:
    """One dimension of one parameter/buffer whose positions hold elements.

    role: "out" for a producer's output dim (weights that create the channel, biases, norm affine params and
    running stats), "in" for a consumer's input dim.
    """

    param: str
    dim: int
    ids: np.ndarray
    role: str


@dataclass
class Layer:
    """A module call site: its parameter ties and its multiply-accumulate count as a function of kept widths.

    MACs per image = ``macs_coef * prod(kept(ids) for ids in macs_dims)``; ``macs_dims`` lists the element arrays
    whose kept counts multiply (e.g. [in, out] for a dense conv, [out] for a depthwise conv, [] if fixed).
    """

    name: str  # module qualified name
    kind: str  # "conv", "linear", "norm", ...
    ties: list[Tie] = field(default_factory=list)
    macs_coef: float = 0.0
    macs_dims: list[np.ndarray] = field(default_factory=list)
    producer_ids: np.ndarray | None = None  # output elements this layer creates or scores (conv/linear/depthwise)
    fold: str | None = None  # the module is replaced by its folded form before slicing (`legr.engine.surgery.FOLDS`)


@dataclass
class Compensation:
    """A layer (graph node ``node``, an affine op: conv or linear) reads channels ``in_ids`` (on ``in_axis`` of its
    input) that hold an input-independent constant once removed. Its contribution to the layer's output (per output
    channel, on ``out_axis``) is added, times ``sign``, to the tensor ``module.tensor`` before the channels are
    sliced away: the layer's own bias (+1) or the running mean of the batch norm that alone reads it (-1). An empty
    ``module``: nothing to shift (that batch norm always normalizes with batch statistics, which absorb it).
    ``created``: the layer (a torch.nn conv or linear layer) has no bias; surgery gives it one holding the shift."""

    node: str
    in_ids: np.ndarray
    in_axis: int
    out_axis: int
    module: str
    tensor: str
    sign: float
    created: bool = False
