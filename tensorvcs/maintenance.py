"""gc and fsck: reachability, reclaiming unreferenced objects, and verifying everything."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import (
    CorruptObjectError,
    FormatVersionError,
    NotFoundError,
    ObjectNotFoundError,
    TensorVCSError,
)
from .format import codecs
from .format.config import RepoConfig
from .format.envelope import KIND_COMMIT
from .format.values import path_str, walk_leaves
from .refs import HEAD, HEADS, LOGS, TAGS
from .store.local import TMP_DIR

if TYPE_CHECKING:
    from .repo import Repo

TMP_GRACE_SECONDS = 3600.0
REMOTES = "refs/remotes/"  # remote-tracking refs (tensorvcs.remote)


@dataclass
class GcReport:
    reachable_objects: int = 0
    deleted_objects: int = 0
    freed_bytes: int = 0
    kept_bytes: int = 0
    rewritten_objects: int = 0  # deltas re-encoded because their base was no longer needed


@dataclass
class Problem:
    what: str  # "missing", "corrupt", "bad-ref", "config"
    object_id: str | None
    where: str  # ref, commit and key path that lead to it

    def __str__(self) -> str:
        oid = f" {self.object_id}" if self.object_id else ""
        return f"{self.what}{oid}: {self.where}"


@dataclass
class FsckReport:
    problems: list[Problem] = field(default_factory=list)
    objects_checked: int = 0
    commits: int = 0
    dangling: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


# objects a walk could not read: (object id, where it was reached, the error)
Unreadable = list[tuple[str, str, TensorVCSError]]


def root_refs(
    repo: Repo, keep_reflog: bool = False, bad: list[TensorVCSError] | None = None
) -> dict[str, str]:
    """{ref name: commit id} of every ref that keeps commits alive. An unreadable ref raises;
    with ``bad`` given, its error is appended there instead and the other refs still count."""
    roots: dict[str, str] = {}
    names = [HEAD]
    for prefix in (HEADS, TAGS, REMOTES):  # remote-tracking refs keep fetched commits
        names.extend(sorted(repo.store.list(prefix.rstrip("/"))))
    for name in names:
        try:
            oid = repo.refs.read(name)
        except CorruptObjectError as err:
            if bad is None:
                raise
            bad.append(err)
            continue
        if oid:
            roots[name] = oid
    if keep_reflog:
        for name in repo.store.list(LOGS.rstrip("/")):
            for i, entry in enumerate(repo.refs.reflog(name[len(LOGS) :])):
                for oid in (entry.old, entry.new):
                    if oid and repo.objects.has(oid):
                        roots[f"{name}@{{{i}}}"] = oid
    return roots


def walk(
    repo: Repo, roots: dict[str, str], unreadable: Unreadable | None = None
) -> Iterator[tuple[str, str]]:
    """Yield (object id, where) for every object reachable from ``roots``, delta bases
    included; missing or corrupt commits, manifests and object headers raise, naming the
    object. With ``unreadable`` given they are appended there instead, and the walk goes on
    with everything else it can reach."""
    seen: set[str] = set()
    for oid, where in _walk_commits(repo, roots, seen, unreadable):
        yield oid, where
        base = _delta_base(repo, oid, where, unreadable)
        while base is not None and base not in seen:
            seen.add(base)
            yield base, f"delta base of {oid[:12]} ({where})"
            base = _delta_base(repo, base, where, unreadable)


def _delta_base(repo: Repo, oid: str, where: str, unreadable: Unreadable | None) -> str | None:
    if not repo.objects.has(oid):
        return None
    try:
        return repo.objects.delta_base(oid)
    except CorruptObjectError as e:
        if unreadable is None:
            raise
        unreadable.append((oid, where, e))
        return None


def _walk_commits(
    repo: Repo, roots: dict[str, str], seen: set[str], unreadable: Unreadable | None
) -> Iterator[tuple[str, str]]:
    stack = [(oid, name) for name, oid in roots.items()]
    while stack:
        cid, where = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        yield cid, where
        try:
            c = repo.get_commit(cid)
        except (CorruptObjectError, NotFoundError) as e:
            if unreadable is None:
                raise
            unreadable.append((cid, where, e))
            continue
        stack.extend((p, f"{where}^ ({p[:12]})") for p in c.parents)
        if c.manifest in seen:
            continue
        seen.add(c.manifest)
        mwhere = f"manifest of commit {cid[:12]}"
        yield c.manifest, mwhere
        try:
            m = repo.get_manifest(c.manifest)
        except (CorruptObjectError, NotFoundError) as e:
            if unreadable is None:
                raise
            unreadable.append((c.manifest, mwhere, e))
            continue
        for path, node in walk_leaves(m.tree):
            if isinstance(node, list) and node and node[0] in ("tensor", "ndarray", "pickle"):
                is_pickle = node[0] == "pickle"
                ids = [node[1]] if is_pickle else m.tensors[int(node[1])].object_ids()
                for oid in ids:
                    if oid not in seen:
                        seen.add(oid)
                        yield oid, f"commit {cid[:12]} key path {path_str(path)!r}"
        for f in m.files:
            for oid, _ in f.chunks:
                if oid not in seen:
                    seen.add(oid)
                    yield oid, f"commit {cid[:12]} file {f.path!r}"


def gc(repo: Repo, *, keep_reflog: bool = False) -> GcReport:
    """Delete every object no branch, tag or HEAD reaches. Waits for in-flight commits (they
    hold the gc lock shared) and blocks new ones and ref updates while it runs."""
    from .repo import GC_LOCK

    report = GcReport()
    with repo.store.lock(GC_LOCK, shared=False, timeout=3600), repo.refs.locked():
        roots = root_refs(repo, keep_reflog)
        direct = {oid for oid, _ in _walk_commits(repo, roots, set(), None)}
        for oid in sorted(direct):
            if repo.objects.has(oid) and _rebase_if_orphaned(repo, oid, direct):
                report.rewritten_objects += 1
        repo.store.sync()
        reachable = {oid for oid, _ in walk(repo, roots)}
        report.reachable_objects = len(reachable)
        for oid in list(repo.objects.ids()):
            size = repo.objects.stored_size(oid)
            if oid in reachable:
                report.kept_bytes += size
                continue
            repo.objects.delete(oid)
            report.deleted_objects += 1
            report.freed_bytes += size
        repo.store.sync()
        now = time.time()
        tmp = repo.path / TMP_DIR
        if tmp.is_dir():
            for f in tmp.iterdir():
                try:
                    if now - f.stat().st_mtime > TMP_GRACE_SECONDS:
                        f.unlink()
                except FileNotFoundError:
                    pass
    repo._manifests.clear()
    repo._commits.clear()
    return report


def _rebase_if_orphaned(repo: Repo, oid: str, direct: set[str]) -> bool:
    """If delta ``oid``'s base is needed by nothing but deltas, re-encode ``oid`` against the
    nearest object of its chain that stays (or self-contained), so the base can be deleted.
    The id does not change: the decoded content is the same, only its encoding."""
    h = repo.objects.header(oid)
    if h.codec != codecs.CODEC_DELTA or h.params.get("base") in direct:
        return False
    width = int(h.params["width"])
    _, content = repo.objects.read(oid)
    enc = codecs.encode_elements(content, width)
    anchor = repo.objects.delta_base(h.params["base"])
    while anchor is not None and anchor not in direct:
        anchor = repo.objects.delta_base(anchor)
    if anchor is not None:
        _, base = repo.objects.read(anchor)
        delta = codecs.encode_delta(content, base, width, anchor, repo.objects.depth(anchor) + 1)
        if delta.size < enc.size:
            enc = delta
    repo.objects.replace(oid, h.kind, h.length, enc)
    return True


def fsck(repo: Repo) -> FsckReport:
    """Verify the config, every ref, and every object (hash of its decoded content), naming the
    ref / commit / key path through which a broken object is reached."""
    report = FsckReport()
    try:
        RepoConfig.from_bytes(repo.store.get("config.json"), "config.json")
    except (FormatVersionError, FileNotFoundError) as e:
        report.problems.append(Problem("config", None, str(e)))
    bad_refs: list[TensorVCSError] = []
    roots = root_refs(repo, bad=bad_refs)
    report.problems.extend(Problem("bad-ref", None, str(e)) for e in bad_refs)
    for name, oid in list(roots.items()):
        if not repo.objects.has(oid):
            report.problems.append(Problem("missing", oid, f"commit named by {name}"))
            del roots[name]
    reachable: dict[str, str] = {}
    repo._manifests.clear()
    repo._commits.clear()
    unreadable: Unreadable = []
    for oid, where in walk(repo, roots, unreadable):
        reachable.setdefault(oid, where)
    reported: set[str] = set()  # each broken object once, reported where the walk met it
    for oid, where, err in unreadable:
        what = "missing" if isinstance(err, ObjectNotFoundError) else "corrupt"
        report.problems.append(Problem(what, oid, f"{where}: {err}"))
        reported.add(oid)
    futures = {oid: repo.pool.submit(repo.objects.check, oid) for oid in repo.objects.ids()}
    for oid, fut in futures.items():
        report.objects_checked += 1
        where = reachable.get(oid, "unreachable")
        try:
            h = fut.result()
            if h.kind == KIND_COMMIT and oid in reachable:
                report.commits += 1
        except (CorruptObjectError, ObjectNotFoundError) as e:  # not found: a delta's base
            if oid not in reported:
                report.problems.append(Problem("corrupt", oid, f"{where}: {e}"))
    present = set(futures)
    for oid, where in reachable.items():
        if oid not in present and oid not in reported:
            report.problems.append(Problem("missing", oid, where))
    report.dangling = len(present - set(reachable))
    return report
