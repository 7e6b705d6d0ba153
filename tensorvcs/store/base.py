"""The Store interface: named byte files with atomic puts, listing, deletion and locks.

Names are relative, '/'-separated, and may not contain '..', empty parts or a leading '/'.
Every backend (the local directory here; object storage later) implements exactly this.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from mmap import mmap

from ..errors import UsageError

Chunk = bytes | bytearray | memoryview
View = bytes | mmap  # a whole stored file, to read once (Store.get_view)
_PART = re.compile(r"^[^/\x00]+$")


def check_name(name: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") or not _PART.match(p) for p in parts):
        raise UsageError(f"invalid store name {name!r}")
    return name


class Store(ABC):
    """Named byte files. ``put`` is atomic and durable: a reader sees the old file or the new."""

    # True: this machine's disk or memory, where an existence check is a stat (LocalStore,
    # file://, memory://); False: object storage, where every check is a request and every
    # byte written is a byte uploaded (tensor writers then trust known ids, and DCP saves
    # defer the reverse-delta re-encodings)
    local = False

    @abstractmethod
    def get(self, name: str) -> bytes:
        """The whole file; FileNotFoundError if absent."""

    def get_head(self, name: str, n: int) -> bytes:
        """The first ``n`` bytes of the file (or all of it, if shorter)."""
        return self.get(name)[:n]

    def get_view(self, name: str) -> View:
        """The whole file as a read-only buffer, for reading it once: ``get``'s bytes, or (a
        local store) a memory map of the file, valid while it is referenced. Stored files are
        never changed in place (``put`` replaces them), so a map stays as it was opened."""
        return self.get(name)

    @abstractmethod
    def put(
        self,
        name: str,
        data: Iterable[Chunk],
        *,
        durable: bool = True,
        sync: bool = True,
        defer: bool = False,
    ) -> None:
        """Write ``data`` (pieces, concatenated) as ``name``, replacing it atomically; with
        ``sync=False`` the new name is durable only after the next ``sync()``. ``defer=True``
        (a replacement with the same content: a re-encoding) lets the store write the file
        now and put it in place only at the next ``sync()``, after the files that sync makes
        durable and names; until then readers see the old file. A store may do it at once."""

    @abstractmethod
    def put_if_absent(self, name: str, data: Iterable[Chunk], *, defer: bool = False) -> bool:
        """Write unless ``name`` exists; True when this call wrote it. ``defer=True`` lets the
        store make the file durable and give it its name only at the next ``sync()`` (a local
        store does, to fsync many files together); until then only this store object sees it,
        and a crash loses it whole. The caller must ``sync()`` before anything names it."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def size(self, name: str) -> int: ...

    def mtime(self, name: str) -> float | None:
        """When ``name`` was last written (POSIX seconds), or None if the store cannot tell
        (gc then treats the file as old). FileNotFoundError if absent."""
        if not self.exists(name):
            raise FileNotFoundError(name)
        return None

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Names of files under the folder ``prefix`` (recursively), in no set order."""

    @abstractmethod
    def delete(self, name: str) -> None:
        """Remove ``name``; absent names are not an error."""

    @abstractmethod
    def append(self, name: str, data: bytes) -> None:
        """Append to ``name`` durably (used for reflogs), creating it if needed."""

    @abstractmethod
    def lock(
        self, name: str, *, shared: bool = False, timeout: float = 60.0
    ) -> AbstractContextManager[None]:
        """A lock named ``name``: exclusive, or shared with other shared holders.

        Released when the holder exits the context or dies.
        """

    def sync(self, *, defer_folders: bool = False) -> None:  # noqa: B027 - optional hook
        """Make the names created so far durable (directory entries). ``defer_folders``:
        where a sync renames deferred replacements into place (LocalStore), their folders
        are fsynced by the next sync instead of this one; the caller syncs again before
        anything it returns depends on it."""

    def drain(self) -> None:  # noqa: B027 - optional hook
        """Wait for the work a store left to the background (LocalStore: freeing the blocks
        of files its syncs replaced). Nothing read or written depends on it."""
