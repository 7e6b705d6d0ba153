"""revisions.parents_first: the order compaction and transfers walk commits in."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from tensorvcs.revisions import parents_first


def _id(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()  # ids sort unlike creation order


History = tuple[dict[str, list[str]], list[str], set[str]]


@st.composite
def histories(draw: st.DrawFn) -> History:
    """A random commit graph (each commit's parents made before it, 0-3 of them), its
    creation order, and a random subset of it."""
    n = draw(st.integers(1, 40))
    parents: dict[str, list[str]] = {}
    order = [_id(i) for i in range(n)]
    for i in range(n):
        ps = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        parents[order[i]] = [order[p] for p in ps]
    subset = {c for c in order if draw(st.booleans())}
    return parents, order, subset


@settings(max_examples=300, deadline=None)
@given(histories())
def test_each_commit_once_after_its_parents(h: History) -> None:
    parents, _order, subset = h
    calls: list[str] = []

    def parents_of(c: str) -> list[str]:
        assert c in subset, f"walked outside the ids given: {c}"
        calls.append(c)
        return parents[c]

    out = parents_first(iter(sorted(subset)), parents_of)
    assert sorted(out) == sorted(subset)
    pos = {c: i for i, c in enumerate(out)}
    for c in out:
        for p in parents[c]:
            if p in subset:
                assert pos[p] < pos[c], (p, c)
    assert len(calls) == len(subset)  # each commit's parents asked once


def test_a_line_of_history_comes_in_creation_order() -> None:
    ids = [_id(i) for i in range(500)]
    parents = {c: ([ids[i - 1]] if i else []) for i, c in enumerate(ids)}
    assert parents_first(set(ids), parents.__getitem__) == ids


def test_first_parent_line_before_a_merged_branch() -> None:
    a, b, c, m = (_id(i) for i in range(4))  # a <- b (main), a <- c (side), m = merge(b, c)
    parents = {a: [], b: [a], c: [a], m: [b, c]}
    assert parents_first({m}, parents.__getitem__) == [m]
    out = parents_first(parents, parents.__getitem__)
    assert out == [a, b, c, m]  # the first parent's line, then the side branch, then the merge
    only_merge_walk = parents_first([m, b, c, a], parents.__getitem__)
    assert only_merge_walk == out  # the order does not depend on the order ids come in


def test_deep_history_needs_no_recursion() -> None:
    ids = [_id(i) for i in range(20_000)]
    parents = {c: ([ids[i - 1]] if i else []) for i, c in enumerate(ids)}
    assert parents_first(reversed(ids), parents.__getitem__) == ids
