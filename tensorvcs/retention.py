"""Retention policies: which checkpoints of a run to keep.

Policies combine as *any-of*: a checkpoint is kept when at least one policy keeps it, and the
newest checkpoint is always kept (it is what a run resumes from). ``select`` returns the
commits to keep; ``CheckpointManager`` drops the others from the branch's history
(``tv.drop``) and gc reclaims their bytes.

    keep=[tv.KeepLast(3), tv.KeepBest("val_loss", k=2, mode="min"), tv.KeepEvery(10_000),
          tv.KeepNewerThan(3600)]
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import UsageError

__all__ = [
    "CheckpointInfo",
    "KeepBest",
    "KeepEvery",
    "KeepIf",
    "KeepLast",
    "KeepNewerThan",
    "KeepSteps",
    "Policy",
    "select",
]


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint as the policies see it (from its commit)."""

    commit: str
    step: int | None
    time: float  # POSIX seconds of the commit
    metrics: dict[str, Any] = field(default_factory=dict)


class Policy:
    """A retention rule: ``keep`` returns the commit ids it keeps among ``checkpoints``
    (oldest first)."""

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        raise NotImplementedError


def _count(policy: str, name: str, value: Any, least: int) -> int:
    """``value`` as an int >= ``least`` (bools and non-integral numbers are refused)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        n = operator.index(value)
    except TypeError:
        raise UsageError(f"{policy} needs an int {name}, not {value!r}") from None
    if n < least:
        raise UsageError(f"{policy} needs {name} >= {least}, not {n}")
    return n


class KeepLast(Policy):
    """The newest ``n`` checkpoints (all of them while there are fewer than ``n``)."""

    def __init__(self, n: int) -> None:
        self.n = _count("KeepLast", "n", n, 0)

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        if self.n == 0:
            return set()
        return {c.commit for c in checkpoints[max(0, len(checkpoints) - self.n) :]}

    def __repr__(self) -> str:
        return f"KeepLast({self.n})"


def _number(v: Any) -> int | float | None:
    """A metric value as a number to rank by, or None (not a number, a bool, or NaN). Ints
    stay ints, so that ints too large for a float still compare exactly."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


class KeepBest(Policy):
    """The ``k`` checkpoints with the best value of ``metric`` (``mode`` "min" or "max").
    The best one is tagged ``tag`` (default "best"; None: no tag). Checkpoints without the
    metric (or with NaN) are never best."""

    def __init__(
        self, metric: str, k: int = 1, mode: str = "min", *, tag: str | None = "best"
    ) -> None:
        if not isinstance(metric, str):
            raise UsageError(f"KeepBest needs a metric name, not {metric!r}")
        if mode not in ("min", "max"):
            raise UsageError(f"KeepBest mode must be 'min' or 'max', not {mode!r}")
        self.metric, self.mode, self.tag = metric, mode, tag
        self.k = _count("KeepBest", "k", k, 0)

    def ranked(self, checkpoints: Sequence[CheckpointInfo]) -> list[CheckpointInfo]:
        """Checkpoints that have the metric, best first (ties: the older one first)."""
        scored = [
            (x, i, c)
            for i, c in enumerate(checkpoints)
            if (x := _number(c.metrics.get(self.metric))) is not None
        ]
        sign = 1 if self.mode == "min" else -1
        scored.sort(key=lambda s: (sign * s[0], s[1]))
        return [c for _, _, c in scored]

    def best(self, checkpoints: Sequence[CheckpointInfo]) -> CheckpointInfo | None:
        ranked = self.ranked(checkpoints)
        return ranked[0] if ranked else None

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in self.ranked(checkpoints)[: self.k]}

    def __repr__(self) -> str:
        return f"KeepBest({self.metric!r}, k={self.k}, mode={self.mode!r})"


class KeepEvery(Policy):
    """One checkpoint per ``n`` steps: for each k, the oldest checkpoint whose step is in
    ``[k*n, (k+1)*n)`` (so with steps increasing, the first at or after each multiple of
    ``n``; with saves on multiples of ``n``, exactly those). A checkpoint this policy keeps
    stays kept as newer ones arrive. Checkpoints without a step are not kept by it."""

    def __init__(self, n: int) -> None:
        self.n = _count("KeepEvery", "n", n, 1)

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        out: dict[int, str] = {}
        for c in checkpoints:
            if c.step is not None:
                out.setdefault(c.step // self.n, c.commit)
        return set(out.values())

    def __repr__(self) -> str:
        return f"KeepEvery({self.n})"


class KeepNewerThan(Policy):
    """Checkpoints committed less than ``seconds`` ago (and any with a time in the future)."""

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
            raise UsageError(f"KeepNewerThan needs a number of seconds, not {seconds!r}")
        if not seconds >= 0:  # NaN too
            raise UsageError(f"KeepNewerThan needs seconds >= 0, not {seconds}")
        try:
            limit = float(seconds)
        except OverflowError:  # an int too large for a float: forever
            limit = math.inf
        self.seconds: float = limit

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in checkpoints if now - c.time < self.seconds}

    def __repr__(self) -> str:
        return f"KeepNewerThan({self.seconds})"


class KeepSteps(Policy):
    """Checkpoints at the given steps (every checkpoint at such a step, if several)."""

    def __init__(self, steps: Iterable[int]) -> None:
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
            raise UsageError(f"KeepSteps takes a collection of int steps, not {steps!r}")
        out = set()
        for s in steps:
            if isinstance(s, bool) or not hasattr(s, "__index__"):
                raise UsageError(f"KeepSteps takes int steps, not {s!r}")
            out.add(operator.index(s))
        self.steps = frozenset(out)

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in checkpoints if c.step is not None and c.step in self.steps}

    def __repr__(self) -> str:
        return f"KeepSteps({sorted(self.steps)})"


class KeepIf(Policy):
    """Checkpoints for which ``predicate(info)`` is true."""

    def __init__(self, predicate: Callable[[CheckpointInfo], bool]) -> None:
        if not callable(predicate):
            raise UsageError(f"KeepIf takes a function of a tv.CheckpointInfo, not {predicate!r}")
        self.predicate = predicate

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in checkpoints if self.predicate(c)}


def select(
    checkpoints: Sequence[CheckpointInfo], policies: Sequence[Policy] | None, now: float
) -> set[str]:
    """Commit ids to keep: those any policy keeps, plus the newest. No policies: keep all."""
    if not policies:
        return {c.commit for c in checkpoints}
    kept: set[str] = set()
    for p in policies:
        kept |= p.keep(checkpoints, now)
    if checkpoints:
        kept.add(checkpoints[-1].commit)
    return kept
