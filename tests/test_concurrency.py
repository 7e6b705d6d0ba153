"""Concurrent processes on one repository: committers racing on one branch, and gc running
while a process commits. Every outcome is checked bitwise; nothing here measures time."""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers import (
    CONCURRENT_REPO,
    assert_same_value,
    start_worker,
    worker_state,
)

import tensorvcs as tv
from tensorvcs.refs import HEADS


def _start_together(tmp_path: Path, roles: list[list[object]]) -> list[subprocess.Popen[str]]:
    """Start the workers, wait until each is ready, then release them all at once."""
    go = tmp_path / "go"
    procs = [start_worker(*role) for role in roles]
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line == "ready\n", line + (p.stderr.read() if p.stderr else "")
    go.touch()
    return procs


def _finish(p: subprocess.Popen[str]) -> str:
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, f"worker failed ({p.returncode}):\n{out}\n{err}"
    return out


def _chain(repo: tv.Repo, rev: str) -> list[tv.Commit]:
    """The first-parent chain from ``rev`` back to the root, newest first."""
    out = [repo.show(rev)]
    while out[-1].parents:
        assert len(out[-1].parents) == 1
        out.append(repo.get_commit(out[-1].parents[0]))
    return out


def test_two_processes_commit_to_one_branch(tmp_path: Path) -> None:
    n = 20
    repo = tv.Repo.init(tmp_path / "r", **CONCURRENT_REPO)
    initial = repo.commit({"initial": True}, "initial")
    go = tmp_path / "go"
    procs = _start_together(tmp_path, [["commit", tmp_path / "r", proc, n, go] for proc in (1, 2)])
    printed = [_finish(p).split() for p in procs]
    assert [len(ids) for ids in printed] == [n, n]

    repo = tv.Repo.open(tmp_path / "r")
    chain = _chain(repo, "main")
    # one linear history: every commit of both processes, each exactly once, on the initial
    assert len(chain) == 2 * n + 1
    assert chain[-1].id == initial.id
    assert {c.id for c in repo.log("main")} == {c.id for c in chain}
    assert {c.id for c in chain[:-1]} == set(printed[0]) | set(printed[1])
    for proc in (1, 2):
        mine = [c for c in reversed(chain) if c.metadata.get("proc") == proc]
        assert [c.metadata["i"] for c in mine] == list(range(n))  # in the order it made them
        assert [c.id for c in mine] == printed[proc - 1]
        for c in mine:
            i = c.metadata["i"]
            assert c.message == f"p{proc} i{i}" and c.step == i
            assert_same_value(repo.checkout(c.id), worker_state(proc, i))
    assert_same_value(repo.checkout(initial.id), {"initial": True})

    # the reflog saw every update, in order, each one starting where the previous ended
    log = repo.refs.reflog(HEADS + "main")
    assert len(log) == 2 * n + 1
    assert [e.new for e in log] == [c.id for c in reversed(chain)]
    assert [e.old for e in log] == [None] + [e.new for e in log[:-1]]

    report = tv.fsck(repo)
    assert report.ok and report.dangling == 0, [str(p) for p in report.problems]
    assert tv.gc(repo, prune="now", reflog_expire="now").deleted_objects == 0
    repo.close()


def test_gc_while_committing_never_deletes_what_a_commit_needs(tmp_path: Path) -> None:
    """gc runs in a loop in one process while another commits 10 times. Each state is first
    committed to a scratch branch that is then deleted, so all its objects are garbage right
    up to the moment the real commit names them again: the window gc must not hit."""
    n = 10
    repo = tv.Repo.init(tmp_path / "r", **CONCURRENT_REPO)
    initial = repo.commit(worker_state(0, 0), "initial")
    go, stop = tmp_path / "go", tmp_path / "stop"
    gc_proc, committer = _start_together(
        tmp_path,
        [["gc-loop", tmp_path / "r", go, stop], ["reuse", tmp_path / "r", 3, n, go]],
    )
    printed = _finish(committer).split()
    stop.touch()
    runs = _finish(gc_proc)
    assert runs.startswith("gc runs ") and int(runs.split()[-1]) >= 1

    repo = tv.Repo.open(tmp_path / "r")
    chain = _chain(repo, "main")
    assert [c.id for c in reversed(chain)] == [initial.id, *printed]
    assert "scratch" not in repo.branches()
    report = tv.fsck(repo)
    assert report.ok, [str(p) for p in report.problems]
    for c in chain[:-1]:
        assert_same_value(repo.checkout(c.id), worker_state(3, c.metadata["i"]))
    assert_same_value(repo.checkout(initial.id), worker_state(0, 0))

    # the last gc may have run before the last scratch commit was deleted: collect it now
    tv.gc(repo, prune="now", reflog_expire="now")
    report = tv.fsck(repo)
    assert report.ok and report.dangling == 0, [str(p) for p in report.problems]
    for c in chain[:-1]:
        assert_same_value(repo.checkout(c.id), worker_state(3, c.metadata["i"]))
    repo.close()
