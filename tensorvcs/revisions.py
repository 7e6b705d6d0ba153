"""Git-style revisions.

A revision is a ``Commit`` object (its id) or a string: a base followed by any number of
``~N`` (N-th first-parent ancestor), ``^N`` (N-th parent; ``^0`` the commit itself) and
``^{}`` / ``^{commit}`` (the commit itself: every object a revision names is a commit).

The base, tried in this order (git's order, ``git help revisions``):

- ``HEAD`` or ``@``;
- 64 hex digits (either case): always the object id, never a ref (branch and tag names
  like that are refused, see refs.check_ref_name);
- a ref: ``refs/...`` as written, then ``refs/<name>``, ``refs/tags/<name>``,
  ``refs/heads/<name>``, ``refs/remotes/<name>`` (so ``heads/x``, ``tags/x`` and
  ``origin/main`` resolve; a tag wins over a branch of the same name, as in git);
- 4 to 63 hex digits (either case): the unique commit whose id starts with them;
- ``<ref>@{N}``: the N-th entry back in the ref's reflog (``HEAD@{2}``, ``main@{1}``;
  ``@{N}`` alone: the current branch's reflog, HEAD's when detached). ``@{0}`` is where
  the ref points now.

Leading or trailing whitespace is refused, not stripped (a name never has any).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from .errors import RevisionNotFoundError, UsageError
from .format.commit import Commit
from .format.envelope import KIND_COMMIT
from .format.ids import is_id_prefix
from .refs import HEAD, HEADS, TAGS, RefStore, check_ref_name
from .store.objects import ObjectStore

REMOTES = "refs/remotes/"
Revision = str | Commit  # what every Repo method taking a revision accepts

_SUFFIX = re.compile(r"~(\d*)|\^\{(commit)?\}|\^\{([^}]*)\}|\^(\d*)")
_REFLOG = re.compile(r"(.*)@\{(-?[0-9]+)\}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_MAX_STEPS = 1 << 31  # ~N or ^N larger than this is refused, not walked


def rev_label(rev: Revision) -> str:
    """How a revision is named in messages: the string, or a Commit's short id."""
    if isinstance(rev, Commit):
        return rev.id[:12] if rev.id else "<unstored commit>"
    return str(rev)


def split_revision(rev: str) -> tuple[str, list[tuple[str, int]]]:
    """(base, [(op, n)...]) where op is "~" or "^" (``^{}`` is ("^", 0))."""
    m = re.search(r"[~^]", rev)
    base, rest = (rev, "") if m is None else (rev[: m.start()], rev[m.start() :])
    steps: list[tuple[str, int]] = []
    pos = 0
    while pos < len(rest):
        sm = _SUFFIX.match(rest, pos)
        if sm is None:
            raise UsageError(f"malformed revision {rev!r}")
        if sm.group(3) is not None:
            raise UsageError(
                f"revision {rev!r}: ^{{{sm.group(3)}}} is not supported (a revision names a "
                "commit; ^{} and ^{commit} are the commit itself)"
            )
        if sm.group(0).startswith("^{"):
            steps.append(("^", 0))
        else:
            op = sm.group(0)[0]
            digits = sm.group(1) if op == "~" else sm.group(4)
            n = int(digits) if digits else 1
            if n > _MAX_STEPS:
                raise UsageError(f"revision {rev!r}: {op}{n} is too large")
            steps.append((op, n))
        pos = sm.end()
    if not base:
        raise UsageError(f"malformed revision {rev!r}")
    return base, steps


def ref_candidates(name: str) -> list[str]:
    """The full ref names a short name may stand for, in the order they are tried."""
    first = [name] if name.startswith("refs/") else []
    return [*first, "refs/" + name, TAGS + name, HEADS + name, REMOTES + name]


def _checked_name(name: str, rev: str) -> str:
    try:
        return check_ref_name(name)
    except UsageError:
        raise UsageError(f"malformed revision {rev!r} ({name!r} is not a valid ref name)") from None


def _reflog_target(name: str, refs: RefStore, rev: str) -> tuple[str, str]:
    """(full ref, how to call it) whose reflog ``name@{N}`` reads."""
    if name == "":
        target = refs.head_target()
        return (target, target[len(HEADS) :]) if target else (HEAD, HEAD)
    if name in (HEAD, "@"):
        return HEAD, HEAD
    _checked_name(name, rev)
    for full in ref_candidates(name):
        if refs.reflog(full):
            return full, name
    raise RevisionNotFoundError(f"revision {rev!r}: no reflog for {name!r}")


