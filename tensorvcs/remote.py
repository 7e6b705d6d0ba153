"""Remotes: push, fetch, pull and clone between a repository and another store.

A remote is a repository's ``.tvcs`` content at a URL (``s3://bucket/prefix``,
``file:///path``, ``memory://name`` or a plain local path): config.json, HEAD, refs/ and
objects/ with the layout of docs/format.md, and no working directory (a "bare" repository).

Transfer order (docs/remotes.md): leaf objects (chunks, packs, blobs; a delta's base before the
delta) → manifests → commits (parents first) → refs. So a store that holds a commit holds
everything it reaches, a transfer can stop walking history at the first commit the destination
has, and a transfer re-run after an interruption sends only what is still missing. Refs are
updated last, by compare-and-swap against the value read before the transfer.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import (
    CorruptObjectError,
    NotFoundError,
    RefConflictError,
    RepoNotFoundError,
    UsageError,
)
from .format import codecs, envelope
from .format.config import MAX_DELTA_CHAIN
from .format.ids import is_object_id
from .format.manifest import Manifest
from .format.values import path_str, walk_leaves
from .refs import HEAD, HEADS, TAGS, check_ref_name
from .revisions import parents_first
from .store.objects import object_name
from .store.open import is_url, open_store

if TYPE_CHECKING:
    from .repo import Repo

REMOTES_FILE = "remotes.json"
REMOTES = "refs/remotes/"
CONFIG = "config.json"
DEFAULT_TRANSFER_THREADS = 16
LOCK_TIMEOUT = 3600.0  # a transfer waits this long for a gc on either side


class PushRejectedError(RefConflictError):
    """A push refused because the remote branch moved (or is not an ancestor)."""


class DivergedError(RefConflictError):
    """A pull refused because the local and the remote branch have diverged."""


@dataclass
class TransferStats:
    objects_sent: int = 0
    bytes_sent: int = 0
    objects_skipped: int = 0  # present at the destination already
    commits: int = 0  # commits the destination lacked

    def add(self, other: TransferStats) -> None:
        self.objects_sent += other.objects_sent
        self.bytes_sent += other.bytes_sent
        self.objects_skipped += other.objects_skipped
        self.commits += other.commits


@dataclass
class RemoteResult:
    """What push / fetch / pull / clone did (``--json`` prints this)."""

    remote: str
    url: str
    objects_sent: int = 0
    bytes_sent: int = 0
    objects_skipped: int = 0
    commits: int = 0
    updated: dict[str, list[str | None]] = field(default_factory=dict)  # ref: [old, new]
    up_to_date: list[str] = field(default_factory=list)
    tags_kept: list[str] = field(default_factory=list)  # fetch: a local tag the remote's differs

    def merge(self, s: TransferStats) -> None:
        self.objects_sent += s.objects_sent
        self.bytes_sent += s.bytes_sent
        self.objects_skipped += s.objects_skipped
        self.commits += s.commits

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# -- opening a remote repository ------------------------------------------------------------
def open_remote_repo(url: str, *, create_like: Repo | None = None, **options: Any) -> Repo:
    """The (bare) repository at ``url``. With ``create_like``, an empty location is made a
    repository with that repository's config (its first push); otherwise it must exist."""
    from .repo import open_bare

    store = open_store(url, **options)
    try:
        return open_bare(url, store)
    except RepoNotFoundError:
        if create_like is None:
            raise
    target = create_like.refs.head_target() or HEADS + "main"
    store.put_if_absent(HEAD, [f"ref: {target}\n".encode()])
    store.put_if_absent(CONFIG, [create_like.config.to_bytes()])  # last: marks a repo
    return open_bare(url, store)


