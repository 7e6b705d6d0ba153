"""Tensor statistics recorded in a manifest's tensor entries (docs/format.md, "stats").

A tensor entry may carry ``"stats"``: what the writer measured while it hashed the tensor's
bytes, so that ``tvcs ls --stats``, ``tvcs diff --stats``, ``tvcs log`` and ``tvcs report``
answer without reading tensor bytes. Older manifests have none; readers treat a missing
``stats`` as "not recorded" (the manifest version is unchanged)::

    {"numel": 4096, "nan": 0, "inf": 0, "min": -0.31, "max": 0.29,
     "mean": 0.0012, "norm": 18.2, "delta_norm": 0.05}

- ``numel``, ``nan``, ``inf``: element count; elements that are NaN; elements that are +/-Inf
  (for complex dtypes an element counts when either part is). Integer and bool dtypes have
  ``nan`` = ``inf`` = 0.
- ``min``, ``max``, ``mean``, ``norm``: over the finite elements only (so one NaN does not hide
  the magnitude of the rest); absent when there are none (writers leave the key out; readers
  also accept ``null`` for it). An empty tensor has ``norm`` 0.0 (an empty sum). ``norm`` is
  the L2 norm; ``mean`` and ``norm`` add float32 partial sums of at most 1024 elements in
  float64 (float64 tensors: float64 throughout), about 1e-6 relative. Integer dtypes record
  ``min``/``max`` as exact integers; bool as 0/1 (``mean`` is then the fraction of true
  elements). Complex dtypes record ``norm`` (of the absolute values) but no
  ``min``/``max``/``mean``. A value that overflows float64 (a ``norm`` of float64 values near
  1e308) is absent.
- ``delta_norm``: the L2 norm of (this tensor − the parent commit's tensor at the same key
  path; floating elements subtracted in float32, float64 for float64), present only when the
  parent had one with the same dtype and shape and both were entirely finite; 0.0 for an
  unchanged tensor.

Only this module's keys are allowed; numbers must be JSON numbers of the right kind.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptObjectError

_COUNTS = ("numel", "nan", "inf")
_VALUES = ("min", "max", "mean", "norm", "delta_norm")
_KEYS = frozenset(_COUNTS + _VALUES)
_MAX_COUNT = (1 << 63) - 1


@dataclass(frozen=True)
class TensorStats:
    """One tensor's statistics (see the module docstring for each field's meaning)."""

    numel: int
    nan: int = 0
    inf: int = 0
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    norm: float | None = None
    delta_norm: float | None = None

    @property
    def nonfinite(self) -> int:
        """Elements that are NaN or Inf."""
        return self.nan + self.inf

    @property
    def relative_change(self) -> float | None:
        """delta_norm / norm (inf when a zero tensor changed; None when unknown)."""
        return relative(self.delta_norm, self.norm)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"numel": self.numel, "nan": self.nan, "inf": self.inf}
        for k in _VALUES:
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d

    @classmethod
    def from_json(cls, d: Any, where: str, oid: str | None = None) -> TensorStats:
        """Parse and validate a ``stats`` object (CorruptObjectError naming ``where``)."""
        problem = stats_problem(d)
        if problem:
            raise CorruptObjectError(f"{where}: malformed stats: {problem}", oid)
        return cls(**{k: d[k] for k in d if d[k] is not None})


def relative(delta: float | None, base: float | None) -> float | None:
    """delta / base, inf when base is 0 and delta is not, 0.0 when both are 0."""
    if delta is None or base is None:
        return None
    if base == 0:
        return 0.0 if delta == 0 else math.inf
    return delta / base


def stats_problem(d: Any) -> str | None:
    """Why ``d`` is not a valid stats object, or None."""
    if not isinstance(d, dict):
        return "not a JSON object"
    extra = sorted(set(d) - _KEYS, key=str)
    if extra:
        return f"unknown field {extra[0]!r:.40}"
    for k in _COUNTS:
        v = d.get(k)
        if k == "numel" and k not in d:
            return "lacks numel"
        if k in d and not (type(v) is int and 0 <= v <= _MAX_COUNT):
            return f"{k} {v!r:.40} is not an integer in 0..2**63-1"
    if d.get("nan", 0) + d.get("inf", 0) > d["numel"]:
        return "more NaN and Inf elements than elements"
    for k in _VALUES:
        if d.get(k) is None:  # absent, or null: not recorded
            continue
        v = d[k]
        if type(v) is int:  # integer tensors' min/max: int64 .. uint64 (math.isfinite
            if not -(2**63) <= v < 2**64:  # would overflow on a larger one)
                return f"{k} {v!r:.40} is outside the range of 64-bit integers"
        elif type(v) is not float or not math.isfinite(v):
            return f"{k} {v!r:.40} is not a finite number"
        if k in ("norm", "delta_norm") and v < 0:
            return f"{k} {v!r:.40} is negative"
    if d.get("min") is not None and d.get("max") is not None and d["min"] > d["max"]:
        return f"min {d['min']!r:.40} exceeds max {d['max']!r:.40}"
    return None



def with_change(
    stats: TensorStats | None, change: float | None, same_as_parent: bool
) -> TensorStats | None:
    """``stats`` (from a manifest: statistics of the content alone) with ``delta_norm`` from
    its commit: ``change`` is the commit's ``changes`` entry for the key path (only changed
    tensors are named); an unnamed tensor equal to its first parent's has changed by 0; any
    other unnamed one has no known change (no parent tensor of that dtype and shape)."""
    if stats is None:
        return None
    if change is not None:
        return dataclasses.replace(stats, delta_norm=change)
    if same_as_parent:
        return dataclasses.replace(stats, delta_norm=0.0)
    return stats
