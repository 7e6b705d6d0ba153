"""References: HEAD, branches (refs/heads/*), tags (refs/tags/*) and their reflogs.

Every change goes through ``update``/``delete``: a compare-and-swap under the repository's
``refs`` lock (flock on a local store; released by the kernel if the holder dies): one line
appended to the ref's reflog, then the ref written as temp file → fsync → rename (git's
order: a failed append leaves the ref unchanged).
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
JOURNAL = "refs-txn"  # a ref transaction being applied (RefStore.transaction)
_FULL_HEX = re.compile(r"[0-9a-fA-F]{64}")
_BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)")


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()  # "don't compare" for update/delete's expected value


def check_ref_name(name: str, what: str = "ref") -> str:
    """Validate a branch or tag name by git's rules (check-ref-format); a branch may not be
    called HEAD, and neither a branch nor a tag may be 64 hex digits (revisions read those
    as an object id first)."""
    if (
        not name
        or name.startswith(("/", ".", "-"))
        or name.endswith(("/", "."))
        or name == "@"
        or _BAD_REF.search(name)
    ):
        raise UsageError(f"invalid {what} name {name!r}")
    if what in ("branch", "tag"):
        if what == "branch" and name == HEAD:
            raise UsageError(f"invalid branch name {name!r} (HEAD names the current commit)")
        if _FULL_HEX.fullmatch(name):
            raise UsageError(
                f"invalid {what} name {name!r}: 64 hex digits always name the object id, "
                f"so a {what} named like that could never be used"
            )
    return name


def default_author() -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class RefChange:
    """One compare-and-swap of a ref transaction: ``name`` holds ``expected`` (None: absent)
    and will hold ``new`` (None: deleted). For HEAD, only a detached HEAD's commit id."""

    name: str
    expected: str | None
    new: str | None


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
        """Hold the refs lock (reentrant within this process). Taking it first completes a
        ref transaction that a dead process left half done (see ``transaction``)."""
        with self._mutex:
            if self._depth == 0:
                cm = self.store.lock(REFS_LOCK, timeout=self.lock_timeout)
                cm.__enter__()
                self._held = cm
                try:
                    self._depth += 1
                    self._replay_journal()
                except BaseException:
                    self._depth -= 1
                    self._held = None
                    cm.__exit__(None, None, None)
                    raise
                self._depth -= 1
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
            # the reflog line first, as git: an append that fails (ENOSPC) leaves the ref as
            # it was and the error is true; a crash between leaves a line whose commit exists
            self.log(name, current, new, who or default_author(), message)
            self.store.put(name, [new.encode() + b"\n"])

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
            self.log(name, current, None, default_author(), message or "delete")
            self.store.delete(name)
            self.store.sync()
            return current

    # -- transactions ----------------------------------------------------------------------
    def transaction(self, changes: builtins.list[RefChange], message: str) -> None:
        """Apply several ref changes as one: all or (after a crash) all on the next lock.

        Each change is a compare-and-swap (``expected`` must be what the ref holds now; for
        HEAD, the detached commit id). The changes are first written as a journal
        (``refs-txn``, durable) and then applied one by one; a process killed in between
        leaves the journal, and whoever takes the refs lock next applies what is left before
        doing anything else, so no reader after that sees half of it."""
        if not changes:
            return
        with self.locked():
            for ch in changes:
                current = self._current(ch.name)
                if current != ch.expected:
                    raise RefConflictError(
                        f"ref {ch.name} moved: expected {ch.expected or 'nothing'}, found "
                        f"{current or 'nothing'} (another writer updated it; retry)"
                    )
                if ch.new is not None and not is_object_id(ch.new):
                    raise UsageError(f"not an object id: {ch.new!r}")
            doc = {
                "message": message,
                "who": default_author(),
                "changes": [[c.name, c.expected, c.new] for c in changes],
            }
            self.store.put(JOURNAL, [jsonenc.dumps(doc) + b"\n"])
            self._apply_journal(doc)

    def recover(self) -> None:
        """Complete a ref transaction a dead process left (taking the refs lock does that);
        a repository that cannot be locked here (read-only) is left as it is."""
        if not self.store.exists(JOURNAL):
            return
        try:
            with self.locked():
                pass
        except OSError:
            pass

    def _current(self, name: str) -> str | None:
        if name == HEAD:
            raw = self._read_raw(HEAD)
            return None if raw is None or raw.startswith("ref: ") else raw
        return self.read(name)

    def _replay_journal(self) -> None:
        try:
            data = self.store.get(JOURNAL)
        except FileNotFoundError:
            return
        try:
            doc = jsonenc.loads(data)
            changes = doc["changes"]
            if not isinstance(changes, builtins.list) or not all(
                isinstance(c, builtins.list)
                and len(c) == 3
                and isinstance(c[0], str)
                and all(x is None or is_object_id(x) for x in c[1:])
                for c in changes
            ):
                raise ValueError("bad changes")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            # put() is atomic, so a journal is whole or absent; this one was damaged on disk
            raise CorruptObjectError(
                f"ref transaction journal {JOURNAL} is unreadable: {data[:80]!r} (inspect it, "
                "then delete it to go on)"
            ) from None
        self._apply_journal(doc)

    def _apply_journal(self, doc: dict[str, Any]) -> None:
        """Apply each change still to be applied (idempotent), then remove the journal."""
        who = str(doc.get("who") or default_author())
        message = str(doc.get("message") or "transaction")
        for name, old, new in doc["changes"]:
            current = self._current(name)
            if current == new or current != old:
                continue  # applied before the crash (or changed since: leave it)
            if new is None:
                self.store.delete(name)
                self.store.sync()
            else:
                self.store.put(name, [new.encode() + b"\n"])
            self.log(name, old, new, who, message)
        self.store.delete(JOURNAL)
        self.store.sync()

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
            if new is not None:
                self.log(HEAD, old, new, default_author(), message)
            self.store.put(HEAD, [content.encode() + b"\n"])

    def reflog(self, name: str) -> builtins.list[ReflogEntry]:
        """The entries of ``name``'s reflog, oldest first. A torn last line (a crash during
        the append: the file does not end with a newline) is skipped; any other line that is
        not a reflog entry is CorruptObjectError naming the reflog and the line number."""
        path = LOGS + name
        try:
            data = self.store.get(path)
        except FileNotFoundError:
            return []
        lines = data.split(b"\n")
        torn = lines.pop()  # b"" when the file ends with a newline, else an unfinished line
        out = []
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            entry, problem = self._reflog_entry(raw)
            if entry is None:
                raise CorruptObjectError(f"reflog {path} line {number} is corrupt: {problem}")
            out.append(entry)
        if torn.strip():
            entry, _ = self._reflog_entry(torn)
            if entry is not None:  # complete but for its newline
                out.append(entry)
        return out

    @staticmethod
    def _reflog_entry(raw: bytes) -> tuple[ReflogEntry | None, str]:
        """(the entry of one reflog line, "") or (None, why it is not one)."""
        try:
            d = jsonenc.loads(raw)
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return None, f"not UTF-8 JSON ({e})"
        except RecursionError:
            return None, "not a reflog entry (nested too deeply)"
        if not isinstance(d, dict):
            return None, "not a JSON object"
        for key in ("old", "new"):
            v = d.get(key)
            if v is not None and not (isinstance(v, str) and is_object_id(v)):
                return None, f"{key} is {v!r:.80}, not an object id or null"
        for key in ("time", "who", "msg"):
            if not isinstance(d.get(key), str):
                return None, f"{key} is missing or not a string"
        return ReflogEntry(d["old"], d["new"], d["time"], d["who"], d["msg"]), ""
