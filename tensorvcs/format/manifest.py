"""Manifests: one checkpoint's value tree plus the table of tensors it points at.

A manifest is canonical JSON (format/jsonenc.py)::

    {"type": "manifest", "version": 1,
     "tree": <value node; tensors appear as ["tensor", i]>,
     "tensors": [<tensor entry>, ...],
     "files": [<file entry>, ...],          # optional, used by the CLI
     "dcp": <object>}                       # optional: torch.distributed.checkpoint metadata
                                            # (tensorvcs/dcp, docs/format.md section 10)

Tensor entry: ``dtype`` (torch name without "torch."), ``shape``, ``nbytes``, and either
``chunks`` (a list of ``[object id, length]`` covering the bytes in order) or a packed location
``pack``/``offset`` plus ``id`` (the id of the tensor's own bytes). Optional: ``param`` (was an
nn.Parameter), ``requires_grad``, ``stats`` (format/stats.py: element count, NaN/Inf counts,
min/max/mean/norm and the norm of the change against the parent; absent in older manifests).
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CorruptObjectError, UsageError
from . import jsonenc, values
from .config import MAX_CHUNK_SIZE
from .ids import is_object_id
from .stats import TensorStats

MANIFEST_VERSION = 1
DCP_SECTION_VERSION = 1

# Validation limits (docs/format.md, "Validation limits")
MAX_NDIM = 256  # dimensions of a tensor, an array or a torch.Size
MAX_DIM = (1 << 63) - 1  # one dimension, and a tensor's nbytes
MAX_PATH_CHARS = 4096  # a file entry's path
MAX_DEVICE_CHARS = 64
REPO_DIR = ".tvcs"
_DRIVE = re.compile(r"^[A-Za-z]:")


# {dtype name: (item size, can require gradients)} of the dtypes every supported torch
# (>= 2.4) has: manifests of ordinary checkpoints validate without importing torch, so `tvcs
# show` and `tvcs ls` start at once. tests/test_dtypes.py checks it against torch's table.
COMMON_DTYPES: dict[str, tuple[int, bool]] = {
    "bool": (1, False),
    "uint8": (1, False),
    "int8": (1, False),
    "int16": (2, False),
    "int32": (4, False),
    "int64": (8, False),
    "float16": (2, True),
    "bfloat16": (2, True),
    "float32": (4, True),
    "float64": (8, True),
    "complex64": (8, True),
    "complex128": (16, True),
}


@functools.cache
def _torch_dtypes() -> tuple[dict[str, int], frozenset[str]]:
    """({dtype name: item size}, names of the dtypes that can require gradients), from
    torch's dtype table on first use (importing this module does not load torch)."""
    from ..state.tensors import DTYPES

    itemsize = {name: d.itemsize for name, d in DTYPES.items()}
    grad = frozenset(n for n, d in DTYPES.items() if d.is_floating_point or d.is_complex)
    return itemsize, grad


def _dtype_info(name: Any) -> tuple[int, bool] | None:
    """(item size, can require gradients) of the dtype called ``name``, or None when this
    torch has no such dtype; torch is imported only for a dtype outside COMMON_DTYPES."""
    if type(name) is not str:
        return None
    common = COMMON_DTYPES.get(name)
    if common is not None:
        return common
    itemsize, grad = _torch_dtypes()
    return (itemsize[name], name in grad) if name in itemsize else None


def _is_int(x: Any) -> bool:
    return type(x) is int


def _nonneg(x: Any, limit: int = MAX_DIM) -> bool:
    return type(x) is int and 0 <= x <= limit


def _shape_problem(shape: Any) -> str | None:
    if type(shape) is not list or len(shape) > MAX_NDIM:
        return f"shape {shape!r:.60} is not a list of at most {MAX_NDIM} sizes"
    for x in shape:
        if type(x) is not int or x < 0 or x > MAX_DIM:
            return f"shape {shape!r:.60} has a size that is not an integer in 0..2**63-1"
    return None


def _numel(shape: list[int]) -> int:
    return math.prod(shape)