# -- the remotes list ---------------------------------------------------------------------
def _load_remotes(repo: Repo) -> dict[str, dict[str, Any]]:
    """{name: {"url", "options"[, "filter"]}} from remotes.json ({} when there is none); a
    file that is not that is CorruptObjectError naming it."""
    from .errors import CorruptObjectError

    where = f"{repo.path / REMOTES_FILE}"
    try:
        data = repo.store.get(REMOTES_FILE)
    except FileNotFoundError:
        return {}
    try:
        doc = json.loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptObjectError(f"{where} is corrupt: not UTF-8 JSON ({e})") from None
    except RecursionError:
        raise CorruptObjectError(f"{where} is corrupt: its JSON nests too deeply") from None
    if not isinstance(doc, dict):
        raise CorruptObjectError(f"{where} is corrupt: not a JSON object of remotes")
    for name, r in doc.items():
        problem = None
        if not isinstance(r, dict) or not isinstance(r.get("url"), str):
            problem = "it has no url"
        elif not isinstance(r.get("options", {}), dict | None):
            problem = "its options are not a JSON object"
        elif r.get("filter") is not None and not (
            isinstance(r["filter"], list) and all(isinstance(g, str) for g in r["filter"])
        ):
            problem = "its filter is not a list of globs"
        if problem:
            raise CorruptObjectError(f"{where} is corrupt: remote {name!r:.80}: {problem}")
    return doc


def _save_remotes(repo: Repo, remotes: Mapping[str, Any]) -> None:
    repo.store.put(REMOTES_FILE, [json.dumps(remotes, sort_keys=True, indent=1).encode()])


def remote_add(repo: Repo, name: str, url: str, **storage_options: Any) -> None:
    check_ref_name(name, "remote")
    if "/" in name:
        raise UsageError(f"invalid remote name {name!r} (no '/')")
    url = _absolute(url)
    with repo.refs.locked():
        remotes = _load_remotes(repo)
        if name in remotes:
            raise UsageError(f"remote {name!r} already exists ({remotes[name]['url']})")
        remotes[name] = {"url": url, "options": dict(storage_options)}
        _save_remotes(repo, remotes)


def remote_remove(repo: Repo, name: str) -> None:
    with repo.refs.locked():
        remotes = _load_remotes(repo)
        if name not in remotes:
            raise NotFoundError(f"no remote named {name!r}")
        del remotes[name]
        _save_remotes(repo, remotes)
        for ref in list(repo.store.list(REMOTES + name)):
            repo.store.delete(ref)


def _absolute(url: str) -> str:
    """A plain local path made absolute (against the current directory, as it was meant when
    given); URLs, ``file://`` included, as they are. So a remote added (or cloned) as
    ``../src`` still names that folder when ``fetch`` runs from elsewhere (``--repo``)."""
    if is_url(url):
        return url
    return str(Path(url).expanduser().absolute())


def remotes(repo: Repo) -> dict[str, str]:
    """{name: url} of the configured remotes."""
    return {k: v["url"] for k, v in sorted(_load_remotes(repo).items())}


def _remote(repo: Repo, name: str, *, url_ok: bool = False) -> tuple[str, dict[str, Any]]:
    """(url, storage options) of remote ``name``; with ``url_ok``, ``name`` may also be a URL
    or a path (push only: there are no remote-tracking refs for an unnamed remote)."""
    r = _load_remotes(repo).get(name)
    if r is None:
        if url_ok and (is_url(name) or Path(name).exists()):
            return name, {}
        raise NotFoundError(f"no remote named {name!r} (see 'tvcs remote add')")
    return str(r["url"]), dict(r.get("options") or {})


# -- object transfer --------------------------------------------------------------------------
def _missing_commits(
    src: Repo,
    dst: Repo,
    tips: Iterable[str],
    present: set[str],
    include: Sequence[str] | None = None,
) -> list[str]:
    """Commits reachable from ``tips`` that ``dst`` lacks, parents before children.

    ``present`` lists the objects ``dst`` holds. The walk stops at commits ``dst`` has, since a
    store holding a commit holds everything it reaches (gc deletes in that order too); but a
    transfer verifies what it skips: a commit where the walk stops counts as missing unless its
    manifest and every (selected) object it names are in ``present``."""
    missing: set[str] = set()
    stack = [t for t in tips]
    seen: set[str] = set()
    while stack:
        c = stack.pop()
        if c in seen:
            continue
        seen.add(c)
        if c in present and _complete(src, c, present, include):
            continue
        missing.add(c)
        stack.extend(src.get_commit(c).parents)
    return parents_first(missing, lambda c: src.get_commit(c).parents)


