"""Retention policies against simple reference implementations, on random histories.

Each reference below is written from the policy's documented meaning, as directly as it can be
said (a per-checkpoint rule, no slicing or sorting), and hypothesis checks that every policy,
and any combination of them through ``select``, keeps exactly what its reference keeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.retention import CheckpointInfo, Policy, select

Ref = Callable[[Sequence[CheckpointInfo], float], set[str]]
NOW = 10_000.0


# -- references -----------------------------------------------------------------------------
def ref_last(n: int) -> Ref:
    # the newest n: a checkpoint is kept when fewer than n checkpoints are newer than it
    def keep(cps: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for i, c in enumerate(cps) if len(cps) - 1 - i < n}

    return keep


def rankable(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    return not (isinstance(v, float) and math.isnan(v))


def ref_best(metric: str, k: int, mode: str) -> Ref:
    # the k best: kept when fewer than k checkpoints beat it (better value, or the same value
    # and older); those without a number (missing, None, a bool, NaN) are never kept
    def better(a: Any, b: Any) -> bool:
        return a < b if mode == "min" else a > b

    def keep(cps: Sequence[CheckpointInfo], now: float) -> set[str]:
        out = set()
        scored = [
            (i, c.metrics[metric]) for i, c in enumerate(cps) if rankable(c.metrics.get(metric))
        ]
        for i, v in scored:
            beaten_by = sum(1 for j, w in scored if better(w, v) or (w == v and j < i))
            if beaten_by < k:
                out.add(cps[i].commit)
        return out

    return keep


def ref_every(n: int) -> Ref:
    # one per n steps: kept when no older checkpoint has a step in the same [k*n, (k+1)*n)
    def window(step: int) -> int:
        k = 0
        while step < k * n:
            k -= 1
        while step >= (k + 1) * n:
            k += 1
        return k

    def keep(cps: Sequence[CheckpointInfo], now: float) -> set[str]:
        out = set()
        for i, c in enumerate(cps):
            if c.step is None:
                continue
            older = [d for d in cps[:i] if d.step is not None]
            if all(window(d.step) != window(c.step) for d in older):
                out.add(c.commit)
        return out

    return keep


def ref_newer(seconds: float) -> Ref:
    def keep(cps: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in cps if now - c.time < seconds}  # younger than seconds

    return keep


def ref_steps(steps: set[int]) -> Ref:
    def keep(cps: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in cps if any(c.step == s for s in steps)}

    return keep


def ref_if(pred: Callable[[CheckpointInfo], bool]) -> Ref:
    def keep(cps: Sequence[CheckpointInfo], now: float) -> set[str]:
        return {c.commit for c in cps if pred(c)}

    return keep


def ref_select(cps: Sequence[CheckpointInfo], refs: list[Ref], now: float) -> set[str]:
    # no policies: keep everything; else what any keeps, and always the newest
    if not refs:
        return {c.commit for c in cps}
    out: set[str] = set()
    for r in refs:
        out |= r(cps, now)
    if cps:
        out.add(cps[len(cps) - 1].commit)
    return out


# -- random histories and policies ------------------------------------------------------------
metric_values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-5, 5),
    st.sampled_from([0.0, -0.0, 1.0, 10**400, -(10**400), True, False, None, "x"]),
)
metric_dicts = st.dictionaries(st.sampled_from(["loss", "acc"]), metric_values, max_size=2)


@st.composite
def histories(draw: st.DrawFn) -> list[CheckpointInfo]:
    n = draw(st.integers(0, 20))
    steps = st.one_of(st.none(), st.integers(-30, 120))  # duplicated, unsorted, negative
    times = st.floats(NOW - 5000, NOW + 100)  # unsorted, some in the future
    return [CheckpointInfo(f"c{i}", draw(steps), draw(times), draw(metric_dicts)) for i in range(n)]


PREDICATES: dict[str, Callable[[CheckpointInfo], bool]] = {
    "even step": lambda c: c.step is not None and c.step % 2 == 0,
    "has loss": lambda c: "loss" in c.metrics,
    "never": lambda c: False,
    "always": lambda c: True,
}


@st.composite
def policies(draw: st.DrawFn) -> tuple[Policy, Ref]:
    kind = draw(st.sampled_from(["last", "best", "every", "newer", "steps", "if"]))
    if kind == "last":
        n = draw(st.integers(0, 25))
        return tv.KeepLast(n), ref_last(n)
    if kind == "best":
        metric = draw(st.sampled_from(["loss", "acc", "absent"]))
        k = draw(st.integers(0, 25))
        mode = draw(st.sampled_from(["min", "max"]))
        return tv.KeepBest(metric, k=k, mode=mode), ref_best(metric, k, mode)
    if kind == "every":
        n = draw(st.integers(1, 25))
        return tv.KeepEvery(n), ref_every(n)
    if kind == "newer":
        seconds = draw(st.one_of(st.floats(0, 6000), st.just(math.inf)))
        return tv.KeepNewerThan(seconds), ref_newer(seconds)
    if kind == "steps":
        steps = draw(st.sets(st.integers(-30, 120), max_size=8))
        return tv.KeepSteps(steps), ref_steps(steps)
    pred = PREDICATES[draw(st.sampled_from(sorted(PREDICATES)))]
    return tv.KeepIf(pred), ref_if(pred)


@settings(max_examples=400, deadline=None)
@given(histories(), policies())
def test_each_policy_keeps_what_its_reference_keeps(
    cps: list[CheckpointInfo], policy: tuple[Policy, Ref]
) -> None:
    p, ref = policy
    assert p.keep(cps, NOW) == ref(cps, NOW)
    assert select(cps, [p], NOW) == ref_select(cps, [ref], NOW)


@settings(max_examples=400, deadline=None)
@given(histories(), st.lists(policies(), max_size=5))
def test_combined_policies_keep_the_union_and_the_newest(
    cps: list[CheckpointInfo], chosen: list[tuple[Policy, Ref]]
) -> None:
    kept = select(cps, [p for p, _ in chosen], NOW)
    assert kept == ref_select(cps, [r for _, r in chosen], NOW)
    assert kept <= {c.commit for c in cps}


@settings(max_examples=300, deadline=None)
@given(histories(), st.integers(0, 25))
def test_keep_last_keeps_min_n_len(cps: list[CheckpointInfo], n: int) -> None:
    kept = tv.KeepLast(n).keep(cps, NOW)
    assert len(kept) == min(n, len(cps))
    assert kept == {c.commit for c in cps[len(cps) - min(n, len(cps)) :]}


@settings(max_examples=200, deadline=None)
@given(histories(), st.integers(1, 25), st.lists(metric_dicts, max_size=5))
def test_keep_every_keeps_what_it_kept_as_checkpoints_arrive(
    cps: list[CheckpointInfo], n: int, more: list[dict[str, Any]]
) -> None:
    """Retention is irreversible: a policy must not drop tomorrow what it keeps today."""
    policy = tv.KeepEvery(n)
    before = policy.keep(cps, NOW)
    later = cps + [CheckpointInfo(f"n{i}", 7 * i, NOW, m) for i, m in enumerate(more)]
    assert before <= policy.keep(later, NOW)


# -- the seed bug and the edge cases, spelled out -------------------------------------------
def test_keep_last_keeps_all_while_there_are_fewer_than_n() -> None:
    two = [CheckpointInfo("a", 0, 0), CheckpointInfo("b", 1, 0)]
    assert tv.KeepLast(3).keep(two, 0) == {"a", "b"}
    assert tv.KeepLast(2).keep(two, 0) == {"a", "b"}
    assert tv.KeepLast(1).keep(two, 0) == {"b"}
    assert tv.KeepLast(0).keep(two, 0) == set()
    assert tv.KeepLast(3).keep([], 0) == set()
    assert select(two, [tv.KeepLast(3)], 0) == {"a", "b"}
    assert select(two, [tv.KeepLast(0)], 0) == {"b"}  # the newest always stays
    assert select([], [tv.KeepLast(3)], 0) == set()
    assert select(two, [], 0) == select(two, None, 0) == {"a", "b"}


def test_keep_best_ranks_exactly_and_skips_non_numbers() -> None:
    cps = [
        CheckpointInfo("big", 1, 0, {"loss": 10**400}),  # too large for a float
        CheckpointInfo("bigger", 2, 0, {"loss": 10**400 + 1}),
        CheckpointInfo("flag", 3, 0, {"loss": True}),
        CheckpointInfo("nan", 4, 0, {"loss": float("nan")}),
        CheckpointInfo("none", 5, 0, {"loss": None}),
        CheckpointInfo("inf", 6, 0, {"loss": math.inf}),
    ]
    assert tv.KeepBest("loss", k=1, mode="max").keep(cps, 0) == {"inf"}
    assert tv.KeepBest("loss", k=2, mode="max").keep(cps, 0) == {"inf", "bigger"}
    assert tv.KeepBest("loss", k=2, mode="min").keep(cps, 0) == {"big", "bigger"}
    assert tv.KeepBest("loss", k=25).keep(cps, 0) == {"big", "bigger", "inf"}
    assert tv.KeepBest("loss", k=0).keep(cps, 0) == set()
    tie = [CheckpointInfo("old", 1, 0, {"loss": 0.0}), CheckpointInfo("new", 2, 0, {"loss": -0.0})]
    assert tv.KeepBest("loss").keep(tie, 0) == {"old"}  # a tie goes to the older one


def test_keep_every_steps_and_newer_than_edge_cases() -> None:
    cps = [
        CheckpointInfo("a", 250, 100.0),
        CheckpointInfo("b", None, 200.0),
        CheckpointInfo("c", 120, 300.0),  # a resumed run: steps go back
        CheckpointInfo("d", 299, 400.0),
        CheckpointInfo("e", -1, 500.0),
    ]
    assert tv.KeepEvery(100).keep(cps, 0) == {"a", "c", "e"}  # the oldest in each window
    assert tv.KeepSteps([120, 299, 7]).keep(cps, 0) == {"c", "d"}
    assert tv.KeepSteps(np.array([250, -1])).keep(cps, 0) == {"a", "e"}  # numpy ints
    assert tv.KeepNewerThan(250).keep(cps, 500.0) == {"c", "d", "e"}
    assert tv.KeepNewerThan(0).keep(cps, 500.0) == set()
    assert tv.KeepNewerThan(0).keep(cps, 450.0) == {"e"}  # committed "in the future"
    assert tv.KeepNewerThan(np.int64(250)).keep(cps, 500.0) == {"c", "d", "e"}
    assert tv.KeepNewerThan(10**400).keep(cps, 500.0) == {"a", "b", "c", "d", "e"}
    assert tv.KeepLast(np.int64(2)).keep(cps, 0) == {"d", "e"}


@pytest.mark.parametrize(
    "make",
    [
        lambda: tv.KeepLast(-1),
        lambda: tv.KeepLast(2.0),
        lambda: tv.KeepLast(True),
        lambda: tv.KeepLast("3"),
        lambda: tv.KeepBest("loss", k=-1),
        lambda: tv.KeepBest("loss", k=1.5),
        lambda: tv.KeepBest("loss", mode="median"),
        lambda: tv.KeepBest(3),
        lambda: tv.KeepEvery(0),
        lambda: tv.KeepEvery(2.5),
        lambda: tv.KeepNewerThan(-1),
        lambda: tv.KeepNewerThan(math.nan),
        lambda: tv.KeepNewerThan("1h"),
        lambda: tv.KeepSteps("123"),  # not steps 1, 2 and 3
        lambda: tv.KeepSteps([1.5]),  # not step 1
        lambda: tv.KeepSteps(300),
        lambda: tv.KeepIf(3),
    ],
)
def test_bad_arguments_are_refused_when_the_policy_is_made(make: Callable[[], Any]) -> None:
    # not later, in the background thread of the first retention pass
    with pytest.raises(tv.UsageError):
        make()
