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
  it holds them (a small budget: see state/basecache.py), else from the store — one decode,
  since the parent's chunk is the newest version and so stored whole. Either way the delta is
  computed against the same bytes (the parent's chunk, by id), so what is stored does not
  depend on where they came from.
- Memory stays bounded (issue 11, goal 1: 512 MiB + 0.1 × S): nothing holds a copy of the
  state. At most ``workers`` chunks are in flight, each with its encodings and, for a changed
  chunk, the parent's content. A parent chunk's delta is written to a file at once and put in
  place by the store's sync at the end of the write (Store.put ``defer``), after the new
  chunks, its bases, are durable and named: no encoded delta waits in memory, and the files
  are fsynced together (one fsync each right after writing cost an ext4 journal commit per
  file). A local store syncs early past 64 MiB of waiting re-encodings (store/local.py
  REPLACE_BATCH_BYTES: until its rename each parent file and its delta both fill the page
  cache). Nothing is left for later when ``write`` returns, so resuming from a commit never
  depends on deferred work. A commit that fails leaves temp files, which the next sync of the
  same store puts in place as it would have (new chunks first, then the deltas on them: the
  content under each id is unchanged) or gc removes; gc keeps the delta bases of what it
  keeps.
- Buffers are reused: a parent chunk taken from the cache goes back to it for the new
  chunk's copy (BaseCache.recycle), and the encodings' planes and differences live in each
  thread's scratch buffers (codecs ``reuse``), written before the thread encodes again. Fresh
  memory costs the kernel a zeroed page per 4 KiB: on a W3 commit, more than the encoding.
- ``defer_deltas`` (a commit in the background of a training loop, issue 11 goal 4): the
  re-encodings are not done but listed in ``stats.deferred``, to be done later by
  ``rewrite_deferred`` (``Repo.apply_deferred_deltas``); the new chunks get the same version
  numbers either way. Nothing written depends on them: the parent chunks simply stay whole
  (more bytes) until then, and content under every id is the same in both states.
- On object storage (``known_ids``, set by Repo.tensor_writer) an existence check is a
  request: the parent's objects count as stored and any other object is written create-only
  without asking. A chunk such a write finds already there (a revert to an older version)
  is never made anyone's delta base, in the commit or deferred: it may itself be a delta
  whose chain leads back to the parent's chunk.
- Chunk jobs run on a thread pool: BLAKE3 and zstd release the GIL, so hashing, encoding and
  file writes of different chunks overlap. CUDA tensors are copied to the host one chunk at a
  time inside the jobs, so host memory stays around ``workers × chunk_size``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field, replace

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
from .stats import ChunkHook, StatsRecorder, TensorHook
from .tensors import byte_view, dtype_name

Location = tuple[str, int]  # (pack id, offset)
Deferred = tuple[str, str, int]  # (parent chunk id, new chunk id, element width), left for later


@dataclass
class WriteStats:
    tensors: int = 0
    logical_bytes: int = 0
    new_objects: int = 0
    new_stored_bytes: int = 0
    reused_objects: int = 0
    rewritten_objects: int = 0  # parent chunks re-encoded as deltas against new ones
    # with defer_deltas: the re-encodings left for later (TensorWriter.rewrite_deferred)
    deferred: list[Deferred] = field(default_factory=list)
    # with defer_deltas and an owned snapshot: the contents in memory of those items' chunks
    # (views of the snapshot's new chunks, the parents' from the delta-base cache), so that
    # the re-encodings need not read them back (rewrite_deferred ``contents``). It holds the
    # snapshot's memory: Repo.commit drops it when the next commit starts.
    deferred_content: dict[str, np.ndarray] = field(default_factory=dict)
    # ‖new − parent‖ per key path: a property of the commit, not of the state, so it goes
    # into the commit ("changes"), never the manifest (same state, same manifest)
    changes: dict[str, float] = field(default_factory=dict)


class TensorWriter:
    record_stats = True  # record each tensor's statistics in its entry (state/stats.py)

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
        # leave the parent chunks' re-encodings for later (stats.deferred), e.g. for a commit
        # in the background of a training loop: what is written is complete without them
        self.defer_deltas = False
        # where each existence check is a request (object storage): the ids known to be
        # stored (the parent's objects, which the gc lock held by the caller keeps, and what
        # this writer stored); any other id is written create-only without asking first
        self.known_ids: set[str] | None = None
        self._stats_lock = threading.Lock()  # the pool's jobs update the stats
        self.stats = WriteStats()
        # progress (the CLI's bars): on_phase(name, total bytes) when a phase begins —
        # 'encoding' with the tensors' bytes, then 'syncing' (total 0) before the final
        # rewrites and fsyncs; on_bytes(n) from the pool as each chunk or pack is stored (and
        # at once for a tensor stored before); called from several threads
        self.on_bytes: Callable[[int], None] | None = None
        self.on_phase: Callable[[str, int], None] | None = None

    def _content(self, oid: str, length: int) -> np.ndarray | None:
        """The content of the parent's chunk ``oid``: from the cache, else the store."""
        hit = self.cache.take(oid) if self.cache is not None else None
        if hit is not None and hit.nbytes == length:
            return hit
        # this thread's buffer: each use of the parent's content ends before the next read
        content = codecs.scratch(codecs.BASE_SLOT, length)
        try:
            self.objects.read_into(oid, content)
        except ObjectNotFoundError:  # a partial clone lacks it (docs/remotes.md): no delta
            return None
        except CorruptObjectError:  # fsck's business; this commit stores its chunk whole
            return None
        return content

    def _version(self, parent: str) -> tuple[int, envelope.Header | None]:
        """The version number of a new chunk whose predecessor is the parent's chunk
        ``parent``, and the parent's header when that chunk is to become a delta against the
        new one. Every ``max_depth + 1``-th version of a chunk is left whole (a keyframe),
        which bounds the chains of older versions to ``max_depth`` deltas; a chunk that is a
        delta already (another writer's) is left as it is."""
        try:
            h = self.objects.header(parent)
        except (ObjectNotFoundError, CorruptObjectError):
            return 0, None  # a partial clone lacks it, or fsck's business: store this whole
        seq = int(h.params.get("seq", 0))
        if h.codec == codecs.CODEC_DELTA or seq % (self.max_depth + 1) == self.max_depth:
            return seq + 1, None
        return seq + 1, h

    def _rewrite(
        self,
        parent: str,
        h: envelope.Header,
        content: np.ndarray,
        oid: str,
        width: int,
        seen: ChunkHook | None = None,
        old_content: np.ndarray | None = None,
    ) -> None:
        """Re-encode the parent's chunk ``parent`` as a delta against the new chunk ``oid``
        (written by this writer: its install is pending or done) if that is smaller. The new
        file goes in place at the store's next sync, after the chunk it depends on is durable
        and named (Store.put ``defer``): nothing is held in memory meanwhile.
        ``old_content``: the parent chunk's content when the caller has it in memory."""
        if old_content is None or old_content.nbytes != content.nbytes:
            old_content = self._content(parent, content.nbytes)
        if old_content is None:
            return
        if seen is not None:  # the statistics' change norm, from the bytes in hand
            seen.base_seen(content, old_content)
        delta = codecs.encode_delta(old_content, content, width, oid, 1, reuse=True)
        delta = delta.checked(old_content.data)  # the bytes in hand (verified when read)
        if self.cache is not None:
            self.cache.recycle(old_content)
        del old_content
        old = self.objects.stored_size(parent)
        if delta.size >= old - h.payload_offset:
            return
        new = self.objects.replace(
            parent, envelope.KIND_CHUNK, content.nbytes, delta, sync=False, defer=True
        )
        with self._stats_lock:
            self.stats.new_stored_bytes += new - old
            self.stats.rewritten_objects += 1

    def _stored(self, oid: str) -> bool:
        """Whether ``oid`` is stored already: asked of the store, or, with ``known_ids``,
        answered from it (an id not known is then written create-only, which refuses it
        where it was there after all)."""
        if self.known_ids is None:
            return self.objects.has(oid)
        return oid in self.known_ids

    def rewrite_deferred(
        self,
        items: list[Deferred],
        contents: dict[str, np.ndarray] | None = None,
        stop: Callable[[], bool] | None = None,
        left: list[Deferred] | None = None,
    ) -> int:
        """Do re-encodings an earlier write deferred: each parent chunk becomes a delta
        against its new chunk when that is smaller, exactly as the write would have made it.
        A chunk's content comes from ``contents`` (id -> bytes in memory, e.g. the write's
        ``deferred_content``) when there, else from the store. Items whose chunks are gone
        (gc) or whose parent is a delta already are skipped. ``stop``: asked before each item;
        once it answers True the items not yet begun are not done but appended to ``left``
        (the ones begun finish). Returns the parent chunks re-encoded. The caller holds off
        gc (the repository's gc lock, shared) while this runs. The items run on the writer's
        pool (reads and encodings overlap; on object storage each read is a round trip), each
        job holding two chunks; the re-encodings are in place when this returns (the store's
        sync)."""
        held = contents or {}
        skipped = [False] * len(items)

        def one(k: int) -> None:
            if stop is not None and stop():
                skipped[k] = True
                return
            parent, oid, width = items[k]
            content = held.get(oid)
            try:  # a chunk gc removed raises here (and the parent's in _version): skipped
                if content is None:
                    content = np.empty(self.objects.header(oid).length, dtype=np.uint8)
                    self.objects.read_into(oid, content)
            except (ObjectNotFoundError, CorruptObjectError):
                return
            _, h = self._version(parent)
            if h is not None:
                self._rewrite(parent, h, content, oid, width, old_content=held.get(parent))

        futures = [self.pool.submit(one, k) for k in range(len(items))]
        wait_futures(futures)  # all of them ended, even when one failed: none runs on after
        for f in futures:
            f.result()
        self.objects.store.sync()
        if left is not None:  # in the order given, whatever order the pool ran them in
            left.extend(item for item, s in zip(items, skipped, strict=True) if s)
        return self.stats.rewritten_objects

    def _cache_mode(self, src: torch.Tensor) -> str | None:
        """How this tensor's chunks go into the delta-base cache: ``"views"``, an owned
        snapshot's chunks uncopied, admitted per tensor (a view pins its whole storage, which
        is what is counted); ``"changed"``, every other chunk copied (or a device tensor's
        host copy kept) if it changed since the parent (BaseCache.offer); None: not kept."""
        if self.cache is None:
            return None
        if self.owned and src.device.type == "cpu":
            held = max(src.numel(), src.untyped_storage().nbytes())
            return "views" if self.cache.reserve(held) else None
        return "changed"

    def _base_chunks(self, p: PendingTensor, t: torch.Tensor) -> list[tuple[str, int]] | None:
        if self.max_depth <= 0:
            return None
        e = self.parent.get(path_str(p.path))
        if e is None or e.chunks is None or e.dtype != dtype_name(t.dtype):
            return None
        return e.chunks if e.shape == list(t.shape) else None

    def _write_chunk(
        self,
        src: torch.Tensor,
        offset: int,
        length: int,
        width: int,
        base_id: str | None,
        cached: str | None,
        hook: ChunkHook | None = None,
    ) -> tuple[str, int]:
        piece = src[offset : offset + length]
        on_host = piece.device.type == "cpu"
        if not on_host:
            piece = piece.cpu()  # one chunk at a time: a fresh host copy nobody else holds
        arr = piece.numpy()
        oid = object_id(arr.data)
        if hook is not None:
            hook.values(arr)
        written = 0
        held_base: np.ndarray | None = None  # the parent's content, kept for a deferred delta
        if not self._stored(oid):
            seq, h = 0, None
            if base_id and base_id != oid:
                seq, h = self._version(base_id)
            enc = codecs.encode_elements(arr, width, reuse=True)
            enc = enc.checked(arr.data, seq=seq)
            written = self.objects.write(oid, envelope.KIND_CHUNK, length, enc, defer=True)
            del enc
            # only a chunk this write created may become a delta base: one that was there
            # already (another writer's, or an older version: a revert) may itself be a
            # delta whose chain leads back to the parent's chunk
            if written and h is not None and base_id:
                if self.defer_deltas:
                    # an owned snapshot's chunk stays as it is: its view, and the parent's
                    # content if the cache holds it, let the re-encoding skip two reads
                    if self.owned and on_host and self.cache is not None:
                        held_base = self.cache.take(base_id)
                        if held_base is not None and held_base.nbytes != length:
                            held_base = None
                    with self._stats_lock:
                        self.stats.deferred.append((base_id, oid, width))
                        if self.owned and on_host:
                            self.stats.deferred_content[oid] = arr
                            if held_base is not None:
                                self.stats.deferred_content[base_id] = held_base
                else:
                    self._rewrite(base_id, h, arr, oid, width, hook)
        if self.known_ids is not None:
            self.known_ids.add(oid)
        if hook is not None and hook.base is not None:
            if held_base is not None and hook.base == base_id:
                hook.finish(oid, arr, lambda: held_base)
            else:
                hook.finish(oid, arr, lambda: self._content(hook.base or "", length))
        if cached == "views" and self.cache is not None:
            self.cache.keep(oid, arr, copy=False)
        elif cached == "changed" and self.cache is not None:
            changed = base_id is not None and base_id != oid
            self.cache.offer(oid, arr, changed=changed, copy=on_host)
        if self.on_bytes is not None:
            self.on_bytes(length)
        return oid, written

    def _write_pack(self, parts: list[np.ndarray], width: int) -> tuple[str, int]:
        content = np.concatenate(parts) if len(parts) > 1 else parts[0]
        oid = object_id(content.data)
        written = 0
        if not self._stored(oid):
            enc = codecs.encode_elements(content, width).checked(content.data)
            written = self.objects.write(oid, envelope.KIND_PACK, content.nbytes, enc, defer=True)
        if self.known_ids is not None:
            self.known_ids.add(oid)
        if self.on_bytes is not None:
            self.on_bytes(content.nbytes)
        return oid, written

    def write(self, pending: list[PendingTensor]) -> list[TensorEntry]:
        entries: list[TensorEntry] = []
        chunk_jobs: list[tuple[int, list[Future[tuple[str, int]]]]] = []
        # packing state: per width, the parts of the pack being filled and who sits where
        open_parts: dict[int, list[np.ndarray]] = {}
        open_size: dict[int, int] = {}
        open_members: dict[int, list[tuple[int, int]]] = {}  # width -> [(entry index, offset)]
        pack_jobs: list[tuple[Future[tuple[str, int]], list[tuple[int, int]]]] = []
        placed_here: dict[str, tuple[int, int]] = {}  # small id -> (entry idx, offset) pending
        rec = StatsRecorder(self.objects, self.parent) if self.record_stats else None
        hooks: dict[int, TensorHook | None] = {}  # entry index -> a chunked tensor's statistics
        on_bytes = self.on_bytes
        if self.on_phase is not None:
            total = sum(p.tensor.numel() * p.tensor.element_size() for p in pending)
            self.on_phase("encoding", total)

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
                if rec is not None:
                    entry.stats = rec.small(path_str(p.path), t, np.empty(0, np.uint8), None)
                continue
            src = byte_view(t)
            if n > self.pack_threshold:
                cs = self.chunk_size
                bases = self._base_chunks(p, t)
                cached = self._cache_mode(src)
                th = hooks[i] = rec.tensor(path_str(p.path), t) if rec is not None else None
                futs = [
                    self.pool.submit(
                        self._write_chunk, src, off, min(cs, n - off), p.width,
                        _base_id(bases, k, min(cs, n - off)), cached,
                        th.chunk(k, min(cs, n - off)) if th is not None else None,
                    )
                    for k, off in enumerate(range(0, n, cs))
                ]
                chunk_jobs.append((i, futs))
                continue
            arr = src.cpu().numpy() if src.device.type != "cpu" else src.numpy()
            sid = object_id(arr.data)
            entry.id = sid
            if rec is not None:
                entry.stats = rec.small(path_str(p.path), t, arr, sid)
            if sid in self.known_small:
                entry.pack, entry.offset = self.known_small[sid]
                if on_bytes is not None:
                    on_bytes(n)
                continue
            if sid in placed_here:
                if on_bytes is not None:
                    on_bytes(n)
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
            th = hooks.get(i)
            if th is not None:
                e.stats = th.result()
        for fut, members in pack_jobs:
            pack_id, written = fut.result()
            self._count(written)
            for idx, off in members:
                entries[idx].pack, entries[idx].offset = pack_id, off
                self.known_small[entries[idx].id or ""] = (pack_id, off)
        for e in entries:  # small tensors that repeated one packed earlier in this commit
            if e.id is not None and e.pack is None:
                e.pack, e.offset = self.known_small[e.id]
        if self.on_phase is not None:
            self.on_phase("syncing", 0)
        # the new objects named, then the re-encodings in place; their folders are fsynced
        # by the caller's next sync (a commit's manifest), in the same round as its own
        self.objects.store.sync(defer_folders=True)
        for p, e in zip(pending, entries, strict=True):
            if e.stats is not None and e.stats.delta_norm is not None:
                if e.stats.delta_norm > 0:  # unchanged tensors are not named (see with_change)
                    self.stats.changes[path_str(p.path)] = e.stats.delta_norm
                e.stats = replace(e.stats, delta_norm=None)
        self.stats.tensors = len(entries)
        return entries

    def _count(self, written: int) -> None:
        with self._stats_lock:
            if written:
                self.stats.new_objects += 1
                self.stats.new_stored_bytes += written
            else:
                self.stats.reused_objects += 1


def _base_id(bases: list[tuple[str, int]] | None, k: int, length: int) -> str | None:
    if bases is None or k >= len(bases) or bases[k][1] != length:
        return None
    return bases[k][0]