def _complete(src: Repo, commit: str, present: set[str], include: Sequence[str] | None) -> bool:
    """True when ``present`` holds ``commit``'s manifest and the objects it (selectively)
    names."""
    mid = src.get_commit(commit).manifest
    if mid not in present:
        return False
    m = src.get_manifest(mid)
    ids = m.object_ids() if include is None else _selected_objects(m, include)
    return all(oid in present for oid in ids)


def _selected_objects(m: Manifest, include: Sequence[str]) -> set[str]:
    """Object ids of the leaves of ``m`` whose key path (or file path) matches ``include``."""
    from .repo import _globs_regex

    match = _globs_regex(include).match
    ids: set[str] = set()
    for path, node in walk_leaves(m.tree):
        if not (isinstance(node, list) and node and node[0] in ("tensor", "ndarray", "pickle")):
            continue
        if match(path_str(path)) is None:
            continue
        if node[0] == "pickle":
            ids.add(node[1])
        else:
            ids.update(m.tensors[int(node[1])].object_ids())
    for f in m.files:
        if match(f.path) is not None:
            ids.update(c[0] for c in f.chunks)
    return ids


class _Copier:
    """Copies objects from one store to another in a thread pool; a delta's base first.

    A delta's chain is followed iteratively (with the same loop and length checks as
    decoding: a hostile chain is a CorruptObjectError naming it, never a hang) and written
    from its self-contained end up, each object with create-if-absent: when two threads share
    a base, each returns from writing it only once it is there."""

    def __init__(self, src: Repo, dst: Repo, present: set[str]) -> None:
        self.src, self.dst = src, dst
        self.present = present  # what dst held when the transfer began (one listing)
        self.stats = TransferStats()
        self._lock = threading.Lock()
        self._done: set[str] = set()

    def copy(self, oid: str) -> None:
        chain: list[tuple[str, bytes]] = []
        seen: set[str] = set()
        cur: str | None = oid
        while cur is not None and cur not in self.present and cur not in self._done:
            if cur in seen or len(chain) > MAX_DELTA_CHAIN:
                raise CorruptObjectError(
                    f"object {oid}'s delta chain "
                    + ("loops" if cur in seen else f"is longer than {MAX_DELTA_CHAIN} deltas")
                    + f" (at {cur}); not copied",
                    oid,
                )
            seen.add(cur)
            data = self.src.objects.raw(cur)
            h = envelope.read_header(data, cur)
            chain.append((cur, envelope.without_check(data, h)))
            base = h.params.get("base") if h.codec == codecs.CODEC_DELTA else None
            if base is not None and not (isinstance(base, str) and is_object_id(base)):
                raise CorruptObjectError(f"object {cur} is a delta without a valid base id", cur)
            cur = base
        if not chain:
            with self._lock:
                self.stats.objects_skipped += 1
            return
        for name, data in reversed(chain):  # the base is written before the delta
            wrote = self.dst.store.put_if_absent(object_name(name), [data])
            with self._lock:
                self._done.add(name)
                if wrote:
                    self.stats.objects_sent += 1
                    self.stats.bytes_sent += len(data)
                else:
                    self.stats.objects_skipped += 1

    def run(self, oids: Sequence[str], pool: ThreadPoolExecutor) -> None:
        for _ in pool.map(self.copy, oids):
            pass


