"""Computing tensor statistics (format/stats.py) from a tensor's bytes, piece by piece.

The writer measures each chunk while it hashes it and merges the pieces per tensor
(StatsAccumulator): counts add up, min/max are exact, sums and sums of squares are reduced
in float32 rows of _BLOCK elements (float64 for float64) whose results accumulate in
float64, mean = sum / finite elements, norm = sqrt(sum of squares). The difference norm
against the parent's tensor adds up the same way from the pairs of chunks the delta path
already holds (the difference taken in float32, where nearby values subtract exactly); an
unchanged chunk adds 0.

Cost (issue 13: at most 5% of commit time): _scan reads each element from memory once. A
piece is taken _SPAN elements at a time; a bf16/fp16/fp8 block is widened to float32 once
into a per-thread buffer (reused: no fresh pages per chunk) that stays in cache while the
block's sums, sums of squares, min and max, and with a parent its difference from the
parent's block, are read from it. A chunk with a parent chunk is measured in one pass with
its change (ChunkHook). The reductions are numpy's, one thread each: the writer's pool
already keeps the cores busy, and torch's kernels would start an OpenMP team inside every
pool worker (measured: twice the CPU time for the same work). Where the native loops are
built (accel.native), fp32 and bf16 pieces take one C pass instead: 1.4-4.8% of a commit's
CPU, against 3.9-14.5% for the numpy path (bench/stats_overhead.py --attribute,
docs/performance.md).

Fast path: when a piece's float64 sum and sum of squares are both finite it holds no NaN or
Inf (either would make them non-finite), so the counting and masking passes are skipped.
Nothing here writes into the bytes it is given (they are the chunk about to be stored, and
may be the caller's tensor).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..accel import native
from ..errors import CorruptObjectError, ObjectNotFoundError
from ..format.manifest import TensorEntry
from ..format.stats import TensorStats
from ..store.objects import ObjectStore
from .tensors import byte_view, dtype_name

_F64 = torch.float64


@dataclass
class _Part:
    numel: int = 0
    nan: int = 0
    inf: int = 0
    finite: int = 0
    total: float = 0.0
    sumsq: float = 0.0
    lo: float | int | None = None
    hi: float | int | None = None


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_complex:
        return "complex"
    if dtype.is_floating_point:
        return "float"
    return "bool" if dtype == torch.bool else "int"


def _values(u8: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The bytes ``u8`` (1-D uint8, CPU) as elements: complex as (re, im) float pairs, bool
    as uint8."""
    if dtype == torch.bool:
        return u8
    x = u8.view(dtype)
    if dtype.is_complex:
        x = torch.view_as_real(x)
    return x


_BLOCK = 1024  # elements summed in the element precision before float64 takes over
# A block's float32 sum of squares below this is redone in float64 (its squares may have
# underflowed: elements under ~1e-19, as in Adam's second moments)
_UNDERFLOW_SQ = 1e-28
# Elements per cache block: the float32 copies of a block (and of the parent's block) stay in
# cache while the block's reductions read them (of 16K-256K, 128K measured fastest here:
# smaller blocks pay numpy's per-call cost more often, larger ones leave the cache).
_SPAN = 1 << 17
_NP_FLOAT = {torch.float32: np.float32, torch.float64: np.float64}
_NATIVE_KIND = {torch.float32: 0, torch.bfloat16: 1}  # tensorvcs/_native.c scan()
_scratch = threading.local()  # per thread: reusable widening buffers (no fresh pages a chunk)


def _buffer(i: int, np_dtype: type) -> np.ndarray:
    """Scratch buffer number ``i`` of _SPAN elements for this thread."""
    key = (i, np_dtype)
    bufs: dict[tuple[int, type], np.ndarray] | None = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    b = bufs.get(key)
    if b is None:
        b = bufs[key] = np.empty(_SPAN, dtype=np_dtype)
    return b


