"""A Store in a local directory: temp file, fsync, rename; locks with flock(2).

With ``TVCS_DIRECT_IO=1``, large durable writes (object files of at least DIRECT_MIN bytes)
bypass the page cache with O_DIRECT where the file system allows it: the bytes go from an
aligned per-thread staging buffer to the disk, the file is cut to its real length, then
fsync'd as any other. Through the page cache each new page costs the kernel an allocation and a
copy, and a checkpoint's gigabytes push out what the training keeps cached (its data set); on
this project's 2-core VM that kernel time was 1.2-2.7 s per GB and a direct 8 GB commit took
two thirds of the time. It is not the default because nothing is left in the page cache: a
checkout right after the commit reads from the disk (2-2.6x torch.load of a cached file here;
docs/performance.md). Where O_DIRECT is refused (EINVAL: tmpfs before Linux 6.6, some FUSE and
network file systems; no O_DIRECT on macOS) the store writes through the page cache from then
on; the kernel keeps cached pages coherent with direct writes.

A new object written with ``put_if_absent(..., defer=True)`` (a commit's chunks and packs) is
written to a temp file at once but fsynced and linked to its name only at the next ``sync()``,
which the commit calls before it writes the manifest naming the objects: all of a commit's
files are written first, then fsynced by SYNC_THREADS threads together. An fsync right after
each file forces an ext4 journal commit per file; together, one commit covers many files
(bench/object_cost.py, 8 GiB as 2048 files of 4 MiB: 8.95 s with an fsync after each file,
4.87 s written first and fsynced after; 128 files of 64 MiB: 5.12 s). Until then only this
store object sees the file (``exists``, ``get``); no other process does, and a crash leaves
an unnamed temp file (removed by gc after an hour), never a named object whose bytes are not
on the disk.

A replacement written with ``put(..., defer=True)`` (a parent chunk re-encoded as a delta
against a new chunk of the same commit) is written and its writeback begun at once too; the
same sync fsyncs it with the new files and renames it over the old file only after every new
file is named and its folder fsynced, so a delta never lands before its base. Until then
every reader, this store object included, reads the old file (the same content).

Decoding reads files of at least MAP_MIN bytes through a read-only memory map (get_view): no copy
and no fresh memory per chunk. That is safe because a stored file is never changed in place:
``put`` renames a new file over it and ``delete`` unlinks it, and a map keeps the old inode's
pages. (A file cut short in place by something else would fault the reading process.)"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import fcntl
import mmap
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

from ..errors import LockTimeoutError
from .base import Chunk, Store, View, check_name

TMP_DIR = "tmp"
LOCK_DIR = "locks"
SYNC_THREADS = 8  # folders fsynced at once by sync(): each fsync mostly waits on the disk
DIRECT_MIN = 1 << 20  # durable writes of at least this many bytes go around the page cache
DIRECT_ALIGN = 4096  # offset, length and buffer alignment of a direct write (any block size)
DIRECT_STAGE = 4 << 20  # the staging buffer of each writing thread
MAP_MIN = 1 << 18  # get_view maps files at least this large (smaller ones are read)
# Deferred replacements waiting beyond this many bytes make the put that adds one sync early
# (unless a sync is running): until its rename a parent file and its delta are both in the
# page cache. A 4 GB commit that changed every chunk took 11-14 s with all of them waiting to
# its end, 7-9 s in batches of 64 MiB (the kernel's page-cache copies took twice the system
# time).
REPLACE_BATCH_BYTES = 64 << 20
MADV_POPULATE_READ = 22  # Linux 5.14+: map every page of the range in one call
O_DIRECT: int = getattr(os, "O_DIRECT", 0)
T = TypeVar("T")


class _Stage(threading.local):
    """Each thread's page-aligned staging buffer (anonymous mmap), made on first use."""

    buf: mmap.mmap | None = None

    def get(self) -> mmap.mmap:
        if self.buf is None:
            self.buf = mmap.mmap(-1, DIRECT_STAGE)
        return self.buf


_stage = _Stage()


class _Refused(Exception):
    """The file system does not take direct writes (the file is removed)."""