def transfer(
    src: Repo,
    dst: Repo,
    tips: Iterable[str],
    *,
    threads: int = DEFAULT_TRANSFER_THREADS,
    include: Sequence[str] | None = None,
) -> TransferStats:
    """Copy to ``dst`` every object reachable from ``tips`` that it lacks. With ``include``
    (key-path globs), only the objects of the matching tensors, blobs and files travel (a
    partial transfer); commits and manifests always do."""
    present = set(dst.objects.ids())  # one listing: what the destination holds
    commits = _missing_commits(src, dst, tips, present, include)
    copier = _Copier(src, dst, present)
    copier.stats.commits = len(commits)
    if not commits:
        return copier.stats
    manifests = []
    seen_m: set[str] = set()
    for c in commits:
        m = src.get_commit(c).manifest
        if m not in seen_m:
            seen_m.add(m)
            manifests.append(m)
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="tvcs-xfer") as pool:
        leaves: list[str] = []
        seen: set[str] = set()
        for m in manifests:  # a present manifest is not trusted to have its objects there
            man = src.get_manifest(m)
            ids = man.object_ids() if include is None else _selected_objects(man, include)
            for oid in sorted(ids):
                if oid not in seen and oid not in present:
                    seen.add(oid)
                    leaves.append(oid)
        copier.run(leaves, pool)  # 1. chunks, packs, blobs (and delta bases)
        dst.store.sync()
        copier.run(manifests, pool)  # 2. manifests
        dst.store.sync()
    for c in commits:  # 3. commits, parents first
        copier.copy(c)
    dst.store.sync()
    return copier.stats


@contextmanager
def _transfer_locks(*repos: Repo) -> Iterator[None]:
    """Hold each repository's gc lock shared (as a commit does) while objects travel and refs
    move, so a gc on either side never deletes what a transfer copies or is about to name."""
    from .repo import GC_LOCK

    with ExitStack() as stack:
        for r in repos:
            stack.enter_context(r.store.lock(GC_LOCK, shared=True, timeout=LOCK_TIMEOUT))
        yield


# -- history helpers --------------------------------------------------------------------------
def is_ancestor(repo: Repo, ancestor: str, commit: str) -> bool:
    """True when ``ancestor`` is ``commit`` or one of its ancestors (in ``repo``)."""
    if not repo.objects.has(ancestor):
        return False
    stack, seen = [commit], set()
    while stack:
        c = stack.pop()
        if c == ancestor:
            return True
        if c in seen:
            continue
        seen.add(c)
        stack.extend(repo.get_commit(c).parents)
    return False


def count_only(repo: Repo, tip: str, other: str | None) -> int:
    """Commits reachable from ``tip`` and not from ``other`` (None: no commit): how far a
    branch is ahead of (or behind) another."""

    def reach(start: str | None) -> set[str]:
        out: set[str] = set()
        stack = [start] if start is not None else []
        while stack:
            c = stack.pop()
            if c not in out:
                out.add(c)
                stack.extend(repo.get_commit(c).parents)
        return out

    return len(reach(tip) - reach(other))


def _full_ref(repo: Repo, ref: str) -> str:
    if ref.startswith(("refs/heads/", "refs/tags/")):
        return ref
    if repo.refs.exists(HEADS + ref):
        return HEADS + ref
    if repo.refs.exists(TAGS + ref):
        return TAGS + ref
    raise NotFoundError(f"no branch or tag named {ref!r} to push")


def _tracking(name: str, ref: str) -> str | None:
    return REMOTES + name + "/" + ref[len(HEADS) :] if ref.startswith(HEADS) else None


