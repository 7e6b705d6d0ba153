"""Writing committed files back: byte-identical safetensors, converted safetensors, torch.save
files and opaque blobs.

Safetensors and blobs stream: tensor bytes are read chunk by chunk (in parallel, a bounded
window ahead) and written in order, so memory stays near ``window × chunk_size`` whatever the
file size. ``torch.save`` needs every tensor of the state at once: a large state's file is
instead written in one pass by io/torch_zip.py -- torch.save's own zip, laid out by torch.save
on tensors that are never touched, with each storage's bytes streamed from the store into its
place -- so memory stays near the streamer's window; a small state is simply read into memory
and torch.saved. Where torch's layout is not the one torch_zip knows, the tensors go through a
mapped scratch file instead (the bytes are written twice).
"""

from __future__ import annotations

import mmap
import os
import secrets
import warnings
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import blake3
import numpy as np
import torch

from ..errors import CorruptObjectError, InputFileError, ObjectNotFoundError
from ..format import values
from ..format.manifest import FileEntry, Manifest, TensorEntry
from ..format.values import KeyPath, path_str
from ..state.encode import CheckoutHooks
from ..state.reader import TensorReader, as_committed
from ..state.tensors import dtype_from_name
from . import safetensors_file as stf
from . import torch_zip
from .mapped import PageDropper

if TYPE_CHECKING:
    from ..repo import Repo

Progress = Callable[[int], None]
Select = Callable[[KeyPath], bool]


def file_node(manifest: Manifest, rel: str) -> Any:
    """The value node stored under the file's key ``[rel]`` (None if absent)."""
    tree = manifest.tree
    if isinstance(tree, list) and tree and tree[0] in ("dict", "odict"):
        for k, v in tree[1]:
            if k == rel:
                return v
    return None


def is_tensor_node(node: Any) -> bool:
    return isinstance(node, list) and bool(node) and node[0] == "tensor"


def has_selected_leaf(node: Any, prefix: KeyPath, select: Select | None) -> bool:
    if select is None:
        return True
    return any(select(p) for p, _ in values.walk_leaves(node, prefix))


# -- commits made without files (Python API, callbacks) -------------------------------------
FOLDER_MARKER = "tensorvcs.transformers"  # metadata of a folder commit_dir / the HF callback made
LIGHTNING_MARKER = "tensorvcs.lightning"  # metadata of a TVCSCheckpointIO checkpoint
FOLDER_KEY = "files"
FOLDER_FORMATS = ("safetensors", "torch", "bytes")
STATE_FILE = "state"  # the name (before the suffix) of a whole state written into a folder


def dict_items(node: Any) -> list[tuple[Any, Any]] | None:
    """The (key, node) pairs of a dict node, or None when ``node`` is not a dict."""
    if isinstance(node, list) and len(node) == 2 and node[0] in ("dict", "odict"):
        items = node[1]
        if isinstance(items, list) and all(isinstance(kv, list) and len(kv) == 2 for kv in items):
            return [(kv[0], kv[1]) for kv in items]
    return None


@dataclass
class FolderFile:
    rel: str  # the file's path inside the folder
    format: str  # one of FOLDER_FORMATS
    node: Any  # the node of its content ("tensors", "value" or "data")
    prefix: KeyPath  # the key path of ``node`` in the state
    metadata: Any = None  # the node of a safetensors file's metadata


def folder_files(manifest: Manifest, metadata: dict[str, Any]) -> list[FolderFile] | None:
    """The files of a folder committed through the Python API (``commit_dir``, the Hugging
    Face callback: commit metadata ``FOLDER_MARKER`` and the state ``{"files": {rel: {"format":
    ..., ...}}}``, see integrations/transformers.py), or None for any other state."""
    if FOLDER_MARKER not in metadata:
        return None
    top = dict_items(manifest.tree)
    files = dict(top).get(FOLDER_KEY) if top is not None else None
    entries = dict_items(files)
    if entries is None:
        return None
    out: list[FolderFile] = []
    for rel, node in entries:
        fields = dict_items(node)
        if not isinstance(rel, str) or fields is None:
            return None
        f = dict(fields)
        fmt = f.get("format")
        key = {"safetensors": "tensors", "torch": "value", "bytes": "data"}.get(fmt)  # type: ignore[arg-type]
        if key is None or key not in f:
            return None
        out.append(FolderFile(rel, fmt, f[key], (FOLDER_KEY, rel, key), f.get("metadata")))  # type: ignore[arg-type]
    return out


