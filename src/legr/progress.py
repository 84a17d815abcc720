"""One progress bar for every long step (fine-tuning, the search, sensitivity analysis): rich, on stderr, so stdout
carries only results. Off (a no-op) when ``enabled`` is false."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager


@contextmanager
def progress_bar(label: str, total: int, *, done: int = 0, text: str = "",
                 enabled: bool = True) -> Iterator[Callable[[str], None]]:
    """``with progress_bar("fine-tune", epochs) as advance: ... advance("loss 0.31")`` — label, bar, done/total,
    elapsed and remaining time, then the latest ``text``. ``done`` items are already finished (a resumed job)."""
    if not enabled:
        yield lambda text="": None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[text]}"))
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total, completed=done, text=text)
        yield lambda text="": bar.update(task, advance=1, text=text)
