"""Delta re-encodings done after the commits that left them (``tv.compact(repo)``,
``tvcs compact``): functions over a Repo, which repo.py does not import.

A commit stores each new chunk whole and, as it goes, re-encodes the parent commit's chunk at
the same key path and index as a delta against it (reverse deltas, state/writer.py). A commit
written with ``defer_deltas`` (a CheckpointManager's background commit; a DCP save into a
repository on object storage, where the re-encoding would upload every changed chunk a
second time) leaves the parent's chunk whole. Nothing depends on that work: the content
under every id is the same either way, only the older versions take more space.

``compact`` finds that work in the history itself, so it needs no list kept by the process
that committed: for every commit reachable from a ref or a reflog entry and its first parent,
each chunk of a tensor that both hold with the same dtype and shape, where the two chunks
differ, the parent's chunk is whole and not a keyframe (every ``delta_max_depth + 1``-th
version stays whole), and the child's chunk is whole. That last condition, with one base per
chunk and no loop through the re-encodings chosen in the same run, keeps the delta graph free
of cycles: a whole chunk points to nothing on disk, so only the chosen edges could close a
loop (a revert, A → B → A, would otherwise make A and B deltas of each other). Each
candidate then goes through the writer's own ``rewrite_deferred``: a delta only where it is
smaller, each by an atomic replace after the chunk it depends on is durable. A candidate whose
delta is not smaller stays whole and is tried again by the next compaction.

Compaction holds the gc lock shared (gc waits; commits go on) and the compaction lock
exclusively (one compaction at a time, also against ``Repo.apply_deferred_deltas``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import CorruptObjectError, ObjectNotFoundError
from .format import codecs
from .maintenance import root_refs
from .repo import COMPACT_LOCK, GC_LOCK
from .revisions import parents_first
from .state.tensors import dtype_from_name

if TYPE_CHECKING:
    from .repo import Repo

LOCK_TIMEOUT = 3600.0


@dataclass
class CompactReport:
    commits: int = 0  # commits looked at (each against its first parent)
    candidates: int = 0  # parent chunks stored whole that could become deltas
    rewritten: int = 0  # of those, re-encoded (the delta was smaller)
    bytes_before: int = 0  # stored bytes of the candidates before
    bytes_saved: int = 0  # stored bytes the re-encodings freed


def _commits(repo: Repo, roots: Iterable[str]) -> list[str]:
    """Every commit reachable from ``roots``, each once, parents before children (the order
    the commits were made in, along each line of history: the re-encodings are then chosen
    as the commits themselves would have chosen them)."""
    parents: dict[str, list[str]] = {}
    stack = [r for r in roots if r]
    while stack:
        oid = stack.pop()
        if oid in parents:
            continue
        try:
            c = repo.get_commit(oid)
        except ObjectNotFoundError:  # a shallow or partial clone: its history ends here
            continue
        parents[oid] = list(c.parents)
        stack.extend(c.parents)
    return parents_first(parents, parents.__getitem__)


def _whole(repo: Repo, oid: str) -> tuple[bool, int] | None:
    """(stored whole, version number) of chunk ``oid``; None where it is not here."""
    try:
        h = repo.objects.header(oid)
    except (ObjectNotFoundError, CorruptObjectError):
        return None
    return h.codec != codecs.CODEC_DELTA, int(h.params.get("seq", 0))


def candidates(repo: Repo, commits: list[str]) -> list[tuple[str, str, int]]:
    """The (parent chunk, child chunk, element width) re-encodings the history of ``commits``
    leaves to do (see the module docstring), each once."""
    depth = repo.delta_max_depth
    if depth <= 0:
        return []
    pairs: dict[tuple[str, str], int] = {}
    for oid in commits:
        c = repo.get_commit(oid)
        if not c.parents:
            continue
        try:
            parent = repo.get_manifest(repo.get_commit(c.parents[0]).manifest).tensors_by_key()
        except ObjectNotFoundError:
            continue
        for key, e in repo.get_manifest(c.manifest).tensors_by_key().items():
            p = parent.get(key)
            if p is None or e.chunks is None or p.chunks is None:
                continue
            if p.dtype != e.dtype or p.shape != e.shape or len(p.chunks) != len(e.chunks):
                continue
            dt = dtype_from_name(e.dtype)
            width = dt.itemsize // (2 if dt.is_complex else 1)
            for (old, _), (new, _) in zip(p.chunks, e.chunks, strict=True):
                if old != new:
                    pairs.setdefault((old, new), width)
    out = []
    base: dict[str, str] = {}  # the accepted re-encodings: chunk -> the chunk it will delta on
    for (old, new), width in pairs.items():
        if old in base:  # one base per chunk (another branch's child took it)
            continue
        o, n = _whole(repo, old), _whole(repo, new)
        if o is None or n is None or not (o[0] and n[0]):
            continue
        if o[1] % (depth + 1) == depth:  # a keyframe: stays whole
            continue
        nxt: str | None = new  # no loop through the re-encodings accepted so far (a revert)
        while nxt is not None and nxt != old:
            nxt = base.get(nxt)
        if nxt == old:
            continue
        base[old] = new
        out.append((old, new, width))
    return out


def compact(repo: Repo) -> CompactReport:
    """Do the delta re-encodings that commits left (``defer_deltas``) anywhere in the history
    reachable from refs and reflogs. What every checkout returns is the same before and
    after; a second run finds nothing left (idempotent). Safe beside commits; gc waits."""
    report = CompactReport()
    with repo.store.lock(GC_LOCK, shared=True, timeout=LOCK_TIMEOUT), \
            repo.store.lock(COMPACT_LOCK, shared=False, timeout=LOCK_TIMEOUT):
        commits = _commits(repo, root_refs(repo, keep_reflog=True).values())
        report.commits = len(commits)
        items = candidates(repo, commits)
        report.candidates = len(items)
        report.bytes_before = sum(repo.objects.stored_size(old) for old, _, _ in items)
        writer = repo.tensor_writer(None, None)
        before = writer.stats.new_stored_bytes
        report.rewritten = writer.rewrite_deferred(items)
        report.bytes_saved = before - writer.stats.new_stored_bytes
    return report


__all__ = ["CompactReport", "candidates", "compact"]
