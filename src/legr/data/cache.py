"""Cache of decoded datasets as uncompressed .npz files in ``legr.paths.cache_dir()``."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from legr.paths import atomic_file, cache_dir

CACHE_VERSION = 1
Arrays = dict[str, np.ndarray]


def source_fingerprint(path: Path) -> str:
    """Resolved path + size + mtime of a file; for a directory, of every file below it."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return f"{path}|{st.st_size}|{st.st_mtime_ns}"
    parts = [str(path)]
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames.sort()
        for fname in sorted(filenames):
            st = os.stat(os.path.join(dirpath, fname))
            parts.append(f"{os.path.relpath(os.path.join(dirpath, fname), path)}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)


def cache_path(kind: str, source: Path, **options) -> Path:
    """Cache file for ``kind`` decoded from ``source`` with ``options`` (changes when the source changes)."""
    key = f"v{CACHE_VERSION}|{kind}|{sorted(options.items())}|{source_fingerprint(source)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / f"{kind}-{digest}.npz"


def cached_arrays(path: Path, build: Callable[[], Arrays]) -> Arrays:
    """Load arrays from ``path`` if it is readable, else ``build()`` them and write ``path`` atomically."""
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError):
            pass  # corrupt or stale: rebuild below
    arrays = build()
    try:
        _write_npz(path, arrays)
    except OSError as exc:  # a read-only cache must not stop loading
        warnings.warn(f"cannot write dataset cache {path}: {exc}", stacklevel=3)
    return arrays


def _write_npz(path: Path, arrays: Arrays) -> None:
    with atomic_file(path) as fh:
        np.savez(fh, **arrays)