def state_file_name(metadata: dict[str, Any]) -> str:
    """The file name (without suffix) a commit's whole state gets when it is checked out into a
    folder: the file name TVCSCheckpointIO saved it as (``last``, ``epoch=0-step=2``), else
    ``state``."""
    info = metadata.get(LIGHTNING_MARKER)
    path = info.get("path") if isinstance(info, dict) else None
    if isinstance(path, str):
        stem = Path(path.replace("\\", "/")).stem
        if stem and stem not in (".", "..") and "/" not in stem and "\0" not in stem:
            return stem
    return STATE_FILE


def write_bytes(data: bytes, fp: IO[bytes]) -> str:
    sink = _Sink(fp, None)
    sink.write(data)
    return sink.digest()


# -- streaming tensor bytes ------------------------------------------------------------------
class ByteStreamer:
    """The bytes of a run of tensor entries (or blob chunks), in order, read a bounded window
    of objects ahead on the repository's thread pool. Every object's hash is verified."""

    def __init__(self, repo: Repo, window: int | None = None) -> None:
        self.repo = repo
        self.window = window or max(4, 2 * repo.workers)
        self._packs: OrderedDict[str, Future[np.ndarray]] = OrderedDict()

    def _read(self, oid: str, length: int) -> np.ndarray:
        buf = np.empty(length, dtype=np.uint8)
        self.repo.objects.read_into(oid, buf)
        return buf

    def _read_pack(self, oid: str) -> np.ndarray:
        return self.repo.objects.read(oid)[1]

    def _pack(self, oid: str) -> Future[np.ndarray]:
        fut = self._packs.get(oid)
        if fut is None:
            fut = self.repo.pool.submit(self._read_pack, oid)
            self._packs[oid] = fut
            while len(self._packs) > self.window:
                self._packs.popitem(last=False)
        return fut

    def _jobs(self, items: list[tuple[str, TensorEntry]]) -> Iterator[tuple[str, Any]]:
        for name, e in items:
            if e.pack is not None:
                if e.nbytes:
                    yield name, ("pack", e.pack, e.offset, e.nbytes)
            else:
                for oid, length in e.chunks or []:
                    yield name, ("chunk", oid, length)

    def tensors(self, items: list[tuple[str, TensorEntry]]) -> Iterator[np.ndarray]:
        """Chunks of bytes of the named entries, in order (name is for error messages)."""
        pending: deque[tuple[str, tuple[Any, ...], Future[np.ndarray]]] = deque()
        jobs = self._jobs(items)

        def submit() -> bool:
            job = next(jobs, None)
            if job is None:
                return False
            name, spec = job
            if spec[0] == "pack":
                pending.append((name, spec, self._pack(spec[1])))
            else:
                pending.append((name, spec, self.repo.pool.submit(self._read, spec[1], spec[2])))
            return True

        while len(pending) < self.window and submit():
            pass
        while pending:
            name, spec, fut = pending.popleft()
            try:
                data = fut.result()
            except (CorruptObjectError, ObjectNotFoundError) as err:
                raise type(err)(f"tensor {name!r}: {err}", err.object_id) from err
            if spec[0] == "pack":
                off, n = spec[2], spec[3]
                if off + n > data.nbytes:
                    raise CorruptObjectError(
                        f"tensor {name!r}: pack {spec[1]} is {data.nbytes} bytes, entry needs "
                        f"{off}+{n}",
                        spec[1],
                    )
                data = data[off : off + n]
            submit()
            yield data

    def blob(self, fe: FileEntry) -> Iterator[np.ndarray]:
        entries = [
            (fe.path, TensorEntry("uint8", [n], n, chunks=[(oid, n)])) for oid, n in fe.chunks
        ]
        yield from self.tensors(entries)


