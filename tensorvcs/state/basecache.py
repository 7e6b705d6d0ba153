"""The delta-base cache: some of the last commit's chunks, kept in memory so that the next
commit can delta-encode against them without reading them back from the store.

Why it is small (issue 11, goal 1: a commit may use at most 512 MiB + 0.1 × S of extra memory
for a state of S bytes). A delta needs the parent's content of each *changed* chunk only.
Keeping the whole last commit in memory (this cache's first design: a copy of every chunk, up
to min(4 GiB, RAM/4)) cost one extra copy of the state after every commit, and two while a
commit filled the next generation (bench/scale.py, 4 GB fp32: +3.74 GiB on the first commit,
+3.87 GiB on the second). Reading the parent's chunk back from the store instead costs one
decode of *that* chunk: the newest version of a chunk is always stored whole (reverse deltas,
state/writer.py), so it is one read, one zstd pass and one hash check, no chain. A fine-tune
step that changes a few tensors reads back a few chunks; one that changes everything reads
back a checkout's worth of bytes, in a commit that encodes every changed chunk twice anyway.

Measured side by side (bench/scale.py; docs/performance.md, "Scale"), 1 GB fp32 with every
chunk changed: second commit 3.58 s reading every base back, 4.93 s with every chunk copied
into the cache (and 0.6 s more on the first commit, for the copy), 83 MiB against 1015 MiB of
extra memory. The cache buys no time worth a second copy of the state. Chosen:

- the budget defaults to DEFAULT_BUDGET (256 MiB, at most RAM/16): states up to about that
  size (MiniLM + AdamW, W3/W4) keep every delta base in memory as before; larger ones keep
  what fits and read the rest back. ``delta_cache_bytes`` in the repository's settings sets
  it (0: always read back; the CLI, which makes one commit per process, uses 0).
- one generation, not two: a changed chunk is the delta base of its successor only, so the
  writer ``take``s it (the memory is released as the next generation fills).
- a live state's chunk is copied only when it changed against the parent's chunk at its
  place (``offer``; or carried over when already held): a chunk that changed is the one
  likely to change again, and so to need its content as a delta base. A first commit, a
  tensor new at its key path, or a frozen weight copies nothing. Copying every chunk into
  fresh memory (about 0.5 ms per MB of zeroed pages here) was a quarter of a 0.1 GB first
  commit's CPU time: 151 → 114 ms (bf16) and 136 → 98 ms (fp32) without it, medians of 9.
  The cost moves to the first commit that changes the chunks, which reads their bases back
  from the store once. Admission of copies is per chunk: the bytes counted are the bytes held.
- owned snapshots' chunks are kept as views (no copy, so admitted from the first commit),
  per tensor (``reserve``): a tensor is kept whole or not at all, since a view would
  otherwise pin its whole tensor (its whole storage is what is counted) for one counted
  chunk. An owned snapshot the cache keeps stays alive until the next commit
  takes its chunks: the caller's memory, so it is bounded by the same budget.
- for an owned snapshot the new view replaces an unchanged chunk's old array (the snapshot is
  alive anyway); carrying the old array over would pin the previous snapshot's tensor too.
  For a copied (live) state the old array is carried over: it is a private copy already.
- copies live in their own anonymous mappings (``offheap``), so a released generation goes
  back to the system instead of pinning malloc arenas the chunk jobs churn through.
- a copy taken for a delta is handed back once the delta is encoded (``recycle``) and holds
  the new chunk's copy: a commit that changes every cached chunk maps no new memory (a W3
  commit took 64 thousand page faults for its copies, each a zeroed 4 KiB page, before).
  Only the cache's own copies are reused, never an owned snapshot's tensor.

The cache only ever saves time: every lookup that misses falls back to the store, and the
bytes a delta is computed against are the same either way (the parent's chunk, by id), so the
objects written do not depend on it (tests/test_memory.py). A commit fills a new generation as
it writes; ``promote`` makes it current once the commit is stored, ``discard`` drops it if
the commit fails.
"""

from __future__ import annotations

import mmap
import os
import threading

import numpy as np

DEFAULT_BUDGET = 256 << 20


def offheap(nbytes: int) -> np.ndarray:
    """A uint8 array of ``nbytes`` in its own anonymous mapping, returned to the system the
    moment the last reference goes. Memory that outlives the chunk jobs (the cache's copies)
    goes here, not into malloc's arenas: placed between the jobs' short-lived
    buffers there, it would pin them (measured: a 2 GB bf16 commit changing every chunk
    peaked ~450 MiB above its live data that way, and kept most of it after returning)."""
    return np.frombuffer(mmap.mmap(-1, max(1, nbytes)), dtype=np.uint8, count=nbytes)


