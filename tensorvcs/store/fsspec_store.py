"""A Store over fsspec: ``file://``, ``memory://`` and ``s3://`` (s3fs), among others.

Guarantees (docs/remotes.md has the full list):

- ``put`` is atomic: on ``file://`` a temp file is renamed over the name; elsewhere the whole
  file is written by one request (a single S3 PUT is atomic: readers see old or new).
- ``put_if_absent`` is create-if-absent: on S3 a conditional PUT (``If-None-Match: *``), on a
  local file system ``link(2)`` of a temp file, in memory a check-and-set under a process lock.
  Other protocols fall back to check-then-write (racy; documented as weaker).
- ``lock(name)`` is a lock *object* ``locks/<name>`` created with ``put_if_absent`` and holding
  an owner token and an expiry; the holder refreshes it while held; a waiter may break a lock
  whose expiry has passed (its holder died). A shared lock is one such object per holder,
  under ``locks/<name>.shared/``; an exclusive taker waits until none of them is alive.
- ``append`` is read-modify-write (reflogs are only appended under the refs lock).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import Any

from ..errors import LockTimeoutError
from .base import Chunk, Store, check_name

LOCK_DIR = "locks"
TMP_DIR = "tmp"
DEFAULT_LOCK_TTL = 30.0  # seconds a lock object lives without a refresh

_memory_lock = threading.Lock()  # memory:// is one dict per process: guards check-and-set


def _join(pieces: Iterable[Chunk]) -> bytes:
    return b"".join(bytes(p) if not isinstance(p, bytes) else p for p in pieces)


class FsspecStore(Store):
    """Named byte files under ``url`` on any fsspec file system."""

    def __init__(self, url: str, *, lock_ttl: float = DEFAULT_LOCK_TTL, **storage_options: Any):
        import fsspec

        protocol = url.split("://", 1)[0] if "://" in url else "file"
        if protocol == "s3":
            # Listings must never be served from a cache: refs and locks change under us.
            # (fsspec's instance cache stays on: making an S3 client costs ~0.2 s)
            storage_options.setdefault("use_listings_cache", False)
        self.url = url.rstrip("/")
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")
        protos = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        self.protocol = "s3" if "s3" in protos else ("file" if "file" in protos else protos[0])
        # file:// is this machine's disk and memory:// this process: nothing is uploaded
        self.local = self.protocol in ("file", "memory")
        self.lock_ttl = lock_ttl
        self._append_lock = threading.Lock()
        self.requests = 0  # puts and gets issued (for tests and stats)

    def __repr__(self) -> str:
        return f"FsspecStore({self.url!r})"

    def _path(self, name: str) -> str:
        return f"{self.root}/{check_name(name)}" if self.root else check_name(name)

    # -- reading -----------------------------------------------------------------------------
    def get(self, name: str) -> bytes:
        self.requests += 1
        try:
            if self.protocol == "s3":  # one GET (s3fs would first HEAD it for its size)
                return bytes(self.fs.cat_file(self._path(name), max_concurrency=1))
            return bytes(self.fs.cat_file(self._path(name)))
        except (IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(name) from None

    def get_head(self, name: str, n: int) -> bytes:
        if n < 0:
            return self.get(name)
        if n == 0:  # a range of 0 bytes is not expressible in HTTP; only check existence
            if not self.exists(name):
                raise FileNotFoundError(name)
            return b""
        self.requests += 1
        try:
            return bytes(self.fs.cat_file(self._path(name), start=0, end=n))
        except (IsADirectoryError, NotADirectoryError):
            raise FileNotFoundError(name) from None

    def _info(self, name: str) -> dict[str, Any]:
        """The file's info; FileNotFoundError if there is no file ``name``."""
        path = self._path(name)
        if self.protocol == "s3":
            # One HEAD. (s3fs's info follows a missing key with a LIST, to tell a "folder";
            # names here are files, and "does it exist" is asked for every object written.)
            bucket, key, _ = self.fs.split_path(path)
            head = self.fs.call_s3("head_object", Bucket=bucket, Key=key)
            return {"size": head["ContentLength"], "mtime": head.get("LastModified")}
        try:
            info = dict(self.fs.info(path))
        except NotADirectoryError:
            raise FileNotFoundError(name) from None
        if info.get("type") != "file":
            raise FileNotFoundError(name)
        return info

    def exists(self, name: str) -> bool:
        try:
            self._info(name)
        except FileNotFoundError:
            return False
        return True

    def size(self, name: str) -> int:
        return int(self._info(name)["size"])

    def mtime(self, name: str) -> float | None:
        info = self._info(name)
        for key in ("mtime", "LastModified", "last_modified", "created"):
            v: Any = info.get(key)
            if isinstance(v, int | float):
                return float(v)
            if hasattr(v, "timestamp"):
                return float(v.timestamp())
        return None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return
        strip = len(self.root) + 1 if self.root else 0
        for p in found:
            p = p.rstrip("/")
            rel = p[strip:] if self.root else p
            if self.protocol == "file" and rel.startswith(TMP_DIR + "/"):
                continue
            if rel:
                yield rel

    # -- writing -----------------------------------------------------------------------------
    def put(
        self,
        name: str,
        data: Iterable[Chunk],
        *,
        durable: bool = True,
        sync: bool = True,
        defer: bool = False,
    ) -> None:
        """``defer`` is ignored: the file is replaced (durably) when this returns."""
        path = self._path(name)
        body = _join(data)
        self.requests += 1
        if self.protocol == "file":
            tmp = self._write_tmp(body, durable)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, body)

    def _write_tmp(self, body: bytes, durable: bool) -> str:
        tmp_dir = f"{self.root}/{TMP_DIR}"
        os.makedirs(tmp_dir, exist_ok=True)
        tmp = f"{tmp_dir}/{os.getpid()}-{secrets.token_hex(8)}"
        with open(tmp, "xb") as f:
            f.write(body)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        return tmp

    def put_if_absent(self, name: str, data: Iterable[Chunk], *, defer: bool = False) -> bool:
        """``defer`` is ignored: each object is stored (durably) when this returns."""
        path = self._path(name)
        body = _join(data)
        self.requests += 1
        if self.protocol == "s3":
            try:
                self.fs.pipe_file(path, body, mode="create")  # PUT with If-None-Match: *
            except FileExistsError:
                return False
            return True
        if self.protocol == "file":
            if os.path.exists(path):
                return False
            tmp = self._write_tmp(body, True)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.link(tmp, path)
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True
        with _memory_lock:  # memory:// and others: check then write (atomic within a process)
            if self.exists(name):
                return False
            self.fs.pipe_file(path, body)
            return True

    def delete(self, name: str) -> None:
        with suppress(FileNotFoundError):
            self.fs.rm_file(self._path(name))

    def append(self, name: str, data: bytes) -> None:
        with self._append_lock:
            try:
                old = self.get(name)
            except FileNotFoundError:
                old = b""
            self.put(name, [old, data])

    # -- locks -------------------------------------------------------------------------------
    # Exclusive: the object ``locks/<name>``. Shared: one object per holder under
    # ``locks/<name>.shared/``. A shared taker backs off while the exclusive object exists, and
    # checks it again after writing its own; an exclusive taker creates its object, then waits
    # until no live shared object is left. With a store that is strongly consistent for reads
    # and listings after writes (S3 is), one of the two always sees the other: if the shared
    # taker's second check missed the exclusive object, its own object was written before that
    # object was created, hence before the exclusive taker listed the shared ones.
    def lock(
        self, name: str, *, shared: bool = False, timeout: float = 60.0
    ) -> AbstractContextManager[None]:
        check_name(name)
        return self._lock_shared(name, timeout) if shared else self._lock_exclusive(name, timeout)

    def _timeout(self, what: str, timeout: float) -> LockTimeoutError:
        return LockTimeoutError(
            f"could not take lock {self.url}/{what} within {timeout:g}s "
            "(another tensorvcs process holds it; it expires "
            f"{self.lock_ttl:g}s after its holder stops refreshing it)"
        )

    @staticmethod
    def _token() -> str:
        return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"

    @contextmanager
    def _holding(self, lock_name: str, token: str, shared: bool) -> Iterator[None]:
        """Keep ``lock_name`` (whose body names ``token``) alive while the caller runs."""
        stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat,
            args=(lock_name, token, stop, shared),
            daemon=True,
            name="tvcs-lock-heartbeat",
        )
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            if shared:
                self.delete(lock_name)  # named by our own token: nobody else writes it
            elif self._lock_owner(lock_name) == token:
                self.delete(lock_name)

    @contextmanager
    def _lock_exclusive(self, name: str, timeout: float) -> Iterator[None]:
        lock_name = f"{LOCK_DIR}/{name}"
        token = self._token()
        deadline = time.monotonic() + timeout
        delay = 0.005
        while not self.put_if_absent(lock_name, [self._lock_body(token)]):
            self._break_if_expired(lock_name)
            if time.monotonic() >= deadline:
                raise self._timeout(lock_name, timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        with self._holding(lock_name, token, False):
            delay = 0.005
            while self._live_shared(name):  # new shared takers now back off: wait for the rest
                if time.monotonic() >= deadline:
                    raise self._timeout(f"{lock_name} (shared holders remain)", timeout)
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            yield

    @contextmanager
    def _lock_shared(self, name: str, timeout: float) -> Iterator[None]:
        excl = f"{LOCK_DIR}/{name}"
        lock_name = f"{LOCK_DIR}/{name}.shared/{secrets.token_hex(12)}"
        token = self._token()
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if not self._exclusive_held(excl):
                self.put(lock_name, [self._lock_body(token)])
                if not self._exclusive_held(excl):
                    break
                self.delete(lock_name)  # an exclusive taker came in between: let it go first
            if time.monotonic() >= deadline:
                raise self._timeout(f"{excl} (shared)", timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        with self._holding(lock_name, token, True):
            yield

    def _exclusive_held(self, lock_name: str) -> bool:
        """True while ``lock_name`` exists (breaking it first if its holder died)."""
        if not self.exists(lock_name):
            return False
        self._break_if_expired(lock_name)
        return self.exists(lock_name)

    def _live_shared(self, name: str) -> bool:
        """True while a shared holder of ``name`` is alive (expired ones are removed)."""
        prefix = f"{LOCK_DIR}/{name}.shared/"
        alive = False
        for held in list(self.list(prefix.rstrip("/"))):
            if held.startswith(prefix) and not self._break_if_expired(held):
                alive = True
        return alive

    def _lock_body(self, token: str) -> bytes:
        return json.dumps({"owner": token, "expires": time.time() + self.lock_ttl}).encode()

    def _read_lock(self, lock_name: str) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.get(lock_name))
        except FileNotFoundError:
            return None
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _lock_owner(self, lock_name: str) -> str | None:
        doc = self._read_lock(lock_name)
        return None if doc is None else doc.get("owner")

    def _break_if_expired(self, lock_name: str) -> bool:
        """Delete ``lock_name`` if its expiry has passed (its holder died, or wrote garbage);
        True if it is gone."""
        doc = self._read_lock(lock_name)
        if doc is None:
            return True
        expires = doc.get("expires")
        if not isinstance(expires, (int, float)) or expires < time.time():
            self.delete(lock_name)
            return True
        return False

    def _heartbeat(self, lock_name: str, token: str, stop: threading.Event, shared: bool) -> None:
        while not stop.wait(self.lock_ttl / 3):
            if shared:
                if not self.exists(lock_name):
                    return  # expired and removed by an exclusive taker: do not bring it back
            elif self._lock_owner(lock_name) != token:
                return  # broken by someone else: do not clobber theirs
            self.put(lock_name, [self._lock_body(token)])

    def sync(self, *, defer_folders: bool = False) -> None:
        """Nothing to do: every put is complete when it returns."""


__all__ = ["FsspecStore"]
