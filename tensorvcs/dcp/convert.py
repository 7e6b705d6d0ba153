"""Conversions between tensorvcs commits, DCP directories and consolidated files.

- ``import_dcp(repo, dir)``: a directory written by DCP's FileSystemWriter → one commit, shard
  layout kept (the same manifest ``StorageWriter`` writes).
- ``export_dcp(repo, rev, dir)``: a commit (DCP or not) → a directory that plain
  ``dcp.load(..., storage_reader=FileSystemReader(dir))`` (or ``checkpoint_id=dir``) loads.
- ``load_state(repo, rev)``: the consolidated state of a commit (DCP shards assembled, nested
  keys rebuilt: what ``dcp_to_torch_save`` produces); ``export_torch_save(repo, rev, path)``
  writes it to a ``.pt`` (or ``.safetensors``) file.
- ``import_torch_save(repo, path)``: a consolidated ``.pt``/``.safetensors`` file → a commit;
  ``tv.dcp.StorageReader`` loads such a commit into a sharded run directly (resharding it).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import (
    LoadItemType,
    LoadPlan,
    LoadPlanner,
    ReadItem,
    SavePlan,
    SavePlanner,
    TensorWriteData,
    WriteItem,
    WriteItemType,
)

from ..errors import UnsupportedValueError
from ..format.commit import Commit
from ..format.manifest import TensorEntry
from ..refs import HEAD
from ..repo import GC_LOCK, Repo
from ..state.encode import PendingTensor
from ._format import index_key, shard_path
from .reader import StorageReader
from .writer import (
    LOCK_TIMEOUT,
    SaveStats,
    as_repo,
    bytes_tensor,
    commit_manifest,
    parent_manifest,
    shard_tensor,
)

IMPORT_BATCH_BYTES = 256 << 20


# -- DCP directory → commit ----------------------------------------------------------------------
class _Capture(LoadPlanner):
    """A LoadPlanner that takes every stored item as is (no state dict): tensors into fresh
    tensors of the item's size, bytes items as their raw bytes (never unpickled)."""

    def __init__(self, md: Metadata) -> None:
        self.md = md
        self.got: dict[tuple[str, tuple[int, ...] | None], Any] = {}

    def set_up_planner(self, state_dict: Any, metadata: Any = None, is_coordinator: bool = False):
        pass

    def create_local_plan(self) -> LoadPlan:
        return LoadPlan([])

    def create_global_plan(self, global_plan: list[LoadPlan]) -> list[LoadPlan]:
        return global_plan

    def finish_plan(self, central_plan: LoadPlan) -> LoadPlan:
        return central_plan

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        self.got[index_key(read_item.storage_index)] = value.read()

    def resolve_tensor(self, read_item: ReadItem) -> torch.Tensor:
        sm = self.md.state_dict_metadata[read_item.storage_index.fqn]
        assert isinstance(sm, TensorStorageMetadata)
        return torch.empty(read_item.lengths, dtype=sm.properties.dtype)

    def commit_tensor(self, read_item: ReadItem, tensor: torch.Tensor) -> None:
        self.got[index_key(read_item.storage_index)] = tensor


def _whole_items(md: Metadata) -> list[tuple[ReadItem, int]]:
    """One ReadItem per stored item (each shard whole), with its size in bytes."""
    out = []
    for fqn, sm in md.state_dict_metadata.items():
        if isinstance(sm, BytesStorageMetadata):
            idx = MetadataIndex(fqn)
            z = torch.Size([0])
            out.append((ReadItem(LoadItemType.BYTE_IO, idx, z, idx, z, z), 0))
            continue
        assert isinstance(sm, TensorStorageMetadata)
        es = torch.empty((), dtype=sm.properties.dtype).element_size()
        for k, ch in enumerate(sm.chunks):
            idx = MetadataIndex(fqn, ch.offsets, k)
            zeros = torch.Size([0] * len(ch.sizes))
            n = es
            for s in ch.sizes:
                n *= int(s)
            out.append((ReadItem(LoadItemType.TENSOR, idx, zeros, idx, zeros, ch.sizes), n))
    return out


