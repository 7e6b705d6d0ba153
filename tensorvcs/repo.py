"""The repository: commit, checkout, load_into, history, branches and tags.

The API the CLI and the integrations call. Write order for a commit (docs/format.md):
tensor objects → manifest → commit → ref, each durable before the next, so a crash at any
point leaves at worst unreferenced objects. Commits hold the ``gc`` lock shared for their
whole duration; ``gc`` takes it exclusively, so it never deletes what an in-flight commit is
about to reference.
"""

from __future__ import annotations

import fnmatch
import heapq
import inspect
import math
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import (
    FormatVersionError,
    NotFoundError,
    RepoNotFoundError,
    SelectionError,
    UnsupportedValueError,
    UsageError,
)
from .format import envelope, values
from .format.commit import Commit
from .format.config import RepoConfig
from .format.manifest import FileEntry, Manifest, TensorEntry
from .format.stats import TensorStats, with_change
from .format.values import KeyPath, path_str
from .refs import HEAD, HEADS, TAGS, RefStore, check_ref_name, default_author
from .revisions import Revision, rev_label
from .revisions import resolve as resolve_revision
from .state.basecache import BaseCache
from .state.workers import default_workers
from .store.base import Store
from .store.local import LocalStore
from .store.objects import ObjectStore
from .store.open import is_url, open_store

if TYPE_CHECKING:  # torch, and the modules that need it, are imported where they are used:
    # opening a repository and reading its history (`tvcs log`) never loads torch
    import torch

    from .loading import LoadReport
    from .state.writer import TensorWriter, WriteStats

DIRNAME = ".tvcs"
CONFIG = "config.json"
GC_LOCK = "gc"
COMPACT_LOCK = "compact"  # delta re-encodings after the fact (compaction.py)
DEFAULT_DELTA_MAX_DEPTH = 10


@dataclass
class TensorInfo:
    path: KeyPath
    key: str
    dtype: str
    shape: list[int]
    nbytes: int
    objects: list[str]
    stats: TensorStats | None = None  # recorded at commit time (None in older commits)


def _globs_regex(globs: Sequence[str]) -> re.Pattern[str]:
    """One regex for several fnmatch globs; a glob also names everything under it, as a path
    does in git ("model" selects "model/..." too)."""
    parts = [fnmatch.translate(g) for g in globs] + [fnmatch.translate(g + "/*") for g in globs]
    return re.compile("|".join(f"(?:{p})" for p in parts) or "(?!)")


def _closest_key(tree: Any, key_path: KeyPath) -> str:
    """"; did you mean 'model'?" for the key path nearest to ``key_path`` (same depth, each
    key the closest of its siblings), or "" when there is none close enough."""
    import difflib

    node, found = tree, []
    for k in key_path:
        if not (isinstance(node, list) and len(node) == 2 and node[0] in ("dict", "odict")):
            return ""
        keys = {str(kv[0]): kv for kv in node[1]}
        if str(k) in keys:
            hit = str(k)
        else:
            close = difflib.get_close_matches(str(k), list(keys), n=1, cutoff=0.6)
            if not close:
                return ""
            hit = close[0]
        found.append(keys[hit][0])
        node = keys[hit][1]
    return f"; did you mean {path_str(tuple(found))!r}?" if found else ""


def _select(include: Sequence[str] | None, exclude: Sequence[str] | None) -> Any:
    if include is None and exclude is None:
        return None
    inc = _globs_regex(include).match if include is not None else None
    exc = _globs_regex(exclude or []).match
    seen: dict[KeyPath, bool] = {}  # each leaf is asked about twice per checkout

    def select(path: KeyPath) -> bool:
        hit = seen.get(path)
        if hit is None:
            key = path_str(path)
            hit = seen[path] = (inc is None or inc(key) is not None) and exc(key) is None
        return hit

    return select


def _selection_text(include: Sequence[str] | None, exclude: Sequence[str] | None) -> str:
    """'include 'a/*', 'b'; exclude 'c'' for error messages."""
    parts = []
    if include is not None:
        parts.append("include " + (", ".join(repr(g) for g in include) or "(no globs)"))
    if exclude:
        parts.append("exclude " + ", ".join(repr(g) for g in exclude))
    return "; ".join(parts)


