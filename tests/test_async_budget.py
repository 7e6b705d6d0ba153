"""The background commit's budget (issue 11, goal 4): CheckpointManager's threads and their
niceness, and the delta re-encodings it defers past the commit (done in the background after
it, or by ``compact()``). Deferred work never changes what a checkout or a resume returns,
whether it was done, half done or never done."""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs import manager
from tensorvcs.format import codecs, envelope
from tensorvcs.manager import AsyncCommitter
from tensorvcs.repo import COMPACT_LOCK

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
# which rows of the weight change between states (none given: every element)
CHANGED_ROWS = st.lists(st.integers(0, 63), max_size=6, unique=True).map(tuple)


@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(2, 4),
    rows=CHANGED_ROWS,
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
            mgr = tv.CheckpointManager(
                repo, defer_deltas=defer, compact_in_background=False, save_rng=False
            )
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
    # defer_deltas by default; all of it left for compact() here
    mgr = tv.CheckpointManager(repo, compact_in_background=False, save_rng=False)
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
    mgr = tv.CheckpointManager(
        repo, keep=[tv.KeepLast(2)], compact_in_background=False, save_rng=False
    )
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


# -- re-encodings in the background, between saves (compact_in_background) --------------------
def test_the_commit_future_is_done_before_the_second_part_which_a_wait_stops() -> None:
    committer = AsyncCommitter()
    seen: list[Any] = []

    def until_stopped(stopped: Any) -> None:
        while not stopped():
            time.sleep(0.001)
        seen.append("stopped")

    fut = committer.submit(lambda: 7, until_stopped)
    assert fut.result(timeout=30) == 7
    time.sleep(0.05)
    assert committer.busy and seen == []  # the second part runs on until asked
    assert committer.first_part is fut and fut.done()  # what other writers wait for
    assert committer.wait() == 7 and seen == ["stopped"] and not committer.busy
    assert committer.first_part is None

    go = threading.Event()

    def to_the_end(stopped: Any) -> None:
        go.wait(30)
        seen.append(stopped())

    committer.submit(lambda: 8, to_the_end)
    threading.Timer(0.1, go.set).start()
    assert committer.wait(finish=True) == 8 and seen[-1] is False  # waited for, not stopped

    def fails() -> None:
        raise ValueError("no commit")

    fut = committer.submit(fails, until_stopped)
    with pytest.raises(ValueError, match="no commit"):
        fut.result(timeout=30)
    with pytest.raises(ValueError, match="no commit"):
        committer.wait()
    assert seen[-1] is False  # the second part never ran
    committer.close()


@settings(max_examples=6, deadline=None)
@given(
    n=st.integers(2, 5),
    rows=CHANGED_ROWS,
    depth=st.integers(1, 3),
    seed=st.integers(0, 2**16),
    threads=st.sampled_from([1, None]),
)
def test_background_compaction_stores_after_every_save_what_deltas_in_the_commit_store(
    n: int, rows: tuple[int, ...], depth: int, seed: int, threads: int | None
) -> None:
    series = states(n, seed, rows)
    with tempfile.TemporaryDirectory() as d:
        now = tv.Repo.init(Path(d) / "now", chunk_size=4096, pack_threshold=1024)
        later = tv.Repo.init(Path(d) / "background", chunk_size=4096, pack_threshold=1024)
        now.delta_max_depth = later.delta_max_depth = depth
        eager = tv.CheckpointManager(now, defer_deltas=False, save_rng=False)
        mgr = tv.CheckpointManager(later, background_threads=threads, save_rng=False)
        reads = [0]
        read_into = later.objects.read_into

        def counted(*args: Any, **kwargs: Any) -> Any:
            reads[0] += 1
            return read_into(*args, **kwargs)

        later.objects.read_into = counted  # type: ignore[method-assign]
        ids = []
        for i, s in enumerate(series):
            eager.save(s, step=i + 1).result()
            ids.append(mgr.save(s, step=i + 1).result().id)
            mgr.wait(compaction=True)
            assert mgr.deferred == 0
            # both chunks of every re-encoding came from memory (the snapshot, the cache)
            assert reads[0] == 0
            # the snapshot's memory is let go once the pass is done
            assert mgr._deferred_content == {} and later.last_write_stats.deferred_content == {}
            assert chunk_files(later) == chunk_files(now)  # byte for byte, after every save
        assert deltas(later) == deltas(now) > 0
        for got, want in zip(checkouts(later, ids), series, strict=True):
            assert_same_tensors(got, want)
        assert tv.fsck(later).ok
        for m, r in ((eager, now), (mgr, later)):
            m.close()
            r.close()