def _refs_problem(chunks: Any, limit: int = MAX_CHUNK_SIZE) -> str | None:
    """The problem of a ``[[id, length], ...]`` list, or None."""
    if type(chunks) is not list:
        return "chunks is not a list"
    for c in chunks:
        if type(c) is not list or len(c) != 2:
            return f"chunk {c!r:.80} is not an [id, length] pair"
        cid, n = c
        if type(cid) is not str or not is_object_id(cid):
            return f"chunk {cid!r:.80} is not an object id"
        if type(n) is not int or not 0 < n <= limit:
            return f"chunk {cid} has length {n!r:.40} (not in 1..{limit})"
    return None


def file_path_problem(path: Any) -> str | None:
    """Why ``path`` may not be a file entry's path (None when it may): it must be relative,
    '/'-separated, without empty, '.' or '..' parts, backslashes, NUL, a drive, or a '.tvcs'
    part."""
    if not isinstance(path, str):
        return "not a string"
    if not path:
        return "empty"
    if len(path) > MAX_PATH_CHARS:
        return f"longer than {MAX_PATH_CHARS} characters"
    if "\x00" in path:
        return "contains NUL"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "absolute"
    if _DRIVE.match(path):
        return "starts with a drive"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"has a {part!r} part" if part else "has an empty part"
        if part.lower() == REPO_DIR:
            return f"names the repository folder {REPO_DIR}"
    return None


def check_file_path(path: Any, where: str = "file entry") -> str:
    """``path`` if it is a safe relative file path (see file_path_problem); otherwise
    CorruptObjectError naming it. Call it again before writing a file a manifest names."""
    problem = file_path_problem(path)
    if problem:
        raise CorruptObjectError(f"{where}: unsafe file path {path!r:.200} ({problem})")
    return str(path)


@dataclass
class TensorEntry:
    dtype: str
    shape: list[int]
    nbytes: int
    chunks: list[tuple[str, int]] | None = None
    pack: str | None = None
    offset: int = 0
    id: str | None = None  # content id of a packed tensor's bytes
    param: bool = False
    requires_grad: bool = False
    stats: TensorStats | None = None  # recorded at commit time; None in older manifests

    def object_ids(self) -> list[str]:
        if self.pack is not None:
            return [self.pack]
        return [c[0] for c in self.chunks or []]

    def content_key(self) -> tuple[Any, ...]:
        """Equal for two entries exactly when their bytes, dtype and shape are equal."""
        data: Any = self.id if self.pack is not None else tuple(c[0] for c in self.chunks or [])
        return (self.dtype, tuple(self.shape), data)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"dtype": self.dtype, "shape": self.shape, "nbytes": self.nbytes}
        if self.pack is not None:
            d.update(pack=self.pack, offset=self.offset, id=self.id)
        else:
            d["chunks"] = [[c[0], c[1]] for c in self.chunks or []]
        if self.param:
            d["param"] = True
        if self.requires_grad:
            d["requires_grad"] = True
        if self.stats is not None:
            d["stats"] = self.stats.to_json()
        return d

    @classmethod
    def from_json(cls, d: Any, where: str, oid: str | None = None) -> TensorEntry:
        """Parse and validate one tensor entry (CorruptObjectError naming ``where``)."""
        problem = _tensor_entry_problem(d)
        if problem:
            raise CorruptObjectError(f"{where}: malformed tensor entry: {problem}", oid)
        e = cls(
            dtype=d["dtype"],
            shape=list(d["shape"]),
            nbytes=d["nbytes"],
            param=bool(d.get("param", False)),
            requires_grad=bool(d.get("requires_grad", False)),
        )
        if "stats" in d:
            e.stats = TensorStats.from_json(d["stats"], where, oid)
            if e.stats.numel != _numel(e.shape):
                raise CorruptObjectError(
                    f"{where}: malformed stats: numel {e.stats.numel} of a "
                    f"{e.dtype}{e.shape} tensor",
                    oid,
                )
        if "pack" in d:
            e.pack, e.offset, e.id = d["pack"], d["offset"], d["id"]
        else:
            e.chunks = [(c[0], c[1]) for c in d["chunks"]]
        return e


