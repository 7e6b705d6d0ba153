"""Retention policies: which checkpoints of a run to keep.

Policies combine as *any-of*: a checkpoint is kept when at least one policy keeps it, and the
newest checkpoint is always kept (it is what a run resumes from). ``select`` returns the
commits to keep; ``CheckpointManager`` drops the others from the branch's history
(``Repo.drop``) and ``Repo.gc`` reclaims their bytes.

    keep=[tv.KeepLast(3), tv.KeepBest("val_loss", k=2, mode="min"), tv.KeepEvery(10_000),
          tv.KeepNewerThan(3600)]
"""

from __future__ import annotations

import math
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


class KeepLast(Policy):
    """The newest ``n`` checkpoints."""

    def __init__(self, n: int) -> None:
        if n < 0:
            raise UsageError(f"KeepLast needs n >= 0, not {n}")
        self.n = n

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in checkpoints[len(checkpoints) - self.n :]} if self.n else set()

    def __repr__(self) -> str:
        return f"KeepLast({self.n})"


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    x = float(v)
    return None if math.isnan(x) else x


class KeepBest(Policy):
    """The ``k`` checkpoints with the best value of ``metric`` (``mode`` "min" or "max").
    The best one is tagged ``tag`` (default "best"; None: no tag). Checkpoints without the
    metric (or with NaN) are never best."""

    def __init__(
        self, metric: str, k: int = 1, mode: str = "min", *, tag: str | None = "best"
    ) -> None:
        if mode not in ("min", "max"):
            raise UsageError(f"KeepBest mode must be 'min' or 'max', not {mode!r}")
        if k < 0:
            raise UsageError(f"KeepBest needs k >= 0, not {k}")
        self.metric, self.k, self.mode, self.tag = metric, k, mode, tag

    def ranked(self, checkpoints: Sequence[CheckpointInfo]) -> list[CheckpointInfo]:
        """Checkpoints that have the metric, best first (ties: the older one first)."""
        scored = [
            (x, i, c)
            for i, c in enumerate(checkpoints)
            if (x := _number(c.metrics.get(self.metric))) is not None
        ]
        sign = 1.0 if self.mode == "min" else -1.0
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
    """One checkpoint per ``n`` steps: the first one at or after each multiple of ``n``
    (with saves on multiples of ``n``, exactly those). Checkpoints without a step are not
    kept by this policy."""

    def __init__(self, n: int) -> None:
        if n <= 0:
            raise UsageError(f"KeepEvery needs n > 0, not {n}")
        self.n = n

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        out: dict[int, str] = {}
        for c in checkpoints:
            if c.step is not None:
                out.setdefault(c.step // self.n, c.commit)
        return set(out.values())

    def __repr__(self) -> str:
        return f"KeepEvery({self.n})"


class KeepNewerThan(Policy):
    """Checkpoints committed less than ``seconds`` ago."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in checkpoints if now - c.time < self.seconds}

    def __repr__(self) -> str:
        return f"KeepNewerThan({self.seconds})"


class KeepSteps(Policy):
    """Checkpoints at the given steps."""

    def __init__(self, steps: Iterable[int]) -> None:
        self.steps = frozenset(int(s) for s in steps)

    def keep(self, checkpoints: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in checkpoints if c.step in self.steps}


class KeepIf(Policy):
    """Checkpoints for which ``predicate(info)`` is true."""

    def __init__(self, predicate: Callable[[CheckpointInfo], bool]) -> None:
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
