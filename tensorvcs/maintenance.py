"""gc and fsck: reachability, reclaiming unreferenced objects, and verifying everything.

Functions over a Repo (``tv.gc(repo)``, ``tv.fsck(repo)``); repo.py does not import this
module. The rules (docs/format.md §9), as git has them:

- gc keeps every object reachable from HEAD, a branch, a tag, a remote-tracking ref, or an
  entry of a reflog; reflog entries expire after ``gc.reflog_expire`` (90 days), or after
  ``gc.reflog_expire_unreachable`` (30 days) when the ref's current commit does not reach them;
- an unreachable object younger than ``gc.prune_expire`` (2 weeks) is kept too, with all it
  needs; ``prune="now"`` reclaims at once;
- an object is deleted only after everything that could lead to it is gone: commits (children
  before parents), then manifests, then the other objects (a delta before its base), so a
  process killed at any point leaves a store in which every present object can be read, and a
  later commit or transfer that finds an object present may rely on it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import (
    CorruptObjectError,
    FormatVersionError,
    NotFoundError,
    ObjectNotFoundError,
    TensorVCSError,
    UsageError,
)
from .format import codecs, envelope, jsonenc
from .format.commit import parse_timestamp
from .format.config import RepoConfig
from .format.envelope import KIND_COMMIT
from .format.values import path_str, walk_leaves
from .refs import HEAD, HEADS, JOURNAL, LOGS, TAGS, ReflogEntry
from .repo import GC_LOCK
from .store.local import TMP_DIR

if TYPE_CHECKING:
    from .repo import Repo

TMP_GRACE_SECONDS = 3600.0
REMOTES = "refs/remotes/"  # remote-tracking refs (tensorvcs.remote)
DAY = 86400.0
# git's defaults: gc.reflogExpire, gc.reflogExpireUnreachable, gc.pruneExpire
DEFAULT_REFLOG_EXPIRE = 90 * DAY
DEFAULT_REFLOG_EXPIRE_UNREACHABLE = 30 * DAY
DEFAULT_PRUNE_EXPIRE = 14 * DAY
SETTINGS = {
    "gc.reflog_expire": DEFAULT_REFLOG_EXPIRE,
    "gc.reflog_expire_unreachable": DEFAULT_REFLOG_EXPIRE_UNREACHABLE,
    "gc.prune_expire": DEFAULT_PRUNE_EXPIRE,
}

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
    "h": 3600.0, "hour": 3600.0, "d": DAY, "day": DAY, "w": 7 * DAY, "week": 7 * DAY,
    "month": 30 * DAY, "y": 365 * DAY, "year": 365 * DAY,
}  # fmt: skip
_AGE = re.compile(r"^(\d+(?:\.\d+)?)[ .]?([a-z]+?)s?(?:[ .]ago)?$")


def parse_age(value: str | float | int | None, what: str = "age") -> float:
    """Seconds from an age as git writes it: ``now``, ``never``, ``2.weeks.ago``, ``90d``,
    ``3600`` (seconds), ``1.5h``. ``now`` is 0, ``never`` infinity."""
    if isinstance(value, bool):
        raise UsageError(f"invalid {what} {value!r}")
    if isinstance(value, int | float):
        if value != value or value < 0:
            raise UsageError(f"invalid {what} {value!r}: must be >= 0 seconds")
        return float(value)
    text = str(value).strip().lower()
    if text in ("now", "all", "0"):
        return 0.0
    if text in ("never", "false", "off"):
        return float("inf")
    try:
        return parse_age(float(text), what)
    except ValueError:
        pass
    m = _AGE.match(text)
    unit = _UNITS.get(m.group(2)) if m else None
    if m is None or unit is None:
        raise UsageError(
            f"invalid {what} {value!r}: use now, never, or a number and a unit "
            "(s, min, h, d, w, month, y), e.g. 2.weeks.ago or 90d"
        )
    return float(m.group(1)) * unit


def _setting(repo: Repo, key: str, given: str | float | None) -> float:
    if given is not None:
        return parse_age(given, key)
    return parse_age(repo.config.settings.get(key, SETTINGS[key]), f"setting {key}")


@dataclass
class GcReport:
    reachable_objects: int = 0
    deleted_objects: int = 0
    freed_bytes: int = 0
    kept_bytes: int = 0
    rewritten_objects: int = 0  # deltas re-encoded because their base was no longer needed
    expired_reflog_entries: int = 0
    young_objects_kept: int = 0  # unreachable, but younger than the prune age (with all they need)
    deleted_commits: list[str] = field(default_factory=list)


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
    dangling: int = 0  # objects nothing reaches (gc deletes them once old enough)
    dangling_commits: list[str] = field(default_factory=list)  # ... of which commits, by id

    @property
    def ok(self) -> bool:
        return not self.problems


# objects a walk could not read: (object id, where it was reached, the error)
Unreadable = list[tuple[str, str, TensorVCSError]]


def ref_names(repo: Repo) -> list[str]:
    """HEAD, then every branch, tag and remote-tracking ref."""
    names = [HEAD]
    for prefix in (HEADS, TAGS, REMOTES):
        names.extend(sorted(repo.store.list(prefix.rstrip("/"))))
    return names


def root_refs(
    repo: Repo, keep_reflog: bool = False, bad: list[TensorVCSError] | None = None
) -> dict[str, str]:
    """{ref name: commit id} of every ref that keeps commits alive (with ``keep_reflog``, also
    ``<ref>@{n}`` for every reflog entry whose commit exists). An unreadable ref or reflog
    raises; with ``bad`` given, its error is appended there instead and the rest still count."""
    roots: dict[str, str] = {}
    for name in ref_names(repo):
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
        for name in sorted(repo.store.list(LOGS.rstrip("/"))):
            ref = name[len(LOGS) :]
            try:
                entries = repo.refs.reflog(ref)
            except CorruptObjectError as err:
                if bad is None:
                    raise
                bad.append(err)
                continue
            for i, entry in enumerate(reversed(entries)):  # ref@{0} is the newest
                for oid in (entry.new, entry.old):
                    if oid and oid not in roots.values() and repo.objects.has(oid):
                        roots[f"{ref}@{{{i}}}"] = oid
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
    stack = [(oid, name) for name, oid in reversed(roots.items())]  # refs first
    commits: set[str] = set()  # a chunk a tag names is still read as a commit (and refused)
    while stack:
        cid, where = stack.pop()
        if cid in commits:
            continue
        commits.add(cid)
        if cid not in seen:
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


def _entry_time(e: ReflogEntry) -> float | None:
    try:
        return parse_timestamp(e.time).timestamp()
    except ValueError:
        return None


def _reflog_line(e: ReflogEntry) -> bytes:
    d = {"old": e.old, "new": e.new, "time": e.time, "who": e.who, "msg": e.message}
    return jsonenc.dumps(d) + b"\n"


def expire_reflogs(
    repo: Repo,
    *,
    expire: float,
    expire_unreachable: float,
    forget: Iterable[str] = (),
    now: float | None = None,
) -> int:
    """Remove reflog entries older than ``expire`` seconds, those older than
    ``expire_unreachable`` whose commit the ref's current commit does not reach; a commit in
    ``forget`` is taken out of every entry that names it (set to null, the entry removed once
    it names no other commit). Returns how many entries were removed. Each reflog is
    rewritten atomically under the refs lock. An entry whose time cannot be read is kept."""
    now = time.time() if now is None else now
    forget = set(forget)
    removed = 0
    with repo.refs.locked():
        for name in sorted(repo.store.list(LOGS.rstrip("/"))):
            removed += _expire_reflog(repo, name, expire, expire_unreachable, forget, now)
        repo.store.sync()
    return removed


def _expire_reflog(
    repo: Repo, name: str, expire: float, expire_unreachable: float, forget: set[str], now: float
) -> int:
    ref = name[len(LOGS) :]
    entries = repo.refs.reflog(ref)
    try:
        tip = repo.refs.read(ref)
    except CorruptObjectError:
        tip = None
    ancestors: set[str] | None = None

    def reaches(oid: str | None) -> bool:
        nonlocal ancestors
        if oid is None or tip is None:
            return False
        if oid == tip:
            return True
        if ancestors is None:
            ancestors = _ancestors(repo, tip)
        return oid in ancestors

    kept = []
    changed = 0
    for e in entries:
        # Forgetting lets go of exactly the named commits: the record and the entry's other
        # commit stay (a branch the user moved onto a dropped checkpoint still protects the
        # commit it moved away from).
        old = None if e.old in forget else e.old
        new = None if e.new in forget else e.new
        if (old, new) != (e.old, e.new):
            if old is None and new is None:
                continue  # it named only forgotten commits
            e = dataclasses.replace(e, old=old, new=new)
            changed += 1
        t = _entry_time(e)
        age = None if t is None else now - t
        gone = not reaches(e.new) or (e.old is not None and not reaches(e.old))
        if age is not None and (age >= expire or (age >= expire_unreachable and gone)):
            continue
        kept.append(e)
    if len(kept) == len(entries) and not changed:
        return 0
    if kept or repo.refs.exists(ref):
        repo.store.put(name, [b"".join(_reflog_line(e) for e in kept)])
    else:
        repo.store.delete(name)
    return len(entries) - len(kept)


def _ancestors(repo: Repo, tip: str) -> set[str]:
    out: set[str] = set()
    stack = [tip]
    while stack:
        c = stack.pop()
        if c in out:
            continue
        out.add(c)
        try:
            stack.extend(repo.get_commit(c).parents)
        except (CorruptObjectError, NotFoundError):
            continue
    return out


def _young(repo: Repo, ids: Iterable[str], prune: float, now: float) -> set[str]:
    """The objects of ``ids`` written less than ``prune`` seconds ago."""
    if prune == 0:
        return set()
    if prune == float("inf"):
        return set(ids)
    out = set()
    for oid in ids:
        try:
            mt = repo.objects.mtime(oid)
        except FileNotFoundError:
            continue
        if mt is not None and now - mt < prune:
            out.add(oid)
    return out


def _closure_of_young(repo: Repo, young: set[str]) -> tuple[dict[str, str], set[str]]:
    """Roots and direct objects that keep ``young`` (unreachable objects gc keeps for their
    age) readable: young commits become roots; a young manifest keeps what it names."""
    roots: dict[str, str] = {}
    direct: set[str] = set()
    for oid in sorted(young):
        try:
            kind = repo.objects.kind(oid)
        except TensorVCSError:
            direct.add(oid)
            continue
        if kind == KIND_COMMIT:
            roots[f"young commit {oid[:12]}"] = oid
        elif kind == envelope.KIND_MANIFEST:
            direct.add(oid)
            with contextlib.suppress(CorruptObjectError, NotFoundError):
                direct.update(repo.get_manifest(oid).object_ids())
        else:
            direct.add(oid)
    return roots, direct


def gc(
    repo: Repo,
    *,
    prune: str | float | None = None,
    reflog_expire: str | float | None = None,
    reflog_expire_unreachable: str | float | None = None,
    forget: Iterable[str] = (),
    now: float | None = None,
) -> GcReport:
    """Delete the objects nothing keeps (see the module docstring for what keeps them).

    ``prune``: the age of unreachable objects to delete (default ``gc.prune_expire``, two
    weeks; ``"now"`` deletes every unreachable object). ``reflog_expire`` /
    ``reflog_expire_unreachable``: ages of reflog entries to forget (default 90 / 30 days).
    ``forget``: commit ids whose reflog entries go now (retention policies name the commits
    they dropped). Waits for in-flight commits and transfers (they hold the gc lock shared)
    and blocks new ones and ref updates while it runs. Crash-safe at every point."""
    now = time.time() if now is None else now
    prune_age = _setting(repo, "gc.prune_expire", prune)
    expire = _setting(repo, "gc.reflog_expire", reflog_expire)
    expire_unreachable = _setting(repo, "gc.reflog_expire_unreachable", reflog_expire_unreachable)
    report = GcReport()
    with repo.store.lock(GC_LOCK, shared=False, timeout=3600), repo.refs.locked():
        repo._manifests.clear()
        repo._commits.clear()
        report.expired_reflog_entries = expire_reflogs(
            repo, expire=expire, expire_unreachable=expire_unreachable, forget=forget, now=now
        )
        roots = root_refs(repo, keep_reflog=True)
        direct = {oid for oid, _ in _walk_commits(repo, roots, set(), None)}
        everything = set(repo.objects.ids())
        reachable = {oid for oid, _ in walk(repo, roots)}
        young = _young(repo, everything - reachable, prune_age, now)
        young_roots: dict[str, str] = {}
        tolerated: Unreadable = []  # unreadable young garbage is kept, not a reason to stop
        if young:
            young_roots, young_direct = _closure_of_young(repo, young)
            direct |= {o for o, _ in _walk_commits(repo, young_roots, set(), tolerated)}
            direct |= young_direct
        direct &= everything
        # re-encode the deltas whose base goes; each is durable before any deletion
        for oid in sorted(direct):
            try:
                if _rebase_if_orphaned(repo, oid, direct):
                    report.rewritten_objects += 1
            except TensorVCSError:
                if oid in reachable:
                    raise  # a reachable object that cannot be read: stop before deleting
                # unreadable young garbage: kept as it is
        repo.store.sync()
        live = {oid for oid, _ in walk(repo, roots)}  # reachable, now that deltas moved
        keep = live | direct
        keep |= {oid for oid, _ in walk(repo, young_roots, tolerated)}
        for oid in sorted(keep & everything):  # the delta bases of what is kept directly
            base = _delta_base(repo, oid, "", tolerated)
            while base is not None and base not in keep:
                keep.add(base)
                base = _delta_base(repo, base, "", tolerated)
        keep |= {oid for oid, _, _ in tolerated}
        report.young_objects_kept = len((keep - live) & everything)
        doomed = everything - keep
        phases, doomed_commits = _deletion_order(repo, doomed)
        for phase in phases:
            for oid in phase:
                size = repo.objects.stored_size(oid)
                repo.objects.delete(oid)
                report.deleted_objects += 1
                report.freed_bytes += size
            repo.store.sync()  # this phase is gone before the next loses what it needed
        report.kept_bytes = sum(repo.objects.stored_size(o) for o in keep & everything)
        report.reachable_objects = len(live & everything)
        report.deleted_commits = sorted(doomed_commits)
        _clean_tmp(repo, now)
    repo._manifests.clear()
    repo._commits.clear()
    return report


def _deletion_order(repo: Repo, doomed: set[str]) -> tuple[list[list[str]], list[str]]:
    """(phases, the commits among them). The phases each leave every remaining object
    readable: commits (each after the commits whose parent it is), manifests, then chunks,
    packs and blobs (each delta before its base), then what cannot be read at all."""
    commits: dict[str, list[str]] = {}
    manifests: list[str] = []
    bases: dict[str, str | None] = {}
    unreadable: list[str] = []
    for oid in sorted(doomed):
        try:
            h = repo.objects.header(oid)
            if h.kind == KIND_COMMIT:
                commits[oid] = [p for p in repo.get_commit(oid).parents if p in doomed]
            elif h.kind == envelope.KIND_MANIFEST:
                manifests.append(oid)
            else:
                base = h.params.get("base") if h.codec == codecs.CODEC_DELTA else None
                bases[oid] = base if isinstance(base, str) and base in doomed else None
        except TensorVCSError:
            unreadable.append(oid)
    phases = [_children_first(commits)]
    phases.append(manifests)
    phases.append(_children_first({o: [b] if b else [] for o, b in bases.items()}))
    phases.append(unreadable)
    return [p for p in phases if p], list(commits)


def _children_first(needs: dict[str, list[str]]) -> list[str]:
    """Order the keys of ``needs`` ({object: the objects it needs}) so that every object comes
    before the ones it needs (Kahn's algorithm; a cycle's members come last, in id order)."""
    needed_by = {o: 0 for o in needs}
    for deps in needs.values():
        for d in deps:
            if d in needed_by:
                needed_by[d] += 1
    ready = sorted(o for o, n in needed_by.items() if n == 0)
    out: list[str] = []
    while ready:
        o = ready.pop()
        out.append(o)
        for d in needs[o]:
            if d in needed_by:
                needed_by[d] -= 1
                if needed_by[d] == 0:
                    ready.append(d)
    if len(out) < len(needs):
        done = set(out)
        out.extend(sorted(o for o in needs if o not in done))
    return out


def _clean_tmp(repo: Repo, now: float) -> None:
    tmp = repo.path / TMP_DIR
    if tmp.is_dir():
        for f in tmp.iterdir():
            try:
                if now - f.stat().st_mtime > TMP_GRACE_SECONDS:
                    f.unlink()
            except FileNotFoundError:
                pass


def _rebase_if_orphaned(repo: Repo, oid: str, direct: set[str]) -> bool:
    """If delta ``oid``'s base is needed by nothing but deltas, re-encode ``oid`` against the
    nearest object of its chain that stays (or self-contained), so the base can be deleted.
    The id does not change: the decoded content is the same, only its encoding."""
    h = repo.objects.header(oid)
    if h.codec != codecs.CODEC_DELTA or h.params.get("base") in direct:
        return False
    width = int(h.params["width"])
    _, content = repo.objects.read(oid)
    enc = codecs.encode_elements(content, width).checked(content.data)
    anchor = repo.objects.delta_base(h.params["base"])
    seen = {oid}
    while anchor is not None and anchor not in direct:
        if anchor in seen:
            raise CorruptObjectError(f"object {oid}'s delta chain loops through {anchor}", oid)
        seen.add(anchor)
        anchor = repo.objects.delta_base(anchor)
    if anchor is not None:
        _, base = repo.objects.read(anchor)
        delta = codecs.encode_delta(content, base, width, anchor, repo.objects.depth(anchor) + 1)
        if delta.size < enc.size:
            enc = delta.checked(content.data)
    repo.objects.replace(oid, h.kind, h.length, enc)
    return True


def fsck(repo: Repo) -> FsckReport:
    """Verify the config, HEAD and every ref and reflog, and every object (hash of its
    decoded content, and the structure of commits and manifests), naming the ref / commit /
    key path through which a broken object is reached; list the dangling commits."""
    report = FsckReport()
    try:
        RepoConfig.from_bytes(repo.store.get("config.json"), "config.json")
    except (FormatVersionError, FileNotFoundError) as e:
        report.problems.append(Problem("config", None, str(e)))
    _check_head(repo, report)
    if repo.store.exists(JOURNAL):
        report.problems.append(
            Problem(
                "bad-ref",
                None,
                f"{JOURNAL}: a ref transaction (drop) was interrupted; the next ref update "
                "completes it (e.g. 'tvcs gc')",
            )
        )
    bad_refs: list[TensorVCSError] = []
    roots = root_refs(repo, keep_reflog=True, bad=bad_refs)
    report.problems.extend(Problem("bad-ref", None, str(e)) for e in bad_refs)
    for name, oid in list(roots.items()):
        if not repo.objects.has(oid):
            if "@{" not in name:  # a reflog entry may name a commit gc has pruned
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
    checked = repo.objects.check_many(repo.objects.ids(), repo.pool)  # each decoded once
    commits: set[str] = set()
    for oid, got in checked.items():
        report.objects_checked += 1
        where = reachable.get(oid, "unreachable")
        if isinstance(got, TensorVCSError):  # not found: a delta's base
            if oid not in reported:
                report.problems.append(Problem("corrupt", oid, f"{where}: {got}"))
        elif got.kind == KIND_COMMIT:
            commits.add(oid)
            if oid in reachable:
                report.commits += 1
    present = set(checked)
    for oid, where in reachable.items():
        if oid not in present and oid not in reported:
            report.problems.append(Problem("missing", oid, where))
    dangling = present - set(reachable)
    report.dangling = len(dangling)
    # as git: a dangling commit is one no other unreachable commit names as parent
    unreachable_commits = dangling & commits
    parents: set[str] = set()
    for oid in unreachable_commits:
        with contextlib.suppress(TensorVCSError):
            parents.update(repo.get_commit(oid).parents)
    report.dangling_commits = sorted(unreachable_commits - parents)
    return report


def _check_head(repo: Repo, report: FsckReport) -> None:
    """HEAD must exist and be a branch ref or a commit id; a branch it names that does not
    exist is a problem when HEAD has named commits before (a misspelled ``ref:`` line)."""
    try:
        raw = repo.store.get(HEAD)
    except FileNotFoundError:
        report.problems.append(Problem("bad-ref", None, "HEAD is missing"))
        return
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        report.problems.append(Problem("bad-ref", None, f"HEAD holds {raw[:80]!r}, not text"))
        return
    if text.startswith("ref: "):
        target = text[5:]
        if not target.startswith(HEADS):
            report.problems.append(
                Problem("bad-ref", None, f"HEAD points at {target!r}, not at a branch")
            )
            return
        try:
            branches = repo.refs.list(HEADS)
        except CorruptObjectError:
            branches = {}
        try:
            used = bool(repo.refs.reflog(HEAD))
        except CorruptObjectError:
            used = True
        # unborn is fine (a new repository, or commits only on other branches); a HEAD that
        # once named commits and now names no branch was edited or damaged
        if not repo.refs.exists(target) and branches and used:
            shown = ", ".join(sorted(branches))
            report.problems.append(
                Problem(
                    "bad-ref",
                    None,
                    f"HEAD points at branch {target[len(HEADS) :]!r}, which does not exist "
                    f"(branches: {shown})",
                )
            )
        return
    from .format.ids import is_object_id

    if not is_object_id(text):
        report.problems.append(Problem("bad-ref", None, f"HEAD holds {text[:80]!r}"))


def left_behind(repo: Repo, old: str | None) -> list[str]:
    """Commits from ``old`` (HEAD's commit before a switch) back to the first one a branch or
    tag reaches: what a switch away from a detached HEAD leaves behind."""
    if old is None:
        return []
    reached: set[str] = set()
    stack = [oid for name, oid in root_refs(repo).items() if name != HEAD]
    while stack:
        c = stack.pop()
        if c not in reached:
            reached.add(c)
            stack.extend(repo.get_commit(c).parents)
    out = []
    stack, seen = [old], set()
    while stack:
        c = stack.pop()
        if c in reached or c in seen:
            continue
        seen.add(c)
        out.append(c)
        stack.extend(repo.get_commit(c).parents)
    return out