# options of fsspec's AbstractFileSystem (read from **kwargs) and of FsspecStore itself
_FSSPEC_COMMON_OPTIONS = frozenset(
    {"use_listings_cache", "listings_expiry_time", "max_paths", "skip_instance_cache", "lock_ttl"}
)


def _check_storage_options(
    path: str | os.PathLike[str], options: Mapping[str, Any], who: str
) -> None:
    """TypeError for storage options nobody would read: any option with a local path, and
    for a URL an option that neither fsspec nor the URL's file system class takes by name
    (fsspec swallows unknown keyword arguments silently)."""
    if not options:
        return
    names = ", ".join(repr(k) for k in sorted(options))
    url = str(path)
    if "://" not in url:
        raise TypeError(
            f"{who}() got unexpected keyword argument(s) {names} (storage options apply only "
            "to a repository at a URL such as s3://bucket/prefix)"
        )
    if "::" in url:  # chained file systems take nested options: not checked here
        return
    try:
        import fsspec

        cls = fsspec.get_filesystem_class(url.split("://", 1)[0])
    except (ImportError, ValueError):
        return  # an unknown protocol fails with its own error when the store is opened
    known = set(_FSSPEC_COMMON_OPTIONS)
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            return
        known.update(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    unknown = sorted(k for k in options if k not in known)
    if unknown:
        raise TypeError(
            f"{who}() got unexpected keyword argument(s) "
            f"{', '.join(repr(k) for k in unknown)} (not an option of {who} nor of the "
            f"{cls.__name__} storage of {url.split('://', 1)[0]}:// URLs)"
        )


def _matches_init(
    repo: Repo, chunk_size: int | None, pack_threshold: int | None, branch: str | None
) -> Repo:
    """Repo.init(exist_ok=True) on an existing repository: ``repo``, unless an argument given
    contradicts it (UsageError; the repository is closed)."""
    problems = []
    for name, want in (("chunk_size", chunk_size), ("pack_threshold", pack_threshold)):
        have = getattr(repo.config, name)
        if want is not None and want != have:
            problems.append(f"its {name} is {have}, not {want}")
    if branch is not None:
        on, _ = repo.head()
        if on != branch:
            where = f"on branch {on!r}" if on is not None else "detached"
            problems.append(f"HEAD is {where}, not on {branch!r}")
    if problems:
        repo.close()
        raise UsageError(
            f"a tensorvcs repository already exists at {repo.path}, and "
            + "; ".join(problems)
            + " (exist_ok=True opens it as it is: leave out the arguments that differ, or "
            "change them with 'tvcs config' / 'tvcs switch')"
        )
    return repo


def _as_list(globs: str | Sequence[str] | None) -> list[str] | None:
    if globs is None:
        return None
    return [globs] if isinstance(globs, str) else list(globs)


def normalize_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metrics as plain numbers: 1-element tensors and numpy scalars become Python numbers."""
    return {str(k): _metric_value(str(k), v) for k, v in (metrics or {}).items()}


def _metric_value(k: str, v: Any) -> Any:
    import torch

    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise UnsupportedValueError(f"metric {k!r} is a tensor with {v.numel()} elements")
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    if type(v) in (int, float, bool) or v is None:
        return v
    raise UnsupportedValueError(f"metric {k!r} must be a number, not {type(v).__name__}")


def _started_pool(workers: int) -> ThreadPoolExecutor:
    """A pool whose ``workers`` threads are all running before any job is queued.

    ThreadPoolExecutor starts a thread per ``submit`` while none is idle, and ``Thread.start``
    waits for the new thread to take the GIL: with earlier jobs already running Python code,
    each start waited out the interpreter's switch interval (about 3 ms each, 13 ms of a
    0.1 GB checkout's 60). Started here, with nothing else running, they take ~0.1 ms each.
    Each thread is held by a barrier until all are up, so every ``submit`` found none idle
    and started one."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="tvcs")
    gate = threading.Barrier(workers + 1)
    try:
        for _ in range(workers):
            pool.submit(gate.wait)
        gate.wait(timeout=60)
    except BaseException:  # a thread that could not start: release those that did
        gate.abort()
        pool.shutdown(wait=False)
        raise
    return pool


class Repo:
    """A tensorvcs repository (the ``.tvcs`` folder of a working directory)."""

    def __init__(self, root: Path, store: Store, config: RepoConfig) -> None:
        self.root = root
        self.store = store
        self.config = config
        self.objects = ObjectStore(store)
        self.objects.checksums = config.settings.get("verify_reads", "checksum") == "checksum"
        self.refs = RefStore(store)
        self.refs.recover()  # a drop a crash cut short is completed before anything is read
        self._workers: int | None = None
        self._pool: ThreadPoolExecutor | None = None

        self._pool_lock = threading.Lock()
        self._manifests: OrderedDict[str, Manifest] = OrderedDict()
        self._commits: dict[str, Commit] = {}
        self.base_cache = BaseCache(config.settings.get("delta_cache_bytes"))
        self.delta_max_depth = int(config.settings.get("delta_max_depth", DEFAULT_DELTA_MAX_DEPTH))

    @property
    def workers(self) -> int:
        """Threads of the pool commits and checkouts run on (state/workers.py
        default_workers unless set)."""
        if self._workers is None:
            self._workers = default_workers()
        return self._workers

    @workers.setter
    def workers(self, n: int) -> None:
        self._workers = n

    # -- opening ---------------------------------------------------------------------------

    @classmethod
    def init(
        cls,
        path: str | os.PathLike[str] = ".",
        *,
        chunk_size: int | None = None,
        pack_threshold: int | None = None,
        branch: str | None = None,
        exist_ok: bool = False,
        **storage_options: Any,
    ) -> Repo:
        """A new repository at ``path`` (its ``.tvcs`` folder; a URL: a bare repository in
        object storage, where ``storage_options`` go to the store; docs/remotes.md).

        ``branch`` (default "main") is the branch HEAD starts on. An existing repository is a
        UsageError, unless ``exist_ok=True``: then it is opened, and a ``chunk_size``,
        ``pack_threshold`` or ``branch`` given that contradicts it (another chunk size, HEAD
        on another branch) is a UsageError. An unknown keyword argument is a TypeError."""
        _check_storage_options(path, storage_options, "Repo.init")
        if branch is not None:
            check_ref_name(branch, "branch")
        if is_url(str(path)):  # a bare repository on object storage (docs/remotes.md)
            r = _init_bare(
                str(path),
                chunk_size=chunk_size,
                pack_threshold=pack_threshold,
                branch=branch or "main",
                exist_ok=exist_ok,
                **storage_options,
            )
            return _matches_init(r, chunk_size, pack_threshold, branch) if exist_ok else r
        root = Path(path).resolve()
        tvcs = root / DIRNAME
        if (tvcs / CONFIG).exists():
            if exist_ok:
                return _matches_init(cls.open(root), chunk_size, pack_threshold, branch)
            raise UsageError(f"a tensorvcs repository already exists at {tvcs}")
        config = RepoConfig()
        if chunk_size is not None:
            config.chunk_size = chunk_size
        if pack_threshold is not None:
            config.pack_threshold = pack_threshold
        try:
            RepoConfig.from_bytes(config.to_bytes(), "init")  # validate the numbers
        except FormatVersionError as e:  # a bad argument here, not a bad repository
            raise UsageError(str(e)) from e
        tvcs.mkdir(parents=True, exist_ok=True)
        store = LocalStore(tvcs)
        for d in ("objects", "refs/heads", "refs/tags", "logs", "tmp", "locks"):
            (tvcs / d).mkdir(parents=True, exist_ok=True)
        store.put("HEAD", [f"ref: {HEADS}{branch or 'main'}\n".encode()])
        store.put(CONFIG, [config.to_bytes()])  # written last: its presence marks a repo
        return cls(root, store, config)

    @classmethod
    def open(cls, path: str | os.PathLike[str] = ".", **storage_options: Any) -> Repo:
        """The repository at ``path`` (its folder or its ``.tvcs``), or at a URL (a bare one;
        ``storage_options`` go to its store). An unknown keyword argument is a TypeError."""
        _check_storage_options(path, storage_options, "Repo.open")
        if is_url(str(path)):  # s3://bucket/prefix, file:///..., memory://... (bare)
            return open_bare(str(path), open_store(str(path), **storage_options))
        p = Path(path).resolve()
        tvcs = p if p.name == DIRNAME and (p / CONFIG).exists() else p / DIRNAME
        if not (tvcs / CONFIG).is_file():
            raise RepoNotFoundError(f"not a tensorvcs repository: {p} (no {DIRNAME}/{CONFIG})")
        store = LocalStore(tvcs)
        config = RepoConfig.from_bytes(store.get(CONFIG), str(tvcs / CONFIG))
        return cls(tvcs.parent, store, config)

    @classmethod
    def discover(cls, start: str | os.PathLike[str] | None = None) -> Repo:
        p = Path(start or os.getcwd()).resolve()
        for d in (p, *p.parents):
            if (d / DIRNAME / CONFIG).is_file():
                return cls.open(d)
        raise RepoNotFoundError(f"not inside a tensorvcs repository: {p} (nor any parent)")

    @property
    def path(self) -> Path:
        return self.root / DIRNAME

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.store.drain()  # the replaced files' blocks freed: nothing of ours left in tmp/

    def __enter__(self) -> Repo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pool(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = _started_pool(self.workers)
            return self._pool

    # -- objects ---------------------------------------------------------------------------
    def get_commit(self, oid: str) -> Commit:
        c = self._commits.get(oid)
        if c is None:
            h, content = self.objects.read(oid)
            if h.kind != envelope.KIND_COMMIT:
                raise NotFoundError(
                    f"object {oid} is a {envelope.KIND_NAMES.get(h.kind)}, not a commit"
                )
            c = Commit.from_bytes(content.tobytes(), oid)
            self._commits[oid] = c
        return c

    def get_manifest(self, oid: str) -> Manifest:
        m = self._manifests.get(oid)
        if m is None:
            m = Manifest.from_bytes(self.objects.read_bytes(oid), oid)
            self._manifests[oid] = m
            while len(self._manifests) > 8:
                self._manifests.popitem(last=False)
        else:
            self._manifests.move_to_end(oid)
        return m

    # -- revisions and history -------------------------------------------------------------
    def resolve(self, rev: Revision = HEAD) -> str:
        """The commit id a revision names: a ``Commit``, or a string as git has it
        (``HEAD~2``, ``main^2``, ``HEAD@{1}``, a tag, ``heads/x``, an id or id prefix...;
        tensorvcs/revisions.py). Every method below that takes a revision goes through here."""
        return resolve_revision(rev, self.refs, self.objects, lambda o: self.get_commit(o).parents)

    def show(self, rev: Revision = HEAD) -> Commit:
        return self.get_commit(self.resolve(rev))

    def log(self, rev: Revision = HEAD, n: int | None = None) -> list[Commit]:
        """Commits reachable from ``rev``, newest first (by timestamp), at most ``n``."""
        try:
            start = self.resolve(rev)
        except NotFoundError:
            if rev == HEAD and self.refs.read(HEAD) is None:
                return []
            raise
        out: list[Commit] = []
        seen = {start}
        first = self.get_commit(start)
        heap = [(_neg_time(first), 0, start)]
        counter = 1
        while heap and (n is None or len(out) < n):
            _, _, oid = heapq.heappop(heap)
            c = self.get_commit(oid)
            out.append(c)
            for p in c.parents:
                if p not in seen:
                    seen.add(p)
                    heapq.heappush(heap, (_neg_time(self.get_commit(p)), counter, p))
                    counter += 1
        return out

    def head(self) -> tuple[str | None, str | None]:
        """(current branch name or None when detached, HEAD's commit id or None if unborn)."""
        target = self.refs.head_target()
        return (target[len(HEADS) :] if target else None), self.refs.read(HEAD)

    # -- branches and tags -----------------------------------------------------------------
    def branch(self, name: str, rev: Revision = HEAD, *, force: bool = False) -> str:
        """Create (or with force, move) branch ``name`` at ``rev``; returns the commit id."""
        oid = self.resolve(rev)
        ref = HEADS + check_ref_name(name, "branch")
        with self.refs.locked():
            if not force and self.refs.exists(ref):
                raise UsageError(f"branch {name!r} already exists (use force to move it)")
            self.refs.update(ref, oid, message=f"branch: created from {rev_label(rev)}")
        return oid

    def branches(self) -> dict[str, str]:
        return self.refs.list(HEADS)

    def delete_branch(self, name: str) -> str:
        if self.refs.head_target() == HEADS + name:
            raise UsageError(f"cannot delete branch {name!r}: HEAD is on it")
        return self.refs.delete(HEADS + check_ref_name(name, "branch"))

    def tag(self, name: str, rev: Revision = HEAD, *, force: bool = False) -> str:
        oid = self.resolve(rev)
        ref = TAGS + check_ref_name(name, "tag")
        with self.refs.locked():
            if not force and self.refs.exists(ref):
                raise UsageError(f"tag {name!r} already exists (use force to move it)")
            self.refs.update(ref, oid, message="tag")
        return oid

    def tags(self) -> dict[str, str]:
        return self.refs.list(TAGS)

    def delete_tag(self, name: str) -> str:
        return self.refs.delete(TAGS + check_ref_name(name, "tag"))

    def switch(self, target: Revision, *, detach: bool = False) -> None:
        """Point HEAD at branch ``target``, or (detach=True, or not a branch) at a commit."""
        if not detach and isinstance(target, str) and self.refs.exists(HEADS + target):
            self.refs.set_head(HEADS + target, message=f"switch to {target}")
        else:
            self.refs.set_head(self.resolve(target), message=f"detach at {rev_label(target)}")

    # -- commit ----------------------------------------------------------------------------
    def commit(
        self,
        state: Any,
        message: str = "",
        *,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        author: str | None = None,
        branch: str | None = None,
        allow_pickle: bool = False,
        files: list[FileEntry] | None = None,
        owned: bool = False,
        pool: ThreadPoolExecutor | None = None,
        defer_deltas: bool = False,
        on_bytes: Callable[[int], None] | None = None,
        on_phase: Callable[[str, int], None] | None = None,
    ) -> Commit:
        """Store ``state`` (any nesting of dicts, lists, tensors and plain values) as a commit
        on ``branch`` (default: HEAD's branch, or HEAD itself when detached).

        ``owned=True`` promises that the state's CPU tensors will not be modified after this
        call (a snapshot made for it): the delta-base cache then keeps them without a copy.
        ``pool``: the threads that hash, encode and write (default: the repository's).
        ``defer_deltas=True`` leaves the re-encoding of the parent's chunks as deltas for
        later: they are listed in ``last_write_stats.deferred`` for
        ``apply_deferred_deltas`` (the commit is complete without them). With ``owned=True``
        too, ``last_write_stats.deferred_content`` holds those chunks' contents in memory
        (views of the state, parents' from the delta-base cache) for its ``contents``, until
        the next commit starts.
        ``on_bytes(n)`` / ``on_phase(name, total)``: progress, called from the pool's threads
        as chunks are stored and when a phase ('encoding', 'syncing') begins (TensorWriter)."""
        if step is not None and (type(step) is not int):
            raise UsageError(f"step must be an int, not {type(step).__name__}")
        metrics = normalize_metrics(metrics)
        # refuse bad metadata before any object is written
        values.encode(dict(metadata or {}), values.Hooks(), ("<metadata>",))
        with self.store.lock(GC_LOCK, shared=True, timeout=3600):
            try:
                mid = self._write_state(
                    state, self.branch_head(branch), allow_pickle, files or [], owned,
                    pool, defer_deltas, on_bytes, on_phase,
                )
                c = Commit(
                    manifest=mid,
                    parents=[],
                    message=message,
                    author=author or default_author(),
                    step=step,
                    metrics=metrics,
                    metadata=dict(metadata or {}),
                    changes=dict(self.last_write_stats.changes),
                )
                self.record(c, branch)
            except BaseException:
                self.base_cache.discard()
                self._drop_deferred_content()  # no commit to re-encode for
                raise
            self.base_cache.promote()
            return c

    def _drop_deferred_content(self) -> None:
        """Let go of the state's memory ``last_write_stats.deferred_content`` holds."""
        last = getattr(self, "last_write_stats", None)
        if last is not None:
            last.deferred_content = {}

    def apply_deferred_deltas(
        self,
        items: Sequence[tuple[str, str, int]],
        pool: ThreadPoolExecutor | None = None,
        *,
        contents: dict[str, np.ndarray] | None = None,
        stop: Callable[[], bool] | None = None,
        left: list[tuple[str, str, int]] | None = None,
        timeout: float = 3600.0,
    ) -> int:
        """Do the delta re-encodings commits with ``defer_deltas=True`` left
        (``last_write_stats.deferred``): each parent chunk becomes a delta against its newer
        chunk where that is smaller, as the commit would have made it. What any checkout
        returns is the same before and after; items whose chunks gc removed are skipped.
        ``contents``: chunk contents in memory (``last_write_stats.deferred_content``), else
        read from the store. ``stop``: asked before each item; the items not begun once it
        answers True are appended to ``left`` instead. ``timeout``: seconds to wait for the
        gc and compaction locks (LockTimeoutError). Returns the number of chunks re-encoded."""
        with self.store.lock(GC_LOCK, shared=True, timeout=timeout), \
                self.store.lock(COMPACT_LOCK, shared=False, timeout=timeout):
            writer = self.tensor_writer(None, None, pool)
            return writer.rewrite_deferred(list(items), contents, stop, left)

    def commit_ref(self, branch: str | None = None) -> str:
        """The ref a commit on ``branch`` moves: the branch, HEAD's branch, or HEAD itself."""
        if branch is not None:
            return HEADS + check_ref_name(branch, "branch")
        return self.refs.head_target() or HEAD

    def branch_head(self, branch: str | None = None) -> str | None:
        """The commit a new commit on ``branch`` will build on (a new branch starts at HEAD)."""
        head = self.refs.read(self.commit_ref(branch))
        if head is None and branch is not None:
            head = self.refs.read(HEAD)
        return head

    def tensor_writer(
        self,
        parent: Manifest | None,
        cache: BaseCache | None = None,
        pool: ThreadPoolExecutor | None = None,
    ) -> TensorWriter:
        """A TensorWriter on ``pool`` (default: this repo's) that reuses ``parent``'s packed
        tensors and delta-encodes against its chunks (``cache``: the parent's content, when
        in memory). On object storage it takes ``parent``'s objects as stored without asking
        (the caller holds the gc lock shared, so gc keeps them) and writes every other object
        create-only without a HEAD first. Any commit's writer holds the gc lock shared."""
        from .state.writer import TensorWriter

        writer = TensorWriter(
            self.objects,
            pool or self.pool,
            self.config.chunk_size,
            self.config.pack_threshold,
            known_small=parent.packed_locations() if parent else {},
            parent=parent.tensors_by_key() if parent else {},
            cache=cache,
            max_depth=self.delta_max_depth,
        )
        if not self.store.local:  # an existence check is a request: trust what is known
            writer.known_ids = parent.object_ids() if parent else set()
        return writer

    def _write_state(
        self,
        state: Any,
        hint: str | None,
        allow_pickle: bool,
        files: list[FileEntry],
        owned: bool = False,
        pool: ThreadPoolExecutor | None = None,
        defer_deltas: bool = False,
        on_bytes: Callable[[int], None] | None = None,
        on_phase: Callable[[str, int], None] | None = None,
    ) -> str:
        """Write the objects of ``state`` and then its manifest; returns the manifest id."""
        from .state.encode import CommitHooks

        self._drop_deferred_content()  # the last commit's: not for this one to pin
        parent = self.get_manifest(self.get_commit(hint).manifest) if hint else None
        hooks = CommitHooks(allow_pickle, self._put_blob)
        tree = values.encode(state, hooks)
        writer = self.tensor_writer(parent, self.base_cache, pool)
        writer.owned = owned
        writer.defer_deltas = defer_deltas
        writer.on_bytes, writer.on_phase = on_bytes, on_phase
        manifest = Manifest(tree, writer.write(hooks.pending), files)
        self.last_write_stats: WriteStats = writer.stats
        # the objects are durable before the manifest that names them: the writer synced
        # them. The folders of its re-encodings are fsynced by the manifest's sync (or
        # record()'s, where the manifest is stored already) in one round with its own
        mid = self.objects.put_bytes(envelope.KIND_MANIFEST, manifest.to_bytes())
        self._manifests[mid] = manifest
        return mid

    def record(self, c: Commit, branch: str | None = None) -> None:
        """Write commit ``c`` (whose manifest and objects are stored) on ``branch``: under the
        refs lock, take the branch's commit as parent, store ``c``, move the branch by CAS."""
        ref = self.commit_ref(branch)
        with self.refs.locked():
            current = self.refs.read(ref)
            parent = current if current is not None or branch is None else self.refs.read(HEAD)
            c.parents = [parent] if parent else []
            c.id = self.objects.put_bytes(envelope.KIND_COMMIT, c.to_bytes())
            self.store.sync()
            summary = c.message.splitlines()[0] if c.message else ""
            log = f"{'commit' if parent else 'commit (initial)'}: {summary}"
            if ref != HEAD and self.refs.head_target() == ref:  # reflogs before the ref moves
                self.refs.log(HEAD, parent, c.id, c.author, log)
            self.refs.update(ref, c.id, expected=current, message=log)
        self._commits[c.id] = c

    def _put_blob(self, data: bytes) -> str:
        return self.objects.put_bytes(envelope.KIND_BLOB, data)

    # -- checkout --------------------------------------------------------------------------
    def checkout(
        self,
        rev: Revision = HEAD,
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        map_location: str | torch.device | None = None,
        allow_pickle: bool = False,
    ) -> Any:
        """The state committed at ``rev``; with include/exclude globs on key paths, only the
        matching leaves (and only their tensors' objects are read). An ``include`` that matches
        no leaf of the commit raises SelectionError (a NotFoundError) naming the commit and the
        globs; an ``exclude`` that leaves nothing gives ``{}``."""
        oid = self.resolve(rev)
        manifest = self.get_manifest(self.get_commit(oid).manifest)
        inc, exc = _as_list(include), _as_list(exclude)
        if inc is not None:
            match = _select(inc, None)
            if not any(match(p) for p, _ in values.walk_leaves(manifest.tree)):
                raise SelectionError(
                    f"nothing in commit {oid[:12]} ({rev_label(rev)}) matches "
                    f"{_selection_text(inc, None)}"
                )
        return self.materialize(manifest, _select(inc, exc), map_location, allow_pickle)

    def materialize(
        self,
        manifest: Manifest,
        select: Any = None,
        map_location: Any = None,
        allow_pickle: bool = False,
        root: KeyPath = (),
    ) -> Any:
        """The Python value of ``manifest.tree`` (which sits at key path ``root``, named in
        errors): tensors read in parallel and verified; ``select(path)`` filters leaves."""
        from .state.encode import CheckoutHooks
        from .state.reader import TensorReader

        wanted, paths = manifest.selected_tensors(prefix=root, select=select)
        loaded = TensorReader(self.objects, self.pool).read(wanted, lambda i: path_str(paths[i]))
        if map_location is not None:
            loaded = {i: t.to(map_location) for i, t in loaded.items()}

        def load_tensor(i: int, path: KeyPath) -> torch.Tensor:
            return loaded[i]

        def load_blob(oid: str, path: KeyPath) -> bytes:
            return self.objects.read_bytes(oid)

        hooks = CheckoutHooks(load_tensor, load_blob, allow_pickle)
        out = values.decode(manifest.tree, hooks, root, select)
        return {} if out is values.ABSENT else out

    def tensors(self, rev: Revision = HEAD) -> list[TensorInfo]:
        """Every tensor leaf of ``rev``: key path, dtype, shape, bytes, objects and the
        statistics recorded at commit time (``stats``; None when the commit has none)."""
        commit = self.get_commit(self.resolve(rev))
        manifest = self.get_manifest(commit.manifest)
        parent: dict[str, TensorEntry] = {}
        if commit.parents and any(e.stats is not None for e in manifest.tensors):
            pm = self.get_manifest(self.get_commit(commit.parents[0]).manifest)
            parent = pm.tensors_by_key()
        out = []
        for path, node in values.walk_leaves(manifest.tree):
            if isinstance(node, list) and node and node[0] in ("tensor", "ndarray"):
                e = manifest.tensors[int(node[1])]
                k = path_str(path)
                p = parent.get(k)
                same = p is not None and p.content_key() == e.content_key()
                stats = with_change(e.stats, commit.changes.get(k), same)
                out.append(
                    TensorInfo(path, k, e.dtype, e.shape, e.nbytes, e.object_ids(), stats)
                )
        return out

    def load_into(
        self,
        module: torch.nn.Module,
        rev: Revision = HEAD,
        *,
        key: str | Sequence[Any] | None = None,
        strict: bool = True,
        rename: Mapping[str, str] | None = None,
        required: Iterable[str] | None = None,
        map_location: str | torch.device | None = None,
    ) -> LoadReport:
        """Load the state dict at ``key`` (a key path; "model" or ["model"]) of ``rev`` into
        ``module``. Strict: raise LoadError listing missing/unexpected/mismatched keys."""
        from .loading import apply_rename, load_state

        key_path: tuple[Any, ...] = (
            () if key is None else ((key,) if isinstance(key, str) else tuple(key))
        )
        oid = self.resolve(rev)
        manifest = self.get_manifest(self.get_commit(oid).manifest)
        node = manifest.tree
        for k in key_path:
            node = _child(node, k)
            if node is None:
                raise NotFoundError(
                    f"commit {oid[:12]} ({rev_label(rev)}) has no key path "
                    f"{path_str(key_path)!r}{_closest_key(manifest.tree, key_path)}"
                )
        sub = Manifest(node, manifest.tensors)
        state = self.materialize(sub, None, map_location, False, key_path)
        if not isinstance(state, Mapping):
            raise UsageError(
                f"key path {path_str(key_path)!r} of {rev_label(rev)} is not a state dict"
            )
        state = apply_rename({str(k): v for k, v in state.items()}, rename)
        return load_state(
            module,
            state,
            strict=strict,
            required=required,
            source=f"{rev_label(rev)} ({oid[:12]}) key {path_str(key_path)!r}",
        )


# -- bare repositories (a store with no working directory; docs/remotes.md) ------------------
def _root_of(url: str) -> Path:
    """A stand-in working-directory path for a bare repository at ``url`` (never written)."""
    return Path(url).resolve() if not is_url(url) else Path("/") / url.replace("://", "/")


def open_bare(url: str, store: Store) -> Repo:
    """The bare repository in ``store`` (opened from ``url``, a local path or a URL);
    RepoNotFoundError when it holds no config.json."""
    try:
        raw = store.get(CONFIG)
    except FileNotFoundError:
        raise RepoNotFoundError(f"no tensorvcs repository at {url} (no {CONFIG})") from None
    config = RepoConfig.from_bytes(raw, f"{url}/{CONFIG}")
    return Repo(_root_of(url), store, config)


def _init_bare(
    url: str,
    *,
    chunk_size: int | None = None,
    pack_threshold: int | None = None,
    branch: str = "main",
    exist_ok: bool = False,
    **options: Any,
) -> Repo:
    """A new, empty bare repository at ``url`` (Repo.init with a URL); with ``exist_ok``, an
    existing one is opened instead. HEAD is written first, config.json (create-if-absent)
    last: its presence marks a repository."""
    store = open_store(url, **options)
    if store.exists(CONFIG):
        if exist_ok:
            return open_bare(url, store)
        raise UsageError(f"a tensorvcs repository already exists at {url}")
    config = RepoConfig()
    if chunk_size is not None:
        config.chunk_size = chunk_size
    if pack_threshold is not None:
        config.pack_threshold = pack_threshold
    RepoConfig.from_bytes(config.to_bytes(), "init")  # validate the numbers
    store.put(HEAD, [f"ref: {HEADS}{check_ref_name(branch, 'branch')}\n".encode()])
    if not store.put_if_absent(CONFIG, [config.to_bytes()]):
        if exist_ok:  # another process made it meanwhile
            return open_bare(url, store)
        raise UsageError(f"a tensorvcs repository already exists at {url}")
    return Repo(_root_of(url), store, config)


def _child(node: Any, key: Any) -> Any:
    """The value node under ``key`` of a dict node (None if absent or not a dict)."""
    if not (isinstance(node, list) and node and node[0] in ("dict", "odict")):
        return None
    for k, v in node[1]:
        if k == key and type(k) is type(key):
            return v
    return None


def _neg_time(c: Commit) -> float:
    try:
        return -c.datetime.timestamp()
    except ValueError:
        return math.inf
