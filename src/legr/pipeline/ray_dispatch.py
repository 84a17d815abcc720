"""The search's candidates and the family's fine-tunes as Ray tasks (issue 17; optional: ``pip install -e ".[ray]"``).

The driver runs the search; each of its CMA-ES generations (and its first candidates) is scored by Ray tasks, one
per candidate, in workers that open the run from its folder once and score exactly as the driver would (the search
ends with the same ranking); aging evolution keeps ``search.in_flight`` children out at once, each a Ray task, as
asynchronous workers. The driver cuts the
family, then sends every member that is not fine-tuned yet to a Ray task of its own: one CPU each (candidates and
members alike), and one GPU each where the cluster has GPUs. A local Ray is started by default; ``address`` joins a
cluster (``"auto"`` or ``"host:port"``: every node needs legr installed and the run folder and
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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
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


class _Session:
    """Ray, started (or joined) on first use and shut down by `close` if it was started here."""

    def __init__(self, settings: RaySettings) -> None:
        self.settings, self.started = settings, False
        self.ray: Any = None
        self.announced: set[str] = set()
        self.lock = threading.Lock()  # a search's candidates in flight send their tasks from threads of their own

    def get(self) -> Any:
        with self.lock:
            if self.ray is None:
                ray = _ray()
                if not ray.is_initialized():
                    local = {"num_cpus": self.settings.workers} if self.settings.address is None else {}
                    # a local Ray starts its workers at nice 15, starved by anything else running; the sequential work
                    # runs at the caller's priority, and so do these (RAY_worker_niceness set by the user wins)
                    os.environ.setdefault("RAY_worker_niceness", "0")
                    try:
                        ray.init(address=self.settings.address, include_dashboard=False, log_to_driver=False,
                                 logging_level=logging.ERROR, **local)
                    except Exception as exc:  # no cluster at that address, a bad one, no room for a local Ray ...
                        address = self.settings.address
                        where = f"join the Ray cluster at {address!r}" if address is not None else "start a local Ray"
                        raise LegrError(f"cannot {where}: {' '.join(str(exc).split())[:300]}") from None
                    self.started = True
                self.ray = ray
            return self.ray

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


@contextmanager
def on_ray(pipe: Pipeline, settings: RaySettings = RaySettings()) -> Iterator[_Session]:
    """Inside, ``pipe``'s method hands its parallel work (search candidates) to Ray tasks (`legr rank --ray`); Ray
    starts on first use and is shut down on leaving if it was started here."""
    _ray()  # fail now, not after the source network's training, when Ray is missing ...
    _check_reachable(settings.address)  # ... or nothing answers at the address
    session = _Session(settings)
    pipe.parallel = lambda kind, items: _map(session, pipe, kind, items, settings.retries)
    try:
        yield session
    finally:
        pipe.parallel = None
        session.close()


def finetune_on_ray(pipe: Pipeline, settings: RaySettings = RaySettings()) -> None:
    """Cut ``pipe``'s family here, its search's candidates scored by Ray tasks (each CMA-ES generation at once),
    fine-tune its members as Ray tasks, then finish what is left here (the chain's stages on members fine-tuned
    before). Work already on disk is kept, as in `Pipeline.finetune`; Ray starts only when there is work for it."""
    with on_ray(pipe, settings) as session:
        pipe.prune()
        todo = [m.name for m in pipe.members() if pipe.needs_finetune(m)]
        if todo:
            _dispatch(session.get(), pipe, todo, settings.retries)
    for member in pipe.members():
        pipe.finetune_member(member)


def _gpus(ray: Any) -> int:
    return 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0


def _get(ray: Any, ref: Any, others: list[Any], what: str) -> Any:
    """``ray.get(ref)``, a failure one line naming ``what`` (the ``others`` cancelled when the task raised)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # raised inside the task: its own message, one line
        for other in others:
            ray.cancel(other)
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        raise LegrError(f"{what} on Ray failed: {type(cause).__name__}: {' '.join(str(cause).split())}") from None
    except ray.exceptions.RayError as exc:  # the worker died more than `retries` times
        raise LegrError(f"{what} on Ray failed: {' '.join(str(exc).split())[:300]}") from None


def _map(session: _Session, pipe: Pipeline, kind: str, items: list[Any], retries: int) -> list[Any]:
    """``pipe.parallel`` on Ray: each item one task (`method_work`), the results in the items' order."""
    ray = session.get()
    with session.lock:
        first, _ = kind not in session.announced, session.announced.add(kind)
    if first:
        pipe.log(f"scoring {kind} as Ray tasks ({int(ray.cluster_resources().get('CPU', 0))} CPUs, {_gpus(ray)} GPU "
                 "per task)")
    task = ray.remote(num_cpus=1, num_gpus=_gpus(ray), max_retries=retries)(method_work)
    out = str(pipe.out.resolve())
    refs = [task.remote(out, kind, item) for item in items]
    return [_get(ray, ref, refs[i + 1:], f"{kind} {i + 1} of {len(items)}") for i, ref in enumerate(refs)]


def _dispatch(ray: Any, pipe: Pipeline, todo: list[str], retries: int) -> None:
    gpus = _gpus(ray)
    task = ray.remote(num_cpus=1, num_gpus=gpus, max_retries=retries)(finetune_member)
    out = str(pipe.out.resolve())
    pending = {task.remote(out, name): name for name in todo}
    pipe.log(f"fine-tuning {len(todo)} members as Ray tasks ({int(ray.cluster_resources().get('CPU', 0))} CPUs, "
             f"{gpus} GPU per task)")
    with progress_bar("members", len(todo), enabled=pipe.progress) as advance:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            name = pending.pop(ref)
            _get(ray, ref, list(pending), f"fine-tuning {name}")
            pipe.log(f"{name} fine-tuned")
            advance(name)


def _open(out: str) -> Pipeline:
    """The run in ``out``, opened from its own config to work on it (nothing claimed, nothing re-checked)."""
    import yaml

    from legr.pipeline.config_files import held_config
    from legr.pipeline.steps import Pipeline

    folder = Path(out)
    cfg = held_config(yaml.safe_load((folder / "config.yaml").read_text()))
    return Pipeline(cfg, folder, progress=False, log=lambda _: None, read_only=True)


def finetune_member(out: str, name: str) -> None:
    """A Ray task: fine-tune member ``name`` of the run in ``out`` (resuming) and apply the chain's stages."""
    pipe = _open(out)
    pipe.finetune_member(next(m for m in pipe.members() if m.name == name))


_OPENED: dict[str, Pipeline] = {}  # a worker process opens a run once for all the work units it computes


def method_work(out: str, kind: str, item: Any) -> Any:
    """A Ray task: one unit of the run's method's work (`legr.methods.base.Method.work`), e.g. a search candidate
    scored at the search targets, exactly as the driver would score it (the fitness is seeded by the candidate)."""
    if out not in _OPENED:
        _OPENED[out] = _open(out)
    return _OPENED[out].method.work(kind, [item])[0]