def _tensor_entry_problem(d: Any) -> str | None:
    if not isinstance(d, dict):
        return "not a JSON object"
    dtype = d.get("dtype")
    info = _dtype_info(dtype)
    if info is None:
        return f"unknown dtype {dtype!r:.60}"
    itemsize, can_grad = info
    problem = _shape_problem(d.get("shape"))
    if problem:
        return problem
    nbytes = d.get("nbytes")
    if not _nonneg(nbytes):
        return f"nbytes {nbytes!r:.40} is not an integer in 0..2**63-1"
    expect = _numel(d["shape"]) * itemsize
    if nbytes != expect:
        return f"{dtype}{d['shape']} is {expect} bytes, not {nbytes}"
    for flag in ("param", "requires_grad"):
        if flag in d and type(d[flag]) is not bool:
            return f"{flag} is not a boolean"
    if d.get("requires_grad") and not can_grad:
        return f"a {dtype} tensor cannot require gradients"
    if "pack" in d:
        if "chunks" in d:
            return "both chunks and pack"
        pack, offset, cid = d.get("pack"), d.get("offset"), d.get("id")
        if not isinstance(pack, str) or not is_object_id(pack):
            return f"pack {pack!r:.80} is not an object id"
        if not isinstance(cid, str) or not is_object_id(cid):
            return f"id {cid!r:.80} is not an object id"
        if nbytes == 0:
            return "an empty tensor in a pack"
        if not _nonneg(offset, MAX_CHUNK_SIZE) or offset + nbytes > MAX_CHUNK_SIZE:
            return f"pack offset {offset!r:.40} + {nbytes} bytes lies outside any pack"
        return None
    if "chunks" not in d:
        return "neither chunks nor pack"
    problem = _refs_problem(d["chunks"])
    if problem:
        return problem
    total = sum(c[1] for c in d["chunks"])
    if total != nbytes:
        return f"chunks hold {total} bytes, not {nbytes}"
    return None


_FILE_KINDS = ("state", "blob")


@dataclass
class FileEntry:
    """A file the CLI committed: its path relative to the repo root and how it is stored."""

    path: str
    kind: str  # "state" (its tensors/values are the subtree at key [path]) or "blob"
    format: str  # "pt", "safetensors", "raw", ...
    size: int
    chunks: list[tuple[str, int]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "kind": self.kind,
            "format": self.format,
            "size": self.size,
        }
        if self.chunks:
            d["chunks"] = [[c[0], c[1]] for c in self.chunks]
        if self.extra:
            d["extra"] = self.extra
        return d

    @classmethod
    def from_json(cls, d: Any, where: str, oid: str | None = None) -> FileEntry:
        """Parse and validate one file entry (CorruptObjectError naming ``where``)."""
        if isinstance(d, dict):
            path_problem = file_path_problem(d.get("path"))
            if path_problem:
                raise CorruptObjectError(
                    f"{where}: file entry with an unsafe path {d.get('path')!r:.200} "
                    f"({path_problem})",
                    oid,
                )
        problem = _file_entry_problem(d)
        if problem:
            raise CorruptObjectError(f"{where}: malformed file entry: {problem}", oid)
        return cls(
            path=d["path"],
            kind=d["kind"],
            format=d["format"],
            size=d["size"],
            chunks=[(c[0], c[1]) for c in d.get("chunks", [])],
            extra=dict(d.get("extra", {})),
        )


def _file_entry_problem(d: Any) -> str | None:
    if not isinstance(d, dict):
        return "not a JSON object"
    path = d["path"]
    if d.get("kind") not in _FILE_KINDS:
        return f"{path!r}: unknown kind {d.get('kind')!r:.40}"
    if not isinstance(d.get("format"), str) or not d["format"]:
        return f"{path!r}: format is not a string"
    size = d.get("size")
    if not _nonneg(size):
        return f"{path!r}: size {size!r:.40} is not an integer in 0..2**63-1"
    chunks = d.get("chunks", [])
    problem = _refs_problem(chunks)
    if problem:
        return f"{path!r}: {problem}"
    total = sum(c[1] for c in chunks)
    if d["kind"] == "blob" and total != size:
        return f"{path!r}: chunks hold {total} bytes, not the file's {size}"
    if total > size:
        return f"{path!r}: chunks hold {total} bytes, more than the file's {size}"
    extra = d.get("extra", {})
    if not isinstance(extra, dict):
        return f"{path!r}: extra is not a JSON object"
    digest = extra.get("blake3")
    if digest is not None and not (isinstance(digest, str) and is_object_id(digest)):
        return f"{path!r}: extra.blake3 is not a hex digest"
    meta = extra.get("metadata")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        return f"{path!r}: extra.metadata does not map strings to strings"
    if "unsafe_pickle" in extra and type(extra["unsafe_pickle"]) is not bool:
        return f"{path!r}: extra.unsafe_pickle is not a boolean"
    return None


