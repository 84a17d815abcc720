"""Where a measurement was taken: CPU/GPU, thread count, library versions and the code's git revision; and how busy
the machine was meanwhile (the CPU time other processes took: a timing taken while they ran measures them too)."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
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


# --- machine load: the CPU time other processes take ---------------------------------------------------------------
def _proc_stat() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat; None where unavailable."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    vals = [float(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    hz = float(os.sysconf("SC_CLK_TCK"))
    idle = vals[3] + vals[4]
    total = sum(vals)
    return (total - idle) / hz, total / hz


class LoadProbe:
    """Fraction of the machine's CPU capacity used by processes other than this one since the probe was made."""

    def __init__(self) -> None:
        self.start = _proc_stat()
        self.own = time.process_time()
        self.wall = time.perf_counter()

    def foreign(self) -> float | None:
        end = _proc_stat()
        if self.start is None or end is None:
            return None
        wall = time.perf_counter() - self.wall
        busy = end[0] - self.start[0]
        own = time.process_time() - self.own
        cpus = os.cpu_count() or 1  # /proc/stat counts every CPU of the machine
        return max(0.0, min(1.0, (busy - own) / max(wall * cpus, 1e-9)))


def foreign_load(window_s: float = 2.0) -> float | None:
    """The share of the machine's CPUs other processes use over the next ``window_s`` seconds (None: unknown)."""
    probe = LoadProbe()
    time.sleep(window_s)
    return probe.foreign()


class LoadMonitor:
    """Samples `LoadProbe.foreign` every ``every_s`` seconds in a background thread while the block runs:
    ``with LoadMonitor() as load: ...`` then ``load.summary()`` -> {"mean", "max", "samples"} (None without
    /proc/stat)."""

    def __init__(self, every_s: float = 30.0) -> None:
        self.every_s, self.samples = every_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        probe = LoadProbe()
        while not self._stop.wait(self.every_s):
            if (value := probe.foreign()) is not None:
                self.samples.append(value)
            probe = LoadProbe()
        if (value := probe.foreign()) is not None and time.perf_counter() - probe.wall > 1.0:
            self.samples.append(value)

    def __enter__(self) -> "LoadMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float | int] | None:
        if not self.samples:
            return None
        return {"mean": sum(self.samples) / len(self.samples), "max": max(self.samples), "samples": len(self.samples)}
