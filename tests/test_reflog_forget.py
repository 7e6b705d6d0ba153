"""Forgetting commits (what retention does after a drop) lets go of exactly those commits.

The stateful model (tests/test_history_model.py) found a user's commit deleted: a branch
moved onto a checkpoint that the manager later dropped had its reflog entry removed whole,
and with it the commit the branch had been moved away from. The property below covers the
whole class: after ``expire_reflogs(forget=F)`` (no age expiry) the commits the reflogs
protect are exactly those they protected before, less F; entries keep their order and text.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import torch
from helpers import assert_same_value
from hypothesis import HealthCheck, example, given, settings

import tensorvcs as tv
from tensorvcs.errors import RevisionNotFoundError
from tensorvcs.maintenance import expire_reflogs, root_refs
from tensorvcs.refs import HEADS

REPO = {"chunk_size": 4096, "pack_threshold": 1024}
POOL = [f"{i:x}" * 64 for i in range(1, 7)]  # well-formed ids; commits need not exist here
ids = st.sampled_from(POOL)
entry = st.tuples(st.none() | ids, st.none() | ids)
reflogs = st.dictionaries(st.sampled_from(["HEAD", "refs/heads/a", "refs/tags/t"]),
                          st.lists(entry, max_size=6), max_size=3)  # fmt: skip


def named(entries: list[tuple[str | None, str | None]]) -> set[str]:
    return {oid for pair in entries for oid in pair if oid is not None}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs=reflogs, forget=st.sets(ids))
@example(logs={"refs/heads/a": [(None, POOL[0]), (POOL[0], POOL[1])]}, forget={POOL[1]})
def test_forgetting_keeps_every_other_commit(
    logs: dict[str, list[tuple[str | None, str | None]]], forget: set[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repo = tv.Repo.init(Path(tmp) / "r", **REPO)
        try:
            for ref, entries in logs.items():
                for i, (old, new) in enumerate(entries):
                    repo.refs.log(ref, old, new, "who", f"move {i}")
            before = {ref: repo.refs.reflog(ref) for ref in logs}
            removed = expire_reflogs(repo, expire=float("inf"), expire_unreachable=float("inf"),
                                     forget=forget)  # fmt: skip
            want_removed = 0
            for ref, entries in before.items():
                want = []
                for e in entries:
                    old = None if e.old in forget else e.old
                    new = None if e.new in forget else e.new
                    if (old, new) == (None, None) and (e.old, e.new) != (None, None):
                        want_removed += 1
                        continue
                    want.append((old, new, e.time, e.who, e.message))
                got = [(e.old, e.new, e.time, e.who, e.message) for e in repo.refs.reflog(ref)]
                assert got == want, ref
            assert removed == want_removed
            protected_before = set().union(*(named(e) for e in logs.values()))
            protected_after = {
                oid for ref in logs for e in repo.refs.reflog(ref) for oid in (e.old, e.new) if oid
            }
            assert protected_after == protected_before - forget
        finally:
            repo.close()


def sv(i: int) -> dict[str, Any]:
    return {"w": torch.randn(3000, generator=torch.Generator().manual_seed(i)), "i": i}


@pytest.mark.parametrize("onto", ["tip", "root"])
def test_branch_moved_onto_a_dropped_checkpoint_keeps_what_it_left(
    tmp_path: Path, onto: str
) -> None:
    """The model's failing history: a user branch is moved (``branch -f``) onto a manager
    checkpoint (the branch's tip, rewritten by the next drop; or its root, dropped by it);
    the retention pass and its gc must keep the user's commit the branch was moved away
    from, reachable through the reflog, bit for bit."""
    r = tv.Repo.init(tmp_path / "r", **REPO)
    mgr = tv.CheckpointManager(r, keep=[tv.KeepLast(2)], branch="ckpt", async_commit=False,
                               every_n_steps=1)  # fmt: skip
    try:
        mgr.save({"w": sv(1)["w"]}, step=1)
        mgr.save({"w": sv(2)["w"]}, step=2)
        r.commit(sv(3), "mine 3", branch="exp")
        left = r.commit(sv(4), "mine 4", branch="exp")
        mgr.save({"w": sv(5)["w"]}, step=5)  # drops step 1; ckpt is now [5, 2]
        chain = [r.branches()["ckpt"], r.get_commit(r.branches()["ckpt"]).parents[0]]
        r.branch("exp", chain[0] if onto == "tip" else chain[1], force=True)
        mgr.save({"w": sv(6)["w"]}, step=6)  # drops step 2 and gcs with prune=now

        assert r.objects.has(left.id)
        assert_same_value(r.checkout(left.id), sv(4))
        assert left.id in {e.old for e in r.refs.reflog(HEADS + "exp")}
        assert left.id in root_refs(r, keep_reflog=True).values()
        assert tv.fsck(r).ok
        # and a second gc (git's defaults) keeps it too
        tv.gc(r)
        assert_same_value(r.checkout(left.id), sv(4))
    finally:
        mgr.close()
        r.close()


def test_a_forgotten_entry_names_no_commit(tmp_path: Path) -> None:
    r = tv.Repo.init(tmp_path / "r", **REPO)
    try:
        a = r.commit(sv(1), "a", branch="exp")
        b = r.commit(sv(2), "b", branch="exp")
        r.branch("exp", a.id, force=True)
        tv.gc(r, forget={b.id})
        entries = r.refs.reflog(HEADS + "exp")
        assert [(e.old, e.new) for e in entries] == [(None, a.id), (a.id, None), (None, a.id)]
        with pytest.raises(RevisionNotFoundError, match=r"exp@\{1\}.*names no commit"):
            r.resolve("exp@{1}")
    finally:
        r.close()
