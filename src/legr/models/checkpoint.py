"""Safe checkpoint I/O: read state_dicts (torch `weights_only=True` or safetensors), load them with one-line errors."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path

import safetensors.torch
import torch
from torch import Tensor, nn

from legr.errors import CheckpointError
from legr.paths import atomic_write_bytes

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_PREFIXES = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile
_SHOW = 5  # how many keys an error message lists before "(+N more)"


def _short(items: list[str]) -> str:
    more = f" (+{len(items) - _SHOW} more)" if len(items) > _SHOW else ""
    return ", ".join(items[:_SHOW]) + more


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint is not a file: {path}")


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    """The state_dict inside a loaded object: raw, or under 'state_dict' / 'model_state_dict' / 'model'."""
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no state_dict (got {type(obj).__name__})")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path} is not a state_dict of tensors: non-tensor entries {_short(bad)}")
    return dict(obj)


def strip_prefixes(state_dict: Mapping[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Remove `module.` / `_orig_mod.` prefixes carried by every key (unless the model's own keys carry them)."""
    sd = dict(state_dict)
    own = list(model.state_dict()) if model is not None else []
    changed = True
    while changed and sd:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd) and not (own and all(k.startswith(prefix) for k in own)):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state_dict on CPU: `.safetensors` via safetensors, anything else via `torch.load(weights_only=True)`."""
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() == ".safetensors":
        try:
            obj = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types for bad headers / truncation
            raise CheckpointError(f"cannot read safetensors file {path}: {_first_line(exc)}") from None
        return _unwrap(obj, path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        # torch words it "Unsupported global: GLOBAL x.y ..." or (2.14) "Trying to load unsupported GLOBAL x.y ..."
        unsafe = re.search(r"unsupported global:?(?: GLOBAL)? ([\w.]+)", str(exc), re.IGNORECASE)
        if unsafe:
            raise CheckpointError(
                f"{path} contains pickled Python objects ({unsafe.group(1)}) and is refused for safety: loading it "
                "could run arbitrary code; re-save the weights as a plain state_dict of tensors or .safetensors"
            ) from None
        reason = _first_line(exc)
        raise CheckpointError(f"cannot read checkpoint {path} (corrupt or not a torch file): {reason}") from None
    return _unwrap(obj, path)


def _first_line(exc: BaseException) -> str:
    """A short reason: torch's weights-only unpickler detail if present, else the first line of the message that is
    not torch's advice about ``weights_only`` (legr never loads a checkpoint with ``weights_only=False``)."""
    text = str(exc)
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    lines = [line for line in text.strip().splitlines() if line.strip() and "weights_only" not in line]
    reason = detail.group(1) if detail else (lines[0] if lines else type(exc).__name__)
    return reason.strip()[:200]


def load_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True, source: str = "state_dict"
) -> nn.Module:
    """Load `state_dict` into `model` (prefixes stripped); mismatches raise one-line `CheckpointError`.

    Shape mismatches always raise; missing/unexpected keys raise when `strict`. A missing BN `num_batches_tracked`
    is never an error (old checkpoints, e.g. akamaster's, predate it).
    """
    sd = strip_prefixes(state_dict, model)
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} vs model {tuple(v.shape)}" for k, v in own.items() if _differs(sd.get(k), v)]
    problems = []
    if strict and missing:
        problems.append(f"{len(missing)} missing keys: {_short(missing)}")
    if strict and unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_short(unexpected)}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {_short(shapes)}")
    if problems:
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return model


def _differs(loaded: Tensor | None, own: Tensor) -> bool:
    return loaded is not None and loaded.shape != own.shape


def load_checkpoint(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> nn.Module:
    """Load the checkpoint at `path` into `model` in place and return it (see `read_state_dict`, `load_state_dict`)."""
    return load_state_dict(model, read_state_dict(path), strict=strict, source=str(path))


def save_state_dict(
    state_dict: Mapping[str, Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write `state_dict` as safetensors, atomically (tensors copied to contiguous CPU memory, shared storage split)."""
    bad = [str(k) for k, v in state_dict.items() if not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"cannot save non-tensor entries: {_short(bad)}")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(path, safetensors.torch.save(tensors, metadata=metadata))


def file_fingerprint(path: str | os.PathLike, length: int = 16) -> str:
    """First `length` hex chars of the file's sha256."""
    path = Path(path)
    _check_file(path)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