def import_dcp(
    repo: Repo | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    message: str | None = None,
    branch: str | None = None,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    author: str | None = None,
) -> Commit:
    """Commit the DCP checkpoint in directory ``path`` (FileSystemWriter's layout), keeping
    its shards, deduplicated and delta-encoded against the branch's last commit.

    DCP's ``.metadata`` file is a pickle and is unpickled here, as DCP itself does: import only
    directories you trust. Tensor data is read with ``torch.load(weights_only=True)``; bytes
    items are stored as they are, never unpickled. Reads at most ~256 MiB at a time.
    """
    from torch.distributed.checkpoint import FileSystemReader

    r = as_repo(repo)
    fs = FileSystemReader(str(path))
    md = fs.read_metadata()
    fs.set_up_storage_reader(md, True)
    cap = _Capture(md)
    entries: list[TensorEntry] = []
    located: dict[tuple[str, tuple[int, ...] | None], int] = {}
    with r.store.lock(GC_LOCK, shared=True, timeout=LOCK_TIMEOUT):
        parent = r.branch_head(branch)
        writer = r.tensor_writer(parent_manifest(r, parent))
        batch: list[ReadItem] = []
        size = 0

        def flush() -> None:
            nonlocal batch, size
            if not batch:
                return
            cap.got.clear()
            fs.read_data(LoadPlan(batch), cap).wait()
            pending = []
            for req in batch:
                key = index_key(req.storage_index)
                data = cap.got[key]
                if req.type == LoadItemType.BYTE_IO:
                    pending.append(PendingTensor(bytes_tensor(data), (key[0],), 1))
                else:
                    sm = md.state_dict_metadata[key[0]]
                    assert isinstance(sm, TensorStorageMetadata)
                    t = shard_tensor(data, key[0])
                    p = shard_path(key[0], list(key[1] or ()), list(sm.size), list(t.shape))
                    pending.append(
                        PendingTensor(t, p, t.element_size() // (2 if t.is_complex() else 1))
                    )
            for req, e in zip(batch, writer.write(pending), strict=True):
                located[index_key(req.storage_index)] = len(entries)
                entries.append(e)
            batch, size = [], 0

        for req, n in _whole_items(md):
            if size + n > IMPORT_BATCH_BYTES:
                flush()
            batch.append(req)
            size += n
        flush()
        r.store.sync()
        fields = {"imported_from": str(Path(path).resolve()), **dict(metadata or {})}
        commit = commit_manifest(
            r,
            md,
            entries,
            located,
            branch=branch,
            message=message if message is not None else f"import DCP checkpoint {Path(path).name}",
            step=step,
            metrics=metrics,
            metadata_fields=fields,
            author=author,
        )
    r.last_write_stats = writer.stats
    return commit


# -- commit → DCP directory ----------------------------------------------------------------------
class _ReplayPlanner(SavePlanner):
    """A SavePlanner that writes the stored items of a commit as they are (same shards, same
    planner_data), reading each one from the repository only when the writer asks for it."""

    def __init__(self, reader: StorageReader) -> None:
        self.reader = reader
        self.md = reader.read_metadata()

    def set_up_planner(
        self, state_dict: Any = None, storage_meta: Any = None, is_coordinator: bool = False
    ) -> None:
        pass

    def create_local_plan(self) -> SavePlan:
        items = []
        for fqn, sm in self.md.state_dict_metadata.items():
            if isinstance(sm, BytesStorageMetadata):
                items.append(WriteItem(index=MetadataIndex(fqn), type=WriteItemType.BYTE_IO))
                continue
            assert isinstance(sm, TensorStorageMetadata)
            for ch in sm.chunks:
                whole = list(ch.sizes) == list(sm.size) and not any(ch.offsets)
                items.append(
                    WriteItem(
                        index=MetadataIndex(fqn, ch.offsets),
                        type=WriteItemType.TENSOR if whole else WriteItemType.SHARD,
                        tensor_data=TensorWriteData(
                            chunk=ch, properties=sm.properties, size=sm.size
                        ),
                    )
                )
        return SavePlan(items)

    def create_global_plan(self, all_plans: list[SavePlan]) -> tuple[list[SavePlan], Metadata]:
        from torch.distributed.checkpoint.default_planner import create_default_global_save_plan

        plans, md = create_default_global_save_plan(all_plans)
        md.planner_data = self.md.planner_data
        return plans, md

    def finish_plan(self, new_plan: SavePlan) -> SavePlan:
        return new_plan

    def resolve_data(self, write_item: WriteItem) -> torch.Tensor | io.BytesIO:
        src = self.reader._source(write_item.index)
        if write_item.type == WriteItemType.BYTE_IO:
            return io.BytesIO(self.reader.item_bytes(src))
        return self.reader.read_entry(src.entry)


def export_dcp(
    repo: Repo | str | os.PathLike[str],
    rev: str,
    path: str | os.PathLike[str],
    *,
    include: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
) -> Metadata:
    """Write commit ``rev`` as a DCP directory (FileSystemWriter's format) at ``path``.

    A commit written through DCP keeps its shards and planner data; any other commit is
    written as its consolidated state (every tensor one chunk, other values as DCP bytes
    items), loadable into any sharding. Runs in this process only (no collectives)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    reader = StorageReader(repo, rev, include=include, exclude=exclude)
    planner = _ReplayPlanner(reader)
    Path(path).mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():  # "torch.distributed is disabled…": no_dist on purpose
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            return dcp.save(
                {}, storage_writer=FileSystemWriter(str(path)), planner=planner, no_dist=True
            )
    finally:
        reader._packs.clear()


# -- consolidated states -------------------------------------------------------------------------
def load_state(
    repo: Repo | str | os.PathLike[str],
    rev: str = HEAD,
    *,
    keys: Sequence[str] | None = None,
    weights_only: bool = True,
) -> dict[str, Any]:
    """The consolidated state of commit ``rev``, in this process (like ``dcp_to_torch_save``
    without the file): DCP shards assembled into whole tensors, nested keys rebuilt from the
    planner data. ``keys``: only these top-level or flattened keys.

    A commit not written through DCP is checked out as is. DCP bytes items (non-tensor values,
    which DCP stores as torch.save pickles) are read with ``torch.load(weights_only=True)``
    unless ``weights_only=False`` (trusted checkpoints only: that runs arbitrary pickles)."""
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner

    r = as_repo(repo)
    reader = StorageReader(r, rev)
    if not reader.is_dcp_commit:
        state = r.checkout(reader.commit_id or rev)
        if keys is not None:
            state = {k: v for k, v in state.items() if k in set(keys)}
        return state

    class _Planner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
            from torch.distributed.checkpoint._nested_dict import set_element

            obj = torch.load(value, weights_only=weights_only)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    sd: dict[str, Any] = {}
    _dcp_load(sd, reader, _Planner(keys=set(keys) if keys is not None else None))
    return sd


def _dcp_load(state_dict: dict[str, Any], reader: StorageReader, planner: Any) -> None:
    """DCP's load into ``state_dict``, in this process (no process group)."""
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        _load_state_dict(state_dict, storage_reader=reader, planner=planner, no_dist=True)


def _load_one(reader: StorageReader, key: str, meta: Any) -> Any:
    """The bytes of the whole tensor ``key`` of a DCP commit, assembled from its shards
    alone."""
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    t = torch.empty(meta.size, dtype=meta.properties.dtype)
    _dcp_load({key: t}, reader, DefaultLoadPlanner(flatten_state_dict=False))
    return t.reshape(-1).view(torch.uint8).numpy()


def _skeleton(
    reader: StorageReader, md: Metadata, weights_only: bool
) -> tuple[dict[str, Any], dict[int, str]]:
    """The state ``load_state`` returns, laid out by DCP's own empty-state planner with its
    tensors allocated but never touched, and its non-tensor values read (as load_state reads
    them); and {storage of each tensor: its DCP key}."""
    from torch.distributed.checkpoint._nested_dict import set_element
    from torch.distributed.checkpoint.default_planner import (
        DefaultLoadPlanner,
        _EmptyStateDictLoadPlanner,
    )

    sd: dict[str, Any] = {}
    layout = _EmptyStateDictLoadPlanner()
    layout.set_up_planner(sd, md, is_coordinator=True)
    got: dict[str, Any] = {}

    class _Values(DefaultLoadPlanner):
        def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
            got[read_item.dest_index.fqn] = torch.load(value, weights_only=weights_only)

    others = {k: v for k, v in md.state_dict_metadata.items()
              if not isinstance(v, TensorStorageMetadata)}
    if others:
        _dcp_load(others, reader, _Values(flatten_state_dict=False))
    where = md.planner_data or {}
    for k, obj in got.items():
        if k in where:
            set_element(sd, where[k], obj)
        else:
            sd[k] = obj
    keyed = {t.untyped_storage()._cdata: k for k, t in layout.state_dict.items()
             if isinstance(t, torch.Tensor)}
    return sd, keyed


def write_torch_save(
    repo: Repo | str | os.PathLike[str],
    rev: str,
    fp: Any,
    *,
    weights_only: bool = True,
) -> None:
    """torch.save the consolidated state of ``rev`` (what ``load_state`` returns) into the
    binary file ``fp``, holding one whole tensor in memory at a time.

    For a DCP commit, ``torch.save`` lays out its zip on the state rebuilt from the checkpoint's
    metadata (``_skeleton``), and each tensor is then assembled from its shards alone and
    streamed into its place (io/torch_zip.py). The file holds the same records as
    ``torch.save(load_state(...))``. A commit not written through DCP is written by checkout's
    streamed writer (io/exporter.py ``write_pt_file``); a DCP commit under a torch whose zip
    layout io/torch_zip.py does not know is loaded whole and torch.saved."""
    from ..io import torch_zip
    from ..io.exporter import write_pt, write_pt_file

    r = as_repo(repo)
    reader = StorageReader(r, rev)
    if not reader.is_dcp_commit:  # a plain commit: checkout's own streamed writer
        m = r.get_manifest(r.get_commit(reader.commit_id or r.resolve(rev)).manifest)
        name = getattr(fp, "name", None)
        scratch = Path(name).parent if isinstance(name, str) else Path(tempfile.gettempdir())
        write_pt_file(r, m, m.tree, (), None, False, fp, scratch)
        return
    md = reader.read_metadata()
    sd, keyed = _skeleton(reader, md, weights_only)
    try:
        parts, storages = torch_zip.record(sd)
        layout, gaps = torch_zip.plan(parts, storages)
    except torch_zip.Unsupported:
        write_pt(load_state(r, rev, weights_only=weights_only), fp)
        return

    def fill(storage: torch.UntypedStorage) -> Any:
        k = keyed[storage._cdata]
        yield _load_one(reader, k, md.state_dict_metadata[k])

    torch_zip.replay(layout, gaps, storages, fill, fp.write)


def _refuse_values(keys: Sequence[str]) -> None:
    if keys:
        raise UnsupportedValueError(
            f"{len(keys)} non-tensor value(s) cannot go into a safetensors file "
            f"(first: {keys[0]!r}); export to a .pt file instead"
        )


def _write_safetensors_streamed(reader: StorageReader, path: Path) -> None:
    """A DCP commit's tensors as one safetensors file under DCP's flattened keys, one whole
    tensor in memory at a time: the header from the checkpoint's metadata, then each tensor
    assembled from its shards and written in header order."""
    from ..io import safetensors_file as stf

    md = reader.read_metadata().state_dict_metadata
    _refuse_values([k for k, v in md.items() if not isinstance(v, TensorStorageMetadata)])
    tensors = {k: v for k, v in md.items() if isinstance(v, TensorStorageMetadata)}
    items: list[tuple[str, str, list[int], int]] = []
    for k, v in tensors.items():
        name = stf.DTYPE_NAMES.get(v.properties.dtype)
        if name is None:
            raise UnsupportedValueError(
                f"tensor {k!r} has dtype {v.properties.dtype}, which safetensors cannot hold; "
                "export to a .pt file instead"
            )
        shape = [int(x) for x in v.size]
        items.append((k, name, shape, math.prod(shape) * v.properties.dtype.itemsize))
    with open(path, "wb") as fp:
        fp.write(stf.make_header(items, None))
        for k, *_ in items:
            fp.write(_load_one(reader, k, tensors[k]).data)


def _write_safetensors_of_commit(r: Repo, reader: StorageReader, path: Path) -> None:
    """A commit not written through DCP as one safetensors file under DCP's flattened keys
    (the names ``flatten_state_dict(load_state(...))`` gives), streamed from the store: the
    keys come from the state laid out with meta tensors, the bytes from each stored entry."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    from ..format import values
    from ..io import exporter
    from ..io import safetensors_file as stf
    from ..state.encode import CheckoutHooks
    from ..state.tensors import dtype_from_name

    assert not reader.is_dcp_commit  # (which reads the commit)
    m = reader.manifest
    assert m is not None
    arrays = [values.path_str(p) for p, leaf in values.walk_leaves(m.tree)
              if isinstance(leaf, list) and leaf and leaf[0] == "ndarray"]
    _refuse_values(arrays)  # numpy arrays: values, not tensors, to DCP's flattening
    entry_of: dict[int, int] = {}  # id(meta tensor) -> manifest entry index

    def load_tensor(i: int, path: Any) -> torch.Tensor:
        e = m.tensors[i]
        t = torch.empty(e.shape, dtype=dtype_from_name(e.dtype), device="meta")
        entry_of[id(t)] = i
        return t

    def load_blob(oid: str, path: Any) -> bytes:
        return r.objects.read_bytes(oid)

    tree = values.decode(m.tree, CheckoutHooks(load_tensor, load_blob, False), (), None)
    flat, _ = flatten_state_dict({} if tree is values.ABSENT else tree)
    _refuse_values([k for k, v in flat.items() if not isinstance(v, torch.Tensor)])
    named = [(k, m.tensors[entry_of[id(v)]]) for k, v in flat.items()]
    for k, e in named:
        if stf.DTYPE_NAMES.get(dtype_from_name(e.dtype)) is None:
            raise UnsupportedValueError(
                f"tensor {k!r} has dtype {e.dtype}, which safetensors cannot hold; "
                "export to a .pt file instead"
            )
    with open(path, "wb") as fp:
        exporter.write_safetensors_named(r, named, None, fp)


def export_torch_save(
    repo: Repo | str | os.PathLike[str],
    rev: str,
    path: str | os.PathLike[str],
    *,
    weights_only: bool = True,
) -> Path:
    """Write the consolidated state of ``rev`` (see ``load_state``) to ``path``: torch.save,
    or, for a ``.safetensors`` path, safetensors with DCP's flattened keys (tensors only)."""
    out = Path(path)
    r = as_repo(repo)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        reader = StorageReader(r, rev)
        if out.suffix == ".safetensors" and reader.is_dcp_commit:
            _write_safetensors_streamed(reader, tmp)
        elif out.suffix == ".safetensors":
            _write_safetensors_of_commit(r, reader, tmp)
        else:
            with open(tmp, "wb") as fp:
                write_torch_save(r, rev, fp, weights_only=weights_only)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def import_torch_save(
    repo: Repo | str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    key: str | None = None,
    message: str | None = None,
    branch: str | None = None,
    step: int | None = None,
) -> Commit:
    """Commit a consolidated checkpoint file (``.pt``/``.pth``/``.bin`` via
    ``torch.load(weights_only=True, mmap=True)``, or ``.safetensors``), under ``key`` if given
    (``key="model"`` gives the ``{"model": state}`` layout sharded trainers load)."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(p))
    else:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file: no mmap
            state = torch.load(p, map_location="cpu", weights_only=True)
    if key is not None:
        state = {key: state}
    r = as_repo(repo)
    return r.commit(
        state, message if message is not None else f"import {p.name}", step=step, branch=branch
    )


__all__ = [
    "SaveStats",
    "export_dcp",
    "export_torch_save",
    "import_dcp",
    "import_torch_save",
    "load_state",
]
