"""One registry type for everything chosen by name: models, datasets, criteria, allocators.

>>> CRITERIA = Registry[Criterion]("criterion")
>>> CRITERIA.add("l1", fn)            # or @CRITERIA.register("l1")
>>> CRITERIA["l3"]                    # LegrError: unknown criterion 'l3'; available: l1, ... (did you mean l1?)
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from legr.errors import LegrError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one ``kind``. Looking up an unknown name raises a one-line `LegrError` naming the close
    matches, and every name when there are at most ``list_max`` (else ``hint`` says where to find them)."""

    def __init__(self, kind: str, *, hint: str = "", list_max: int = 16):
        self.kind, self.hint, self.list_max = kind, hint, list_max
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda entry: self.add(name, entry)

    def remove(self, name: str) -> None:
        del self._entries[name]

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise LegrError(self.unknown(name)) from None

    def unknown(self, name: str) -> str:
        """The message for an unknown ``name``."""
        if not self._entries:
            return f"unknown {self.kind} {name!r}: none is registered"
        close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.6)
        guess = f"did you mean {', '.join(close)}?" if close else ""
        if len(self._entries) <= self.list_max:
            return f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}" + (f" ({guess})" if guess
                                                                                          else "")
        return f"unknown {self.kind} {name!r}; {guess or self.hint or 'see the registry'}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._entries.items())
