"""Computing tensor statistics (format/stats.py) from a tensor's bytes, piece by piece.

The writer measures each chunk while it hashes it and merges the pieces per tensor
(StatsAccumulator): counts add up, min/max are exact, sums and sums of squares accumulate in
float64 (a float64 copy of one chunk at a time), mean = sum / finite elements, norm =
sqrt(sum of squares). The difference norm against the parent's tensor adds up the same way
from the pairs of chunks the delta path already holds; an unchanged chunk adds 0.

Fast path: when a piece's float64 sum and sum of squares are both finite it holds no NaN or
Inf (either would make them non-finite), so the counting and masking passes are skipped.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch

from ..format.stats import TensorStats

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


def _part(u8: torch.Tensor, dtype: torch.dtype) -> _Part:
    kind = _kind(dtype)
    x = _values(u8, dtype)
    numel = u8.numel() // dtype.itemsize
    xd = x.to(_F64).reshape(-1)
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
    if math.isfinite(total) and math.isfinite(sumsq):
        if kind == "float" and numel:
            lo, hi = torch.aminmax(xd if x.dtype.itemsize == 1 else x)
            p.lo, p.hi = float(lo), float(hi)
        return p
    # non-finite elements (or an overflowing sum of squares): count and mask
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
    """The sum of squares of (new − old) elementwise, in float64; None when not finite."""
    a = _values(new, dtype).to(_F64).reshape(-1)
    b = _values(old, dtype).to(_F64).reshape(-1)
    d = a.sub_(b)
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
        self._part = _Part()
        self._delta: float | None = 0.0  # None: unknown (no parent, or a piece had no pair)
        self._failed = False
        self._lock = threading.Lock()

    def add(self, u8: torch.Tensor | np.ndarray) -> None:
        """Add one piece of the tensor's canonical bytes."""
        try:
            p = _part(_as_tensor(u8), self.dtype)
        except (RuntimeError, TypeError, ValueError, NotImplementedError):
            with self._lock:
                self._failed = True
            return
        with self._lock:
            q = self._part
            q.numel += p.numel
            q.nan += p.nan
            q.inf += p.inf
            q.finite += p.finite
            q.total += p.total
            q.sumsq += p.sumsq
            if p.lo is not None and p.hi is not None:
                q.lo = p.lo if q.lo is None else min(q.lo, p.lo)
                q.hi = p.hi if q.hi is None else max(q.hi, p.hi)

    def add_delta(
        self, new: torch.Tensor | np.ndarray, old: torch.Tensor | np.ndarray | None
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
            if s is None or self._delta is None:
                self._delta = None
            else:
                self._delta += s

    def no_delta(self) -> None:
        with self._lock:
            self._delta = None

    def result(self, with_delta: bool) -> TensorStats | None:
        """The merged statistics; delta_norm only ``with_delta`` (the tensor had a parent
        tensor of the same dtype and shape) and when every piece's change was known."""
        q = self._part
        if self._failed or q.numel != self.numel:
            return None
        mean = norm = None
        if q.finite and self._kind != "complex":
            mean = _finite(q.total / q.finite)
        if q.finite or not q.numel:
            norm = _finite(math.sqrt(q.sumsq))
        delta = None
        if with_delta and self._delta is not None and q.nan + q.inf == 0:
            delta = _finite(math.sqrt(self._delta))
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
        return torch.from_numpy(u8)
    return u8 if u8.device.type == "cpu" else u8.cpu()


def _canonical_bytes(t: torch.Tensor) -> torch.Tensor:
    from .tensors import byte_view

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