class _Sink:
    """Writes to a file while hashing (BLAKE3) and reporting progress.

    With ``hash_behind`` (for writers whose buffers are never changed once written: the
    streamers' chunks, headers built for the write) large buffers are hashed on a thread of
    their own, in order, while the next ones are written: the hash, a third of the work on
    each byte a checkout writes, then runs beside the writes instead of between them. At most
    HASH_BEHIND buffers wait for it."""

    HASH_BEHIND = 8

    def __init__(self, fp: IO[bytes], progress: Progress | None, hash_behind: bool = False) -> None:
        self.fp = fp
        self.h = blake3.blake3()
        self.progress = progress
        self.size = 0
        self.error: OSError | None = None
        self._hasher = (ThreadPoolExecutor(1, thread_name_prefix="tvcs-hash") if hash_behind
                        else None)
        self._behind: deque[Future[Any]] = deque()

    def write(self, data: Any) -> None:
        mv = memoryview(data).cast("B")
        try:
            self.fp.write(mv)
        except OSError as e:  # kept: torch.save turns it into a RuntimeError without errno
            self.error = e
            raise
        if self._hasher is None:
            self.h.update(mv)
        elif mv.nbytes >= 1 << 20 or self._behind:  # small ones, behind large: in order
            piece = mv if mv.nbytes >= 1 << 20 else bytes(mv)
            self._behind.append(self._hasher.submit(self.h.update, piece))
            while len(self._behind) > self.HASH_BEHIND or (self._behind and self._behind[0].done()):
                self._behind.popleft().result()
        else:
            self.h.update(mv)
        self.size += mv.nbytes
        if self.progress is not None:
            self.progress(mv.nbytes)

    def flush(self) -> None:
        self.fp.flush()

    def digest(self) -> str:
        while self._behind:
            self._behind.popleft().result()
        if self._hasher is not None:
            self._hasher.shutdown()
            self._hasher = None
        return self.h.hexdigest()


# -- the writers -----------------------------------------------------------------------------
def write_blob(repo: Repo, fe: FileEntry, fp: IO[bytes], progress: Progress | None = None) -> str:
    sink = _Sink(fp, progress, hash_behind=True)
    for data in ByteStreamer(repo).blob(fe):
        sink.write(data)
    return sink.digest()


def read_blob(repo: Repo, chunks: list[tuple[str, int]]) -> bytes:
    return b"".join(repo.objects.read_bytes(oid) for oid, _ in chunks)


def write_safetensors_exact(
    repo: Repo,
    manifest: Manifest,
    fe: FileEntry,
    node: Any,
    fp: IO[bytes],
    progress: Progress | None = None,
) -> str:
    """The committed safetensors file, byte for byte: its header, then every tensor at its
    offsets."""
    header = read_blob(repo, fe.chunks)
    by_name = {k: v for k, v in node[1]} if isinstance(node, list) and node[0] == "dict" else {}
    items: list[tuple[str, TensorEntry]] = []
    pos = 0
    for name, begin, end in stf.header_order(header):
        leaf: Any = by_name.get(name)
        if not is_tensor_node(leaf):
            raise CorruptObjectError(f"{fe.path}: the commit has no tensor {name!r}")
        e = manifest.tensors[int(leaf[1])]
        if begin != pos or end - begin != e.nbytes:
            raise CorruptObjectError(f"{fe.path}: tensor {name!r} does not fit its offsets")
        pos = end
        items.append((name, e))
    sink = _Sink(fp, progress, hash_behind=True)
    sink.write(header)
    for data in ByteStreamer(repo).tensors(items):
        sink.write(data)
    return sink.digest()


@dataclass
class TensorItem:
    path: KeyPath  # key path inside the file (or the state, for a commit without files)
    entry: TensorEntry


def tensor_items(
    manifest: Manifest, node: Any, prefix: KeyPath, select: Select | None
) -> tuple[list[TensorItem], list[str]]:
    """The selected tensor leaves under ``node`` and the key paths of the other selected leaves
    (values a safetensors file cannot hold)."""
    items: list[TensorItem] = []
    others: list[str] = []
    for path, leaf in values.walk_leaves(node, prefix):
        if select is not None and not select(path):
            continue
        if is_tensor_node(leaf):
            items.append(TensorItem(path[len(prefix) :], manifest.tensors[int(leaf[1])]))
        else:
            others.append(path_str(path))
    return items, others


