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
nn.Parameter), ``requires_grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptObjectError
from . import jsonenc, values
from .ids import is_object_id

MANIFEST_VERSION = 1


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
        return d

    @classmethod
    def from_json(cls, d: Any, where: str) -> TensorEntry:
        try:
            e = cls(
                dtype=str(d["dtype"]),
                shape=[int(x) for x in d["shape"]],
                nbytes=int(d["nbytes"]),
                param=bool(d.get("param", False)),
                requires_grad=bool(d.get("requires_grad", False)),
            )
            if "pack" in d:
                e.pack, e.offset, e.id = str(d["pack"]), int(d["offset"]), str(d["id"])
                ok = is_object_id(e.pack) and is_object_id(e.id) and e.offset >= 0
            else:
                e.chunks = [(str(c[0]), int(c[1])) for c in d["chunks"]]
                ok = all(is_object_id(c[0]) for c in e.chunks)
                ok = ok and sum(c[1] for c in e.chunks) == e.nbytes
            if not ok:
                raise ValueError("bad object reference or length")
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CorruptObjectError(f"{where}: malformed tensor entry: {err}") from err
        return e


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
    def from_json(cls, d: Any, where: str) -> FileEntry:
        try:
            return cls(
                path=str(d["path"]),
                kind=str(d["kind"]),
                format=str(d["format"]),
                size=int(d["size"]),
                chunks=[(str(c[0]), int(c[1])) for c in d.get("chunks", [])],
                extra=dict(d.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CorruptObjectError(f"{where}: malformed file entry: {err}") from err


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
            doc["files"] = [f.to_json() for f in self.files]
        if self.dcp is not None:
            doc["dcp"] = self.dcp
        return jsonenc.dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, oid: str) -> Manifest:
        where = f"manifest {oid}"
        try:
            doc = jsonenc.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptObjectError(f"{where} is not valid JSON: {e}", oid) from e
        if not isinstance(doc, dict) or doc.get("type") != "manifest":
            raise CorruptObjectError(f"object {oid} is not a manifest", oid)
        if doc.get("version") != MANIFEST_VERSION:
            raise CorruptObjectError(f"{where} has unsupported version {doc.get('version')!r}", oid)
        return cls(
            tree=doc["tree"],
            tensors=[TensorEntry.from_json(t, where) for t in doc.get("tensors", [])],
            files=[FileEntry.from_json(f, where) for f in doc.get("files", [])],
            dcp=doc["dcp"] if isinstance(doc.get("dcp"), dict) else None,
        )

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