# -- push / fetch / pull / clone --------------------------------------------------------------
def push(
    repo: Repo,
    remote: str = "origin",
    refs: Sequence[str] | None = None,
    *,
    threads: int = DEFAULT_TRANSFER_THREADS,
    tags: bool = False,
    all_branches: bool = False,
    force: bool = False,
) -> RemoteResult:
    """Send the objects the remote lacks, then move its refs by compare-and-swap.

    ``refs`` (default: the current branch, unless ``tags`` or ``all_branches`` name what to
    push), plus every tag with ``tags`` and every branch with ``all_branches``. A remote branch
    that moved since we last saw it (and is not an ancestor of what we push) is refused:
    ``PushRejectedError`` ("rejected: remote main moved; fetch first"), and so is a tag the
    remote holds with another commit; ``force`` replaces them (still by compare-and-swap)."""
    url, options = _remote(repo, remote, url_ok=True)
    named = remote in _load_remotes(repo)
    wanted = list(refs or [])
    if all_branches:
        wanted += [HEADS + b for b in sorted(repo.refs.list(HEADS))]
    if tags:
        wanted += [TAGS + t for t in sorted(repo.refs.list(TAGS))]
    if not refs and not tags and not all_branches:
        target = repo.refs.head_target()
        if target is None:
            raise UsageError("HEAD is detached: name the branch to push")
        wanted = [target]
    full = list(dict.fromkeys(_full_ref(repo, r) for r in wanted))
    if not full:
        raise NotFoundError(
            "nothing to push: the repository has no " + ("tags" if tags else "branches")
        )
    news = {}
    for ref in full:
        new = repo.refs.read(ref)
        if new is None:
            raise NotFoundError(f"{ref} has no commits to push")
        news[ref] = new
    dst = open_remote_repo(url, create_like=repo, **options)
    result = RemoteResult(remote=remote, url=url)
    try:
        with _transfer_locks(repo, dst):
            olds = {ref: dst.refs.read(ref) for ref in full}
            for ref, old in olds.items():
                if not force:
                    _check_push(repo, remote, ref, old, news[ref])
            todo = {ref: new for ref, new in news.items() if olds[ref] != new}
            result.up_to_date = [r for r in full if r not in todo]
            # every tip is verified, so a push repairs a remote whose tip lost objects
            result.merge(transfer(repo, dst, news.values(), threads=threads))
            for ref, new in todo.items():  # refs last, by CAS against what we read above
                try:
                    why = "forced push" if force and olds[ref] is not None else "push"
                    dst.refs.update(ref, new, expected=olds[ref], message=f"{why} from {remote}")
                except RefConflictError:
                    raise PushRejectedError(_rejected(ref, remote)) from None
                result.updated[ref] = [olds[ref], new]
            for ref in full:
                track = _tracking(remote, ref) if named else None
                if track is not None and repo.refs.read(track) != news[ref]:
                    repo.refs.update(track, news[ref], message=f"push to {remote}")
    finally:
        dst.close()
    return result


def _rejected(ref: str, remote: str) -> str:
    short = ref[len(HEADS) :] if ref.startswith(HEADS) else ref
    return (
        f"rejected: remote {short} moved; fetch first ({ref} on {remote} holds commits you do "
        f"not have: 'tvcs fetch {remote}', then 'tvcs pull {remote} {short}' and push again)"
    )


def _check_push(repo: Repo, remote: str, ref: str, old: str | None, new: str) -> None:
    if old is None or old == new:
        return
    if ref.startswith(TAGS):
        raise PushRejectedError(
            f"rejected: tag {ref[len(TAGS) :]} already exists on {remote} with another commit "
            f"({old[:12]}); use --force to replace it"
        )
    if not is_ancestor(repo, old, new):
        if repo.objects.has(old):
            short = ref[len(HEADS) :]
            raise PushRejectedError(
                f"rejected: non-fast-forward: {remote} {short} has commits that {short} does "
                f"not; 'tvcs pull {remote} {short}' first"
            )
        raise PushRejectedError(_rejected(ref, remote))


def fetch(
    repo: Repo,
    remote: str = "origin",
    *,
    threads: int = DEFAULT_TRANSFER_THREADS,
    include: Sequence[str] | None = None,
) -> RemoteResult:
    """Copy the remote's branches (and tags) with the objects they need; point the
    remote-tracking refs ``refs/remotes/<remote>/<branch>`` at them. Local branches are
    untouched; new tags are created, existing ones kept."""
    url, options = _remote(repo, remote)
    if include is None:
        include = _load_remotes(repo).get(remote, {}).get("filter")
    src = open_remote_repo(url, **options)
    result = RemoteResult(remote=remote, url=url)
    try:
        with _transfer_locks(src, repo):
            heads = src.refs.list(HEADS)
            tags = src.refs.list(TAGS)
            tips = list(heads.values()) + list(tags.values())
            result.merge(transfer(src, repo, tips, threads=threads, include=include))
            for b, oid in heads.items():
                track = REMOTES + remote + "/" + b
                old = repo.refs.read(track)
                if old != oid:
                    repo.refs.update(track, oid, message=f"fetch from {remote}")
                    result.updated[track] = [old, oid]
                else:
                    result.up_to_date.append(track)
            for t, oid in tags.items():
                _fetch_tag(repo, remote, TAGS + t, oid, result)
    finally:
        src.close()
    return result