def safetensors_names(items: list[TensorItem]) -> list[str]:
    """Tensor names for a converted file: the key path joined with '.', without the part all
    tensors' parents share (so a Lightning checkpoint's ``state_dict/*`` keeps its keys)."""
    if not items:
        return []
    parents = [it.path[:-1] for it in items]
    common = 0
    while all(len(p) > common and p[common] == parents[0][common] for p in parents):
        common += 1
    names = [".".join(values._key_str(k) for k in it.path[common:]) for it in items]
    seen: dict[str, int] = {}
    for i, n in enumerate(names):
        if n in seen:
            raise InputFileError(
                f"two tensors would both be named {n!r} in the safetensors file "
                f"({path_str(items[seen[n]].path)} and {path_str(items[i].path)})"
            )
        seen[n] = i
    return names


def write_safetensors_converted(
    repo: Repo,
    items: list[TensorItem],
    metadata: dict[str, str] | None,
    fp: IO[bytes],
    progress: Progress | None = None,
) -> str:
    names = safetensors_names(items)
    return write_safetensors_named(
        repo, [(n, it.entry) for n, it in zip(names, items, strict=True)], metadata, fp, progress,
        [path_str(it.path) for it in items],
    )


def write_safetensors_named(
    repo: Repo,
    named: list[tuple[str, TensorEntry]],
    metadata: dict[str, str] | None,
    fp: IO[bytes],
    progress: Progress | None = None,
    labels: list[str] | None = None,
) -> str:
    """A safetensors file of the stored tensors ``named`` ((name, entry), in that order): the
    header, then each tensor's bytes streamed from the store (a bounded window in memory).
    ``labels``: the tensors' key paths, for the error naming one safetensors cannot hold."""
    header_items = []
    for j, (name, e) in enumerate(named):
        dt = stf.DTYPE_NAMES.get(dtype_from_name(e.dtype))
        if dt is None:
            raise InputFileError(
                f"tensor {labels[j] if labels else name!r} has dtype {e.dtype}, which "
                "safetensors cannot hold (use --format pt)"
            )
        header_items.append((name, dt, list(e.shape), e.nbytes))
    sink = _Sink(fp, progress, hash_behind=True)
    sink.write(stf.make_header(header_items, metadata))
    for data in ByteStreamer(repo).tensors(named):
        sink.write(data)
    return sink.digest()


def write_pt(obj: Any, fp: IO[bytes], progress: Progress | None = None) -> str:
    """torch.save ``obj`` into ``fp``; a failed write raises the OSError itself (ENOSPC...),
    not torch's "[enforce fail at inline_container.cc] ... file write failed"."""
    sink = _Sink(fp, progress)
    try:
        torch.save(obj, sink)  # type: ignore[arg-type]
    except RuntimeError as e:
        if sink.error is not None:
            raise sink.error from e
        raise
    return sink.digest()


STREAM_PT_BYTES = 64 << 20  # states with more tensor bytes than this go through a scratch file
ALIGN = 64


def write_pt_file(
    repo: Repo,
    manifest: Manifest,
    node: Any,
    prefix: KeyPath,
    select: Select | None,
    allow_pickle: bool,
    fp: IO[bytes],
    scratch: Path,
    progress: Progress | None = None,
) -> str:
    """torch.save the (selected) value of ``node`` into ``fp``; see the module docstring."""
    wanted, paths = manifest.selected_tensors(node, prefix, select)
    if sum(e.nbytes for e in wanted.values()) < STREAM_PT_BYTES:
        sub = Manifest(node, manifest.tensors)
        return write_pt(repo.materialize(sub, select, None, allow_pickle, root=prefix), fp)
    src = _PtSource(repo, node, prefix, select, allow_pickle, wanted, paths)
    try:
        return _write_pt_streamed(src, fp)
    except torch_zip.Unsupported:  # raised before anything is written to fp
        return _write_pt_via_scratch(src, fp, scratch, progress)


@dataclass
class _PtSource:
    """The (selected) value of a commit's ``node`` that a .pt file is written from, and the
    tensor entries it uses ({index: entry}, {index: first key path})."""

    repo: Repo
    node: Any
    prefix: KeyPath
    select: Select | None
    allow_pickle: bool
    wanted: dict[int, TensorEntry]
    paths: dict[int, KeyPath]

    def named(self, i: int) -> list[tuple[str, TensorEntry]]:
        return [(path_str(self.paths[i]), self.wanted[i])]

    def decode(self, tensors: dict[int, torch.Tensor]) -> Any:
        """The value, entry i's tensor being ``tensors[i]``."""

        def load_tensor(i: int, path: KeyPath) -> torch.Tensor:
            return tensors[i]

        def load_blob(oid: str, path: KeyPath) -> bytes:
            return self.repo.objects.read_bytes(oid)

        hooks = CheckoutHooks(load_tensor, load_blob, self.allow_pickle)
        obj = values.decode(self.node, hooks, self.prefix, self.select)
        return {} if obj is values.ABSENT else obj


