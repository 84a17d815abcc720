"""Where legr finds shared data/weights and where it caches decoded datasets.

Environment variables (all optional):
- ``LEGR_DATA``: folder with datasets (default: ``./data``); the project's shared copy is ``../shared/data``.
- ``LEGR_WEIGHTS``: folder with pretrained checkpoints (default: ``./weights``).
- ``LEGR_CACHE``: folder for decoded dataset caches (default: ``~/.cache/legr``).
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from legr.errors import LegrError


def data_dir() -> Path:
    return Path(os.environ.get("LEGR_DATA", "data")).expanduser()


def weights_dir() -> Path:
    return Path(os.environ.get("LEGR_WEIGHTS", "weights")).expanduser()


def cache_dir() -> Path:
    path = Path(os.environ.get("LEGR_CACHE", Path.home() / ".cache" / "legr")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_folder(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` (and its parents), or raise a one-line `LegrError` saying why it cannot be
    one (a parent is a regular file, a read-only or virtual file system, no permission)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LegrError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise LegrError(f"cannot write to output folder {path}: permission denied")
    return path


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_file(path) as fh: fh.write(...)``: the bytes go to a temporary file beside ``path`` that is
    synced and renamed onto it (mode 0644 less the umask) only when the block succeeds, and removed otherwise, so a
    killed or failing writer never leaves half a file. Every file legr writes goes through here; so in a
    data-parallel job (torch.distributed initialized) only rank 0 writes: the others' bytes go nowhere."""
    if _secondary_rank():
        yield io.BytesIO()
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o644 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _secondary_rank() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see `atomic_file`)."""
    with atomic_file(path) as fh:
        fh.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