def _np_bytes(u8: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(u8, np.ndarray):
        return u8
    return (u8 if u8.device.type == "cpu" else u8.cpu()).numpy()


def _widen(src: np.ndarray, dtype: torch.dtype, out: np.ndarray) -> np.ndarray:
    """The elements whose bytes are ``src`` (a whole number of _BLOCK-element rows), as
    float32 (float64 kept as is): a view for float32/float64, else written to ``out``.

    bfloat16 is the high half of a float32: each pair of elements read as one uint32 gives
    the odd element by masking and the even one by shifting, two contiguous integer passes
    that write the even elements then the odd ones (the order within a block does not matter
    to the sums, min and max; each row still sums _BLOCK elements)."""
    np_dtype = _NP_FLOAT.get(dtype)
    if np_dtype is not None:
        return src.view(np_dtype)
    k = src.nbytes // dtype.itemsize
    f = out[:k]
    if dtype == torch.bfloat16:
        pairs = src.view(_U32LE)
        bits = f.view(np.uint32)
        h = k // 2
        np.left_shift(pairs, 16, out=bits[:h])
        np.bitwise_and(pairs, 0xFFFF0000, out=bits[h:])
    else:  # float16 and the float8 kinds: torch's conversion
        torch.from_numpy(f).copy_(_as_tensor(src).view(dtype))
    return f


def _ones(np_dtype: type) -> np.ndarray:
    o = _ONES.get(np_dtype)
    if o is None:
        o = _ONES[np_dtype] = np.ones(_BLOCK, dtype=np_dtype)
    return o


_ONES: dict[type, np.ndarray] = {}
_U32LE = np.dtype("<u4")  # the canonical bytes are little-endian


def _rowdot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each row of ``a`` dotted with the matching row of ``b`` (or with ``b`` itself, one
    row), in the rows' precision: numpy 2's vecdot (BLAS dot per row: one thread for rows
    this short, its SIMD lanes each summing 1024 / 32 products, as accurate as torch's
    cascade sum here); numpy 1 has only einsum (its own SIMD loop: up to 1.2e-6 of a row's
    sum of squares measured, three times vecdot's)."""
    if _VECDOT is not None:
        return _VECDOT(a, b)
    if b.ndim == 1:
        return np.matmul(a, b)
    return np.einsum("ij,ij->i", a, b)


_VECDOT = getattr(np, "vecdot", None)


def _row_sumsq(r: np.ndarray, out: np.ndarray) -> None:
    """Each row's sum of squares into ``out`` (float64); rows whose float32 sum underflows
    are summed again in float64."""
    sq = _rowdot(r, r)
    out[:] = sq
    if r.dtype != np.float64 and sq.min() < _UNDERFLOW_SQ:
        low = np.flatnonzero(sq < _UNDERFLOW_SQ)
        w = r[low].astype(np.float64)
        out[low] = _rowdot(w, w)


@dataclass
class _Scan:
    """What one pass over a floating piece found: its (sum, sum of squares, min, max) when
    asked for, and the sum of squares of its change against ``old`` when given one."""

    total: float = 0.0
    sumsq: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    delta: float = 0.0

    def finite(self) -> bool:
        return math.isfinite(self.total) and math.isfinite(self.sumsq)


def _scan(
    new: np.ndarray, old: np.ndarray | None, dtype: torch.dtype, values: bool = True
) -> _Scan:
    """One read of each element from memory: the piece is taken _SPAN elements at a time,
    widened to float32 once (bf16/fp16/fp8) into a per-thread buffer that stays in cache,
    and that block's row sums, row sums of squares, min and max (``values``), and with
    ``old`` its difference from the parent's block (in float32; float64 for float64) and that
    difference's row sums of squares, read it there. Rows of _BLOCK elements are reduced in
    float32 (numpy, one thread: torch's kernels would start an OpenMP team inside each pool
    worker), their results added in float64; a tail shorter than a row in float64.

    Non-finite elements make the sums non-finite (the callers then take the float64 path).
    float32 and bfloat16 go through the native loop where it is built (one pass per element,
    the same rows and lanes: tensorvcs/_native.c)."""
    kind = _NATIVE_KIND.get(dtype)
    if (
        kind is not None
        and native is not None
        and new.flags.c_contiguous
        and (old is None or old.flags.c_contiguous)
    ):
        total, sumsq, lo, hi, delta = native.scan(kind, new, old, values)
        return _Scan(total, sumsq, lo, hi, delta)
    item = dtype.itemsize
    numel = new.nbytes // item
    m = numel - numel % _BLOCK
    rows = m // _BLOCK
    out = _Scan()
    sums = np.empty(rows if values else 0, dtype=np.float64)
    sumsq = np.empty(rows if values else 0, dtype=np.float64)
    dsq = np.empty(rows if old is not None else 0, dtype=np.float64)
    a_buf = _buffer(0, np.float32)
    b_buf = _buffer(1, np.float32)
    in_place = dtype in _NP_FLOAT  # read in place, not widened
    d_buf = _buffer(2, np.float64 if dtype == _F64 else np.float32) if in_place else a_buf
    step = _SPAN * item
    with np.errstate(all="ignore"):
        for b in range(0, m * item, step):
            e = min(b + step, m * item)
            x = _widen(new[b:e], dtype, a_buf)
            r = x.reshape(-1, _BLOCK)
            i, j = b // item // _BLOCK, e // item // _BLOCK
            if values:
                sums[i:j] = _rowdot(r, _ones(r.dtype.type))
                _row_sumsq(r, sumsq[i:j])
                out.lo = min(out.lo, float(x.min()))
                out.hi = max(out.hi, float(x.max()))
            if old is not None:
                y = _widen(old[b:e], dtype, b_buf)
                # in place where ``x`` is this thread's copy (fewer buffers: they stay cached)
                diff = np.subtract(x, y, out=d_buf[: x.size] if in_place else x)
                _row_sumsq(diff.reshape(-1, _BLOCK), dsq[i:j])
        out.total = float(sums.sum())
        out.sumsq = float(sumsq.sum())
        out.delta = float(dsq.sum())
    if m < numel:
        tail = _values(_as_tensor(new[m * item :]), dtype).to(_F64)
        if values:
            out.total += float(tail.sum())
            out.sumsq += float(torch.dot(tail, tail))
            tlo, thi = torch.aminmax(tail)
            out.lo, out.hi = min(out.lo, float(tlo)), max(out.hi, float(thi))
        if old is not None:
            # out of place: for float64, ``tail`` is the caller's memory
            d = tail - _values(_as_tensor(old[m * item :]), dtype).to(_F64)
            out.delta += float(torch.dot(d, d))
    return out


def _part(u8: torch.Tensor | np.ndarray, dtype: torch.dtype, scan: _Scan | None = None) -> _Part:
    """The statistics of one piece (``scan``: its _scan already made, values included)."""
    kind = _kind(dtype)
    numel = u8.nbytes // dtype.itemsize
    if kind == "float":
        if scan is None:
            scan = _scan(_np_bytes(u8), None, dtype)
        if scan.finite():  # so no NaN or Inf: fast path
            return _Part(numel, 0, 0, numel, scan.total, scan.sumsq, scan.lo, scan.hi)
    t8 = _as_tensor(u8)
    x = _values(t8, dtype).reshape(-1)
    xd = x.to(_F64)
    total = float(xd.sum())
    sumsq = float(torch.dot(xd, xd))
    p = _Part(numel=numel, finite=numel, total=total, sumsq=sumsq)
    if kind in ("int", "bool"):
        if not numel:
            return p
        try:
            lo, hi = torch.aminmax(x)
            p.lo, p.hi = int(lo), int(hi)
        except (RuntimeError, NotImplementedError):  # uint16/32/64: no torch min/max kernel
            arr = t8.numpy().view(np.dtype(f"<u{dtype.itemsize}"))
            p.lo, p.hi = int(arr.min()), int(arr.max())
        return p
    if kind == "complex" and math.isfinite(total) and math.isfinite(sumsq):
        return p  # complex, all finite (a float piece gets here when its float32 block sums
        # overflowed: it still needs min/max, below)
    # non-finite elements (or sums that overflow): count and mask, in float64
    if kind == "complex":
        pairs = xd.view(-1, 2)
        nan_el = torch.isnan(pairs).any(dim=1)
        inf_el = torch.isinf(pairs).any(dim=1) & ~nan_el
        fin = ~(nan_el | inf_el)
        p.nan, p.inf = int(nan_el.sum()), int(inf_el.sum())
        kept = pairs[fin].reshape(-1)
    else:
        nan_el = torch.isnan(xd)
        inf_el = torch.isinf(xd)
        p.nan, p.inf = int(nan_el.sum()), int(inf_el.sum())
        kept = xd[~(nan_el | inf_el)]
    p.finite = numel - p.nan - p.inf
    p.total = float(kept.sum())
    p.sumsq = float(torch.dot(kept, kept))
    if kind == "float" and kept.numel():
        lo, hi = torch.aminmax(kept)
        p.lo, p.hi = float(lo), float(hi)
    return p


def _delta_sumsq(
    new: torch.Tensor | np.ndarray,
    old: torch.Tensor | np.ndarray,
    dtype: torch.dtype,
    scan: _Scan | None = None,
) -> float | None:
    """The sum of squares of (new − old) elementwise; None when not finite. Floating
    elements are subtracted in float32 (float64 for float64), where the difference of two
    nearby values is exact (Sterbenz) and any other is rounded to 6e-8 of itself, then their
    squares summed as _scan does (``scan``: that pass already made, with ``old``); one that
    overflows float32 is taken again in float64. Integers: in float64."""
    if _kind(dtype) == "float":
        if scan is None:
            scan = _scan(_np_bytes(new), _np_bytes(old), dtype, values=False)
        s = scan.delta
        if math.isfinite(s) or dtype == _F64:
            return s if math.isfinite(s) else None
    a = _values(_as_tensor(new), dtype).reshape(-1).to(_F64)
    b = _values(_as_tensor(old), dtype).reshape(-1).to(_F64)
    d = a - b  # not in place: a float64 (or complex128) ``a`` is the caller's memory
    s = float(torch.dot(d, d))
    return s if math.isfinite(s) else None


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


class StatsAccumulator:
    """The statistics of one tensor, merged from its pieces (added from any thread, in any
    order). ``result()`` is None when the dtype has no statistics here (failed)."""

    def __init__(self, dtype: torch.dtype, numel: int) -> None:
        self.dtype = dtype
        self.numel = numel
        self._kind = _kind(dtype)
        # per piece (by its index in the tensor), merged in that order by result(): pieces
        # arrive from the pool in any order, and float sums must not depend on it
        self._parts: dict[int, _Part] = {}
        self._deltas: dict[int, float] = {}
        self._delta_known = True  # False: a piece's change is unknown (no pair)
        self._failed = False
        self._lock = threading.Lock()

    def add(self, u8: torch.Tensor | np.ndarray, index: int = 0) -> None:
        """Add piece number ``index`` of the tensor's canonical bytes."""
        if u8.nbytes == 0:
            return
        try:
            p = _part(u8, self.dtype)
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            with self._lock:
                self._failed = True
            return
        with self._lock:
            self._parts[index] = p

    def add_delta(
        self,
        new: torch.Tensor | np.ndarray,
        old: torch.Tensor | np.ndarray | None,
        index: int = 0,
    ) -> None:
        """Add the change of one piece against the parent's piece (None: not known, which
        makes the tensor's delta_norm unknown). Equal pieces need no call."""
        if old is None:
            self.no_delta()
            return
        try:
            s = _delta_sumsq(new, old, self.dtype)
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            s = None
        with self._lock:
            self._keep_delta(index, s)

    def _keep_delta(self, index: int, s: float | None) -> None:
        """Record piece ``index``'s squared change (None: unknown); the lock is held."""
        if s is None:
            self._delta_known = False
        else:
            self._deltas[index] = s

    def add_with_delta(
        self, new: torch.Tensor | np.ndarray, old: torch.Tensor | np.ndarray, index: int = 0
    ) -> None:
        """``add(new)`` and ``add_delta(new, old)`` together: for floating pieces one pass
        over both (the new piece is widened and read from memory once)."""
        if self._kind != "float" or new.nbytes == 0 or new.nbytes != old.nbytes:
            self.add(new, index)
            self.add_delta(new, old, index)
            return
        try:
            a8, b8 = _np_bytes(new), _np_bytes(old)
            scan = _scan(a8, b8, self.dtype)
            p = _part(a8, self.dtype, scan)
            s = _delta_sumsq(a8, b8, self.dtype, scan)
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            with self._lock:
                self._failed = True
            return
        with self._lock:
            self._parts[index] = p
            self._keep_delta(index, s)

    def no_delta(self) -> None:
        with self._lock:
            self._delta_known = False

    def _merged(self) -> _Part:
        q = _Part()
        for _, p in sorted(self._parts.items()):
            q.numel += p.numel
            q.nan += p.nan
            q.inf += p.inf
            q.finite += p.finite
            q.total += p.total
            q.sumsq += p.sumsq
            if p.lo is not None and p.hi is not None:
                q.lo = p.lo if q.lo is None else min(q.lo, p.lo)
                q.hi = p.hi if q.hi is None else max(q.hi, p.hi)
        return q

    def result(self, with_delta: bool) -> TensorStats | None:
        """The merged statistics; delta_norm only ``with_delta`` (the tensor had a parent
        tensor of the same dtype and shape) and when every piece's change was known."""
        q = self._merged()
        if self._failed or q.numel != self.numel:
            return None
        mean = norm = None
        if q.finite and self._kind != "complex":
            mean = _finite(q.total / q.finite)
        if q.finite or not q.numel:
            norm = _finite(math.sqrt(q.sumsq))
        delta = None
        if with_delta and self._delta_known and q.nan + q.inf == 0:
            delta = _finite(math.sqrt(sum(v for _, v in sorted(self._deltas.items()))))
        lo, hi = q.lo, q.hi
        if mean is not None and lo is not None and hi is not None:
            mean = min(max(mean, lo), hi)  # rounding never puts the mean outside [min, max]
        return TensorStats(
            numel=q.numel,
            nan=q.nan,
            inf=q.inf,
            min=lo,
            max=hi,
            mean=mean,
            norm=norm,
            delta_norm=delta,
        )


def _as_tensor(u8: torch.Tensor | np.ndarray) -> torch.Tensor:
    if isinstance(u8, np.ndarray):
        return torch.from_numpy(u8 if u8.flags.writeable else u8.copy())
    return u8 if u8.device.type == "cpu" else u8.cpu()


def _canonical_bytes(t: torch.Tensor) -> torch.Tensor:
    u8 = byte_view(t)
    return u8 if u8.device.type == "cpu" else u8.cpu()


def compute_stats(t: torch.Tensor, parent: torch.Tensor | None = None) -> TensorStats | None:
    """The statistics of ``t`` (as the writer records them), with delta_norm against
    ``parent`` when it has the same dtype and shape. None for a dtype without statistics."""
    acc = StatsAccumulator(t.dtype, t.numel())
    u8 = _canonical_bytes(t)
    acc.add(u8)
    paired = parent is not None and parent.dtype == t.dtype and parent.shape == t.shape
    if paired and parent is not None:
        old = _canonical_bytes(parent)
        if not torch.equal(old, u8):
            acc.add_delta(u8, old)
    return acc.result(paired)


class ChunkHook:
    """The statistics of one chunk of a tensor being written (TensorWriter._write_chunk):
    its values, and its change against the parent's chunk at the same index (``base``).
    A chunk with a base is measured once the parent's chunk is in hand (``base_seen`` or
    ``finish``), in one pass with its change."""

    def __init__(self, acc: StatsAccumulator, base: str | None, index: int = 0) -> None:
        self.acc = acc
        self.base = base
        self.index = index  # the chunk's number in its tensor (the order partial sums merge)
        self._seen = False
        self._pending = False  # values() came, not yet measured

    def values(self, arr: np.ndarray) -> None:
        if self.base is None:
            self.acc.add(arr, self.index)
        else:
            self._pending = True

    def _measure(self, new: np.ndarray, old: np.ndarray | None) -> None:
        if not self._pending:
            if old is None:
                self.acc.no_delta()
            else:
                self.acc.add_delta(new, old, self.index)
            return
        self._pending = False
        if old is None:
            self.acc.add(new, self.index)
            self.acc.no_delta()
        else:
            self.acc.add_with_delta(new, old, self.index)

    def base_seen(self, new: np.ndarray, old: np.ndarray) -> None:
        """The parent chunk's content, where the delta path has it in hand."""
        self._seen = True
        self._measure(new, old)

    def finish(self, oid: str, arr: np.ndarray, read_base: Callable[[], np.ndarray | None]) -> None:
        """After the chunk is written: its values if not measured yet, and its change, unless
        equal to its base or seen already (``read_base`` reads the parent chunk: from the
        delta-base cache, else the store)."""
        if self.base is None or self._seen:
            return
        if self.base == oid:
            if self._pending:
                self._pending = False
                self.acc.add(arr, self.index)
            return
        self._measure(arr, read_base())


class TensorHook:
    """One chunked tensor's statistics: a ChunkHook per chunk, merged by ``result``."""

    def __init__(self, t: torch.Tensor, bases: list[tuple[str, int]] | None) -> None:
        self.acc = StatsAccumulator(t.dtype, t.numel())
        self.bases = bases

    def chunk(self, k: int, length: int) -> ChunkHook:
        base = None
        if self.bases is not None:
            if k < len(self.bases) and self.bases[k][1] == length:
                base = self.bases[k][0]
            else:  # the parent's chunks are cut differently (another chunk_size)
                self.acc.no_delta()
        return ChunkHook(self.acc, base, k)

    def result(self) -> TensorStats | None:
        return self.acc.result(self.bases is not None)


class StatsRecorder:
    """What TensorWriter.write asks for the statistics of a commit's tensors: hooks for the
    chunked ones, the whole statistics of the small (packed) ones. ``parent`` maps key paths
    to the parent commit's entries; a small tensor's parent bytes are read from its pack
    (the last few packs read are kept, since neighbouring tensors share packs)."""

    KEEP_PACKS = 4

    def __init__(self, objects: ObjectStore, parent: dict[str, TensorEntry]) -> None:
        self.objects = objects
        self.parent = parent
        self._packs: dict[str, np.ndarray | None] = {}

    def _paired(self, key: str, t: torch.Tensor) -> TensorEntry | None:
        e = self.parent.get(key)
        if e is None or e.dtype != dtype_name(t.dtype) or e.shape != list(t.shape):
            return None
        return e

    def tensor(self, key: str, t: torch.Tensor) -> TensorHook:
        e = self._paired(key, t)
        return TensorHook(t, e.chunks if e is not None and e.chunks is not None else None)

    def _pack(self, pack: str) -> np.ndarray | None:
        if pack not in self._packs:
            if len(self._packs) >= self.KEEP_PACKS:
                self._packs.pop(next(iter(self._packs)))
            try:
                data = self.objects.read_bytes(pack)
                self._packs[pack] = np.frombuffer(data, dtype=np.uint8)
            except (ObjectNotFoundError, CorruptObjectError):  # partial clone; fsck's business
                self._packs[pack] = None
        return self._packs[pack]

    def small(
        self, key: str, t: torch.Tensor, arr: np.ndarray, sid: str | None
    ) -> TensorStats | None:
        """The statistics of a small tensor whose canonical bytes are ``arr`` (id ``sid``)."""
        acc = StatsAccumulator(t.dtype, t.numel())
        acc.add(arr)
        e = self._paired(key, t)
        if e is not None and arr.nbytes and e.id != sid:
            old = None
            if e.pack is not None:
                content = self._pack(e.pack)
                if content is not None and e.offset + e.nbytes <= content.nbytes:
                    old = content[e.offset : e.offset + e.nbytes]
            acc.add_delta(arr, old)
        return acc.result(e is not None)
