"""Compact storage of sparse networks (CSR per layer) and torch sparse-kernel Linear layers for latency checks.

File format ``legr-csr/1``: one safetensors file. Every Linear/Conv ``weight`` (viewed as a matrix: rows = output
units, columns = the rest, flattened) is stored in CSR as three tensors ``<name>.csr_values`` (float32, the
non-zeros row by row), ``<name>.csr_col`` (column of each non-zero: uint8 if the matrix has at most 256 columns,
int16 up to 32,768, else int32) and ``<name>.csr_rowptr`` (int32, rows + 1); the header metadata records each
weight's dense shape. Every other tensor (biases, norm parameters and buffers) is stored dense. ``load_sparse``
returns an ordinary dense state_dict, equal element for element to the one saved.

Byte counts (``storage_report``): *dense bytes* = 4 bytes per parameter; *sparse bytes* = the bytes of every tensor
in the file (values + indices + row pointers + dense tensors), not counting the small JSON header.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from legr.errors import CheckpointError
from legr.paths import atomic_write_bytes

FORMAT = "legr-csr/1"
_SUFFIXES = (".csr_values", ".csr_col", ".csr_rowptr")


def _index_dtype(columns: int) -> torch.dtype:
    return torch.uint8 if columns <= 256 else torch.int16 if columns <= 32768 else torch.int32


def to_csr(weight: Tensor) -> dict[str, Tensor]:
    """CSR pieces (values, col, rowptr) of ``weight`` viewed as (rows, -1)."""
    mat = weight.detach().to("cpu", torch.float32).reshape(weight.shape[0], -1)
    rows, cols = (mat != 0).nonzero(as_tuple=True)
    rowptr = torch.zeros(mat.shape[0] + 1, dtype=torch.int64)
    rowptr[1:] = torch.bincount(rows, minlength=mat.shape[0]).cumsum(0)
    col = cols.to(_index_dtype(mat.shape[1]))
    return {"values": mat[rows, cols].contiguous(), "col": col.contiguous(), "rowptr": rowptr.to(torch.int32)}


def from_csr(values: Tensor, col: Tensor, rowptr: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The dense float32 tensor of ``shape`` held by CSR pieces."""
    rows_n = shape[0]
    cols_n = int(torch.tensor(shape[1:]).prod()) if len(shape) > 1 else 1
    counts = (rowptr[1:].long() - rowptr[:-1].long())
    rows = torch.repeat_interleave(torch.arange(rows_n), counts)
    dense = torch.zeros(rows_n, cols_n, dtype=torch.float32)
    dense[rows, col.long()] = values.float()
    return dense.reshape(shape)


def sparse_weight_names(model_or_state: nn.Module | Mapping[str, Tensor]) -> list[str]:
    """State-dict keys stored in CSR: the ``weight`` of every Linear/Conv module (or, for a state dict, every
    ``*.weight`` with at least 2 dimensions)."""
    if isinstance(model_or_state, nn.Module):
        from legr.methods.magnitude.pruning import prunable_layers

        return [f"{n}.weight" for n in prunable_layers(model_or_state)]
    return [k for k, v in model_or_state.items() if k.endswith("weight") and v.dim() >= 2]


def encode_sparse(state_dict: Mapping[str, Tensor], sparse_keys: list[str]) -> tuple[dict[str, Tensor], dict]:
    """(tensors, shapes) of the ``legr-csr/1`` encoding of ``state_dict``."""
    tensors: dict[str, Tensor] = {}
    shapes: dict[str, list[int]] = {}
    for key, value in state_dict.items():
        if key in sparse_keys:
            for part, t in to_csr(value).items():
                tensors[f"{key}.csr_{part}"] = t
            shapes[key] = list(value.shape)
        else:
            tensors[key] = value.detach().to("cpu").contiguous().clone()
    return tensors, shapes


def save_sparse(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> dict:
    """Write ``model``'s state_dict in ``legr-csr/1`` atomically; returns ``storage_report`` of it."""
    state = model.state_dict()
    tensors, shapes = encode_sparse(state, sparse_weight_names(model))
    meta = {"format": FORMAT, "shapes": json.dumps(shapes), **dict(metadata or {})}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=meta))
    return storage_report(model, tensors)


def load_sparse(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a ``legr-csr/1`` file back into a dense state_dict (float32 weights, other tensors as saved)."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # missing file, not safetensors, truncated
        raise CheckpointError(f"cannot read sparse model {path}: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} file (format: {meta.get('format')!r})")
    shapes = json.loads(meta.get("shapes", "{}"))
    state: dict[str, Tensor] = {}
    for key, shape in shapes.items():
        try:
            state[key] = from_csr(*(tensors.pop(key + s) for s in _SUFFIXES), tuple(shape))
        except KeyError:
            raise CheckpointError(f"{path}: CSR pieces of {key} are missing") from None
    state.update(tensors)
    return state


def storage_report(model: nn.Module, tensors: Mapping[str, Tensor] | None = None) -> dict:
    """Parameter counts and bytes: dense vs non-zero params, dense (fp32) bytes vs CSR bytes incl. indices."""
    if tensors is None:
        tensors, _ = encode_sparse(model.state_dict(), sparse_weight_names(model))
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    sparse_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    index_bytes = sum(t.numel() * t.element_size() for k, t in tensors.items()
                      if k.endswith((".csr_col", ".csr_rowptr")))
    dense_bytes = sum(b.numel() * b.element_size() for b in model.state_dict().values())
    return {"params": params, "nonzero": nonzero, "dense_bytes": dense_bytes, "sparse_bytes": sparse_bytes,
            "index_bytes": index_bytes}


# ---------------------------------------------------------------- torch sparse kernels


class SparseLinear(nn.Module):
    """A Linear layer computing ``x @ W.T + b`` with ``W`` held as a torch CSR tensor (``torch.sparse.mm``)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            self.weight = linear.weight.detach().to_sparse_csr()
        self.bias = None if linear.bias is None else linear.bias.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


def sparse_kernel_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose every ``nn.Linear`` is a ``SparseLinear`` (convolutions stay dense)."""
    import copy

    out = copy.deepcopy(model).eval()
    for name, module in list(out.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, SparseLinear(child))
    return out
