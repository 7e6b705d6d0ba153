"""gc and async commits survive SIGKILL at any point (docs/format.md §9); transfers survive gc.

tests/gc_crash_worker.py forks a child per trial that runs gc and SIGKILLs itself right
before a randomly drawn change to the store (deletion, delta re-encoding, reflog rewrite); the
repository is then checked as a user would rely on it. Deleting in the wrong order (a delta's
base before the delta, a commit's objects before the commit) fails these within a few kills.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TESTS, assert_same_value, start_worker, worker_state

import tensorvcs as tv
from tensorvcs.remote import fetch, push, remote_add

KILLS = int(os.environ.get("TVCS_GC_KILLS", "50"))


def _crash_loop(mode: str, work: Path, kills: int, seed: int) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    script, args = "gc_crash_worker.py", [mode, str(work), str(kills), str(seed)]
    if mode == "async":
        script, args = "async_kill_worker.py", args[1:]
    proc = subprocess.run(
        [sys.executable, str(TESTS / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=TESTS,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gc_killed_at_random_points_loses_nothing(tmp_path: Path) -> None:
    out = _crash_loop("gc", tmp_path, KILLS, seed=20261202)
    assert out["defects"] == []
    assert out["trials"] == KILLS and out["kills"] >= KILLS * 0.9  # N <= the changes gc makes
    assert out["points"] >= 100  # deletions of commits, manifests and chunks, re-encodings


def test_push_again_after_a_killed_remote_gc(tmp_path: Path) -> None:
    out = _crash_loop("push", tmp_path, 16, seed=7)
    assert out["defects"] == []
    assert out["kills"] >= 12


def test_async_commits_killed_at_random_times_resume_from_the_newest_complete(
    tmp_path: Path,
) -> None:
    """20 SIGKILLs at random times of a loop that saves every step through a CheckpointManager
    (async commits, KeepLast(3) retention: drop and gc in the background too)."""
    out = _crash_loop("async", tmp_path, 20, seed=11)
    assert out["defects"] == []
    assert out["kills"] == 20
    assert sum(s is not None and s >= 2 for s in out["steps"]) >= 15  # kills mid-run, not at start
    assert out["deltas"] > 0  # the background re-encodings ran (and were killed in) too


def _gc_loop(tmp_path: Path, repo_path: Path) -> tuple[subprocess.Popen[str], Path, Path]:
    go, stop = tmp_path / "go", tmp_path / "stop"
    proc = start_worker("gc-loop", repo_path, go, stop)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    go.touch()
    return proc, go, stop


def _stop(proc: subprocess.Popen[str], stop: Path) -> int:
    stop.touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return int(out.split()[-1])


@pytest.mark.slow
def test_push_and_fetch_while_gc_runs_on_the_other_side(tmp_path: Path) -> None:
    """gc runs in a loop on the remote while 6 commits are pushed one by one, then in a loop
    on a clone while it fetches them: transfers hold the gc lock shared on both sides, so no
    gc deletes what a transfer has copied but not yet named by a ref."""
    remote = tmp_path / "remote"
    tv.Repo.init(remote, chunk_size=4096, pack_threshold=1024).close()
    local = tv.Repo.init(tmp_path / "local", chunk_size=4096, pack_threshold=1024)
    remote_add(local, "origin", str(remote))
    states = {}
    proc, _, stop = _gc_loop(tmp_path, remote)
    try:
        for i in range(6):
            c = local.commit(worker_state(5, i), f"c{i}")
            states[c.id] = worker_state(5, i)
            push(local, "origin")
    finally:
        runs = _stop(proc, stop)
    assert runs >= 1
    with tv.Repo.open(remote) as r:
        assert tv.fsck(r).ok
        for cid, state in states.items():
            assert_same_value(r.checkout(cid), state)

    clone = tv.Repo.init(tmp_path / "clone2", chunk_size=4096, pack_threshold=1024)
    remote_add(clone, "origin", str(remote))
    (tmp_path / "stop").unlink()
    proc, _, stop = _gc_loop(tmp_path, tmp_path / "clone2")
    try:
        for _ in range(3):
            fetch(clone, "origin")
    finally:
        _stop(proc, stop)
    for cid, state in states.items():
        assert_same_value(clone.checkout(cid), state)
    assert tv.fsck(clone).ok
    clone.close()
    local.close()
