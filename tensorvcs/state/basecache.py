"""The delta-base cache: the content of the last commit's chunks, kept in memory so that the
next commit can delta-encode against them without reading them back from disk.

Holds at most ``budget`` bytes. A commit fills a new generation as it writes (copying each
chunk's bytes, or carrying over the array when the chunk did not change); ``promote`` makes
it current once the commit is stored, ``discard`` drops it if the commit fails.
"""

from __future__ import annotations

import os
import threading

import numpy as np


def default_budget() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 8 << 30
    return int(min(4 << 30, ram // 4))


class BaseCache:
    def __init__(self, budget: int | None = None) -> None:
        self.budget = default_budget() if budget is None else budget
        self._current: dict[str, np.ndarray] = {}
        self._next: dict[str, np.ndarray] = {}
        self._next_bytes = 0
        self._lock = threading.Lock()

    def get(self, oid: str) -> np.ndarray | None:
        """The content of a chunk of the last commit, if kept."""
        return self._current.get(oid)

    def keep(self, oid: str, content: np.ndarray, copy: bool = True) -> None:
        """Remember ``content`` of ``oid`` for the next commit, within the budget: a copy, or
        (``copy=False``, for memory nobody will write to again) the array itself."""
        with self._lock:
            if oid in self._next:
                return
            old = self._current.get(oid)
            if old is not None:
                self._next[oid] = old
                self._next_bytes += old.nbytes
                return
            if self._next_bytes + content.nbytes > self.budget:
                return
            self._next_bytes += content.nbytes
        kept = np.array(content, copy=True) if copy else content
        with self._lock:
            self._next[oid] = kept

    def promote(self) -> None:
        with self._lock:
            self._current, self._next, self._next_bytes = self._next, {}, 0

    def discard(self) -> None:
        with self._lock:
            self._next, self._next_bytes = {}, 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._current.values())
