"""Git-style revisions: ``HEAD``, ``@``, a branch, a tag, ``refs/...``, a unique id prefix,
followed by any number of ``~N`` (N-th first-parent ancestor) and ``^N`` (N-th parent)."""

from __future__ import annotations

import re
from collections.abc import Callable

from .errors import RevisionNotFoundError, UsageError
from .format.envelope import KIND_COMMIT
from .format.ids import is_id_prefix
from .refs import HEAD, HEADS, TAGS, RefStore
from .store.objects import ObjectStore

_SUFFIX = re.compile(r"([~^])(\d*)")


def split_revision(rev: str) -> tuple[str, list[tuple[str, int]]]:
    m = re.search(r"[~^]", rev)
    base, rest = (rev, "") if m is None else (rev[: m.start()], rev[m.start() :])
    steps: list[tuple[str, int]] = []
    pos = 0
    while pos < len(rest):
        sm = _SUFFIX.match(rest, pos)
        if sm is None:
            raise UsageError(f"malformed revision {rev!r}")
        steps.append((sm.group(1), int(sm.group(2)) if sm.group(2) else 1))
        pos = sm.end()
    if not base:
        raise UsageError(f"malformed revision {rev!r}")
    return base, steps


def resolve_base(base: str, refs: RefStore, objects: ObjectStore) -> str:
    if base in (HEAD, "@"):
        oid = refs.read(HEAD)
        if oid is None:
            target = refs.head_target() or HEAD
            raise RevisionNotFoundError(f"HEAD has no commit yet ({target} is unborn)")
        return oid
    candidates = [base] if base.startswith("refs/") else [TAGS + base, HEADS + base]
    for name in candidates:
        try:
            oid = refs.read(name)
        except UsageError:
            oid = None
        if oid is not None:
            return oid
    if is_id_prefix(base):
        matches = [o for o in objects.ids_with_prefix(base) if objects.kind(o) == KIND_COMMIT]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            shown = ", ".join(sorted(m[:12] for m in matches))
            raise RevisionNotFoundError(f"revision {base!r} is ambiguous: {shown}")
    raise RevisionNotFoundError(f"unknown revision {base!r} (no such branch, tag or commit)")


def resolve(
    rev: str, refs: RefStore, objects: ObjectStore, parents_of: Callable[[str], list[str]]
) -> str:
    base, steps = split_revision(rev.strip())
    oid = resolve_base(base, refs, objects)
    walked = base
    for op, n in steps:
        if op == "~":
            for _ in range(n):
                ps = parents_of(oid)
                if not ps:
                    raise RevisionNotFoundError(f"revision {rev!r}: {walked} has no parent")
                oid = ps[0]
                walked += "~"
        elif n > 0:
            ps = parents_of(oid)
            if len(ps) < n:
                raise RevisionNotFoundError(f"revision {rev!r}: {walked} has no parent {n}")
            oid = ps[n - 1]
            walked += f"^{n}"
    return oid