def _fetch_tag(repo: Repo, remote: str, ref: str, oid: str, result: RemoteResult) -> None:
    """Create tag ``ref`` at the remote's ``oid``, or move it there when a fetch from this
    remote set it and nothing moved it since (its newest reflog entry is that fetch, naming
    the commit it holds): CheckpointManager's retention re-points ``step-N`` tags when it
    rewrites history, and a clone follows. A tag made or moved here is kept (as git keeps
    it) and listed in ``tags_kept``."""
    message = f"fetch from {remote}"
    old = repo.refs.read(ref)
    if old == oid:
        return
    if old is not None:
        log = repo.refs.reflog(ref)
        last = log[-1] if log else None
        if last is None or last.new != old or not last.message.startswith(message):
            result.tags_kept.append(ref)
            return
    repo.refs.update(ref, oid, expected=old, message=message)
    result.updated[ref] = [old, oid]


def pull(
    repo: Repo,
    remote: str = "origin",
    branch: str | None = None,
    *,
    threads: int = DEFAULT_TRANSFER_THREADS,
) -> RemoteResult:
    """Fetch, then fast-forward ``branch`` (default: the current one) to the remote's."""
    if branch is None:
        target = repo.refs.head_target()
        if target is None:
            raise UsageError("HEAD is detached: name the branch to pull")
        branch = target[len(HEADS) :]
    result = fetch(repo, remote, threads=threads)
    theirs = repo.refs.read(REMOTES + remote + "/" + branch)
    if theirs is None:
        raise NotFoundError(f"remote {remote} has no branch {branch!r}")
    ours = repo.refs.read(HEADS + branch)
    ref = HEADS + branch
    if ours == theirs or (ours is not None and is_ancestor(repo, theirs, ours)):
        result.up_to_date.append(ref)
        return result
    if ours is not None and not is_ancestor(repo, ours, theirs):
        a, b = count_only(repo, ours, theirs), count_only(repo, theirs, ours)
        raise DivergedError(
            f"cannot fast-forward {branch}: it and {remote}/{branch} have diverged ({a} and {b} "
            f"commits of their own); tensorvcs does not merge checkpoints: keep one side "
            f"(e.g. 'tvcs branch mine {branch}', then reset {branch} to {remote}/{branch})"
        )
    repo.refs.update(ref, theirs, expected=ours, message=f"pull {remote}: fast-forward")
    result.updated[ref] = [ours, theirs]
    return result