def resolve_reflog(name: str, n: int, refs: RefStore, rev: str) -> str:
    """The commit of the N-th newest entry of the reflog ``name@{N}`` names."""
    if n < 0:
        raise UsageError(
            f"revision {rev!r}: @{{-N}} (the N-th branch checked out before) is not supported"
        )
    full, shown = _reflog_target(name, refs, rev)
    entries = refs.reflog(full)
    if n >= len(entries):
        if not entries:
            raise RevisionNotFoundError(f"revision {rev!r}: the reflog of {full} is empty")
        raise RevisionNotFoundError(
            f"revision {rev!r}: the reflog of {shown} has only {len(entries)} entries"
        )
    entry = entries[len(entries) - 1 - n]
    if entry.new is None:
        raise RevisionNotFoundError(
            f"revision {rev!r}: that entry of the reflog of {full} names no commit (the ref "
            "was deleted there, or retention forgot its commit)"
        )
    return entry.new


def _commit_id(oid: str, objects: ObjectStore, rev: str) -> str:
    if not objects.has(oid):
        raise RevisionNotFoundError(f"unknown revision {rev!r} (no object {oid[:12]})")
    if objects.kind(oid) != KIND_COMMIT:
        raise RevisionNotFoundError(f"revision {rev!r}: object {oid[:12]} is not a commit")
    return oid


def resolve_base(base: str, refs: RefStore, objects: ObjectStore, rev: str | None = None) -> str:
    rev = base if rev is None else rev
    if base in (HEAD, "@"):
        oid = refs.read(HEAD)
        if oid is None:
            target = refs.head_target() or HEAD
            raise RevisionNotFoundError(f"HEAD has no commit yet ({target} is unborn)")
        return oid
    if len(base) == 64 and _HEX.fullmatch(base):  # always an object id, as 40 digits in git
        return _commit_id(base.lower(), objects, rev)
    m = _REFLOG.fullmatch(base)
    if m is not None:
        return resolve_reflog(m.group(1), int(m.group(2)), refs, rev)
    _checked_name(base, rev)
    for name in ref_candidates(base):
        oid = refs.read(name)
        if oid is not None:
            return oid
    lower = base.lower()
    if is_id_prefix(lower):
        matches = [o for o in objects.ids_with_prefix(lower) if objects.kind(o) == KIND_COMMIT]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(sorted(m[:12] for m in matches))
            raise RevisionNotFoundError(f"revision {base!r} is ambiguous: {shown}")
    raise RevisionNotFoundError(f"unknown revision {base!r} (no such branch, tag or commit)")


def resolve(
    rev: Revision,
    refs: RefStore,
    objects: ObjectStore,
    parents_of: Callable[[str], list[str]],
) -> str:
    """The commit id ``rev`` names (see the module docstring)."""
    if isinstance(rev, Commit):
        if not rev.id:
            raise UsageError("this Commit has no id: it was never stored")
        return _commit_id(rev.id, objects, rev.id[:12])
    if not isinstance(rev, str):
        raise UsageError(f"a revision is a string or a Commit, not {type(rev).__name__}")
    if not rev:
        raise UsageError("malformed revision '' (empty)")
    if rev != rev.strip():
        raise UsageError(f"malformed revision {rev!r}: leading or trailing whitespace")
    base, steps = split_revision(rev)
    oid = resolve_base(base, refs, objects, rev)
    walked = base  # the revision walked so far, as written
    chain, k = base, 0  # where the current run of first-parent steps began, and its length
    for op, n in steps:
        if op == "~" or n == 1:
            for _ in range(n):
                ps = parents_of(oid)
                if not ps:
                    at = chain if k == 0 else f"{chain}~{k}"
                    many = "commit" if k == 0 else "commits"
                    raise RevisionNotFoundError(
                        f"revision {rev}: only {k + 1} {many} in the first-parent history of "
                        f"{chain} ({at} has no parent)"
                    )
                oid = ps[0]
                k += 1
            walked += f"~{n}" if op == "~" else "^"
        elif n > 0:
            ps = parents_of(oid)
            if len(ps) < n:
                has = "no parents" if not ps else f"{len(ps)} parent{'s' if len(ps) > 1 else ''}"
                raise RevisionNotFoundError(
                    f"revision {rev}: {walked} has no parent {n} (it has {has})"
                )
            oid = ps[n - 1]
            walked += f"^{n}"
            chain, k = walked, 0
    return oid


def parents_first(ids: Iterable[str], parents_of: Callable[[str], Sequence[str]]) -> list[str]:
    """``ids``, each once, every commit after those of its parents that are among ``ids``:
    the order the commits were made in along each line of history (first parents first).

    ``parents_of`` gives a commit's parents; parents outside ``ids`` are not followed. The
    walk is iterative, so a history of any length takes no recursion depth."""
    members = set(ids)
    out: list[str] = []
    done: set[str] = set()
    for start in sorted(members):
        todo = [(start, False)]
        while todo:
            oid, ready = todo.pop()
            if oid in done:
                continue
            if ready:
                done.add(oid)
                out.append(oid)
                continue
            todo.append((oid, True))
            parents = reversed(parents_of(oid))
            todo.extend((p, False) for p in parents if p in members and p not in done)
    return out
