"""gc and fsck: reachability, reclaiming unreferenced objects, and verifying everything."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import CorruptObjectError, FormatVersionError, NotFoundError, TensorVCSError
from .format.config import RepoConfig
from .format.envelope import KIND_COMMIT
from .format.values import path_str, walk_leaves
from .refs import HEAD, HEADS, LOGS, TAGS
from .store.local import TMP_DIR

if TYPE_CHECKING:
    from .repo import Repo

TMP_GRACE_SECONDS = 3600.0


@dataclass
class GcReport:
    reachable_objects: int = 0
    deleted_objects: int = 0
    freed_bytes: int = 0
    kept_bytes: int = 0


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


def root_refs(repo: Repo, keep_reflog: bool = False) -> dict[str, str]:
    """{ref name: commit id} of every ref that keeps commits alive."""
    roots: dict[str, str] = {}
    head = repo.refs.read(HEAD)
    if head:
        roots[HEAD] = head
    for prefix in (HEADS, TAGS):
        for name, oid in repo.refs.list(prefix).items():
            roots[prefix + name] = oid
    if keep_reflog:
        for name in repo.store.list(LOGS.rstrip("/")):
            for i, e in enumerate(repo.refs.reflog(name[len(LOGS) :])):
                for oid in (e.old, e.new):
                    if oid and repo.objects.has(oid):
                        roots[f"{name}@{{{i}}}"] = oid
    return roots


def walk(repo: Repo, roots: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Yield (object id, where) for every object reachable from ``roots``, delta bases
    included; missing or corrupt commits and manifests raise, naming the object."""
    seen: set[str] = set()
    for oid, where in _walk_commits(repo, roots, seen):
        yield oid, where
        base = repo.objects.delta_base(oid) if repo.objects.has(oid) else None
        while base is not None and base not in seen:
            seen.add(base)
            yield base, f"delta base of {oid[:12]} ({where})"
            base = repo.objects.delta_base(base) if repo.objects.has(base) else None


def _walk_commits(repo: Repo, roots: dict[str, str], seen: set[str]) -> Iterator[tuple[str, str]]:
    stack = [(oid, name) for name, oid in roots.items()]
    while stack:
        cid, where = stack.pop()
        if cid in seen:
            continue
        seen.add(cid)
        yield cid, where
        c = repo.get_commit(cid)
        stack.extend((p, f"{where}^ ({p[:12]})") for p in c.parents)
        if c.manifest in seen:
            continue
        seen.add(c.manifest)
        yield c.manifest, f"manifest of commit {cid[:12]}"
        m = repo.get_manifest(c.manifest)
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
        reachable = {oid for oid, _ in walk(repo, root_refs(repo, keep_reflog))}
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


def fsck(repo: Repo) -> FsckReport:
    """Verify the config, every ref, and every object (hash of its decoded content), naming the
    ref / commit / key path through which a broken object is reached."""
    report = FsckReport()
    try:
        RepoConfig.from_bytes(repo.store.get("config.json"), "config.json")
    except (FormatVersionError, FileNotFoundError) as e:
        report.problems.append(Problem("config", None, str(e)))
    try:
        roots = root_refs(repo)
    except TensorVCSError as e:
        report.problems.append(Problem("bad-ref", None, str(e)))
        roots = {}
    for name, oid in list(roots.items()):
        if not repo.objects.has(oid):
            report.problems.append(Problem("missing", oid, f"commit named by {name}"))
            del roots[name]
    reachable: dict[str, str] = {}
    repo._manifests.clear()
    repo._commits.clear()
    it = walk(repo, roots)
    while True:
        try:
            oid, where = next(it)
        except StopIteration:
            break
        except (CorruptObjectError, NotFoundError) as e:
            oid = getattr(e, "object_id", None)
            kind = "missing" if isinstance(e, NotFoundError) else "corrupt"
            report.problems.append(Problem(kind, oid, str(e)))
            break
        reachable.setdefault(oid, where)
    futures = {oid: repo.pool.submit(repo.objects.check, oid) for oid in repo.objects.ids()}
    for oid, fut in futures.items():
        report.objects_checked += 1
        where = reachable.get(oid, "unreachable")
        try:
            h = fut.result()
            if h.kind == KIND_COMMIT and oid in reachable:
                report.commits += 1
        except CorruptObjectError as e:
            report.problems.append(Problem("corrupt", oid, f"{where}: {e}"))
    present = set(futures)
    for oid, where in reachable.items():
        if oid not in present:
            report.problems.append(Problem("missing", oid, where))
    report.dangling = len(present - set(reachable))
    return report