def clone(
    url: str,
    path: str | Path,
    *,
    name: str = "origin",
    threads: int = DEFAULT_TRANSFER_THREADS,
    filter: Sequence[str] | None = None,
    **storage_options: Any,
) -> tuple[Repo, RemoteResult]:
    """A new repository at ``path`` with the remote's history; its default branch checked out
    as a ref (HEAD points at it). With ``filter`` (key-path globs), a partial clone: every
    commit and manifest, but only the objects of the matching tensors.

    Refused before anything is created: a ``path`` that exists and is not an empty folder, a
    ``path`` that is (or is inside) the repository cloned, a ``filter`` that matches nothing in
    the remote's tip (SelectionError). A clone that fails later removes what it created."""
    from .repo import Repo, _check_storage_options

    _check_storage_options(url, storage_options, "tensorvcs.clone")
    dest = Path(path)
    _check_clone_destination(url, dest)
    src = open_remote_repo(url, **storage_options)
    try:
        target = src.refs.head_target() or HEADS + "main"
        cfg = src.config
        if filter is not None:
            _check_filter(src, url, target, list(filter))
    finally:
        src.close()
    created = not dest.exists()
    repo: Repo | None = None
    try:
        repo = Repo.init(
            dest,
            chunk_size=cfg.chunk_size,
            pack_threshold=cfg.pack_threshold,
            branch=target[len(HEADS) :],
        )
        remote_add(repo, name, url, **storage_options)
        if filter is not None:  # a partial clone: later fetches from this remote keep the filter
            with repo.refs.locked():
                remotes = _load_remotes(repo)
                remotes[name]["filter"] = list(filter)
                _save_remotes(repo, remotes)
        result = fetch(repo, name, threads=threads)
        tip = repo.refs.read(REMOTES + name + "/" + target[len(HEADS) :])
        if tip is not None:
            repo.refs.update(target, tip, expected=None, message=f"clone from {url}")
            result.updated[target] = [None, tip]
    except BaseException:
        if repo is not None:
            repo.close()
        shutil.rmtree(dest if created else dest / ".tvcs", ignore_errors=True)
        raise
    return repo, result


def clone_repo(
    url: str,
    path: str | Path,
    *,
    filter: Sequence[str] | None = None,
    **storage_options: Any,
) -> Repo:
    """``tv.clone``: a local copy at ``path`` of the repository at ``url`` (remote
    ``origin``); with ``filter`` (key-path globs), only the matching tensors' objects are
    fetched (a partial clone). What :func:`clone` makes, without its RemoteResult."""
    return clone(url, Path(path), filter=filter, **storage_options)[0]


def _local_store_dir(url: str) -> Path | None:
    """The folder a local path or ``file://`` URL names the store of (None for other URLs)."""
    if url.startswith("file://"):
        p = Path(url[len("file://") :])
    elif is_url(url):
        return None
    else:
        p = Path(url)
    p = p.expanduser().resolve()
    return p / ".tvcs" if (p / ".tvcs" / CONFIG).is_file() else p


def _check_clone_destination(url: str, dest: Path) -> None:
    store_dir = _local_store_dir(url)
    where = dest.expanduser().resolve()
    if store_dir is not None:
        holder = store_dir.parent if store_dir.name == ".tvcs" else store_dir
        if where == holder or where.is_relative_to(store_dir):
            raise UsageError(
                f"cannot clone {url} into itself: '{dest}' is "
                + ("the repository" if where in (holder, store_dir) else "inside the repository")
                + " being cloned (name another destination folder)"
            )
    if where.exists() and (not where.is_dir() or any(where.iterdir())):
        raise UsageError(f"destination path '{dest}' already exists and is not an empty directory")


def _check_filter(src: Repo, url: str, target: str, filter: list[str]) -> None:
    """SelectionError when ``filter`` matches no key path (nor file) of the remote's tip."""
    from .errors import SelectionError
    from .repo import _globs_regex

    tip = src.refs.read(target)
    if tip is None:
        return  # an empty remote: nothing to match yet
    m = src.get_manifest(src.get_commit(tip).manifest)
    match = _globs_regex(filter).match
    if any(match(path_str(p)) for p, _ in walk_leaves(m.tree)):
        return
    if any(match(f.path) for f in m.files):
        return
    globs = ", ".join(repr(g) for g in filter)
    raise SelectionError(
        f"nothing in commit {tip[:12]} ({target[len(HEADS) :]} of {url}) matches the clone "
        f"filter {globs} (key paths as 'tvcs ls' prints them, e.g. 'ckpt.pt/model/*')"
    )


__all__ = [
    "DivergedError",
    "PushRejectedError",
    "RemoteResult",
    "TransferStats",
    "clone",
    "clone_repo",
    "fetch",
    "open_remote_repo",
    "open_store",
    "pull",
    "push",
    "remote_add",
    "remote_remove",
    "remotes",
    "transfer",
]
