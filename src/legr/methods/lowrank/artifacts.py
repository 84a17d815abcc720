"""A low-rank member as data: ``ranks.json`` (per-layer ranks, the layers left whole and why, figures, the source
network) beside ``model.safetensors`` (the decomposed network's state_dict). Loading builds the factored shapes in
a fresh source network (`apply_ranks` without weights) and loads the weights into it (``weights_only`` reading,
strict), so no module is ever pickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from legr.engine.artifacts import WEIGHTS_FILE
from legr.errors import CheckpointError
from legr.methods.lowrank.decompose import apply_ranks
from legr.models import load_checkpoint, save_state_dict
from legr.paths import atomic_write_text

RANKS_FILE = "ranks.json"



def save_lowrank(folder: Path, net: nn.Module, record: dict[str, Any]) -> None:
    """Write the member: weights first, ``ranks.json`` last (its presence marks the member complete)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_state_dict(net.state_dict(), folder / WEIGHTS_FILE)
    atomic_write_text(folder / RANKS_FILE, json.dumps(record, indent=1))


def read_record(folder: Path) -> dict[str, Any]:
    path = Path(folder) / RANKS_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read low-rank member {path}: {exc}") from None
    if not isinstance(record.get("ranks"), dict):
        raise CheckpointError(f"{path} holds no per-layer ranks")
    return record


def load_lowrank(folder: Path, source: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """The member in ``folder`` built into ``source`` (a fresh network of the source architecture, changed in place)
    with its weights loaded, in eval mode, and its record."""
    record = read_record(folder)
    net = apply_ranks(source, {k: int(v) for k, v in record["ranks"].items()}, weights=False)
    load_checkpoint(net, Path(folder) / WEIGHTS_FILE)
    return net.eval(), record
