"""gc: deletes exactly the objects no branch, tag or HEAD needs, keeps everything shared, and
never changes what any kept commit checks out to. Counts are exact, taken from the files on
disk before and after."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import torch
from helpers import assert_same_value, object_ids, object_path, randn

import tensorvcs as tv
from tensorvcs.maintenance import TMP_GRACE_SECONDS


def _state(seed: int, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A small training state; with ``base``, the next step of it (small changes: deltas)."""
    if base is None:
        emb, head = randn(10 * seed, 4096), randn(10 * seed + 1, 64)
    else:
        emb = base["model"]["emb"] + 1e-3 * randn(10 * seed, 4096)
        head = base["model"]["head"] - 1e-3
    return {
        "model": {"emb": emb, "head": head, "frozen": torch.arange(2048, dtype=torch.float32)},
        "step": seed,
    }


def _repo(path: Path) -> tv.Repo:
    return tv.Repo.init(path, chunk_size=4096, pack_threshold=1024)


def _referenced(repo: tv.Repo) -> set[str]:
    """Every object a ref's history names directly (commits, manifests, tensor objects),
    computed from the public API, independently of gc's own walk."""
    tips = {*repo.branches().values(), *repo.tags().values()}
    head = repo.head()[1]
    if head is not None:
        tips.add(head)
    out: set[str] = set()
    for tip in tips:
        for c in repo.log(tip):
            out |= {c.id, c.manifest}
            for t in repo.tensors(c.id):
                out.update(t.objects)
    return out


def _files(repo: tv.Repo) -> dict[str, tuple[int, str]]:
    """{object id: (size, sha256) of its file}: shows rewrites as well as deletions."""
    out = {}
    for o in object_ids(repo):
        data = object_path(repo, o).read_bytes()
        out[o] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def _gc_exactly(repo: tv.Repo, garbage: set[str]) -> None:
    """Run gc; it must delete exactly ``garbage``, leave every other file byte for byte
    as it was except the deltas it re-encodes (same id and content, another encoding: their
    base was garbage), and account for the bytes exactly."""
    before = _files(repo)
    assert garbage <= set(before)
    report = tv.gc(repo, prune="now", reflog_expire="now")
    after = _files(repo)
    assert set(after) == set(before) - garbage
    changed = {o for o in after if after[o] != before[o]}
    assert len(changed) == report.rewritten_objects
    assert report.deleted_objects == len(garbage)
    assert report.freed_bytes == sum(before[o][0] for o in garbage)
    assert report.reachable_objects == len(after)
    assert report.kept_bytes == sum(size for size, _ in after.values())
    assert set(after) == _referenced(repo)
    assert tv.fsck(repo).ok


