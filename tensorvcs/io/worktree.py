"""File digests, and what the CLI knows about files in the working directory.

Every file the CLI commits records the BLAKE3 of its bytes (``FileEntry.extra["blake3"]``).
Checkout overwrites an existing file only when its content is safe to lose: when its digest is
one a commit recorded, or one of a file that checkout itself wrote (a ``.pt`` file is written
with ``torch.save``, so its bytes differ from the committed original while its content is in
the repository). Those are kept in ``.tvcs/worktree.json`` — a local cache, not part of the
history; deleting it only makes checkout more cautious.

The same file caches the digests of work-tree files by their ``stat`` (``"stat"``: {absolute
path: [size, mtime_ns, ctime_ns, inode, digest, hashed_ns]}), so ``tvcs status`` hashes only
files that changed since it (or commit, or checkout) last read them. As in git, an entry is
trusted only when the file's mtime is older than the moment it was hashed by more than
``RACY_NS``: a file written in the same instant it was hashed is hashed again next time.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import blake3

from ..errors import CorruptObjectError, OverwriteError

if TYPE_CHECKING:
    from ..repo import Repo

BLOCK = 8 << 20
INDEX = "worktree.json"
REPO_DIR = ".tvcs"
MAX_ENTRIES = 10000
RACY_NS = 2_000_000_000  # an mtime this close to the hashing time is not trusted


def file_digest(path: str | os.PathLike[str], progress: object = None) -> str:
    """BLAKE3-256 of a file's bytes, read in blocks (no mapping, so no resident pages)."""
    h = blake3.blake3()
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            if progress is not None:
                progress(n)  # type: ignore[operator]
    return h.hexdigest()


class WorktreeIndex:
    """Digests of files checkout wrote: {digest: {"path", "commit", "time"}}."""

    def __init__(self, repo: Repo) -> None:
        self.path = repo.path / INDEX
        self.tmp = repo.path / "tmp"
        self.entries: dict[str, dict[str, object]] = {}
        self.stats: dict[str, list[object]] = {}
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("written"), dict):
                self.entries = doc["written"]
            if isinstance(doc, dict) and isinstance(doc.get("stat"), dict):
                self.stats = doc["stat"]
        except (OSError, ValueError):
            pass
        self.changed = False

    # -- digests by stat ----------------------------------------------------------------------
    @staticmethod
    def _key(st: os.stat_result) -> list[int]:
        return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]

    def cached_digest(self, path: Path, st: os.stat_result) -> str | None:
        """The digest recorded for ``path`` when its stat is still the one it had then (and
        that entry is not racy), else None."""
        e = self.stats.get(os.path.realpath(path))
        if not isinstance(e, list) or len(e) != 6 or e[:4] != self._key(st):
            return None
        digest, hashed = e[4], e[5]
        if not isinstance(digest, str) or not isinstance(hashed, int):
            return None
        return digest if st.st_mtime_ns + RACY_NS < hashed else None

    def remember(self, path: Path, st: os.stat_result, digest: str, hashed_ns: int) -> None:
        """Record that ``path`` with stat ``st`` had ``digest`` when hashed at ``hashed_ns``
        (``time.time_ns()`` taken before reading it)."""
        key = os.path.realpath(path)
        self.stats.pop(key, None)
        self.stats[key] = [*self._key(st), digest, hashed_ns]
        while len(self.stats) > MAX_ENTRIES:
            del self.stats[next(iter(self.stats))]
        self.changed = True

    def digest(self, path: Path, progress: object = None) -> str:
        """The BLAKE3 of the file at ``path`` (absolute), from the cache when its stat says it
        did not change, else read and remembered."""
        st = os.stat(path)
        cached = self.cached_digest(path, st)
        if cached is not None:
            return cached
        hashed = time.time_ns()
        digest = file_digest(path, progress)
        after = os.stat(path)
        if self._key(after) == self._key(st):  # not modified while it was read
            self.remember(path, after, digest, hashed)
        return digest

    def __contains__(self, digest: str) -> bool:
        return digest in self.entries

    def add(self, digest: str, path: Path, commit: str, how: str = "") -> None:
        """Record that checkout wrote ``path`` (content ``digest``) from ``commit``; ``how``
        names the options that shaped the bytes (format, partial or not)."""
        self.entries.pop(digest, None)
        self.entries[digest] = {
            "path": str(path),
            "commit": commit,
            "how": how,
            "time": int(time.time()),
        }
        self.changed = True
        while len(self.entries) > MAX_ENTRIES:
            del self.entries[next(iter(self.entries))]

    def wrote(self, digest: str, path: Path, commit: str, how: str) -> bool:
        """True when checkout wrote exactly this content at ``path`` from ``commit`` with the
        same options (so writing it again would give an equal file)."""
        e = self.entries.get(digest)
        return (
            e is not None
            and e.get("path") == str(path)
            and e.get("commit") == commit
            and e.get("how") == how
        )

    def save(self) -> bool:
        """Write the index; False (and nothing raised) when it cannot be written — a
        read-only repository, a full disk: it is a cache, and losing it only makes the next
        checkout more cautious."""
        tmp = self.tmp / f"worktree-{os.getpid()}.json"
        try:
            self.tmp.mkdir(parents=True, exist_ok=True)
            doc = {"version": 1, "written": self.entries, "stat": self.stats}
            tmp.write_text(json.dumps(doc), "utf-8")
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            return False
        return True


