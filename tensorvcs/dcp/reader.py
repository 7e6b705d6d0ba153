"""``StorageReader``: ``torch.distributed.checkpoint.load`` from a tensorvcs commit.

``read_metadata`` gives DCP the metadata of the commit — from its ``dcp`` section, or, for a
commit made by ``Repo.commit`` (a consolidated state), synthesised: every tensor one whole
chunk — so DCP's planner reshards as it does for its own checkpoints (a checkpoint saved by
2 ranks loads on 1 or 3). ``read_data`` serves each ReadItem (a box at ``storage_offsets`` of
``lengths`` inside one stored shard) by decoding only the chunk objects that hold the box's
bytes, straight into one buffer per shard, and copying the box into the planner's tensor.

``load(state_dict, repo, rev)`` wraps ``dcp.load`` with the report ``Repo.load_into`` gives:
missing / unexpected / shape-mismatched keys, strict by default.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future as _PoolFuture
from typing import Any

import numpy as np
import torch
from torch.distributed.checkpoint.metadata import (
    Metadata,
    MetadataIndex,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader as _DCPStorageReader
from torch.futures import Future

from ..errors import CorruptObjectError, LoadError, NotFoundError, UsageError
from ..format.manifest import Manifest, TensorEntry
from ..loading import LoadReport
from ..refs import HEAD
from ..repo import Repo
from ..state.tensors import dtype_from_name
from ._format import (
    Parsed,
    Source,
    index_key,
    materialize,
    parse_section,
    select_keys,
    synthesize,
)
from .writer import as_repo


def _as_list(globs: str | Sequence[str] | None) -> list[str] | None:
    if globs is None:
        return None
    return [globs] if isinstance(globs, str) else list(globs)


def _contiguous_strides(shape: Sequence[int]) -> list[int]:
    strides = [1] * len(shape)
    for d in range(len(shape) - 2, -1, -1):
        strides[d] = strides[d + 1] * max(1, int(shape[d + 1]))
    return strides


class StorageReader(_DCPStorageReader):
    """Load a DCP state from commit ``rev`` of ``repo`` (a Repo or a path).

    ``include``/``exclude``: fnmatch globs on DCP's flattened keys (``"model.*"``); the
    checkpoint then looks as if it held only the keys they let through (use with
    ``DefaultLoadPlanner(allow_partial_load=True)``, or ``tv.dcp.load(..., strict=False)``).
    The revision is resolved once per ``read_metadata``; on several ranks the coordinator's
    commit is checked against every rank's, so a branch that moves mid-load raises instead of
    mixing two commits (pass a commit id or a tag to avoid it).
    """

    def __init__(
        self,
        repo: Repo | str | os.PathLike[str],
        rev: str = HEAD,
        *,
        include: str | Sequence[str] | None = None,
        exclude: str | Sequence[str] | None = None,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__()
        self.repo = as_repo(repo)
        self.rev = rev
        self.include = _as_list(include)
        self.exclude = _as_list(exclude)
        self.allow_pickle = allow_pickle
        self.commit_id: str | None = None
        self.manifest: Manifest | None = None
        self._parsed: Parsed | None = None
        self._keys: set[str] = set()
        self.is_coordinator = False
        self.bytes_read = 0  # stored bytes of the objects this reader decoded
        self._packs: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["repo"] = str(self.repo.root)
        return d

    def __setstate__(self, d: dict[str, Any]) -> None:
        self.__dict__.update(d)
        self.repo = Repo.open(d["repo"])

    # -- metadata --------------------------------------------------------------------------
    def _load(self) -> Parsed:
        oid = self.repo.resolve(self.rev)
        if self._parsed is None or oid != self.commit_id:
            commit = self.repo.get_commit(oid)
            manifest = self.repo.get_manifest(commit.manifest)
            if manifest.dcp is not None:
                parsed = parse_section(manifest, commit.manifest)
            else:
                parsed = synthesize(manifest, commit.manifest)
            self.commit_id, self.manifest, self._parsed = oid, manifest, parsed
            self._keys = set(select_keys(parsed.metadata, self.include, self.exclude))
        return self._parsed

    @property
    def is_dcp_commit(self) -> bool:
        """True when the commit was written through DCP (it has a dcp section)."""
        return not self._load().synthesized

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        parsed = self._load()
        md = parsed.metadata
        sdm = {k: v for k, v in md.state_dict_metadata.items() if k in self._keys}
        storage = md.storage_data or {}
        out = dataclasses.replace(
            md,
            state_dict_metadata=sdm,
            storage_data={k: v for k, v in storage.items() if k.fqn in self._keys},
        )
        sm = getattr(out, "storage_meta", None)
        if sm is not None:
            out.storage_meta = dataclasses.replace(sm)
        return out

    def reset(self, checkpoint_id: str | os.PathLike[str] | None = None) -> None:
        if checkpoint_id is not None:
            self.rev = str(checkpoint_id)
            self._parsed = None

    def set_up_storage_reader(
        self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any
    ) -> None:
        self.is_coordinator = is_coordinator
        if self._parsed is None:
            self._load()

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        return plan

    def prepare_global_plan(self, plans: list[LoadPlan]) -> list[LoadPlan]:
        return [dataclasses.replace(p, storage_data=self.commit_id) for p in plans]

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: str | os.PathLike[str]) -> bool:
        return False

    # -- data ------------------------------------------------------------------------------
    def _source(self, index: MetadataIndex) -> Source:
        assert self._parsed is not None
        src = self._parsed.sources.get(index_key(index))
        if src is None or index.fqn not in self._keys:
            raise NotFoundError(
                f"commit {self.commit_id}: DCP storage item {index.fqn!r} at {index.offset} "
                "is not in this checkpoint"
            )
        return src

    def read_entry(self, i: int) -> torch.Tensor:
        """The whole tensor of manifest entry ``i``."""
        assert self.manifest is not None
        e = self.manifest.tensors[i]
        dtype = dtype_from_name(e.dtype)
        buf = self._fetch(e, [(0, e.nbytes)])
        if buf is None:
            return torch.empty(e.shape, dtype=dtype)
        return torch.from_numpy(buf).view(dtype).reshape(e.shape)

    def item_bytes(self, src: Source) -> bytes:
        """The bytes of a bytes item (for a synthesized one: torch.save of its value)."""
        if src.kind == "bytes":
            return self.read_entry(src.entry).numpy().tobytes()
        assert self._parsed is not None and self.manifest is not None
        manifest = self.manifest

        def decode_node(node: Any, path: Any) -> Any:
            sub = Manifest(node, manifest.tensors)
            return self.repo.materialize(sub, allow_pickle=self.allow_pickle)

        value = materialize(src.value, decode_node, self.read_entry, self._parsed.meta_ids or {})
        buf = io.BytesIO()
        torch.save(value, buf)
        return buf.getvalue()

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future[None]:
        self._load()
        if plan.storage_data is not None and plan.storage_data != self.commit_id:
            raise UsageError(
                f"the coordinator planned this load from commit {plan.storage_data}, but "
                f"{self.rev!r} is {self.commit_id} on this rank (the branch moved during the "
                "load): load a commit id or a tag"
            )
        by_entry: dict[int, list[ReadItem]] = {}
        try:
            for req in plan.items:
                src = self._source(req.storage_index)
                if req.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(req, io.BytesIO(self.item_bytes(src)))
                else:
                    by_entry.setdefault(src.entry, []).append(req)
            for i, reqs in by_entry.items():
                self._serve(i, reqs, planner)
        finally:
            self._packs.clear()
        fut: Future[None] = Future()
        fut.set_result(None)
        return fut

    def _serve(self, i: int, reqs: list[ReadItem], planner: LoadPlanner) -> None:
        """Copy every box of ``reqs`` out of entry ``i``, decoding only the chunks they need."""
        assert self.manifest is not None
        e: TensorEntry = self.manifest.tensors[i]
        dtype = dtype_from_name(e.dtype)
        es = torch.empty((), dtype=dtype).element_size()
        strides = _contiguous_strides(e.shape)
        spans: list[tuple[int, int] | None] = []
        for req in reqs:
            offs = [int(o) for o in req.storage_offsets]
            lens = [int(n) for n in req.lengths]
            if len(offs) != len(e.shape) or any(
                o < 0 or o + n > s for o, n, s in zip(offs, lens, e.shape, strict=True)
            ):
                raise UsageError(
                    f"DCP read of {req.storage_index.fqn!r}: box {offs}+{lens} is outside the "
                    f"stored shard {e.shape}"
                )
            if any(n == 0 for n in lens):
                spans.append(None)
                continue
            first = sum(o * s for o, s in zip(offs, strides, strict=True))
            last = sum((o + n - 1) * s for o, n, s in zip(offs, lens, strides, strict=True))
            spans.append((first, last + 1))
        buf = self._fetch(e, [(a * es, b * es) for a, b in (s for s in spans if s)])
        flat = torch.from_numpy(buf).view(dtype) if buf is not None else None
        for req, span in zip(reqs, spans, strict=True):
            target = planner.resolve_tensor(req).detach()
            if span is not None:
                assert flat is not None
                src = torch.as_strided(
                    flat,
                    [int(n) for n in req.lengths],
                    strides,
                    sum(int(o) * s for o, s in zip(req.storage_offsets, strides, strict=True)),
                )
                if target.size() != src.size():
                    raise UsageError(
                        f"DCP read of {req.storage_index.fqn!r}: target {list(target.size())} "
                        f"vs stored box {list(src.size())}"
                    )
                target.copy_(src)
            planner.commit_tensor(req, target)

    def _fetch(self, e: TensorEntry, byte_spans: list[tuple[int, int]]) -> np.ndarray | None:
        """A uint8 buffer of the entry's size in which (at least) ``byte_spans`` are filled."""
        if not byte_spans or e.nbytes == 0:
            return None
        objects = self.repo.objects
        before = objects.bytes_read
        if e.pack is not None:
            content = self._packs.get(e.pack)
            if content is None:  # packs hold many small entries: decoded once per read_data
                _, content = objects.read(e.pack)
                self._packs[e.pack] = content
            if e.offset + e.nbytes > content.nbytes:
                raise CorruptObjectError(
                    f"pack {e.pack} is {content.nbytes} bytes; an entry needs "
                    f"{e.offset}+{e.nbytes}",
                    e.pack,
                )
            buf = np.array(content[e.offset : e.offset + e.nbytes], copy=True)
        else:
            # Pages of this buffer that no needed chunk touches are never written, so they
            # take no memory: a rank reading 1/3 of a shard holds about 1/3 of it.
            buf = np.empty(e.nbytes, dtype=np.uint8)
            jobs: list[_PoolFuture[Any]] = []
            off = 0
            for oid, length in e.chunks or []:
                lo, hi = off, off + length
                if any(a < hi and b > lo for a, b in byte_spans):
                    jobs.append(self.repo.pool.submit(objects.read_into, oid, buf[lo:hi]))
                off = hi
            for j in jobs:
                j.result()
        self.bytes_read += objects.bytes_read - before
        return buf


