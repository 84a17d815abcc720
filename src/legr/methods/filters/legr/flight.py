"""Candidates in flight: a search loop's candidates bred ahead of their results (aging evolution as asynchronous
workers, `search_loop.drive`) scored concurrently, each by one call of the loop's ``evaluate_many`` in a thread of
its own (which, in a run on Ray, waits on one Ray task), and handed back in their order."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class Flight:
    """Candidates in flight, each scored by one ``evaluate_many`` call in a thread of its own (e.g. waiting on a Ray
    task) while the loop records the oldest."""

    def __init__(self, space: Any, evaluate_many: Callable[[Sequence[tuple[Any, int]]], list[Any]] | None) -> None:
        self.space, self.many = space, evaluate_many
        self.pool: ThreadPoolExecutor | None = None
        self.futures: dict[int, tuple[Any, Future[tuple[Any, float]]]] = {}

    def __enter__(self) -> "Flight":
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.pool is not None:  # an interrupted search does not wait for the candidates still out
            self.pool.shutdown(wait=False, cancel_futures=True)

    def _score(self, obj: Any, index: int) -> tuple[Any, float]:
        assert self.many is not None
        start = time.perf_counter()
        value = self.many([(self.space.from_json(obj), index)])[0]
        return value, time.perf_counter() - start

    def take(self, pending: Sequence[tuple[Any, int | None]], first: int) -> tuple[Any, Any, float]:
        """Send every candidate of ``pending`` (global indices from ``first``) not yet sent; wait for the first one:
        (canonical JSON, value, seconds)."""
        self.pool = self.pool or ThreadPoolExecutor(max_workers=len(pending), thread_name_prefix="legr-candidate")
        for j, (obj, _) in enumerate(pending):
            if first + j not in self.futures:
                self.futures[first + j] = (obj, self.pool.submit(self._score, obj, first + j))
        obj, future = self.futures.pop(first)
        return (obj, *future.result())
