"""Rewriting history: dropping commits from a branch (what retention policies need).

In a linear history every checkpoint is an ancestor of the newest, so deleting a ref frees
nothing. ``drop`` rewrites the branch's first-parent chain without the given commits: each later
commit is written again with its parent replaced (same manifest, message, time and metrics; a
new id), the branch moves by compare-and-swap, tags follow their commits (tags on dropped
commits are deleted), and the old commits become unreachable for gc.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING

from .errors import UsageError
from .format import envelope
from .refs import HEAD, HEADS, TAGS, RefChange
from .revisions import Revision

if TYPE_CHECKING:
    from .repo import Repo


def drop(
    repo: Repo, revs: Iterable[Revision], *, branch: str | None = None
) -> dict[str, str | None]:
    """Remove ``revs`` from ``branch``'s first-parent history; returns {old id: new id or None
    for a dropped commit} for every commit that changed."""
    ref = HEADS + branch if branch is not None else (repo.refs.head_target() or HEAD)
    with repo.refs.locked():
        tip = repo.refs.read(ref)
        if tip is None:
            raise UsageError(f"{ref} has no commits")
        chain = [tip]
        while repo.get_commit(chain[-1]).parents:
            chain.append(repo.get_commit(chain[-1]).parents[0])
        dropped = {repo.resolve(r) for r in revs}
        outside = dropped - set(chain)
        if outside:
            shown = ", ".join(sorted(o[:12] for o in outside))
            raise UsageError(f"not in the first-parent history of {ref}: {shown}")
        mapping: dict[str, str | None] = {}
        parent: str | None = None  # the (possibly rewritten) commit the next one builds on
        for oid in reversed(chain):
            c = repo.get_commit(oid)
            if oid in dropped:
                mapping[oid] = None
                continue
            new_parents = ([parent] if parent else []) + list(c.parents[1:])
            if new_parents == c.parents:
                parent = oid
                continue
            moved = replace(c, parents=new_parents, id="")
            moved.id = repo.objects.put_bytes(envelope.KIND_COMMIT, moved.to_bytes())
            repo._commits[moved.id] = moved
            mapping[oid] = moved.id
            parent = moved.id
        if not mapping:
            return mapping
        repo.store.sync()  # the rewritten commits are durable before any ref names them
        changes = [RefChange(ref, tip, parent)]
        for name, oid in repo.tags().items():
            if oid in mapping:
                changes.append(RefChange(TAGS + name, oid, mapping[oid]))
        for name, oid in repo.branches().items():
            new = mapping.get(oid)
            if HEADS + name != ref and new is not None:
                changes.append(RefChange(HEADS + name, oid, new))
        detached = repo.refs.head_target() is None and repo.refs.read(HEAD)
        if detached and ref != HEAD and mapping.get(detached):
            changes.append(RefChange(HEAD, detached, mapping[detached]))
        # one transaction: a crash leaves the branch and its tags both moved or, once the
        # next ref update replays the journal, both moved all the same
        repo.refs.transaction(changes, f"drop: {len(dropped)} commit(s)")
        return mapping