# -- where checkout may write -----------------------------------------------------------------
def check_recorded_path(path: object) -> str:
    """A file path a commit recorded, checked before checkout writes there: a non-empty,
    relative, '/'-separated path without empty, '.' or '..' parts and not in a ``.tvcs``
    folder. Anything else is CorruptObjectError (commit never records such a path: the
    manifest was made by something else)."""
    why = None
    if not isinstance(path, str) or not path:
        why = "empty or not a string"
    elif "\0" in path:
        why = "contains a NUL byte"
    elif "\\" in path:
        why = "contains a backslash"
    elif path.startswith("/") or (os.name == "nt" and ":" in path):
        why = "absolute"
    else:
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            why = "has an empty, '.' or '..' part"
        elif any(p.lower() == REPO_DIR for p in parts):
            why = f"is inside a {REPO_DIR} folder"
    if why is not None:
        raise CorruptObjectError(
            f"the commit records a file path checkout refuses to write: {path!r} ({why})"
        )
    return path  # type: ignore[return-value]


def safe_destination(base: Path, rel: str, repo_dir: Path) -> Path:
    """``base / rel`` for a recorded path ``rel`` (checked with ``check_recorded_path``), after
    making sure that writing it stays inside ``base``: no folder on the way may be a symbolic
    link that leads out of ``base`` or into the repository's ``repo_dir`` (OverwriteError).
    The destination itself may be a link: checkout replaces it, never writes through it."""
    check_recorded_path(rel)
    dest = base / rel
    top = base.resolve()
    store = repo_dir.resolve()
    parent = dest.parent.resolve()  # follows every link on the way, existing or dangling
    if not parent.is_relative_to(top) or parent.is_relative_to(store):
        into = (
            f"into the repository's {REPO_DIR} folder"
            if parent.is_relative_to(store)
            else f"out of {top}"
        )
        link = _first_link(base, dest.parent)
        if link is None:
            raise OverwriteError(f"{rel}: checkout refuses to write {into}")
        raise OverwriteError(
            f"{rel}: checkout refuses to write through the symbolic link {_shown(link)} "
            f"(-> {os.readlink(link)}), which leads {into}"
        )
    return dest


def _shown(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


def _first_link(base: Path, folder: Path) -> Path | None:
    here = base
    for part in folder.relative_to(base).parts:
        here = here / part
        if here.is_symlink():
            return here
    return None


def committed_digests(repo: Repo, commits: Iterable[str]) -> set[str]:
    """The file digests recorded by ``commits``."""
    out: set[str] = set()
    for cid in commits:
        m = repo.get_manifest(repo.get_commit(cid).manifest)
        for f in m.files:
            d = f.extra.get("blake3")
            if isinstance(d, str):
                out.add(d)
    return out


def all_commits(repo: Repo) -> list[str]:
    """Every commit reachable from HEAD, a branch or a tag."""
    from ..maintenance import root_refs

    seen: set[str] = set()
    stack = list(root_refs(repo).values())
    out = []
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        out.append(c)
        stack.extend(repo.get_commit(c).parents)
    return out
