"""The family's fine-tunes as Ray tasks (issue 17; optional: ``pip install -e ".[ray]"``).

The driver cuts the family (a search runs there, once), then sends every member that is not fine-tuned yet to a
Ray task of its own: one CPU each, and one GPU each where the cluster has GPUs. A local Ray is started by default;
``address`` joins a cluster (``"auto"`` or ``"host:port"``: every node needs legr installed and the run folder and
data at the same paths, e.g. a shared filesystem). A task opens the run from its folder (the config written there
by the driver), fine-tunes its member exactly as `legr finetune` does (resuming from the member's last finished
epoch) and applies the chain's stages. A worker that dies (killed, out of memory, a lost node) is replaced and its
task run again, ``retries`` times, resuming from the member's checkpoint; an error raised inside a task (bad data,
a full disk) is reported in one line, not retried. Every member's training is seeded by the run, so the weights
equal the sequential fine-tune's, whatever the number of workers (``tests/test_ray.py``).
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legr.errors import LegrError
from legr.progress import progress_bar

if TYPE_CHECKING:
    from legr.pipeline.steps import Pipeline


@dataclass(frozen=True)
class RaySettings:
    """Where the fine-tunes run: ``address`` None starts a local Ray with ``workers`` CPUs (None: all of this
    machine's); a crashed task is run again ``retries`` times."""

    address: str | None = None
    workers: int | None = None
    retries: int = 3


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise LegrError('--ray needs Ray: pip install -e ".[ray]"') from None
    return ray


def _check_reachable(address: str | None) -> None:
    """A ``host:port`` (or ``ray://host:port``) that accepts no connection within 5 s is a one-line error (Ray itself
    retries for minutes)."""
    host, _, port = (address or "").split("://")[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # None (a local Ray), "auto", or a form Ray resolves itself
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise LegrError(f"cannot join the Ray cluster at {address!r}: nothing answers there ({exc})") from None


def finetune_on_ray(pipe: Pipeline, settings: RaySettings = RaySettings()) -> None:
    """Cut ``pipe``'s family here, fine-tune its members as Ray tasks, then finish what is left here (the chain's
    stages on members fine-tuned before). Work already on disk is kept, as in `Pipeline.finetune`."""
    ray = _ray()
    pipe.prune()
    todo = [m.name for m in pipe.members() if pipe.needs_finetune(m)]
    if todo:
        started = not ray.is_initialized()
        if started:
            local = {"num_cpus": settings.workers} if settings.address is None else {}
            # a local Ray starts its workers at nice 15, starved by anything else running; the sequential fine-tune
            # runs at the caller's priority, and so do these (RAY_worker_niceness set by the user wins)
            os.environ.setdefault("RAY_worker_niceness", "0")
            _check_reachable(settings.address)
            try:
                ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.ERROR, **local)
            except Exception as exc:  # no cluster at that address, a bad one, no room for a local Ray ...
                where = (f"join the Ray cluster at {settings.address!r}" if settings.address is not None
                         else "start a local Ray")
                raise LegrError(f"cannot {where}: {' '.join(str(exc).split())[:300]}") from None
        try:
            _dispatch(ray, pipe, todo, settings.retries)
        finally:
            if started:
                ray.shutdown()
    for member in pipe.members():
        pipe.finetune_member(member)


def _dispatch(ray: Any, pipe: Pipeline, todo: list[str], retries: int) -> None:
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=retries)(finetune_member)
    out = str(pipe.out.resolve())
    pending = {task.remote(out, name): name for name in todo}
    pipe.log(f"fine-tuning {len(todo)} members as Ray tasks ({int(ray.cluster_resources().get('CPU', 0))} CPUs, "
             f"{gpus} GPU per task)")
    with progress_bar("members", len(todo), enabled=pipe.progress) as advance:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ref)
            try:
                ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # raised inside the task: its own message, one line
                for other in pending:
                    ray.cancel(other)
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                raise LegrError(f"fine-tuning {name} on Ray failed: {type(cause).__name__}: "
                                f"{' '.join(str(cause).split())}") from None
            except ray.exceptions.RayError as exc:  # the worker died more than `retries` times
                raise LegrError(f"fine-tuning {name} on Ray failed: {' '.join(str(exc).split())[:300]}") from None
            pipe.log(f"{name} fine-tuned")
            advance(name)


def finetune_member(out: str, name: str) -> None:
    """A Ray task: fine-tune member ``name`` of the run in ``out`` (resuming) and apply the chain's stages."""
    import yaml

    from legr.pipeline.config_files import held_config
    from legr.pipeline.steps import Pipeline

    folder = Path(out)
    cfg = held_config(yaml.safe_load((folder / "config.yaml").read_text()))
    pipe = Pipeline(cfg, folder, progress=False, log=lambda _: None, read_only=True)
    pipe.finetune_member(next(m for m in pipe.members() if m.name == name))
