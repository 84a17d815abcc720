"""Where a measurement was taken: CPU/GPU, thread count, library versions and the code's git revision."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch


def _cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else from `platform`."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                name = line.split(":", 1)[1].strip()
                if name and not name.isdigit():
                    return " ".join(name.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cuda_device() -> str | None:
    try:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a broken driver must not break a results row
        return None


def hardware_info() -> dict[str, Any]:
    """Machine and software description to stamp on results rows."""
    try:
        import torchvision

        tv_version: str | None = torchvision.__version__
    except ImportError:
        tv_version = None
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": tv_version,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda_device": _cuda_device(),
        "cuda_version": torch.version.cuda,
    }


def _git(path: str | os.PathLike[str], *args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", *args],  # read-only: never take index.lock
            cwd=path,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_revision(path: str | os.PathLike[str] = ".") -> str | None:
    """Short commit hash of the repo containing `path`, plus "-dirty" if tracked files have uncommitted changes.

    Untracked files are ignored (as `git describe --dirty` does). None if not a git repo or git is unusable;
    never raises.
    """
    if not Path(path).is_dir():
        return None
    rev = _git(path, "rev-parse", "--short", "HEAD")
    if not rev:
        return None
    status = _git(path, "status", "--porcelain", "--untracked-files=no")
    return f"{rev}-dirty" if status else rev


def hardware_label() -> str:
    """One-line summary, e.g. "Intel(R) Xeon(R) ... (2 threads), torch 2.14.1, CPU"."""
    info = hardware_info()
    torch_version = str(info["torch"]).split("+", 1)[0]
    accel = f"CUDA {info['cuda_device']}" if info["cuda_device"] else "CPU"
    return f"{info['cpu']} ({info['torch_threads']} threads), torch {torch_version}, {accel}"