def test_saves_that_stop_the_background_compaction_lose_nothing(tmp_path: Path) -> None:
    series = states(8, seed=5)
    now = tv.Repo.init(tmp_path / "now", chunk_size=4096, pack_threshold=1024)
    eager = tv.CheckpointManager(now, defer_deltas=False, save_rng=False)
    save_all(eager, series)
    repo = tv.Repo.init(tmp_path / "r", chunk_size=4096, pack_threshold=1024)
    mgr = tv.CheckpointManager(repo, save_rng=False)
    ids = save_all(mgr, series)  # each save stops the pass after the commit before it
    mgr.wait()  # and so does this one: whatever was not done is left in the list
    assert 0 <= mgr.deferred <= 7 * 16
    assert deltas(repo) + mgr.deferred == 7 * 16  # every re-encoding done or still listed
    for got, want in zip(checkouts(repo, ids), series, strict=True):
        assert_same_tensors(got, want)
    assert tv.fsck(repo).ok
    mgr.close()  # compact(): the rest
    assert mgr.deferred == 0
    assert chunk_files(repo) == chunk_files(now)
    eager.close()
    now.close()
    repo.close()


def test_a_save_does_not_wait_for_a_pass_that_waits_for_a_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another holder has the compaction lock, a background pass waits for it in short
    tries and gives up once the next save (or a wait) asks it to stop, however long its lock
    timeout: the save is not held until the lock is free. What the passes did not do stays
    listed, and compact() does it once the lock is free."""
    monkeypatch.setattr(manager, "BACKGROUND_LOCK_TIMEOUT", 300.0)
    series = states(3, seed=7)
    repo = tv.Repo.init(tmp_path / "r", chunk_size=4096, pack_threshold=1024)
    mgr = tv.CheckpointManager(repo, save_rng=False)
    ids = [mgr.save(series[0], step=1).result().id]
    mgr.wait()
    tries = threading.Event()
    apply = repo.apply_deferred_deltas

    def observed(*args: Any, **kwargs: Any) -> int:
        tries.set()
        return apply(*args, **kwargs)

    monkeypatch.setattr(repo, "apply_deferred_deltas", observed)
    held = repo.store.lock(COMPACT_LOCK)  # its own descriptor: held as by another process
    held.__enter__()
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            held.__exit__(None, None, None)

    timer = threading.Timer(30.0, release)  # the old behaviour: the save waits until this
    timer.start()
    try:
        ids.append(mgr.save(series[1], step=2).result().id)
        assert tries.wait(60.0)  # the pass after commit 2 is waiting for the lock
        ids.append(mgr.save(series[2], step=3).result().id)  # stops it
        mgr.wait()  # stops the pass after commit 3
        assert not released.is_set()
        assert mgr.deferred == 2 * 16 and deltas(repo) == 0
    finally:
        timer.cancel()
        release()
    for got, want in zip(checkouts(repo, ids), series, strict=True):
        assert_same_tensors(got, want)
    mgr.close()  # compact(): the lock is free now
    assert mgr.deferred == 0 and deltas(repo) == 2 * 16
    for got, want in zip(checkouts(repo, ids), series, strict=True):
        assert_same_tensors(got, want)
    repo.close()


@settings(max_examples=8, deadline=None)
@given(k=st.integers(0, 16), one_thread=st.booleans())
def test_deferred_re_encodings_stop_between_items_and_list_the_rest(
    k: int, one_thread: bool
) -> None:
    s0, s1 = states(2, seed=k)
    with tempfile.TemporaryDirectory() as d:
        repo = tv.Repo.init(d, chunk_size=4096, pack_threshold=1024)
        repo.commit(s0, "0")
        repo.commit(s1, "1", defer_deltas=True, owned=True)
        items = list(repo.last_write_stats.deferred)
        contents = repo.last_write_stats.deferred_content
        assert len(items) == 16 and {oid for _, oid, _ in items} <= contents.keys()
        lock, calls = threading.Lock(), [0]

        def stop() -> bool:
            with lock:
                calls[0] += 1
                return calls[0] > k

        left: list[Any] = []
        pool = ThreadPoolExecutor(1) if one_thread else None
        done = repo.apply_deferred_deltas(items, pool, contents=contents, stop=stop, left=left)
        assert done == k and deltas(repo) == k and len(left) == 16 - k
        if one_thread:  # items begin in order: the rest is the tail
            assert left == items[k:]
        assert set(left) <= set(items)
        assert repo.apply_deferred_deltas(left) == 16 - k and deltas(repo) == 16
        assert_same_tensors(repo.checkout("HEAD"), s1)
        assert_same_tensors(repo.checkout("HEAD~1"), s0)
        if pool is not None:
            pool.shutdown()
        repo.close()