def default_budget() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 8 << 30
    return int(min(DEFAULT_BUDGET, ram // 16))


class BaseCache:
    def __init__(self, budget: int | None = None) -> None:
        self.budget = default_budget() if budget is None else budget
        self._current: dict[str, np.ndarray] = {}
        self._next: dict[str, np.ndarray] = {}
        self._next_bytes = 0  # reserved for the next generation (whole tensors)
        # the copies this cache made (id -> array; the array keeps its id unique), and those
        # of them taken and handed back (recycle) for the next copies of the same size
        self._mine: dict[int, np.ndarray] = {}
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    def get(self, oid: str) -> np.ndarray | None:
        """The content of a chunk of the last commit, if kept."""
        return self._current.get(oid)

    def take(self, oid: str) -> np.ndarray | None:
        """``get``, and forget it: a chunk that changed is the delta base of its successor
        only, so its memory is released as the next generation fills (one generation's
        budget in memory, not two). A second user of the same id reads the store."""
        with self._lock:
            return self._current.pop(oid, None)

    def reserve(self, nbytes: int) -> bool:
        """Room for a tensor of ``nbytes`` in the next generation: True (and counted) if it
        fits the budget; its chunks are then given to ``keep``."""
        with self._lock:
            if nbytes <= 0 or self._next_bytes + nbytes > self.budget:
                return False
            self._next_bytes += nbytes
            return True

    def offer(self, oid: str, content: np.ndarray, *, changed: bool, copy: bool = True) -> None:
        """``keep`` a chunk of a live state (or a host copy of a device tensor) if it is worth
        its memory: one that ``changed`` against the parent's chunk at its place (likely to
        change again, and so to need its content as a delta base), or one already kept (its
        copy is carried over at no cost). A first commit, or a tensor new at its key path,
        copies nothing: copying every chunk into fresh memory was a quarter of a first
        commit's CPU time (0.1 GB), for bases most commits never use (a frozen weight never
        changes). Counted per chunk: the bytes counted are the bytes held."""
        with self._lock:
            if oid in self._next or not (changed or oid in self._current):
                return
            if self._next_bytes + content.nbytes > self.budget:
                return
            self._next_bytes += content.nbytes
        self.keep(oid, content, copy)

    def keep(self, oid: str, content: np.ndarray, copy: bool = True) -> None:
        """Remember ``content`` of ``oid`` (a chunk of a tensor ``reserve`` admitted) for the
        next commit: a copy, or (``copy=False``, memory nobody will write to again: an owned
        snapshot, a host copy of a device tensor) the array itself."""
        with self._lock:
            if oid in self._next:
                return
            old = self._current.get(oid)
            if copy and old is not None and old.nbytes == content.nbytes:
                self._next[oid] = old  # a private copy already
                return
        if copy:
            kept = self._buffer(content.nbytes)
            kept[:] = content
        else:
            kept = content
        with self._lock:
            if self._next.setdefault(oid, kept) is not kept and copy:
                self._free.append(kept)  # another thread kept it first: ours is spare

    def _buffer(self, nbytes: int) -> np.ndarray:
        """Memory for a copy: a recycled buffer of the size, else a new mapping."""
        with self._lock:
            for i, b in enumerate(self._free):
                if b.nbytes == nbytes:
                    return self._free.pop(i)
        b = offheap(nbytes)
        with self._lock:
            self._mine[id(b)] = b
        return b

    def recycle(self, content: np.ndarray) -> None:
        """Hand back an array ``take`` returned, once its user is done with it: a copy this
        cache made is reused for the next copy of its size in this commit (fresh memory costs
        a zeroed page per 4 KiB, more than the copy); anything else (an owned snapshot's
        tensor) is only let go."""
        with self._lock:
            if self._mine.get(id(content)) is content:
                self._free.append(content)

    def _keep_mine(self, live: dict[str, np.ndarray]) -> None:
        """Forget the spare buffers and the copies no longer held (called under the lock)."""
        self._free = []
        self._mine = {id(a): a for a in live.values() if self._mine.get(id(a)) is a}

    def promote(self) -> None:
        with self._lock:
            self._current, self._next, self._next_bytes = self._next, {}, 0
            self._keep_mine(self._current)

    def discard(self) -> None:
        with self._lock:
            self._next, self._next_bytes = {}, 0
            self._keep_mine(self._current)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._current.values())