def _write_pt_streamed(src: _PtSource, fp: IO[bytes]) -> str:
    """torch.save's file written in one pass, each storage's bytes streamed from the store
    (io/torch_zip.py): memory stays near the streamer's window. The tensors torch.save sees
    are allocated but never touched; numpy arrays are read for real (decoding copies them)."""
    arrays = {int(leaf[1]) for _, leaf in values.walk_leaves(src.node, src.prefix)
              if isinstance(leaf, list) and leaf and leaf[0] == "ndarray"}
    tensors = TensorReader(src.repo.objects, src.repo.pool).read(
        {i: e for i, e in src.wanted.items() if i in arrays}, lambda i: path_str(src.paths[i])
    )
    stream: dict[int, int] = {}  # storage _cdata -> entry index, for the untouched tensors
    for i, e in src.wanted.items():
        if i in tensors:
            continue
        try:
            t = torch.empty(e.shape, dtype=dtype_from_name(e.dtype))
        except (RuntimeError, MemoryError) as err:  # no address space for it: the slow path
            raise torch_zip.Unsupported(f"cannot allocate {e.nbytes} bytes: {err}") from None
        stream[t.untyped_storage()._cdata] = i
        tensors[i] = as_committed(t, e)
    parts, storages = torch_zip.record(src.decode(tensors))
    layout, gaps = torch_zip.plan(parts, storages)
    streamer = ByteStreamer(src.repo)

    def fill(storage: torch.UntypedStorage) -> Iterator[Any]:
        i = stream.get(storage._cdata)
        if i is None:  # bytes that are in memory (an array's, or one decoding made)
            whole = torch.empty(0, dtype=torch.uint8)
            whole.set_(storage, 0, (storage.nbytes(),))  # type: ignore[call-overload]
            yield whole.numpy()
            return
        yield from streamer.tensors(src.named(i))

    sink = _Sink(fp, None, hash_behind=True)  # the caller's fp counts the bytes written
    torch_zip.replay(layout, gaps, storages, fill, sink.write)
    return sink.digest()


def _write_pt_via_scratch(
    src: _PtSource, fp: IO[bytes], scratch: Path, progress: Progress | None
) -> str:
    """The fallback where torch.save's layout is not the one io/torch_zip.py knows: the
    tensors are streamed into a scratch file next to the destination, mapped read-only, and
    torch.saved from the mapping while PageDropper drops the pages it has read (memory stays
    small; the bytes are written twice)."""
    tmp = scratch / f".tvcs-{os.getpid()}-{secrets.token_hex(4)}.tensors"
    offsets: dict[int, int] = {}
    try:
        with open(tmp, "wb") as out:
            streamer = ByteStreamer(src.repo)
            pos = 0
            for i in src.wanted:
                pad = -pos % ALIGN
                out.write(b"\0" * pad)
                pos += pad
                offsets[i] = pos
                for data in streamer.tensors(src.named(i)):
                    out.write(data.data)
                    pos += data.nbytes
                    if progress is not None:
                        progress(data.nbytes)
        dropper = PageDropper([tmp])
        with open(tmp, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if pos else None
    finally:
        tmp.unlink(missing_ok=True)  # the mapping stays valid; the name goes now
    tensors: dict[int, torch.Tensor] = {}
    for i, e in src.wanted.items():
        dtype = dtype_from_name(e.dtype)
        if e.nbytes == 0 or mm is None:
            t = torch.empty(e.shape, dtype=dtype)
        else:
            u8 = np.frombuffer(mm, dtype=np.uint8, count=e.nbytes, offset=offsets[i])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # read-only buffer: torch.save only reads
                t = torch.from_numpy(u8).view(dtype).reshape(e.shape)
        tensors[i] = as_committed(t, e)
    obj = src.decode(tensors)
    with dropper:  # the views (tensors, obj) keep the mapping alive until after this block
        return write_pt(obj, fp)


def replace_file(tmp: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    os.replace(tmp, dest)
