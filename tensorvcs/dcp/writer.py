"""``StorageWriter``: ``torch.distributed.checkpoint.save`` into a tensorvcs repository.

Every rank writes only its own shards: ``write_data`` resolves each WriteItem through the
planner and hands the tensors (and the bytes items, as uint8 tensors) to the same
TensorWriter ``Repo.commit`` uses — chunked, compressed, content-addressed, delta-encoded
against the same shard of the branch's previous commit — and returns WriteResults whose
``storage_data`` is the tensor entry naming the objects. The coordinator's ``finish`` writes
one manifest (tensor table + tree + the ``dcp`` section, docs/format.md section 10) and one
commit, and moves the branch by compare-and-swap. Nothing is visible before that: a rank
that dies mid-save leaves only unreferenced objects (gc removes them).

Locks: the coordinator holds the repository's gc lock shared from ``set_up_storage_writer``
(before any rank checks which objects exist) until its ref update; every rank also holds it
shared while it writes. gc (which takes it exclusively) therefore never deletes an object an
in-flight save will reference.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter as _DCPStorageWriter
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from ..errors import NotFoundError, UnsupportedValueError, UsageError
from ..format import envelope
from ..format.commit import Commit
from ..format.manifest import Manifest, TensorEntry
from ..refs import default_author
from ..repo import GC_LOCK, Repo, normalize_metrics
from ..state.basecache import BaseCache
from ..state.encode import PendingTensor
from ..state.tensors import check_storable
from ..state.writer import WriteStats
from ._format import build_section, index_key, shard_path

LOCK_TIMEOUT = 3600.0

try:  # torch >= 2.4
    from torch.distributed.checkpoint.metadata import StorageMeta
except ImportError:  # pragma: no cover
    StorageMeta = None  # type: ignore[assignment,misc]


def as_repo(repo: Repo | str | os.PathLike[str]) -> Repo:
    return repo if isinstance(repo, Repo) else Repo.open(repo)


@dataclass(frozen=True)
class StoredItem:
    """``WriteResult.storage_data``: the tensor entry (manifest JSON) holding the item."""

    entry: dict[str, Any]
    rank: int = 0
    stats: dict[str, int] | None = None  # on the first result of each rank: its WriteStats


@dataclass(frozen=True)
class _PlanData:
    """``SavePlan.storage_data`` the coordinator hands every rank: the commit to delta against
    (so all ranks pair their shards with the same parent)."""

    parent: str | None
    save_id: str


@dataclass
class SaveStats:
    """What one save wrote (on the coordinator: summed over every rank)."""

    items: int = 0
    logical_bytes: int = 0
    new_objects: int = 0
    new_stored_bytes: int = 0
    reused_objects: int = 0
    deferred: int = 0  # parent chunks left whole for compact() (defer_deltas)
    per_rank: dict[int, dict[str, int]] = field(default_factory=dict)


def _stats_dict(s: WriteStats, items: int) -> dict[str, int]:
    return {
        "items": items,
        "logical_bytes": s.logical_bytes,
        "new_objects": s.new_objects,
        "new_stored_bytes": s.new_stored_bytes,
        "reused_objects": s.reused_objects,
        "deferred": len(s.deferred),
    }


def parent_manifest(repo: Repo, parent: str | None) -> Manifest | None:
    return repo.get_manifest(repo.get_commit(parent).manifest) if parent else None


def bytes_tensor(data: Any) -> torch.Tensor:
    """A bytes item (BytesIO, bytes, bytearray, memoryview) as a fresh 1-D uint8 tensor."""
    buf = data.getbuffer() if hasattr(data, "getbuffer") else memoryview(data)
    arr = np.frombuffer(buf, dtype=np.uint8).copy()
    return torch.from_numpy(arr)


def shard_tensor(data: Any, fqn: str) -> torch.Tensor:
    """The plain tensor to store for a resolved tensor item (a DTensor's local shard)."""
    if not isinstance(data, torch.Tensor):
        raise UnsupportedValueError(
            f"DCP item {fqn!r} resolved to a {type(data).__name__}, not a tensor", fqn
        )
    t = data
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.4
        from torch.distributed._tensor import DTensor
    if isinstance(t, DTensor):
        t = t.to_local()
    t = t.detach()
    if isinstance(t, torch.nn.Parameter):
        t = t.data
    check_storable(t, fqn)
    return t


def pending_for(item: WriteItem, data: Any) -> PendingTensor:
    fqn = item.index.fqn
    if item.type == WriteItemType.BYTE_IO:
        return PendingTensor(bytes_tensor(data), (fqn,), 1)
    t = shard_tensor(data, fqn)
    td = item.tensor_data
    if td is None:  # pragma: no cover - DCP always sets it for tensors
        path: tuple[Any, ...] = (fqn,)
    else:
        path = shard_path(fqn, list(td.chunk.offsets), list(td.size), list(td.chunk.sizes))
        if list(t.shape) != list(td.chunk.sizes):
            raise UnsupportedValueError(
                f"DCP item {fqn!r}: resolved tensor is {list(t.shape)}, the plan says "
                f"{list(td.chunk.sizes)}",
                fqn,
            )
    width = t.element_size() // (2 if t.is_complex() else 1)
    return PendingTensor(t, path, width)


def commit_manifest(
    repo: Repo,
    metadata: Metadata,
    entries: list[TensorEntry],
    located: dict[tuple[str, tuple[int, ...] | None], int],
    *,
    branch: str | None,
    message: str,
    step: int | None,
    metrics: Mapping[str, Any] | None,
    metadata_fields: Mapping[str, Any] | None,
    author: str | None,
    known: set[str] | None = None,
) -> Commit:
    """Write the manifest of a DCP checkpoint whose objects are all stored, then the commit,
    then move the branch (compare-and-swap under the refs lock). The caller holds the gc lock
    shared. Every object the ranks reported is checked to be in the store, except those in
    ``known`` (the objects of a commit the gc lock keeps: the branch's current one)."""
    if step is not None and type(step) is not int:
        raise UsageError(f"step must be an int, not {type(step).__name__}")
    metrics_d = normalize_metrics(metrics)
    section, tree = build_section(metadata, located, entries)
    manifest = Manifest(tree, entries, dcp=section)
    ids = {o for e in entries for o in e.object_ids()} - (known or set())
    missing = sorted(oid for oid in ids if not repo.objects.has(oid))
    if missing:
        raise UnsupportedValueError(
            f"{len(missing)} object(s) a rank reported are not in the store (first: "
            f"{missing[0]}); not committing"
        )
    repo.store.sync()
    mid = repo.objects.put_bytes(envelope.KIND_MANIFEST, manifest.to_bytes())
    c = Commit(
        manifest=mid,
        parents=[],
        message=message,
        author=author or default_author(),
        step=step,
        metrics=metrics_d,
        metadata=dict(metadata_fields or {}),
    )
    record_commit(repo, c, branch)
    return c


def record_commit(repo: Repo, c: Commit, branch: str | None) -> None:
    """Take the branch's current commit as parent, write ``c``, move the branch by CAS."""
    repo.record(c, branch)


class StorageWriter(_DCPStorageWriter):
    """Save a DCP checkpoint as one tensorvcs commit.

    ::

        writer = tv.dcp.StorageWriter(repo, branch="run1", message="step 100", step=100)
        dcp.save({"model": model_sd, "optim": optim_sd}, storage_writer=writer)
        writer.last_commit        # on the coordinator (rank 0): the Commit
        writer.last_stats         # SaveStats: bytes written (summed over ranks on rank 0)

    ``repo`` is a Repo or a path (each rank opens it in its own process). ``message``,
    ``step``, ``metrics`` and ``metadata`` go into the commit; set them (attributes of the
    same names) before each save when reusing the writer. A ``checkpoint_id`` passed to
    ``dcp.save`` is kept in the commit's metadata (``checkpoint_id``) and is the default
    message. The writer keeps the content of the shards it wrote last in memory (up to the
    repository's ``delta_cache_bytes``) so the next save deltas against them without reading.

    ``defer_deltas``: leave the re-encoding of the previous checkpoint's changed chunks as
    deltas (reverse deltas, state/writer.py) to ``tv.compact(repo)`` / ``tvcs compact``
    instead of doing it in the save. The default, None, defers on object storage
    (``s3://``...), where the re-encoding uploads each changed chunk a second time (a save
    that moves every tensor would send ~1.6x the state), and not on a local directory. The
    save is complete either way; the older version only stays whole until compaction.
    """

    def __init__(
        self,
        repo: Repo | str | os.PathLike[str],
        *,
        branch: str | None = None,
        message: str = "",
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        author: str | None = None,
        cache_bytes: int | None = None,
        defer_deltas: bool | None = None,
    ) -> None:
        super().__init__()
        self.repo = as_repo(repo)
        # None: defer where the repository is on object storage (see the class docstring)
        self.defer_deltas = not self.repo.store.local if defer_deltas is None else defer_deltas
        self.branch = branch
        self.message = message
        self.step = step
        self.metrics = dict(metrics or {})
        self.metadata = dict(metadata or {})
        self.author = author
        if cache_bytes is None:
            cache_bytes = self.repo.config.settings.get("delta_cache_bytes")
        self._cache_bytes = cache_bytes
        self._cache = BaseCache(cache_bytes)
        self._gc_hold: AbstractContextManager[None] | None = None
        self.checkpoint_id: str | None = None
        self.save_id = str(uuid.uuid4())
        self.is_coordinator = False
        self.rank = 0
        self.last_commit: Commit | None = None
        self.last_stats: SaveStats | None = None

    # -- pickling (dcp.async_save with a process executor sends the writer to a subprocess) --
    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["repo"] = str(self.repo.root)
        d["_cache"] = None
        d["_gc_hold"] = None
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self.repo = Repo.open(d["repo"])
        self._cache = BaseCache(self._cache_bytes)

    # -- the DCP protocol ------------------------------------------------------------------
    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        self.checkpoint_id = None if checkpoint_id is None else str(checkpoint_id)
        self.save_id = str(uuid.uuid4())

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("use_collectives", True) is False:
            raise UsageError(
                "tv.dcp.StorageWriter needs dcp.save(use_collectives=True): one commit is "
                "written for all ranks by the coordinator"
            )
        self.is_coordinator = is_coordinator
        self.rank = int(kwargs.get("rank") or 0)
        self._release()  # a previous save that failed on another rank never reached finish
        if is_coordinator:
            cm = self.repo.store.lock(GC_LOCK, shared=True, timeout=LOCK_TIMEOUT)
            cm.__enter__()
            self._gc_hold = cm

    def _release(self) -> None:
        hold, self._gc_hold = self._gc_hold, None
        if hold is not None:
            hold.__exit__(None, None, None)

    def close(self) -> None:
        """Release what a failed save may still hold (the coordinator's gc lock)."""
        self._release()

    def storage_meta(self) -> Any:
        if StorageMeta is None:  # pragma: no cover
            return None
        return StorageMeta(checkpoint_id=self.checkpoint_id, save_id=self.save_id)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        return plan

    def prepare_global_plan(self, plans: list[SavePlan]) -> list[SavePlan]:
        data = _PlanData(self.repo.branch_head(self.branch), self.save_id)
        return [dataclasses.replace(p, storage_data=data) for p in plans]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future[list[WriteResult]]:
        try:
            results = self._write(plan, planner)
        except BaseException:
            self._cache.discard()
            if self.is_coordinator:
                self._release()
            raise
        self._cache.promote()  # content-addressed: right whether or not the commit lands
        fut: Future[list[WriteResult]] = Future()
        fut.set_result(results)
        return fut

    def _write(self, plan: SavePlan, planner: SavePlanner) -> list[WriteResult]:
        data = plan.storage_data
        parent = data.parent if isinstance(data, _PlanData) else self.repo.branch_head(self.branch)
        with self.repo.store.lock(GC_LOCK, shared=True, timeout=LOCK_TIMEOUT):
            try:
                base = parent_manifest(self.repo, parent)
            except NotFoundError:  # a stale plan (DCP's plan caching) naming a dropped commit
                base = parent_manifest(self.repo, self.repo.branch_head(self.branch))
            writer = self.repo.tensor_writer(base, self._cache)
            writer.defer_deltas = self.defer_deltas
            pending = [pending_for(item, planner.resolve_data(item)) for item in plan.items]
            entries = writer.write(pending)
            self.repo.store.sync()  # this rank's objects durable before the coordinator commits
        stats = _stats_dict(writer.stats, len(entries))
        self.last_stats = SaveStats(
            items=len(entries),
            logical_bytes=stats["logical_bytes"],
            new_objects=stats["new_objects"],
            new_stored_bytes=stats["new_stored_bytes"],
            reused_objects=stats["reused_objects"],
            deferred=stats["deferred"],
            per_rank={self.rank: stats},
        )
        return [
            WriteResult(
                index=item.index,
                size_in_bytes=e.nbytes,
                storage_data=StoredItem(e.to_json(), self.rank, stats if k == 0 else None),
            )
            for k, (item, e) in enumerate(zip(plan.items, entries, strict=True))
        ]

    def finish(self, metadata: Metadata, results: list[list[WriteResult]]) -> None:
        try:
            entries: list[TensorEntry] = []
            located: dict[tuple[str, tuple[int, ...] | None], int] = {}
            total = SaveStats()
            for rank_results in results:
                for wr in rank_results:
                    sd = wr.storage_data
                    if not isinstance(sd, StoredItem):
                        raise UsageError(f"write result for {wr.index.fqn!r} is not tensorvcs's")
                    key = index_key(wr.index)
                    if key not in located:  # a planner that wrote an item twice: keep one
                        located[key] = len(entries)
                        entries.append(TensorEntry.from_json(sd.entry, "DCP write result"))
                    if sd.stats is not None:
                        total.per_rank[sd.rank] = sd.stats
            for s in total.per_rank.values():
                total.items += s["items"]
                total.logical_bytes += s["logical_bytes"]
                total.new_objects += s["new_objects"]
                total.new_stored_bytes += s["new_stored_bytes"]
                total.reused_objects += s["reused_objects"]
                total.deferred += s.get("deferred", 0)
            fields = dict(self.metadata)
            if self.checkpoint_id is not None:
                fields.setdefault("checkpoint_id", self.checkpoint_id)
            message = self.message or (
                f"dcp.save {self.checkpoint_id}" if self.checkpoint_id else "dcp.save"
            )
            head = parent_manifest(self.repo, self.repo.branch_head(self.branch))
            self.last_commit = commit_manifest(
                self.repo,
                metadata,
                entries,
                located,
                branch=self.branch,
                message=message,
                step=self.step,
                metrics=self.metrics,
                metadata_fields=fields,
                author=self.author,
                known=head.object_ids() if head is not None else None,
            )
            self.last_stats = total
        finally:
            self._release()

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False  # never picked automatically: pass storage_writer=tv.dcp.StorageWriter(...)