def _flat_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict
    from torch.distributed.checkpoint.stateful import Stateful

    sd = {k: (v.state_dict() if isinstance(v, Stateful) else v) for k, v in state_dict.items()}
    flat, _ = flatten_state_dict(sd)
    return flat


def load(
    state_dict: dict[str, Any],
    repo: Repo | str | os.PathLike[str],
    rev: str = HEAD,
    *,
    strict: bool = True,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    required: Sequence[str] | None = None,
    planner: LoadPlanner | None = None,
    process_group: Any = None,
    no_dist: bool = False,
) -> LoadReport:
    """``dcp.load(state_dict, ...)`` from ``rev``, with ``Repo.load_into``'s report.

    Keys are DCP's flattened keys (``"model.layer.weight"``). With include/exclude globs only
    the state's keys they let through are considered (the others are left untouched and not
    reported). ``missing``: in the state, not in the checkpoint; ``unexpected``: in the
    checkpoint, not in the state; ``mismatched``: tensors of another global shape. Strict
    (default): any of those raises LoadError before anything is loaded. Not strict: what
    matches is loaded. ``required`` globs must each match a loaded key. Call it on every rank
    (it is collective, as dcp.load is).
    """
    import fnmatch

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    reader = StorageReader(repo, rev, include=include, exclude=exclude)
    md = reader.read_metadata()
    inc, exc = _as_list(include), _as_list(exclude) or []

    def in_scope(k: str) -> bool:
        if inc is not None and not any(fnmatch.fnmatchcase(k, g) for g in inc):
            return False
        return not any(fnmatch.fnmatchcase(k, g) for g in exc)

    flat = {k: v for k, v in _flat_keys(state_dict).items() if in_scope(k)}
    report = LoadReport()
    have = md.state_dict_metadata
    report.unexpected = [k for k in have if k not in flat]
    report.missing = [k for k in flat if k not in have]
    for k, v in flat.items():
        m = have.get(k)
        if (
            isinstance(m, TensorStorageMetadata)
            and hasattr(v, "size")
            and tuple(m.size) != tuple(v.size())
        ):
            report.mismatched.append((k, tuple(m.size), tuple(v.size())))
    source = f"{rev} ({reader.commit_id[:12] if reader.commit_id else '?'})"
    if strict and not report.ok:
        raise LoadError(f"strict DCP load of {source} failed: {report.describe()}")
    bad = {k for k, _, _ in report.mismatched}
    report.loaded = [k for k in flat if k in have and k not in bad]
    for pattern in required or []:
        if not any(fnmatch.fnmatchcase(k, pattern) for k in report.loaded):
            raise LoadError(
                f"DCP load of {source}: required pattern {pattern!r} matched no loaded key "
                f"({report.describe()})"
            )
    reader._keys -= bad
    dcp.load(
        state_dict,
        storage_reader=reader,
        planner=planner or DefaultLoadPlanner(allow_partial_load=True),
        process_group=process_group,
        no_dist=no_dist,
    )
    return report
