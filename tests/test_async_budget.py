"""The background commit's budget (issue 11, goal 4): CheckpointManager's threads and their
niceness, and the delta re-encodings it defers to ``compact()``. Deferred work never changes
what a checkout or a resume returns, whether it was done, half done or never done."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.format import codecs, envelope

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread niceness is a Linux feature"
)


def niceness(native_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, native_id)


def proc_nice(native_id: int) -> int:
    """Field 19 (nice) of /proc/self/task/<tid>/stat (after the parenthesised name)."""
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])


def threads(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def states(n: int, seed: int = 0, rows: tuple[int, ...] = (), lr: float = 1e-4) -> list[Any]:
    """``n`` states of a drifting 64 KiB weight (16 chunks of 4 KiB) and a small bias; only
    ``rows`` change when given (else every element)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 256, generator=g)
    b = torch.randn(8, generator=g)
    out = []
    for i in range(n):
        step = lr * torch.randn(w.shape, generator=g)
        if rows:
            mask = torch.zeros(64, 1)
            mask[list(rows)] = 1.0
            step = step * mask
        w = w + step
        out.append({"model": {"w": w.clone(), "b": (b + i).clone()}, "epoch": i})
    return out


def chunk_files(repo: tv.Repo) -> dict[str, bytes]:
    """The stored bytes of every chunk object, by id."""
    out = {}
    for oid in repo.objects.ids():
        if repo.objects.header(oid).kind == envelope.KIND_CHUNK:
            out[oid] = repo.objects.raw(oid)
    return out


def deltas(repo: tv.Repo) -> int:
    return sum(repo.objects.header(o).codec == codecs.CODEC_DELTA for o in repo.objects.ids())