@dataclass
class Manifest:
    tree: Any
    tensors: list[TensorEntry]
    files: list[FileEntry] = field(default_factory=list)
    dcp: dict[str, Any] | None = None  # the "dcp" section, kept as parsed JSON

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "type": "manifest",
            "version": MANIFEST_VERSION,
            "tree": self.tree,
            "tensors": [t.to_json() for t in self.tensors],
        }
        if self.files:
            for f in self.files:  # what a reader would refuse is never written
                problem = file_path_problem(f.path)
                if problem:
                    raise UsageError(f"cannot commit the file {f.path!r}: its path {problem}")
            doc["files"] = [f.to_json() for f in self.files]
        if self.dcp is not None:
            doc["dcp"] = self.dcp
        return jsonenc.dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, oid: str) -> Manifest:
        """Parse and fully validate a manifest: every field's type, every tensor and file
        entry, the value tree (depth-bounded) and the dcp section. CorruptObjectError names
        ``oid`` (and the key path or file when there is one)."""
        where = f"manifest {oid}"
        doc = jsonenc.load_stored(data, where, oid)
        if not isinstance(doc, dict) or doc.get("type") != "manifest":
            raise CorruptObjectError(f"object {oid} is not a manifest", oid)
        version = doc.get("version")
        if type(version) is not int or version != MANIFEST_VERSION:
            raise CorruptObjectError(f"{where} has unsupported version {version!r:.40}", oid)
        for name, kind in (("tree", None), ("tensors", list), ("files", list), ("dcp", dict)):
            if name in ("tree", "tensors") and name not in doc:
                raise CorruptObjectError(f"{where} lacks field {name!r}", oid)
            if kind is not None and name in doc and not isinstance(doc[name], kind):
                raise CorruptObjectError(f"{where}: field {name!r} is not a {kind.__name__}", oid)
        tensors = [
            TensorEntry.from_json(t, f"{where} tensor entry {i}", oid)
            for i, t in enumerate(doc["tensors"])
        ]
        files = [
            FileEntry.from_json(f, f"{where} file entry {i}", oid)
            for i, f in enumerate(doc.get("files", []))
        ]
        tree = doc["tree"]
        try:
            values.check_tree(tree, _leaf_checker(tensors))
        except CorruptObjectError as e:
            raise CorruptObjectError(f"{where}: {e}", oid, e.key_path) from None
        _check_files(files, tree, where, oid)
        dcp = doc.get("dcp")
        if dcp is not None:
            problem = _dcp_problem(dcp, tensors)
            if problem:
                raise CorruptObjectError(f"{where}: malformed dcp section: {problem}", oid)
        return cls(tree=tree, tensors=tensors, files=files, dcp=dcp)

    def selected_tensors(
        self,
        node: Any = None,
        prefix: values.KeyPath = (),
        select: Callable[[values.KeyPath], bool] | None = None,
    ) -> tuple[dict[int, TensorEntry], dict[int, values.KeyPath]]:
        """The tensor entries that the tensor and array leaves under ``node`` (default: the
        whole tree, which sits at key path ``prefix``) use, if ``select`` keeps their path:
        ({entry index: entry}, {entry index: first key path using it})."""
        wanted: dict[int, TensorEntry] = {}
        paths: dict[int, values.KeyPath] = {}
        tree = self.tree if node is None else node
        for path, leaf in values.walk_leaves(tree, prefix):
            is_data = isinstance(leaf, list) and leaf and leaf[0] in ("tensor", "ndarray")
            if is_data and (select is None or select(path)):
                i = int(leaf[1])
                if not 0 <= i < len(self.tensors):
                    raise CorruptObjectError(
                        f"key path {values.path_str(path)!r}: no tensor entry {i}"
                    )
                wanted.setdefault(i, self.tensors[i])
                paths.setdefault(i, path)
        return wanted, paths

    def packed_locations(self) -> dict[str, tuple[str, int]]:
        """{content id: (pack id, offset)} of the packed tensors (for reuse by a child)."""
        return {e.id: (e.pack, e.offset) for e in self.tensors if e.pack and e.id}

    def tensors_by_key(self) -> dict[str, TensorEntry]:
        """{key path as text: entry} of the tensor leaves (the first leaf wins on sharing)."""
        out: dict[str, TensorEntry] = {}
        for path, node in values.walk_leaves(self.tree):
            if isinstance(node, list) and node and node[0] == "tensor":
                out.setdefault(values.path_str(path), self.tensors[int(node[1])])
        return out

    def object_ids(self) -> set[str]:
        ids = {o for t in self.tensors for o in t.object_ids()}
        ids.update(c[0] for f in self.files for c in f.chunks)
        for path_node in _pickle_ids(self.tree):
            ids.add(path_node)
        return ids