def _write_direct(path: Path, pieces: list[memoryview], total: int) -> None:
    """Create ``path`` holding ``pieces`` (``total`` bytes), written with O_DIRECT and
    fsync'd. Raises _Refused where the file system does not allow it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_DIRECT, 0o644)
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise _Refused from None
        raise
    view = memoryview(_stage.get())
    done = False
    try:
        fill = 0

        def flush(n: int) -> None:  # n: a multiple of DIRECT_ALIGN
            done = 0
            while done < n:
                w = os.write(fd, view[done:n])
                if w <= 0 or w % DIRECT_ALIGN:
                    raise OSError(errno.EIO, f"direct write to {path} wrote {w} bytes")
                done += w

        for p in pieces:
            while p:
                k = min(len(p), DIRECT_STAGE - fill)
                view[fill : fill + k] = p[:k]
                fill += k
                p = p[k:]
                if fill == DIRECT_STAGE:
                    flush(fill)
                    fill = 0
        if fill:
            end = -(-fill // DIRECT_ALIGN) * DIRECT_ALIGN
            view[fill:end] = bytes(end - fill)
            flush(end)
        os.ftruncate(fd, total)
        os.fsync(fd)
        done = True
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise _Refused from None
        raise
    finally:
        view.release()
        os.close(fd)
        if not done:  # refused, failed or interrupted: no partial temp file is left
            path.unlink(missing_ok=True)


def _fsync_path(path: Path, flags: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    _fsync_path(path, os.O_DIRECTORY)


class _Background:
    """This process's threads for a sync's fsyncs and for unlinking superseded files.

    The sync threads are started once, not per sync: a W4 commit ran three rounds of fsyncs,
    and starting their threads while the writer's pool held the GIL took the main thread more
    time than the fsyncs (py-spy). Superseded files are a replacement's old file, kept alive
    by a hard link in ``tmp/`` while the new file is renamed over it: freeing a file's blocks
    is what a rename over it costs (0.7 ms for each 2 MiB file on this VM's ext4, against 0.02
    ms for a rename whose old inode keeps a name), so the blocks are freed by a reaper thread
    after the commit, not inside it. A process that dies first leaves the links in ``tmp/``,
    where gc deletes them (they are nobody's temp file: their content is stored nowhere else
    that anyone reads). At exit, and in ``drain``, what is left is unlinked in the caller.
    After a fork the child starts with none of the parent's threads or queue."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """A fresh start (in a forked child: the parent's threads and queue are not here)."""
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._doomed: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._reaper: threading.Thread | None = None
        self._idle = threading.Condition(self._lock)
        self._owed = 0  # doomed files queued and not yet unlinked

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="tvcs_sync")
            return self._pool

    def unlink_later(self, paths: list[Path]) -> None:
        if not paths:
            return
        with self._lock:
            self._owed += len(paths)
            if self._reaper is None:
                self._reaper = threading.Thread(target=self._reap, name="tvcs_reap", daemon=True)
                self._reaper.start()
        for p in paths:
            self._doomed.put(p)

    def _reap(self) -> None:
        while True:
            self._unlink(self._doomed.get())

    def _unlink(self, p: Path) -> None:
        with contextlib.suppress(OSError):  # one left in tmp/: gc deletes it
            p.unlink(missing_ok=True)
        with self._lock:
            self._owed -= 1
            if self._owed == 0:
                self._idle.notify_all()

    def drain(self) -> None:
        """Unlink every superseded file queued so far; returns once none is left."""
        while True:
            try:
                self._unlink(self._doomed.get_nowait())
            except queue.Empty:
                break
        with self._lock:  # the one the reaper holds, if any
            while self._owed > 0 and self._reaper is not None and self._reaper.is_alive():
                self._idle.wait(0.1)


_background = _Background()
if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_background.forget)
atexit.register(_background.drain)


def _each(fn: Callable[[T], None], items: list[T]) -> None:
    """``fn`` on every item, up to SYNC_THREADS at once (each mostly waits on the disk)."""
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    for _ in _background.pool().map(fn, items):
        pass


def _into_folder(move: Callable[[Path, Path], None], tmp: Path, path: Path) -> None:
    """``move(tmp, path)`` (rename or link), making ``path``'s folder first if it is missing."""
    try:
        move(tmp, path)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        move(tmp, path)


