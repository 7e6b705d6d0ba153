"""Deferred delta re-encodings done after the fact (tensorvcs/compaction.py: ``tv.compact``,
``tvcs compact``): over any history, compaction never changes what a checkout returns, never
makes a delta cycle, finds nothing left on a second run, and, where the history is one line
of commits, stores exactly what committing without deferral stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs import compaction
from tensorvcs.format import codecs, envelope

KEYS = ["emb", "w", "h"]


def new_repo(path: Path) -> tv.Repo:
    repo = tv.Repo.init(path, chunk_size=4096, pack_threshold=1024)
    repo.delta_max_depth = 3
    return repo


def encodings(repo: tv.Repo) -> dict[str, tuple[int, str | None, int]]:
    """{chunk id: (codec, delta base, stored bytes)} of every chunk object."""
    return {oid: (h.codec, repo.objects.delta_base(oid), repo.objects.stored_size(oid))
            for oid in repo.objects.ids()
            if (h := repo.objects.header(oid)).kind == envelope.KIND_CHUNK}


def no_cycles(repo: tv.Repo) -> None:
    for oid in repo.objects.ids():
        seen = {oid}
        base = repo.objects.delta_base(oid)
        while base is not None:
            assert base not in seen, f"delta cycle through {oid[:12]}"
            seen.add(base)
            base = repo.objects.delta_base(base)


ops = st.lists(
    st.tuples(st.sampled_from(["drift", "rows", "revert", "reshape", "drop", "same"]),
              st.sampled_from(KEYS), st.integers(0, 2**31)),
    min_size=1, max_size=7,
)


def replay(repo: tv.Repo, history: list[tuple[str, str, int]], defer: bool,
           branch_at: int | None) -> list[tuple[str, dict[str, torch.Tensor]]]:
    """Commit ``history`` (each op changes the state, then it is committed); after commit
    ``branch_at`` the rest goes on a second branch made from the first commit."""
    g = torch.Generator().manual_seed(1)
    state = {k: torch.randn(24, 64, generator=g) for k in KEYS}  # 6 KiB: two chunks each
    seen: list[dict[str, torch.Tensor]] = []
    out = []
    for i, (op, key, seed) in enumerate(history):
        g = torch.Generator().manual_seed(seed)
        if op == "drift" and key in state:  # every element a little
            state[key] = state[key] + 1e-3 * torch.randn(state[key].shape, generator=g)
        elif op == "rows" and key in state:  # a few rows: one chunk changes
            t = state[key].clone()
            t[: 2] += 1.0
            state[key] = t
        elif op == "revert" and seen:  # back to an earlier version of every tensor
            state = dict(seen[seed % len(seen)])
        elif op == "reshape" and key in state:
            state[key] = state[key].reshape(-1, 32).clone()
        elif op == "drop":
            state.pop(key, None)
        seen.append(dict(state))
        if branch_at is not None and i == branch_at and out:
            repo.branch("side", out[0][0])
            repo.switch("side")
        c = repo.commit(dict(state), f"c{i}", defer_deltas=defer)
        out.append((c.id, dict(state)))
    return out


@pytest.mark.parametrize("local", [True, False], ids=["local", "as-object-storage"])
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(history=ops, branch_at=st.none() | st.integers(1, 5))
def test_compact_after_deferred_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local: bool,
    history: list[tuple[str, str, int]], branch_at: int | None,
) -> None:
    """``local=False``: the writers behave as on object storage (no existence check for the
    parent's objects, create-only writes for the rest), so a revert's chunk is found to be
    there only by the write that it refuses, and must not become anyone's delta base."""
    from tensorvcs.store.local import LocalStore

    monkeypatch.setattr(LocalStore, "local", local)
    tag = os.urandom(4).hex()
    eager, lazy = new_repo(tmp_path / f"e-{tag}"), new_repo(tmp_path / f"l-{tag}")
    want = replay(eager, history, False, branch_at)
    got = replay(lazy, history, True, branch_at)
    assert [c for c, _ in want] != [] and len(got) == len(want)
    before = {c: lazy.checkout(c) for c, _ in got}
    rep = tv.compact(lazy)
    no_cycles(lazy)
    no_cycles(eager)
    for c, state in want:
        out = eager.checkout(c)
        assert all(torch.equal(out[k].view(torch.int32), v.view(torch.int32))
                   for k, v in state.items()), c
    for (c, state), (_, _) in zip(got, want, strict=True):
        out = lazy.checkout(c)
        assert sorted(out) == sorted(state) == sorted(before[c])
        for k, v in state.items():
            assert torch.equal(out[k].view(torch.int32), v.view(torch.int32)), (c, k)
    assert tv.fsck(lazy).ok
    again = tv.compact(lazy)
    assert again.rewritten == 0 and again.bytes_saved == 0
    assert rep.rewritten <= rep.candidates
    if branch_at is None and not any(op == "revert" for op, _, _ in history):
        # one line of commits: the same objects, encoded the same way, as committing eagerly
        assert encodings(lazy) == encodings(eager)


def drifting(repo: tv.Repo, n: int, defer: bool) -> list[str]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g)  # 64 KiB: 16 chunks
    ids = []
    for i in range(n):
        w = w + 1e-4 * torch.randn(w.shape, generator=g)
        ids.append(repo.commit({"w": w, "step": i}, f"c{i}", defer_deltas=defer).id)
    return ids


