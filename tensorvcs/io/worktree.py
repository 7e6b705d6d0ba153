"""File digests, and what the CLI knows about files in the working directory.

Every file the CLI commits records the BLAKE3 of its bytes (``FileEntry.extra["blake3"]``).
Checkout overwrites an existing file only when its content is safe to lose: when its digest is
one a commit recorded, or one of a file that checkout itself wrote (a ``.pt`` file is written
with ``torch.save``, so its bytes differ from the committed original while its content is in
the repository). Those are kept in ``.tvcs/worktree.json`` — a local cache, not part of the
history; deleting it only makes checkout more cautious.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import blake3

if TYPE_CHECKING:
    from ..repo import Repo

BLOCK = 8 << 20
INDEX = "worktree.json"
MAX_ENTRIES = 10000


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
        try:
            doc = json.loads(self.path.read_text("utf-8"))
            if isinstance(doc, dict) and isinstance(doc.get("written"), dict):
                self.entries = doc["written"]
        except (OSError, ValueError):
            pass

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
        while len(self.entries) > MAX_ENTRIES:
            del self.entries[next(iter(self.entries))]

    def save(self) -> None:
        self.tmp.mkdir(parents=True, exist_ok=True)
        tmp = self.tmp / f"worktree-{os.getpid()}.json"
        tmp.write_text(json.dumps({"version": 1, "written": self.entries}), "utf-8")
        os.replace(tmp, self.path)


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
