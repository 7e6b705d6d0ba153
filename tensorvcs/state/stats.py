"""Computing tensor statistics (format/stats.py) from a tensor's bytes, piece by piece.

The writer measures each chunk while it hashes it and merges the pieces per tensor
(StatsAccumulator): counts add up, min/max are exact, sums and sums of squares accumulate in
float64 (a float64 copy of one chunk at a time), mean = sum / finite elements, norm =
sqrt(sum of squares). The difference norm against the parent's tensor adds up the same way
from the pairs of chunks the delta path already holds (the difference taken in float32, where
nearby values subtract exactly; see _delta_sumsq); an unchanged chunk adds 0.

Fast path: when a piece's float64 sum and sum of squares are both finite it holds no NaN or
Inf (either would make them non-finite), so the counting and masking passes are skipped.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

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
_UNDERFLOW = 1e-14  # a float32 block norm below this is redone in float64 (see _sums)
_NATIVE = (torch.float32, torch.float64)


def _float_values(x: torch.Tensor) -> torch.Tensor:
    """Floating elements torch reduces directly: narrower kinds (bfloat16, float16, float8)
    widened to float32 once (bf16: 5.5 ms CPU per 4 MiB chunk, against 5.8 ms for the bf16
    kernels accumulating in float32, measured interleaved here)."""
    return x if x.dtype in _NATIVE else x.float()


def _sums(x: torch.Tensor) -> tuple[float, float]:
    """(sum, sum of squares) of the floating elements ``x``: blocks of _BLOCK elements are
    reduced in float32 (float64 for float64: torch's cascade sum and norm kernels, one pass
    each), the blocks' results combined in float64; a tail shorter than a block in float64."""
    return _total(x), _sumsq(x)


def _split(x: torch.Tensor) -> tuple[torch.dtype, torch.Tensor | None, torch.Tensor | None]:
    """(the block accumulator dtype, the whole blocks as rows, the float64 tail)."""
    acc = _F64 if x.dtype == _F64 else torch.float32
    n = x.numel()
    m = n - n % _BLOCK
    rows = x[:m].view(-1, _BLOCK) if m else None
    tail = x[m:].to(_F64) if m < n else None
    return acc, rows, tail


def _total(x: torch.Tensor) -> float:
    acc, rows, tail = _split(x)
    total = 0.0
    if rows is not None:
        total = float(rows.sum(dim=1, dtype=acc).sum(dtype=_F64))
    if tail is not None:
        total += float(tail.sum())
    return total


def _sumsq(x: torch.Tensor) -> float:
    """The sum of squares, as _sums. A block whose float32 norm is under _UNDERFLOW (its
    squares may have underflowed: elements under ~1e-19, as in Adam's second moments) is
    reduced again in float64, so tiny values keep a norm accurate to float32 rounding."""
    acc, rows, tail = _split(x)
    sumsq = 0.0
    if rows is not None:
        norms = torch.linalg.vector_norm(rows, dim=1, dtype=acc).to(_F64)
        if acc is not _F64:
            low = (norms < _UNDERFLOW).nonzero().squeeze(1)
            if low.numel():
                norms[low] = torch.linalg.vector_norm(rows[low].to(_F64), dim=1)
        sumsq = float(torch.dot(norms, norms))
    if tail is not None:
        sumsq += float(torch.dot(tail, tail))
    return sumsq


def _part(u8: torch.Tensor, dtype: torch.dtype) -> _Part:
    kind = _kind(dtype)
    x = _values(u8, dtype).reshape(-1)
    numel = u8.numel() // dtype.itemsize
    if kind == "float":
        x = _float_values(x)
        total, sumsq = _sums(x)
        if math.isfinite(total) and math.isfinite(sumsq):  # so no NaN or Inf: fast path
            lo, hi = torch.aminmax(x)
            return _Part(numel, 0, 0, numel, total, sumsq, float(lo), float(hi))
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
            arr = u8.numpy().view(np.dtype(f"<u{dtype.itemsize}"))
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


def _delta_sumsq(new: torch.Tensor, old: torch.Tensor, dtype: torch.dtype) -> float | None:
    """The sum of squares of (new − old) elementwise; None when not finite. Floating
    elements are subtracted in float32 (float64 for float64), where the difference of two
    nearby values is exact (Sterbenz) and any other is rounded to 6e-8 of itself, then summed
    as _sumsq; one that overflows float32 is taken again in float64. Integers: in float64."""
    a = _values(new, dtype).reshape(-1)
    b = _values(old, dtype).reshape(-1)
    if _kind(dtype) == "float":
        a, b = _float_values(a), _float_values(b)
        if a.dtype != _F64:
            a, b = a.float(), b.float()
        s = _sumsq(a - b)
        if math.isfinite(s) or a.dtype == _F64:
            return s if math.isfinite(s) else None
    s = _sumsq(a.to(_F64).sub_(b.to(_F64)))
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
            p = _part(_as_tensor(u8), self.dtype)
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
            s = _delta_sumsq(_as_tensor(new), _as_tensor(old), self.dtype)
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            s = None
        with self._lock:
            if s is None:
                self._delta_known = False
            else:
                self._deltas[index] = s

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
    its values, and its change against the parent's chunk at the same index (``base``)."""

    def __init__(self, acc: StatsAccumulator, base: str | None, index: int = 0) -> None:
        self.acc = acc
        self.base = base
        self.index = index  # the chunk's number in its tensor (the order partial sums merge)
        self._seen = False

    def values(self, arr: np.ndarray) -> None:
        self.acc.add(arr, self.index)

    def base_seen(self, new: np.ndarray, old: np.ndarray) -> None:
        """The parent chunk's content, where the delta path has it in hand."""
        self._seen = True
        self.acc.add_delta(new, old, self.index)

    def finish(self, oid: str, arr: np.ndarray, read_base: Callable[[], np.ndarray | None]) -> None:
        """After the chunk is written: its change, unless equal to its base or seen already
        (``read_base`` reads the parent chunk: from the delta-base cache, else the store)."""
        if self.base is None or self.base == oid or self._seen:
            return
        self.acc.add_delta(arr, read_base(), self.index)


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
