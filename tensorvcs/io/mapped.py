"""Keeping memory small while large checkpoint files are read through memory maps.

A committed file is mapped (``torch.load(mmap=True)``, or the safetensors mapping in
``safetensors_file``) and the writer reads every tensor through that mapping. The pages it
touched stay resident, and count in the process's RSS, until the mapping is released at the
end of the commit: a 2 GB file would cost 2 GB of RSS although nothing was copied.

``PageDropper`` runs a thread that every ``interval`` seconds tells the kernel
(``madvise(MADV_DONTNEED)``) to drop the resident pages of every mapping of the given files.
We only ever read these mappings, so dropping is always safe: a later read faults the page
back in from the page cache. The ranges are found once, in ``/proc/self/maps`` (mappings of the
same device and inode), when the dropper starts; the caller MUST keep the mappings alive (hold
the loaded state / the mmap objects) until the dropper has stopped, so that no range it
advises can be unmapped and reused meanwhile. The growth of the process's file-backed resident
memory (``RssFile`` in ``/proc/self/status``) between two drops is, closely enough, the bytes
read through the mappings since the last tick: the commit progress bar uses it.

Linux only; on other systems the dropper does nothing (memory then grows with the file).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import sys
import threading
from collections.abc import Callable, Iterable

PAGE = mmap.PAGESIZE
MADV_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)

_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc.madvise.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - exotic libc
        _libc = None

FileKey = tuple[int, int, int]  # (device major, device minor, inode)


def file_key(path: str | os.PathLike[str]) -> FileKey:
    st = os.stat(path)
    return os.major(st.st_dev), os.minor(st.st_dev), st.st_ino


def mapped_ranges(keys: set[FileKey]) -> list[tuple[int, int]]:
    """(start, end) of every mapping in this process of a file in ``keys``."""
    out: list[tuple[int, int]] = []
    try:
        with open("/proc/self/maps") as f:
            lines = f.readlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6 or parts[4] == "0":
            continue
        try:
            major, minor = (int(x, 16) for x in parts[3].split(":"))
            key = (major, minor, int(parts[4]))
        except ValueError:
            continue
        if key in keys:
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi))
    return out


def rss_file() -> int:
    """This process's resident file-backed memory in bytes (0 where unknown)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssFile:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PageDropper:
    """While active, drop the resident pages of every mapping of ``paths`` every ``interval``
    seconds; ``on_bytes`` (if given) receives the bytes found resident at each tick."""

    def __init__(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        interval: float = 0.01,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.keys = {file_key(p) for p in paths}
        self.interval = interval
        self.on_bytes = on_bytes
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ranges: list[tuple[int, int]] = []
        self._base = 0  # RssFile right after the last drop

    @property
    def active(self) -> bool:
        return _libc is not None and bool(self.keys)

    def tick(self) -> None:
        if not self.active:
            return
        assert _libc is not None
        before = rss_file() if self.on_bytes is not None else 0
        for lo, hi in self._ranges:
            _libc.madvise(lo, hi - lo, MADV_DONTNEED)
        if self.on_bytes is not None:
            after = rss_file()
            if before > self._base:
                self.on_bytes(before - self._base)
            self._base = after

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def __enter__(self) -> PageDropper:
        self._ranges = mapped_ranges(self.keys) if self.active else []
        self._base = rss_file()
        if self._ranges:
            self._thread = threading.Thread(target=self._run, name="tvcs-pages", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.tick()
        self._ranges = []
