"""Writing tensors into the object store: chunking, packing, hashing, encoding — in parallel.

- A tensor larger than the pack threshold is cut into ``chunk_size`` pieces of its canonical
  bytes; each piece is an object (so a few changed rows of an embedding make a few new chunks).
- Smaller tensors are packed: each gets the id of its own bytes; one already known (from the
  parent commit or earlier in this commit) keeps its place, the new ones are concatenated into
  pack objects (one run per element width, so the byte-plane codec applies).
- Reverse deltas: a new chunk is stored whole; when its tensor existed at the same key path
  in the parent commit with the same dtype and shape, the parent's chunk at the same index is
  then re-encoded as a delta against it (byte planes of the zigzag integer difference) if that
  is smaller — after the new chunk is durable, by an atomic replace (same id, same content).
  The newest version is never a chain; every ``max_depth + 1``-th version stays whole, which
  bounds older versions' chains. The parent's bytes come from the in-memory BaseCache when
  this process wrote the parent, else from the store.
- Chunk jobs run on a thread pool: BLAKE3 and zstd release the GIL, so hashing, encoding and
  file writes of different chunks overlap. CUDA tensors are copied to the host one chunk at a
  time inside the jobs, so host memory stays around ``workers × chunk_size``.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CorruptObjectError, ObjectNotFoundError
from ..format import codecs, envelope
from ..format.ids import object_id
from ..format.manifest import TensorEntry
from ..format.values import path_str
from ..store.objects import ObjectStore
from .basecache import BaseCache
from .encode import PendingTensor
from .tensors import byte_view, dtype_name

Location = tuple[str, int]  # (pack id, offset)


def default_workers() -> int:
    """Twice the cores (4 to 16): a job spends part of its time in fsync, not on a core, so
    more jobs than cores keep the cores busy while others wait on the disk."""
    return max(4, min(16, 2 * (os.cpu_count() or 2)))


@dataclass
class WriteStats:
    tensors: int = 0
    logical_bytes: int = 0
    new_objects: int = 0
    new_stored_bytes: int = 0
    reused_objects: int = 0
    rewritten_objects: int = 0  # parent chunks re-encoded as deltas against new ones


class TensorWriter:
    def __init__(
        self,
        objects: ObjectStore,
        pool: ThreadPoolExecutor,
        chunk_size: int,
        pack_threshold: int,
        known_small: dict[str, Location] | None = None,
        parent: dict[str, TensorEntry] | None = None,
        cache: BaseCache | None = None,
        max_depth: int = 0,
        owned: bool = False,
    ) -> None:
        self.objects = objects
        self.pool = pool
        self.chunk_size = chunk_size
        self.pack_threshold = pack_threshold
        self.known_small = dict(known_small or {})
        self.parent = parent or {}
        self.cache = cache
        self.max_depth = max_depth
        self.owned = owned  # the tensors will not change after this write: cache them uncopied
        # reverse deltas: a new chunk is stored whole and the parent's chunk is rewritten as a
        # delta against it, so the newest version (the one resumed from) is never a chain
        self._rewrites: list[tuple[str, int, codecs.Encoded, int]] = []
        self._rewrites_lock = threading.Lock()
        self.stats = WriteStats()

    def _content(self, oid: str, length: int) -> np.ndarray | None:
        """The content of the parent's chunk ``oid``: from the cache, else the store."""
        hit = self.cache.get(oid) if self.cache is not None else None
        if hit is not None and hit.nbytes == length:
            return hit
        content = np.empty(length, dtype=np.uint8)
        try:
            self.objects.read_into(oid, content)
        except ObjectNotFoundError:  # a partial clone lacks it (docs/remotes.md): no delta
            return None
        return content

    def _plan_rewrite(self, parent: str, content: np.ndarray, oid: str, width: int) -> int:
        """Queue the parent's chunk to be re-encoded as a delta against the new chunk
        ``oid`` (applied once ``oid`` is durable); returns the new chunk's version number.

        Every ``max_depth + 1``-th version of a chunk is left whole, which bounds the chains
        of older versions to ``max_depth`` deltas."""
        try:
            h = self.objects.header(parent)
        except (ObjectNotFoundError, CorruptObjectError):
            return 0  # a partial clone lacks it, or fsck's business: store this one whole
        seq = int(h.params.get("seq", 0))
        if h.codec == codecs.CODEC_DELTA or seq % (self.max_depth + 1) == self.max_depth:
            return seq + 1  # already a delta (another writer), or a keyframe: leave it
        old_content = self._content(parent, content.nbytes)
        if old_content is None:
            return 0
        delta = codecs.encode_delta(old_content, content, width, oid, 1)
        old = self.objects.stored_size(parent)
        if delta.size < old - h.payload_offset:
            with self._rewrites_lock:
                self._rewrites.append((parent, content.nbytes, delta, old))
        return seq + 1

    def _apply_rewrites(self) -> None:
        """Re-encode the queued parent chunks as deltas: only after the chunks they now
        depend on are durable, each by an atomic replace (same id, same content)."""
        if not self._rewrites:
            return
        self.objects.store.sync()

        def one(item: tuple[str, int, codecs.Encoded, int]) -> int:
            parent, length, enc, old = item
            self.objects.replace(parent, envelope.KIND_CHUNK, length, enc, sync=False)
            return self.objects.stored_size(parent) - old

        for change in self.pool.map(one, self._rewrites):
            self.stats.new_stored_bytes += change
            self.stats.rewritten_objects += 1
        self._rewrites = []
        self.objects.store.sync()

    def _base_chunks(self, p: PendingTensor, t: torch.Tensor) -> list[tuple[str, int]] | None:
        if self.max_depth <= 0:
            return None
        e = self.parent.get(path_str(p.path))
        if e is None or e.chunks is None or e.dtype != dtype_name(t.dtype):
            return None
        return e.chunks if e.shape == list(t.shape) else None

    def _write_chunk(
        self, src: torch.Tensor, offset: int, length: int, width: int, base_id: str | None
    ) -> tuple[str, int]:
        piece = src[offset : offset + length]
        on_host = piece.device.type == "cpu"
        if not on_host:
            piece = piece.cpu()  # one chunk at a time: a fresh host copy nobody else holds
        arr = piece.numpy()
        oid = object_id(arr.data)
        written = 0
        if not self.objects.has(oid):
            enc = codecs.encode_elements(arr, width)
            seq = self._plan_rewrite(base_id, arr, oid, width) if base_id and base_id != oid else 0
            enc = codecs.Encoded(enc.codec, {**enc.params, "seq": seq}, enc.pieces)
            written = self.objects.write(oid, envelope.KIND_CHUNK, length, enc)
        if self.cache is not None:
            self.cache.keep(oid, arr, copy=on_host and not self.owned)
        return oid, written

    def _write_pack(self, parts: list[np.ndarray], width: int) -> tuple[str, int]:
        content = np.concatenate(parts) if len(parts) > 1 else parts[0]
        oid = object_id(content.data)
        if self.objects.has(oid):
            return oid, 0
        enc = codecs.encode_elements(content, width)
        return oid, self.objects.write(oid, envelope.KIND_PACK, content.nbytes, enc)

    def write(self, pending: list[PendingTensor]) -> list[TensorEntry]:
        entries: list[TensorEntry] = []
        chunk_jobs: list[tuple[int, list[Future[tuple[str, int]]]]] = []
        # packing state: per width, the parts of the pack being filled and who sits where
        open_parts: dict[int, list[np.ndarray]] = {}
        open_size: dict[int, int] = {}
        open_members: dict[int, list[tuple[int, int]]] = {}  # width -> [(entry index, offset)]
        pack_jobs: list[tuple[Future[tuple[str, int]], list[tuple[int, int]]]] = []
        placed_here: dict[str, tuple[int, int]] = {}  # small id -> (entry idx, offset) pending

        def flush(width: int) -> None:
            if open_parts.get(width):
                fut = self.pool.submit(self._write_pack, open_parts[width], width)
                pack_jobs.append((fut, open_members[width]))
            open_parts[width], open_size[width], open_members[width] = [], 0, []

        for i, p in enumerate(pending):
            t = p.tensor
            n = t.numel() * t.element_size()
            entry = TensorEntry(
                dtype=dtype_name(t.dtype),
                shape=list(t.shape),
                nbytes=n,
                param=isinstance(t, torch.nn.Parameter),
                requires_grad=bool(t.requires_grad),
            )
            entries.append(entry)
            self.stats.logical_bytes += n
            if n == 0:
                entry.chunks = []
                continue
            src = byte_view(t)
            if n > self.pack_threshold:
                cs = self.chunk_size
                bases = self._base_chunks(p, t)
                futs = [
                    self.pool.submit(
                        self._write_chunk, src, off, min(cs, n - off), p.width,
                        _base_id(bases, k, min(cs, n - off)),
                    )
                    for k, off in enumerate(range(0, n, cs))
                ]
                chunk_jobs.append((i, futs))
                continue
            arr = src.cpu().numpy() if src.device.type != "cpu" else src.numpy()
            sid = object_id(arr.data)
            entry.id = sid
            if sid in self.known_small:
                entry.pack, entry.offset = self.known_small[sid]
                continue
            if sid in placed_here:
                continue  # resolved to the same place once its pack is written
            w = p.width if p.width > 0 and n % p.width == 0 else 1
            if open_size.get(w, 0) + n > self.chunk_size:
                flush(w)
            open_parts.setdefault(w, []).append(arr)
            open_members.setdefault(w, []).append((i, open_size.get(w, 0)))
            placed_here[sid] = (i, open_size.get(w, 0))
            open_size[w] = open_size.get(w, 0) + n
        for w in list(open_parts):
            flush(w)

        for i, futs in chunk_jobs:
            e = entries[i]
            e.chunks = []
            for k, f in enumerate(futs):
                oid, written = f.result()
                e.chunks.append((oid, min(self.chunk_size, e.nbytes - k * self.chunk_size)))
                self._count(written)
        for fut, members in pack_jobs:
            pack_id, written = fut.result()
            self._count(written)
            for idx, off in members:
                entries[idx].pack, entries[idx].offset = pack_id, off
                self.known_small[entries[idx].id or ""] = (pack_id, off)
        for e in entries:  # small tensors that repeated one packed earlier in this commit
            if e.id is not None and e.pack is None:
                e.pack, e.offset = self.known_small[e.id]
        self._apply_rewrites()
        self.stats.tensors = len(entries)
        return entries

    def _count(self, written: int) -> None:
        if written:
            self.stats.new_objects += 1
            self.stats.new_stored_bytes += written
        else:
            self.stats.reused_objects += 1


def _base_id(bases: list[tuple[str, int]] | None, k: int, length: int) -> str | None:
    if bases is None or k >= len(bases) or bases[k][1] != length:
        return None
    return bases[k][0]
