"""References: HEAD, branches (refs/heads/*), tags (refs/tags/*) and their reflogs.

Every change goes through ``update``/``delete``: a compare-and-swap under the repository's
``refs`` lock (flock on a local store; released by the kernel if the holder dies), written as
temp file → fsync → rename, then one line appended to the ref's reflog.
"""

from __future__ import annotations

import builtins
import getpass
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .errors import CorruptObjectError, NotFoundError, RefConflictError, UsageError
from .format import jsonenc
from .format.commit import utc_now
from .format.ids import is_object_id
from .store.base import Store

HEAD = "HEAD"
HEADS = "refs/heads/"
TAGS = "refs/tags/"
LOGS = "logs/"
REFS_LOCK = "refs"
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()  # "don't compare" for update/delete's expected value


def check_ref_name(name: str, what: str = "ref") -> str:
    """Validate a branch or tag name by git's rules (check-ref-format)."""
    if (
        not name
        or name.startswith(("/", ".", "-"))
        or name.endswith(("/", "."))
        or name == "@"
        or _BAD_REF.search(name)
    ):
        raise UsageError(f"invalid {what} name {name!r}")
    return name


def default_author() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class ReflogEntry:
    old: str | None
    new: str | None
    time: str
    who: str
    message: str


class RefStore:
    def __init__(self, store: Store, lock_timeout: float = 60.0) -> None:
        self.store = store
        self.lock_timeout = lock_timeout
        self._mutex = threading.RLock()
        self._depth = 0
        self._held: Any = None

    # -- locking ---------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the refs lock (reentrant within this process)."""
        with self._mutex:
            if self._depth == 0:
                cm = self.store.lock(REFS_LOCK, timeout=self.lock_timeout)
                cm.__enter__()
                self._held = cm
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0:
                    held, self._held = self._held, None
                    held.__exit__(None, None, None)

    # -- reading ---------------------------------------------------------------------------
    def _read_raw(self, name: str) -> str | None:
        try:
            data = self.store.get(name)
        except FileNotFoundError:
            return None
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise CorruptObjectError(f"ref {name} holds {data[:80]!r}, not text") from None

    def head_target(self) -> str | None:
        """The branch ref HEAD points at (``refs/heads/x``), or None when detached."""
        raw = self._read_raw(HEAD)
        if raw is not None and raw.startswith("ref: "):
            return raw[5:]
        return None

    def read(self, name: str) -> str | None:
        """The commit id ``name`` points at (HEAD followed through), or None if unborn/absent."""
        raw = self._read_raw(name)
        if raw is None:
            return None
        if raw.startswith("ref: "):
            if name != HEAD:
                raise CorruptObjectError(f"ref {name} is symbolic; only HEAD may be")
            return self.read(raw[5:])
        if not is_object_id(raw):
            raise CorruptObjectError(f"ref {name} holds {raw[:80]!r}, not an object id")
        return raw

    def list(self, prefix: str) -> dict[str, str]:
        """{short name: commit id} for refs under ``prefix`` (HEADS or TAGS)."""
        out = {}
        for name in sorted(self.store.list(prefix.rstrip("/"))):
            oid = self.read(name)
            if oid is not None:
                out[name[len(prefix) :]] = oid
        return out

    def exists(self, name: str) -> bool:
        """True when ``name`` is a file (a folder of refs, like refs/heads/a/, is not a ref)."""
        try:
            self.store.get_head(name, 0)
        except FileNotFoundError:
            return False
        return True

    # -- writing ---------------------------------------------------------------------------
    def log(self, name: str, old: str | None, new: str | None, who: str, message: str) -> None:
        line = {"old": old, "new": new, "time": utc_now(), "who": who, "msg": message}
        self.store.append(LOGS + name, jsonenc.dumps(line) + b"\n")

    def update(
        self,
        name: str,
        new: str,
        *,
        expected: str | Any | None = ANY,
        message: str = "",
        who: str | None = None,
    ) -> None:
        """Point ``name`` at ``new`` if it currently holds ``expected`` (None: must be absent)."""
        if not is_object_id(new):
            raise UsageError(f"not an object id: {new!r}")
        with self.locked():
            current = self.read(name) if name != HEAD else self._read_raw(HEAD)
            if name == HEAD and current is not None and current.startswith("ref: "):
                raise UsageError("HEAD is symbolic: update the branch, or detach HEAD")
            if expected is not ANY and current != expected:
                raise RefConflictError(
                    f"ref {name} moved: expected {expected or 'nothing'}, found "
                    f"{current or 'nothing'} (another writer updated it; fetch and retry)"
                )
            if current is None:
                self._check_free(name)
            self.store.put(name, [new.encode() + b"\n"])
            self.log(name, current, new, who or default_author(), message)

    def _check_free(self, name: str) -> None:
        """Refuse a new ref named like a folder of other refs or inside another ref (as git
        does); reflogs outlive their refs, so their names are checked as well."""
        parts = name.split("/")
        ancestors = ["/".join(parts[:i]) for i in range(1, len(parts))]
        for space in ("", LOGS):
            clash = [space + a for a in ancestors if self.exists(space + a)]
            clash += sorted(self.store.list(space + name))[:1]
            if clash:
                what = "the reflog " if space else "the ref "
                raise UsageError(f"ref {name} conflicts with {what}{clash[0]}")

    def delete(self, name: str, *, expected: str | Any | None = ANY, message: str = "") -> str:
        with self.locked():
            current = self.read(name)
            if current is None:
                raise NotFoundError(f"ref {name} does not exist")
            if expected is not ANY and current != expected:
                raise RefConflictError(f"ref {name} moved: expected {expected}, found {current}")
            self.store.delete(name)
            self.store.sync()
            self.log(name, current, None, default_author(), message or "delete")
            return current

    def set_head(self, target: str, message: str = "checkout") -> None:
        """Point HEAD at a branch (``refs/heads/x``) or detach it at a commit id."""
        with self.locked():
            old = self.read(HEAD)
            new: str | None
            if is_object_id(target):
                content, new = target, target
            elif target.startswith(HEADS):
                content, new = f"ref: {target}", self.read(target)
            else:
                raise UsageError(f"HEAD can point at a branch or a commit, not {target!r}")
            self.store.put(HEAD, [content.encode() + b"\n"])
            if new is not None:
                self.log(HEAD, old, new, default_author(), message)

    def reflog(self, name: str) -> builtins.list[ReflogEntry]:
        try:
            data = self.store.get(LOGS + name)
        except FileNotFoundError:
            return []
        out = []
        for line in data.decode("utf-8").splitlines():
            if not line.strip():
                continue
            try:
                d = jsonenc.loads(line)
                out.append(ReflogEntry(d["old"], d["new"], d["time"], d["who"], d["msg"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash mid-append is skipped
        return out