def _pickle_ids(node: Any) -> list[str]:
    out: list[str] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, list) and n and isinstance(n[0], str):
            if n[0] == "pickle" and len(n) > 1 and isinstance(n[1], str):
                out.append(n[1])
            else:
                stack.extend(n[1:])
        elif isinstance(n, list):
            stack.extend(n)
    return out


def _np_dtype_problem(name: Any) -> tuple[np.dtype[Any] | None, str | None]:
    """(the numpy dtype, None) for a plain numpy dtype string as a writer records it."""
    if not isinstance(name, str) or len(name) > 64:
        return None, f"bad numpy dtype {name!r:.60}"
    try:
        dt = np.dtype(name)
    except (TypeError, ValueError, SyntaxError):
        return None, f"unknown numpy dtype {name!r:.60}"
    if dt.hasobject or dt.fields is not None or dt.subdtype is not None or dt.str != name:
        return None, f"numpy dtype {name!r:.60} is not a plain data type"
    return dt, None


def _leaf_checker(tensors: list[TensorEntry]) -> values.LeafCheck:
    n = len(tensors)

    def index_problem(i: Any) -> str | None:
        if type(i) is not int or not 0 <= i < n:
            return f"no tensor entry {i!r:.40} (the manifest has {n})"
        return None

    def check(node: list[Any], path: values.KeyPath) -> str | None:
        tag = node[0]
        if tag == "tensor":
            if len(node) != 2:
                return "malformed tensor node"
            return index_problem(node[1])
        if tag == "ndarray":
            if len(node) != 4:
                return "malformed ndarray node"
            problem = index_problem(node[1])
            if problem:
                return problem
            dt, problem = _np_dtype_problem(node[2])
            problem = problem or _shape_problem(node[3])
            if problem or dt is None:
                return problem
            e = tensors[node[1]]
            want = _numel(node[3]) * dt.itemsize
            if e.dtype != "uint8" or e.nbytes != want:
                return f"array of {want} bytes stored in a {e.dtype} entry of {e.nbytes} bytes"
            return None
        if tag == "npscalar":
            if len(node) != 3 or not isinstance(node[2], str):
                return "malformed npscalar node"
            dt, problem = _np_dtype_problem(node[1])
            if problem or dt is None:
                return problem
            try:
                raw = base64.b64decode(node[2], validate=True)
            except (binascii.Error, ValueError):
                return "npscalar bytes are not base64"
            if len(raw) != dt.itemsize or dt.itemsize == 0:
                return f"npscalar of {len(raw)} bytes for dtype {node[1]}"
            return None
        if tag == "dtype":
            ok = len(node) == 2 and isinstance(node[1], str)
            import torch  # only a state that holds a torch.dtype or a device value needs it

            if not ok or not isinstance(getattr(torch, node[1], None), torch.dtype):
                return f"unknown torch dtype {node[1:]!r:.60}"
            return None
        if tag == "device":
            if len(node) != 2 or not isinstance(node[1], str) or len(node[1]) > MAX_DEVICE_CHARS:
                return "malformed device node"
            import torch

            try:
                torch.device(node[1])
            except Exception:  # torch raises RuntimeError for unknown device strings
                return f"unknown device {node[1]!r:.60}"
            return None
        if tag == "size":
            ok = len(node) == 2 and isinstance(node[1], list) and len(node[1]) <= MAX_NDIM
            if not ok or not all(_is_int(x) and abs(x) <= MAX_DIM for x in node[1]):
                return "malformed size node"
            return None
        if tag == "pickle":
            if len(node) != 3 or not isinstance(node[1], str) or not is_object_id(node[1]):
                return "malformed pickle node"
            if not isinstance(node[2], str):
                return "malformed pickle node (type name)"
            return None
        return f"unknown value tag {tag!r:.40}"

    return check


