"""The manifest's ``dcp`` section: torch.distributed.checkpoint metadata as plain JSON.

DCP describes a checkpoint with a ``Metadata`` object (which its FileSystemWriter pickles):
for every flattened key (fqn) either a tensor — dtype, global size and the chunks (shards)
stored, each an offset and a size — or an opaque bytes item; plus ``planner_data`` (for the
default planner, how the flat keys map back to the nested state dict). tensorvcs stores one
tensor entry per stored shard and one uint8 entry per bytes item in the manifest's tensor
table, and this section (docs/format.md, section 10)::

    "dcp": {"version": 1,
            "items": [{"fqn": "model.w", "kind": "tensor", "dtype": "float32",
                       "size": [8, 4], "chunks": [{"offsets": [0, 0], "sizes": [4, 4],
                                                   "tensor": 0}, ...]},
                      {"fqn": "step", "kind": "bytes", "tensor": 2}, ...],
            "planner_data": <value node>,        (optional)
            "storage_meta": {...},                (optional)
            "dcp_version": "1.0.0"}               (optional)

The manifest's ``tree`` also names every one of those entries (``{fqn: tensor}`` for a tensor
stored whole, ``{fqn: {"<offsets>": shard, ...}}`` for a sharded one, ``{fqn: uint8 tensor}``
for a bytes item), so gc, fsck and checkout treat a DCP commit like any other.

This module also *synthesises* DCP metadata for a commit without a ``dcp`` section (made by
``Repo.commit``): the checked-out state is flattened exactly as DCP's default planner would,
every tensor is one whole chunk, every other leaf a bytes item (``torch.save`` of the value,
made when it is read). So ``dcp.load`` can read any commit.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from ..errors import CorruptObjectError, UnsupportedValueError
from ..format import values
from ..format.manifest import Manifest, TensorEntry
from ..state.encode import CheckoutHooks
from ..state.tensors import dtype_from_name, dtype_name

SECTION_VERSION = 1

try:  # torch >= 2.4
    from torch.distributed.checkpoint.metadata import StorageMeta
except ImportError:  # pragma: no cover - older torch
    StorageMeta = None  # type: ignore[assignment,misc]


def offsets_key(offsets: Sequence[int]) -> str:
    """The tree key of a shard: its offsets joined by ',' ("" for a 0-d tensor)."""
    return ",".join(str(int(o)) for o in offsets)


def index_key(index: MetadataIndex) -> tuple[str, tuple[int, ...] | None]:
    """A hashable (fqn, offsets or None) for a MetadataIndex (the index hint left out)."""
    return index.fqn, None if index.offset is None else tuple(int(o) for o in index.offset)


@dataclass(frozen=True)
class Source:
    """Where the data of one DCP storage item is.

    ``kind`` is "shard" (entry ``entry`` holds the chunk's elements, row-major), "bytes"
    (entry ``entry`` holds the bytes item as uint8) or "value" (a commit without a dcp section:
    ``value`` is the decoded leaf, serialised with torch.save when read).
    """

    kind: str
    entry: int = -1
    value: Any = None


@dataclass
class Parsed:
    """DCP metadata of a commit and where each storage item's data is."""

    metadata: Metadata
    sources: dict[tuple[str, tuple[int, ...] | None], Source]
    synthesized: bool
    meta_ids: dict[int, int] | None = None  # synthesized: id(meta tensor) -> entry index


# -- writing -----------------------------------------------------------------------------------
def _props_json(p: TensorProperties) -> dict[str, Any]:
    d: dict[str, Any] = {"dtype": dtype_name(p.dtype)}
    if getattr(p, "requires_grad", False):
        d["requires_grad"] = True
    return d


def build_section(
    md: Metadata,
    located: dict[tuple[str, tuple[int, ...] | None], int],
    entries: list[TensorEntry],
) -> tuple[dict[str, Any], Any]:
    """The ``dcp`` section and the value tree for metadata ``md`` whose storage items were
    written as ``entries`` (``located`` maps each item's index_key to its entry)."""
    items: list[dict[str, Any]] = []
    tree_items: list[list[Any]] = []

    def entry_of(key: tuple[str, tuple[int, ...] | None], what: str) -> int:
        i = located.get(key)
        if i is None:
            raise UnsupportedValueError(
                f"DCP metadata names {what} that no rank wrote (key {key[0]!r}); not committing"
            )
        return i

    for fqn, sm in md.state_dict_metadata.items():
        if not isinstance(fqn, str):
            raise UnsupportedValueError(f"DCP key {fqn!r} is not a string")
        if isinstance(sm, BytesStorageMetadata):
            i = entry_of((fqn, None), "a bytes item")
            items.append({"fqn": fqn, "kind": "bytes", "tensor": i})
            tree_items.append([fqn, ["tensor", i]])
            continue
        if not isinstance(sm, TensorStorageMetadata):
            raise UnsupportedValueError(f"DCP key {fqn!r}: unknown storage metadata {sm!r}")
        size = [int(s) for s in sm.size]
        item = {"fqn": fqn, "kind": "tensor", "size": size, **_props_json(sm.properties)}
        chunks: list[dict[str, Any]] = []
        shard_nodes: list[list[Any]] = []
        for ch in sm.chunks:
            offs = [int(o) for o in ch.offsets]
            sizes = [int(s) for s in ch.sizes]
            i = entry_of((fqn, tuple(offs)), f"a shard at offsets {offs}")
            e = entries[i]
            if e.shape != sizes or e.dtype != item["dtype"]:
                raise UnsupportedValueError(
                    f"DCP key {fqn!r}: the shard at offsets {offs} was written as "
                    f"{e.dtype}{e.shape}, but the metadata says {item['dtype']}{sizes}"
                )
            chunks.append({"offsets": offs, "sizes": sizes, "tensor": i})
            shard_nodes.append([offsets_key(offs), ["tensor", i]])
        item["chunks"] = chunks
        items.append(item)
        whole = len(chunks) == 1 and chunks[0]["sizes"] == size and not any(chunks[0]["offsets"])
        node = ["tensor", chunks[0]["tensor"]] if whole else ["dict", shard_nodes]
        tree_items.append([fqn, node])

    section: dict[str, Any] = {"version": SECTION_VERSION, "items": items}
    if md.planner_data is not None:
        try:
            section["planner_data"] = values.encode(md.planner_data, values.Hooks(), ("planner",))
        except UnsupportedValueError as e:
            raise UnsupportedValueError(
                f"DCP planner_data cannot be stored without pickle: {e}"
            ) from e
    sm_meta = getattr(md, "storage_meta", None)
    if sm_meta is not None:
        cid = sm_meta.checkpoint_id
        section["storage_meta"] = {
            "checkpoint_id": None if cid is None else str(cid),
            "save_id": sm_meta.save_id,
            "modules": [str(m) for m in getattr(sm_meta, "modules", []) or []],
        }
    version = getattr(md, "version", None)
    if version is not None:
        section["dcp_version"] = str(version)
    return section, ["dict", tree_items]


def shard_path(fqn: str, offsets: Sequence[int], size: Sequence[int], sizes: Sequence[int]) -> Any:
    """The key path a shard gets in the tree (used to pair it with the parent's shard)."""
    whole = list(sizes) == list(size) and not any(offsets)
    return (fqn,) if whole else (fqn, offsets_key(offsets))


# -- reading -----------------------------------------------------------------------------------
def _bad(manifest_id: str, what: str) -> CorruptObjectError:
    return CorruptObjectError(f"manifest {manifest_id}: malformed dcp section: {what}", manifest_id)


def parse_section(manifest: Manifest, manifest_id: str) -> Parsed:
    sec = manifest.dcp
    assert sec is not None
    if sec.get("version") != SECTION_VERSION:
        raise CorruptObjectError(
            f"manifest {manifest_id}: dcp section version {sec.get('version')!r} is not "
            f"supported (this tensorvcs reads {SECTION_VERSION})",
            manifest_id,
        )
    n = len(manifest.tensors)
    sdm: dict[str, Any] = {}
    sources: dict[tuple[str, tuple[int, ...] | None], Source] = {}
    storage_data: dict[MetadataIndex, int] = {}
    try:
        for it in sec["items"]:
            fqn = it["fqn"]
            if not isinstance(fqn, str):
                raise TypeError("fqn")
            if it["kind"] == "bytes":
                i = int(it["tensor"])
                if not 0 <= i < n:
                    raise IndexError(f"tensor {i}")
                sdm[fqn] = BytesStorageMetadata()
                sources[(fqn, None)] = Source("bytes", i)
                storage_data[MetadataIndex(fqn)] = i
                continue
            if it["kind"] != "tensor":
                raise ValueError(f"kind {it['kind']!r}")
            props = TensorProperties(
                dtype=dtype_from_name(it["dtype"]),
                requires_grad=bool(it.get("requires_grad", False)),
            )
            chunks = []
            for ch in it["chunks"]:
                offs = [int(o) for o in ch["offsets"]]
                sizes = [int(s) for s in ch["sizes"]]
                i = int(ch["tensor"])
                if not 0 <= i < n or manifest.tensors[i].shape != sizes:
                    raise ValueError(f"{fqn}: shard entry {i} does not match {sizes}")
                chunks.append(
                    ChunkStorageMetadata(offsets=torch.Size(offs), sizes=torch.Size(sizes))
                )
                sources[(fqn, tuple(offs))] = Source("shard", i)
                storage_data[MetadataIndex(fqn, offs)] = i
            sdm[fqn] = TensorStorageMetadata(
                properties=props, size=torch.Size(int(s) for s in it["size"]), chunks=chunks
            )
        planner_data = None
        if "planner_data" in sec:
            planner_data = values.decode(sec["planner_data"], values.Hooks(), ("planner",))
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise _bad(manifest_id, str(e)) from e
    md = Metadata(state_dict_metadata=sdm, planner_data=planner_data, storage_data=storage_data)
    smj = sec.get("storage_meta")
    if StorageMeta is not None and isinstance(smj, dict):
        md.storage_meta = StorageMeta(
            checkpoint_id=smj.get("checkpoint_id"),
            save_id=smj.get("save_id"),
            modules=list(smj.get("modules") or []),
        )
    if "dcp_version" in sec and hasattr(md, "version"):
        md.version = sec["dcp_version"]
    return Parsed(md, sources, synthesized=False)


class _Lazy:
    """A leaf that is read only when its bytes item is (an ndarray; an opaque pickle)."""

    def __init__(self, node: Any, path: Any) -> None:
        self.node = node
        self.path = path


class _SkeletonHooks(CheckoutHooks):
    def __init__(self, manifest: Manifest, ids: dict[int, int]) -> None:
        super().__init__(self._tensor, self._blob, False)
        self.manifest = manifest
        self.ids = ids

    def _tensor(self, i: int, path: Any) -> torch.Tensor:
        e = self.manifest.tensors[i]
        t = torch.empty(e.shape, dtype=dtype_from_name(e.dtype), device="meta")
        self.ids[id(t)] = i
        return t

    def _blob(self, oid: str, path: Any) -> bytes:  # pragma: no cover - pickles stay lazy
        raise AssertionError

    def decode_leaf(self, node: list[Any], path: Any) -> Any:
        if node[0] in ("ndarray", "pickle"):
            return _Lazy(node, path)
        return super().decode_leaf(node, path)


def synthesize(manifest: Manifest, manifest_id: str) -> Parsed:
    """DCP metadata for a commit that has no dcp section (see the module docstring)."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    ids: dict[int, int] = {}
    skeleton = values.decode(manifest.tree, _SkeletonHooks(manifest, ids))
    if not isinstance(skeleton, dict):
        raise UnsupportedValueError(
            f"the state of manifest {manifest_id} is a {type(skeleton).__name__}, not a dict: "
            "DCP loads only dict states"
        )
    flat, mappings = flatten_state_dict(skeleton)
    sdm: dict[str, Any] = {}
    sources: dict[tuple[str, tuple[int, ...] | None], Source] = {}
    storage_data: dict[MetadataIndex, int | str] = {}
    for fqn, v in flat.items():
        if isinstance(v, torch.Tensor) and id(v) in ids:
            i = ids[id(v)]
            e = manifest.tensors[i]
            zeros = [0] * len(e.shape)
            sdm[fqn] = TensorStorageMetadata(
                properties=TensorProperties(dtype=v.dtype, requires_grad=e.requires_grad),
                size=torch.Size(e.shape),
                chunks=[ChunkStorageMetadata(torch.Size(zeros), torch.Size(e.shape))],
            )
            sources[(fqn, tuple(zeros))] = Source("shard", i)
            storage_data[MetadataIndex(fqn, zeros)] = i
        else:
            sdm[fqn] = BytesStorageMetadata()
            sources[(fqn, None)] = Source("value", value=v)
            storage_data[MetadataIndex(fqn)] = "value"
    md = Metadata(state_dict_metadata=sdm, planner_data=dict(mappings), storage_data=storage_data)
    return Parsed(md, sources, synthesized=True, meta_ids=ids)


def materialize(
    value: Any,
    decode_node: Callable[[Any, Any], Any],
    read_entry: Callable[[int], torch.Tensor],
    meta_ids: dict[int, int],
) -> Any:
    """``value`` (a synthesized bytes item) with every lazy leaf decoded and every tensor
    (a tuple holding tensors is one DCP leaf) read."""
    if isinstance(value, _Lazy):
        return decode_node(value.node, value.path)
    if isinstance(value, torch.Tensor) and value.device.type == "meta":
        return read_entry(meta_ids[id(value)])
    t = type(value)
    if t in (list, tuple, set, frozenset):
        return t(materialize(v, decode_node, read_entry, meta_ids) for v in value)
    if isinstance(value, dict):
        out: Any = {} if t is dict else t()
        for k, v in value.items():
            out[k] = materialize(v, decode_node, read_entry, meta_ids)
        meta = getattr(value, "_metadata", None)
        if meta is not None:
            out._metadata = meta
        return out
    return value


def select_keys(
    md: Metadata, include: Sequence[str] | None, exclude: Sequence[str] | None
) -> list[str]:
    """The fqns of ``md`` that the include/exclude globs (fnmatch on the fqn) let through."""
    out = []
    for fqn in md.state_dict_metadata:
        if include is not None and not any(fnmatch.fnmatchcase(fqn, g) for g in include):
            continue
        if any(fnmatch.fnmatchcase(fqn, g) for g in exclude or ()):
            continue
        out.append(fqn)
    return out