def test_deferred_commits_leave_chunks_whole_until_compact(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    drifting(repo, 3, True)
    deltas = sum(h[0] == codecs.CODEC_DELTA for h in encodings(repo).values())
    assert deltas == 0  # every version stored whole: 3 x 16 chunks
    size = sum(h[2] for h in encodings(repo).values())
    rep = tv.compact(repo)
    assert (rep.commits, rep.candidates, rep.rewritten) == (3, 32, 32)
    after = encodings(repo)
    assert sum(h[0] == codecs.CODEC_DELTA for h in after.values()) == 32
    assert rep.bytes_saved == size - sum(h[2] for h in after.values()) > 0
    assert rep.bytes_before > rep.bytes_saved


def test_a_revert_never_makes_two_chunks_deltas_of_each_other(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 64, generator=g)
    b = a + 1e-4 * torch.randn(a.shape, generator=g)
    for i, w in enumerate([a, b, a, b]):
        repo.commit({"w": w}, f"c{i}", defer_deltas=True)
    pairs = compaction.candidates(repo, compaction._commits(repo, [repo.resolve("HEAD")]))
    assert len(pairs) == 4  # a -> b for each of the 4 chunks; b -> a would close a loop
    tv.compact(repo)
    no_cycles(repo)
    for i, w in enumerate([a, b, a, b]):
        assert torch.equal(repo.checkout(f"HEAD~{3 - i}")["w"], w)


@pytest.mark.parametrize("defer", [False, True])
def test_a_revert_on_object_storage_makes_no_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, defer: bool
) -> None:
    """As on object storage, a revert's chunk is not asked about: its write finds it there
    (an older version, maybe a delta on the chunk it replaces), and neither the commit nor a
    later compaction may make the parent's chunk a delta on it."""
    from tensorvcs.store.local import LocalStore

    monkeypatch.setattr(LocalStore, "local", False)
    repo = new_repo(tmp_path / "r")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(64, 64, generator=g)
    b = a + 1e-4 * torch.randn(a.shape, generator=g)
    for i, w in enumerate([a, b, a, b, a]):
        repo.commit({"w": w}, f"c{i}", defer_deltas=defer)
        # only b's first commit writes new chunks (4); a revert's chunks are refused writes
        assert len(repo.last_write_stats.deferred) == (4 if defer and i == 1 else 0)
    tv.compact(repo)
    no_cycles(repo)
    for i, w in enumerate([a, b, a, b, a]):
        assert torch.equal(repo.checkout(f"HEAD~{4 - i}")["w"], w)
    assert tv.fsck(repo).ok


def test_compact_keeps_keyframes_whole(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "r")
    repo.delta_max_depth = 1  # every second version stays whole
    drifting(repo, 4, True)
    tv.compact(repo)
    codec = [h[0] for h in encodings(repo).values()]
    assert codec.count(codecs.CODEC_DELTA) == 2 * 16  # versions 0 and 2 of each chunk


def test_tvcs_compact_cli(tmp_path: Path) -> None:
    repo = new_repo(tmp_path)
    drifting(repo, 2, True)
    run = [sys.executable, "-m", "tensorvcs.cli"]
    p = subprocess.run([*run, "compact"], cwd=tmp_path, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("re-encoded 16 of 16 chunk(s) left whole (2 commit(s) looked at)")
    p = subprocess.run([*run, "compact", "--json"], cwd=tmp_path, capture_output=True, text=True)
    d = json.loads(p.stdout)
    assert (d["commits"], d["candidates"], d["rewritten"], d["bytes_saved"]) == (2, 0, 0, 0)


def test_compact_waits_for_gc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorvcs.repo import GC_LOCK

    repo = new_repo(tmp_path)
    drifting(repo, 2, True)
    monkeypatch.setattr(compaction, "LOCK_TIMEOUT", 0.2)
    with repo.store.lock(GC_LOCK, shared=False, timeout=1), \
            pytest.raises(tv.LockTimeoutError, match="gc"):
        tv.compact(repo)
    assert tv.compact(repo).rewritten == 16