def test_gc_reclaims_exactly_what_a_deleted_branch_alone_used(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    s1 = _state(1)
    s2 = _state(2, s1)
    c1, c2 = repo.commit(s1, "one"), repo.commit(s2, "two")
    on_main = object_ids(repo)

    # a branch off main: shares "frozen", and its chunks are deltas on main's chunks
    f1s = _state(3, s2)
    f2s = _state(4, f1s)
    f1 = repo.commit(f1s, "f1", branch="feature")
    f2 = repo.commit(f2s, "f2", branch="feature")
    only_feature = object_ids(repo) - on_main
    # per commit: commit, manifest, one pack (head), emb's 4 chunks; "frozen" is shared
    assert len(only_feature) == 2 * 7
    assert any(repo.objects.delta_base(o) for o in only_feature)  # the writer used deltas

    _gc_exactly(repo, set())  # the branch still exists: nothing is garbage

    repo.delete_branch("feature")
    _gc_exactly(repo, only_feature)
    assert object_ids(repo) == on_main
    assert [c.id for c in repo.log()] == [c2.id, c1.id]
    assert_same_value(repo.checkout(c1.id), s1)
    assert_same_value(repo.checkout(c2.id), s2)
    assert not repo.objects.has(f1.id) and not repo.objects.has(f2.id)
    repo.close()


def test_gc_on_a_clean_repo_deletes_and_rewrites_nothing(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    s = _state(1)
    states = [s]
    for k in range(2, 5):
        s = _state(k, s)
        states.append(s)
    ids = [repo.commit(st, f"c{k}").id for k, st in enumerate(states)]
    repo.branch("side", ids[1])
    repo.commit(_state(9), "side work", branch="side")
    repo.tag("v1", ids[2])
    _gc_exactly(repo, set())
    _gc_exactly(repo, set())  # and again: gc is idempotent
    for oid, st in zip(ids, states, strict=True):
        assert_same_value(repo.checkout(oid), st)
    repo.close()


def test_tags_keep_commits_alive(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    s1 = _state(1)
    repo.commit(s1, "base")
    base = object_ids(repo)
    e1s = _state(2, s1)
    e2s = _state(3, e1s)
    repo.commit(e1s, "e1", branch="exp")
    e2 = repo.commit(e2s, "e2", branch="exp")
    only_exp = object_ids(repo) - base
    repo.tag("keep", e2.id)
    repo.delete_branch("exp")

    _gc_exactly(repo, set())  # the tag holds e2 and, through it, e1
    assert_same_value(repo.checkout("keep"), e2s)
    assert_same_value(repo.checkout("keep~1"), e1s)

    repo.delete_tag("keep")
    _gc_exactly(repo, only_exp)
    assert object_ids(repo) == base
    assert_same_value(repo.checkout(), s1)
    repo.close()


def test_detached_head_keeps_its_commits_alive(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    s1 = _state(1)
    c1 = repo.commit(s1, "base")
    base = object_ids(repo)
    repo.switch(c1.id, detach=True)
    d = repo.commit(_state(2, s1), "detached work")
    assert repo.head() == (None, d.id)
    detached = object_ids(repo) - base
    _gc_exactly(repo, set())
    repo.switch("main")
    _gc_exactly(repo, detached)
    repo.close()


def test_gc_keeps_reflog_commits_only_when_asked(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    repo.commit(_state(1), "base")
    base = object_ids(repo)
    repo.commit(_state(5), "gone", branch="tmp")
    only_tmp = object_ids(repo) - base
    repo.delete_branch("tmp")
    kept = tv.gc(repo, prune="now")
    assert kept.deleted_objects == 0 and object_ids(repo) == base | only_tmp
    _gc_exactly(repo, only_tmp)
    repo.close()


def test_gc_rebases_a_reused_delta_whose_base_became_garbage(tmp_path: Path) -> None:
    """An object a kept commit names may be a delta on an object only a deleted branch used
    (reverse deltas: the parent's chunks are re-encoded against the child's). gc must keep
    it readable (keeping or re-encoding what it needs) while
    reclaiming everything else the deleted branch alone used."""
    repo = _repo(tmp_path)
    s1 = _state(1)
    c1 = repo.commit(s1, "base")
    f1s = _state(2, s1)
    f2s = _state(3, f1s)
    repo.commit(f1s, "f1", branch="feature")
    f2 = repo.commit(f2s, "f2", branch="feature")
    repo.delete_branch("feature")
    c2 = repo.commit(f2s, "same state as f2, committed on main")  # reuses f2's objects
    assert repo.show(c2.id).manifest == repo.show(f2.id).manifest
    # some object main still names is a delta on an object only the deleted branch used
    # (c1's chunks were re-encoded against f1's when f1 was committed)
    kept = _referenced(repo)
    assert any(repo.objects.delta_base(o) not in kept | {None} for o in kept)

    garbage = object_ids(repo) - _referenced(repo)
    assert f2.id in garbage
    before = _files(repo)
    report = tv.gc(repo, prune="now", reflog_expire="now")
    assert set(_files(repo)) == set(before) - garbage == _referenced(repo)
    assert report.deleted_objects == len(garbage)
    for o in object_ids(repo):  # every kept delta's base was kept too
        base = repo.objects.delta_base(o)
        assert base is None or repo.objects.has(base)
    assert tv.fsck(repo).ok
    assert_same_value(repo.checkout(c2.id), f2s)
    assert_same_value(repo.checkout(c1.id), s1)
    repo.close()


def test_gc_removes_stale_temp_files_only(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    repo.commit(_state(1), "base")
    tmp = repo.path / "tmp"
    stale, fresh = tmp / "12345-stale", tmp / "12345-fresh"
    stale.write_bytes(b"left by a crashed writer")
    fresh.write_bytes(b"being written right now")
    old = time.time() - 2 * TMP_GRACE_SECONDS
    os.utime(stale, (old, old))
    _gc_exactly(repo, set())
    assert not stale.exists() and fresh.exists()
    repo.close()