def _check_files(files: list[FileEntry], tree: Any, where: str, oid: str) -> None:
    seen: set[str] = set()
    keys: set[str] | None = None
    for f in files:
        if f.path in seen:
            raise CorruptObjectError(f"{where}: two file entries for {f.path!r}", oid)
        seen.add(f.path)
        if f.kind != "state":
            continue
        if keys is None:
            keys = set()
            if isinstance(tree, list) and tree[:1] in (["dict"], ["odict"]):
                keys = {p[0] for p in tree[1] if isinstance(p[0], str)}
        if f.path not in keys:
            raise CorruptObjectError(
                f"{where}: file entry {f.path!r} has no state under its key in the tree", oid
            )


def _ints_problem(xs: Any, what: str) -> str | None:
    if not isinstance(xs, list) or len(xs) > MAX_NDIM or not all(_nonneg(x) for x in xs):
        return f"{what} {xs!r:.60} is not a list of sizes"
    return None


def _dcp_problem(sec: dict[str, Any], tensors: list[TensorEntry]) -> str | None:
    """The problem of a dcp section (docs/format.md section 10), or None."""
    version = sec.get("version")
    if type(version) is not int or version != DCP_SECTION_VERSION:
        return f"version {version!r:.40} is not supported (this tensorvcs reads 1)"
    items = sec.get("items")
    if not isinstance(items, list):
        return "items is not a list"
    n = len(tensors)
    for it in items:
        if not isinstance(it, dict) or not isinstance(it.get("fqn"), str):
            return f"item {it!r:.60} has no fqn"
        fqn, kind = it["fqn"], it.get("kind")
        if kind == "bytes":
            i = it.get("tensor")
            if type(i) is not int or not 0 <= i < n or tensors[i].dtype != "uint8":
                return f"{fqn!r}: bytes item names no uint8 entry ({i!r:.40})"
            continue
        if kind != "tensor":
            return f"{fqn!r}: unknown kind {kind!r:.40}"
        dtype = it.get("dtype")
        if _dtype_info(dtype) is None:

            return f"{fqn!r}: unknown dtype {dtype!r:.40}"
        size: Any = it.get("size")
        problem = _ints_problem(size, "size")
        if problem:
            return f"{fqn!r}: {problem}"
        if "requires_grad" in it and type(it["requires_grad"]) is not bool:
            return f"{fqn!r}: requires_grad is not a boolean"
        chunks = it.get("chunks")
        if not isinstance(chunks, list):
            return f"{fqn!r}: chunks is not a list"
        for ch in chunks:
            if not isinstance(ch, dict):
                return f"{fqn!r}: chunk {ch!r:.60} is not an object"
            offs: Any = ch.get("offsets")
            sizes: Any = ch.get("sizes")
            i = ch.get("tensor")
            problem = _ints_problem(offs, "offsets") or _ints_problem(sizes, "sizes")
            if problem:
                return f"{fqn!r}: {problem}"
            if len(offs) != len(size) or len(sizes) != len(size):
                return f"{fqn!r}: a shard of rank {len(sizes)} in a tensor of rank {len(size)}"
            if any(o + s > g for o, s, g in zip(offs, sizes, size, strict=True)):
                return f"{fqn!r}: the shard at {offs} lies outside the tensor {size}"
            if type(i) is not int or not 0 <= i < n:
                return f"{fqn!r}: shard names no tensor entry ({i!r:.40})"
            if tensors[i].shape != sizes or tensors[i].dtype != dtype:
                return f"{fqn!r}: shard entry {i} does not match {dtype}{sizes}"
    if "planner_data" in sec:
        try:
            values.check_tree(sec["planner_data"], path=("<planner_data>",))
        except CorruptObjectError as e:
            return str(e)
    meta = sec.get("storage_meta")
    if meta is not None:
        if not isinstance(meta, dict):
            return "storage_meta is not an object"
        for k in ("checkpoint_id", "save_id"):
            if meta.get(k) is not None and not isinstance(meta[k], str):
                return f"storage_meta.{k} is not a string"
        mods = meta.get("modules", [])
        if not isinstance(mods, list) or not all(isinstance(m, str) for m in mods):
            return "storage_meta.modules is not a list of strings"
    if "dcp_version" in sec and not isinstance(sec["dcp_version"], str):
        return "dcp_version is not a string"
    return None