def assert_same_tensors(a: Any, b: Any) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            assert_same_tensors(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert a[k].view(torch.uint8).equal(b[k].view(torch.uint8)), k
        else:
            assert a[k] == b[k], k


def save_all(mgr: tv.CheckpointManager, series: list[Any]) -> list[str]:
    ids = []
    for i, s in enumerate(series):
        ids.append(mgr.save(s, step=i + 1).result().id)
    return ids


def checkouts(repo: tv.Repo, ids: list[str]) -> list[Any]:
    out = []
    for oid in ids:
        s = repo.checkout(oid)
        s.pop("_tvcs")
        out.append(s)
    return out


# -- threads and niceness ----------------------------------------------------------------------
@linux_only
def test_background_threads_and_niceness_are_honoured(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    main_nice = niceness(threading.get_native_id())
    mgr = tv.CheckpointManager(repo, background_threads=2, background_nice=5, save_rng=False)
    big = {"w": torch.randn(256, 1024)}  # 1 MiB: 256 chunk jobs
    mgr.save(big, step=1).result()
    mgr.save({"w": big["w"] + 1e-4}, step=2).result()
    pool = threads("tvcs-background")
    assert 1 <= len(pool) <= 2
    committer = threads("tvcs-checkpoint")
    assert len(committer) == 1
    for t in pool + committer:
        assert t.native_id is not None
        assert niceness(t.native_id) == min(19, main_nice + 5), t.name
        assert proc_nice(t.native_id) == min(19, main_nice + 5), t.name
    assert niceness(threading.get_native_id()) == main_nice  # the loop's thread is untouched
    assert repo._pool is None  # the repository's own pool (2 x cores threads) never ran
    mgr.close()
    assert threads("tvcs-background") == []
    repo.close()


@linux_only
def test_no_limits_use_the_repository_pool_at_the_loops_priority(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    main_nice = niceness(threading.get_native_id())
    mgr = tv.CheckpointManager(repo, background_threads=None, background_nice=0, save_rng=False)
    mgr.save({"w": torch.randn(256, 256)}, step=1).result()
    assert threads("tvcs-background") == []
    assert repo._pool is not None
    for t in threads("tvcs-checkpoint") + threads("tvcs_"):
        assert t.native_id is not None and niceness(t.native_id) == main_nice, t.name
    mgr.close()
    repo.close()


@linux_only
def test_a_synchronous_manager_never_lowers_the_loops_thread_nor_defers(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    main_nice = niceness(threading.get_native_id())
    mgr = tv.CheckpointManager(repo, async_commit=False, background_nice=19, save_rng=False)
    save_all(mgr, states(2))
    assert niceness(threading.get_native_id()) == main_nice
    assert mgr.deferred == 0 and deltas(repo) == 16  # done in the commit, as ever
    mgr.close()
    repo.close()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"background_threads": 0}, "background_threads must be a positive int or None, not 0"),
        ({"background_threads": 1.5}, "background_threads must be a positive int or None, not 1.5"),
        ({"background_nice": -1}, "background_nice must be an int from 0 to 19, not -1"),
        ({"background_nice": 20}, "background_nice must be an int from 0 to 19, not 20"),
        ({"background_nice": "10"}, "background_nice must be an int from 0 to 19, not '10'"),
    ],
)
def test_bad_background_knobs_are_refused(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    repo = tv.Repo.init(tmp_path)
    with pytest.raises(tv.UsageError) as e:
        tv.CheckpointManager(repo, **kwargs)
    assert str(e.value) == message


# -- deferred delta re-encodings ---------------------------------------------------------------
@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(2, 4),
    rows=st.lists(st.integers(0, 63), max_size=6, unique=True).map(tuple),
    depth=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_deferred_deltas_store_the_same_objects_once_compacted(
    n: int, rows: tuple[int, ...], depth: int, seed: int
) -> None:
    series = states(n, seed, rows)
    with tempfile.TemporaryDirectory() as d:
        repos, ids = [], []
        for name, defer in (("now", False), ("later", True)):
            repo = tv.Repo.init(Path(d) / name, chunk_size=4096, pack_threshold=1024)
            repo.delta_max_depth = depth
            mgr = tv.CheckpointManager(repo, defer_deltas=defer, save_rng=False)
            ids.append(save_all(mgr, series))
            if defer:  # nothing re-encoded yet: every chunk whole, every checkout the same
                assert deltas(repo) == 0
                assert mgr.deferred > 0
                before = checkouts(repo, ids[-1])
                assert tv.fsck(repo).ok
            mgr.close()  # compact()
            assert mgr.deferred == 0
            repos.append(repo)
        now, later = repos
        assert chunk_files(later) == chunk_files(now)  # byte for byte, ids and encodings
        assert deltas(later) == deltas(now)
        for a, b, c, s in zip(
            checkouts(now, ids[0]), checkouts(later, ids[1]), before, series, strict=True
        ):
            assert_same_tensors(a, s)
            assert_same_tensors(b, s)
            assert_same_tensors(c, s)
        assert tv.fsck(later).ok and tv.fsck(now).ok
        for r in repos:
            r.close()


def test_resume_never_depends_on_deferred_work(tmp_path: Path) -> None:
    series = states(4, seed=3)
    repo = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    mgr = tv.CheckpointManager(repo, save_rng=False)  # defer_deltas by default
    ids = save_all(mgr, series)
    items = list(mgr._deferred)
    assert len(items) == 3 * 16  # 16 parent chunks for each of the 3 later commits
    del mgr  # the run dies before compact(): the deferred work is never done
    for state in ("never done", "half done", "done"):
        if state == "half done":
            assert repo.apply_deferred_deltas(items[: len(items) // 2]) == len(items) // 2
        elif state == "done":  # the rest; the first half is skipped (deltas already)
            assert repo.apply_deferred_deltas(items) == len(items) - len(items) // 2
        r = tv.Repo.open(tmp_path)
        m = tv.CheckpointManager(r, save_rng=False)
        rest = m.restore()
        assert rest is not None and m.step == 4, state
        assert_same_tensors(rest, series[-1])
        for got, want in zip(checkouts(r, ids), series, strict=True):
            assert_same_tensors(got, want)
        assert tv.fsck(r).ok, state
        r.close()
    assert deltas(repo) == len(items)
    repo.close()


def test_compact_skips_the_work_of_checkpoints_retention_dropped(tmp_path: Path) -> None:
    series = states(5, seed=4)
    repo = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    mgr = tv.CheckpointManager(repo, keep=[tv.KeepLast(2)], save_rng=False)
    save_all(mgr, series)
    assert mgr.deferred == 4 * 16
    assert mgr.compact() == 16  # only the pair of the two kept checkpoints is left to do
    assert mgr.deferred == 0 and deltas(repo) == 16
    kept = [c.commit for c in mgr.checkpoints()]
    for got, want in zip(checkouts(repo, kept), series[-2:], strict=True):
        assert_same_tensors(got, want)
    assert tv.fsck(repo).ok
    mgr.close()
    repo.close()