def _link_new(tmp: Path, path: Path) -> bool:
    """Give ``tmp`` the new name ``path``; False if it exists: link() fails then, so two
    writers of one object never clobber each other."""
    try:
        _into_folder(os.link, tmp, path)
    except FileExistsError:
        return False
    return True


def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        f = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    f.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    f.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], f)


_sync_file_range = _libc_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2  # start writeback of the range's dirty pages; do not wait


def _start_writeback(fd: int) -> None:
    """Have the kernel start writing the file's pages to the disk now, without waiting (a
    later fsync then mostly finds them written): a deferred commit's files are written back
    while it encodes the next chunks, not all at its end. A no-op where unavailable."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)  # failure: the fsync still comes


class LocalStore(Store):
    local = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._dirty_dirs: set[Path] = set()
        self._dirty_lock = threading.Lock()
        self._pending: dict[str, Path] = {}  # deferred new files: name -> written temp file
        self._replacing: dict[str, Path] = {}  # deferred replacements: name -> written temp
        self._replacing_bytes = 0
        self._sync_lock = threading.Lock()  # one sync at a time (each takes all pending)
        self.direct = bool(O_DIRECT) and os.environ.get("TVCS_DIRECT_IO", "0") == "1"

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    def _read_path(self, name: str) -> Path:
        """Where ``name``'s bytes are now: its temp file while its install is deferred."""
        tmp = self._pending.get(name)
        if tmp is not None and tmp.exists():  # (sync() may install it meanwhile)
            return tmp
        return self._path(name)

    def get(self, name: str) -> bytes:
        return self.get_head(name, -1)

    def get_view(self, name: str) -> View:
        """A file of at least MAP_MIN bytes as a read-only memory map of its cached pages:
        reading a chunk then neither copies it nor takes fresh memory for it (a checkout's
        only fresh memory is the state it returns). The pages are mapped in one call where the
        kernel allows it (MADV_POPULATE_READ, else on first touch)."""
        try:
            with open(self._read_path(name), "rb", buffering=0) as f:
                n = os.fstat(f.fileno()).st_size
                if n < MAP_MIN:
                    return f.readall()
                view = mmap.mmap(f.fileno(), n, access=mmap.ACCESS_READ)
        except (NotADirectoryError, IsADirectoryError):
            raise FileNotFoundError(name) from None
        if hasattr(view, "madvise"):  # not on Windows
            with contextlib.suppress(OSError):  # older kernels: EINVAL, pages fault in then
                view.madvise(MADV_POPULATE_READ)
        return view

    def get_head(self, name: str, n: int) -> bytes:
        try:
            with open(self._read_path(name), "rb") as f:
                return f.read(n)
        except (NotADirectoryError, IsADirectoryError):
            # "a/b" where "a" is a file, or "a" where "a/" is a folder: no such file
            raise FileNotFoundError(name) from None

    def _tmp_path(self, suffix: str = "") -> Path:
        """A new name in ``tmp/``: ``<pid>-<random><suffix>`` (docs/format.md § 8)."""
        return self.root / TMP_DIR / f"{os.getpid()}-{secrets.token_hex(8)}{suffix}"

    def _write_tmp(self, data: Iterable[Chunk], durable: bool, start: bool = False) -> Path:
        """A new temp file holding ``data``: fsynced if ``durable``; with ``start``, its
        writeback to the disk begun but not waited for (sync_file_range)."""
        tmp = self._tmp_path()
        tmp_dir = tmp.parent
        if not tmp_dir.is_dir():
            tmp_dir.mkdir(parents=True, exist_ok=True)
        if durable and self.direct and isinstance(data, (list, tuple)):  # an iterator streams
            pieces = [memoryview(p).cast("B") for p in data]
            total = sum(len(p) for p in pieces)
            if total >= DIRECT_MIN:
                try:
                    _write_direct(tmp, pieces, total)
                    return tmp
                except _Refused:
                    self.direct = False  # this file system: through the page cache from now on
            data = pieces
        try:
            with open(tmp, "xb") as f:
                for piece in data:
                    f.write(piece)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
                elif start:
                    f.flush()
                    _start_writeback(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return tmp

    def _install(self, tmp: Path, path: Path, durable: bool) -> None:
        _into_folder(os.replace, tmp, path)
        if durable:
            self._mark_dirty(path.parent)

    def put(
        self,
        name: str,
        data: Iterable[Chunk],
        *,
        durable: bool = True,
        sync: bool = True,
        defer: bool = False,
    ) -> None:
        path = self._path(name)
        if defer and durable:
            # written now (writeback begun, or direct and fsynced), renamed over ``name`` at
            # the next sync(): after that sync's new files are durable and named
            pieces = list(data)
            self._defer_replace(name, self._write_tmp(pieces, self.direct, start=not self.direct))
            with self._dirty_lock:
                self._replacing_bytes += sum(memoryview(p).nbytes for p in pieces)
                early = self._replacing_bytes >= REPLACE_BATCH_BYTES
            if early and self._sync_lock.acquire(blocking=False):  # one thread syncs, others go on
                try:  # the renamed files' folders: with the next sync's new folders
                    self._sync(defer_folders=True)
                finally:
                    self._sync_lock.release()
            return
        tmp = self._write_tmp(data, durable)
        with self._dirty_lock:  # a deferred replacement of the name is older: dropped
            stale = self._replacing.pop(name, None)
        if stale is not None:
            stale.unlink(missing_ok=True)
        self._install(tmp, path, durable)
        if durable and sync:
            self.sync()

    def _defer_replace(self, name: str, tmp: Path) -> None:
        old: Path | None
        with self._dirty_lock:
            if name in self._pending:  # not named yet: its deferred install takes the new file
                old = self._pending[name]
                self._pending[name] = tmp
            else:
                old = self._replacing.get(name)
                self._replacing[name] = tmp
        if old is not None:
            old.unlink(missing_ok=True)

    def put_if_absent(self, name: str, data: Iterable[Chunk], *, defer: bool = False) -> bool:
        if self.exists(name):
            return False
        path = self._path(name)
        if defer and not self.direct:
            return self._defer(name, self._write_tmp(data, durable=False, start=True))
        tmp = self._write_tmp(data, durable=True)
        try:
            if not _link_new(tmp, path):
                return False
        finally:
            tmp.unlink(missing_ok=True)
        self._mark_dirty(path.parent)
        return True

    def _defer(self, name: str, tmp: Path) -> bool:
        """Note ``tmp`` (written, not fsynced) as ``name``'s content, installed by sync()."""
        with self._dirty_lock:
            first = name not in self._pending
            if first:
                self._pending[name] = tmp
        if not first:  # another thread of this process wrote the same object meanwhile
            tmp.unlink(missing_ok=True)
        return first

    def _install_deferred(self, name: str, tmp: Path) -> None:
        """Make a deferred file durable, then give it its name (create-only, as
        put_if_absent): a name is never seen before its bytes are on the disk."""
        path = self._path(name)
        try:
            _fsync_path(tmp)
            _link_new(tmp, path)  # False: another process stored it meanwhile, the same content
        except FileNotFoundError:
            if self._superseded(self._pending, name, tmp):
                return  # deleted, or given a newer file, while this sync ran: not ours now
            raise
        self._mark_dirty(path.parent)
        with self._dirty_lock:
            if self._pending.get(name) == tmp:
                del self._pending[name]
        tmp.unlink(missing_ok=True)

    def _fsync_replacement(self, name: str, tmp: Path) -> None:
        try:
            _fsync_path(tmp)
        except FileNotFoundError:
            if not self._superseded(self._replacing, name, tmp):
                raise

    def _superseded(self, table: dict[str, Path], name: str, tmp: Path) -> bool:
        with self._dirty_lock:
            return table.get(name) != tmp

    def exists(self, name: str) -> bool:
        return name in self._pending or self._path(name).exists()

    def size(self, name: str) -> int:
        return self._read_path(name).stat().st_size

    def mtime(self, name: str) -> float | None:
        return self._read_path(name).stat().st_mtime

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return
        for dirpath, _, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for fn in files:
                yield fn if rel == "." else f"{rel}/{fn}"

    def delete(self, name: str) -> None:
        with self._dirty_lock:
            tmps = [self._pending.pop(name, None), self._replacing.pop(name, None)]
        for tmp in tmps:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
        path = self._path(name)
        path.unlink(missing_ok=True)
        self._mark_dirty(path.parent)

    def append(self, name: str, data: bytes) -> None:
        """Append ``data`` durably. The file is line-oriented (reflogs): a tail a crash left
        without its newline (a torn line) is cut off first, so a torn line is only ever the
        last one; a short ``write`` is continued until all of ``data`` is written, and an
        append that fails half-way is undone (truncated back) before the error is raised."""
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # torn: cut after the last newline
                while size > 0:
                    start = max(0, size - 4096)
                    i = os.pread(fd, size - start, start).rfind(b"\n")
                    size = start + i + 1 if i >= 0 else start
                    if i >= 0:
                        break
                os.ftruncate(fd, size)
            view = memoryview(data)
            try:
                while view:
                    n = os.write(fd, view)
                    if n <= 0:
                        raise OSError(errno.EIO, f"append to {name} wrote nothing")
                    view = view[n:]
                os.fsync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    @contextmanager
    def lock(self, name: str, *, shared: bool = False, timeout: float = 60.0) -> Iterator[None]:
        path = self.root / LOCK_DIR / check_name(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
            deadline = time.monotonic() + timeout
            delay = 0.001
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise LockTimeoutError(
                            f"could not take lock {path} within {timeout:g}s "
                            "(another tensorvcs process holds it)"
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.05)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _mark_dirty(self, folder: Path) -> None:
        with self._dirty_lock:
            self._dirty_dirs.add(folder)

    def sync(self, *, defer_folders: bool = False) -> None:
        """Install the deferred files (each fsynced, then linked into place) and fsync the
        deferred replacements' files, all together; fsync every folder a durable write touched
        since the last sync; then rename the replacements into place and fsync their folders.
        A replacement (a parent chunk re-encoded as a delta) may depend on a new file of the
        same sync (its delta base): it is renamed only once every new name is durable.

        ``defer_folders``: the renamed replacements' folders are left for the next sync to
        fsync, together with the folders it has to fsync anyway (a commit's manifest, or the
        next batch's new chunks), instead of in a round of their own. Nothing depends on a
        replacement's name being durable: a rename that a crash loses leaves the parent's
        whole file under its name (the same content) and at most a temp file, which gc
        removes."""
        with self._sync_lock:
            self._sync(defer_folders=defer_folders)

    def deferred_replacement_bytes(self) -> int:
        """Bytes of deferred replacements written since the last sync."""
        return self._replacing_bytes

    def _sync(self, defer_folders: bool = False) -> None:
        with self._dirty_lock:
            deferred = list(self._pending.items())
            replacing = list(self._replacing.items())
            self._replacing_bytes = 0
        jobs: list[Callable[[], None]] = [partial(self._install_deferred, *d) for d in deferred]
        jobs += [partial(self._fsync_replacement, *r) for r in replacing]
        _each(lambda job: job(), jobs)
        self._sync_dirs()
        if not replacing:
            return
        doomed: list[Path] = []
        for name, tmp in replacing:
            with self._dirty_lock:
                if self._replacing.get(name) != tmp:  # replaced again, or deleted, meanwhile
                    continue
                del self._replacing[name]
            path = self._path(name)
            old = self._keep_alive(path)
            self._install(tmp, path, durable=True)
            if old is not None:
                doomed.append(old)
        _background.unlink_later(doomed)  # the old files' blocks are freed after this sync
        if not defer_folders:
            self._sync_dirs()

    def _keep_alive(self, path: Path) -> Path | None:
        """A second name in ``tmp/`` for the file at ``path``, so that renaming a replacement
        over it does not free its blocks (the reaper thread does, after the sync); None where
        there is no such file or the file system refuses hard links (the rename frees them)."""
        old = self._tmp_path(".old")
        try:
            os.link(path, old)
        except OSError:
            return None
        return old

    def drain(self) -> None:
        """Wait until the files earlier syncs replaced are unlinked (any store's: the reaper
        is the process's)."""
        _background.drain()

    def _sync_dirs(self) -> None:
        with self._dirty_lock:
            dirs, self._dirty_dirs = self._dirty_dirs, set()
        _each(_fsync_dir, [d for d in dirs if d.exists()])
