"""Crash loop for gc (run as a script by tests/test_gc_crash.py, not collected).

    gc_crash_worker.py gc   WORK KILLS SEED    SIGKILL a local gc at KILLS random points
                                               (KILLS 0: at every one of its points in turn)
    gc_crash_worker.py push WORK KILLS SEED    SIGKILL a gc of a remote at KILLS random
                                               points, then re-run the push that it raced

This process imports torch and tensorvcs once and builds a template repository; each trial
copies it, forks a child that runs gc and SIGKILLs itself right before its N-th change to the
store (N drawn from every change the same gc makes when left to finish: object deletions,
delta re-encodings, reflog rewrites, fsyncs of folders don't count), then checks in this
process what must hold after any crash:

- every commit a ref or reflog names still checks out bitwise;
- fsck finds no problem (a present object can always be read: nothing half-deleted);
- a new commit of the content of a commit gc was deleting (so it deduplicates against the
  objects the dead gc left) checks out bitwise, and so does everything after a complete gc.

Prints one JSON line: {"kills": n, "trials": n, "defects": [...], "points": total}.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from helpers import assert_same_value

import tensorvcs as tv
from tensorvcs.refs import HEADS
from tensorvcs.remote import push
from tensorvcs.store.local import LocalStore

REPO = {"chunk_size": 16384, "pack_threshold": 2048}
MUTATIONS = ("put", "put_if_absent", "delete", "append")


def evolving_state(step: int) -> dict[str, Any]:
    """A training-like state: weights that move a little each step (so chunks delta-encode
    against the next version), an optimizer moment, plain values."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(64, 256, generator=g)
    drift = torch.randn(64, 256, generator=torch.Generator().manual_seed(step))
    return {
        "model": OrderedDict(
            w=w + 1e-3 * step * drift,
            w2=w.flip(0) - 1e-3 * step * drift,
            b=torch.full((300,), float(step)),
            frozen=torch.arange(8192, dtype=torch.float32),
        ),
        "optimizer": {"exp_avg": 1e-2 * drift, "step": step},
        "step": step,
    }


def build_template(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A repository whose gc re-encodes deltas and deletes commits, manifests and chunks:
    8 commits on main (tagged), 3 of them dropped; a branch made and deleted; a detached
    commit left behind. Returns ({commit id: state} of what stays, {id: state} of what goes)."""
    repo = tv.Repo.init(path, **REPO)
    states = {}
    for step in range(1, 9):
        c = repo.commit(evolving_state(step), f"step {step}", step=step)
        repo.tag(f"step-{step}", c.id)
        states[c.id] = evolving_state(step)
    repo.commit(evolving_state(100), "side", branch="side")
    side = repo.branches()["side"]
    states[side] = evolving_state(100)
    repo.delete_branch("side")
    main = repo.branches()["main"]
    repo.switch(main, detach=True)
    detached = repo.commit(evolving_state(200), "detached")
    states[detached.id] = evolving_state(200)
    repo.switch("main")
    doomed_steps = (2, 3, 5)
    by_step = {repo.get_commit(t).step: t for t in repo.tags().values()}
    tv.drop(repo, [by_step[s] for s in doomed_steps])
    keep: dict[str, Any] = {}
    for c in repo.log("main"):
        keep[c.id] = evolving_state(c.step)
    gone = {cid: s for cid, s in states.items() if cid not in keep}
    repo.close()
    return keep, gone


def _gc(path: Path) -> None:
    with tv.Repo.open(path) as repo:
        tv.gc(repo, prune="now", reflog_expire="now")


def count_mutations(template: Path, scratch: Path, run: Any) -> int:
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(template, scratch)
    counter = [0]
    saved = {m: getattr(LocalStore, m) for m in MUTATIONS}

    def counting(name: str) -> Any:
        def wrapper(self: LocalStore, *a: Any, **k: Any) -> Any:
            counter[0] += 1
            return saved[name](self, *a, **k)

        return wrapper

    for m in MUTATIONS:
        setattr(LocalStore, m, counting(m))
    try:
        run(scratch)
    finally:
        for m, f in saved.items():
            setattr(LocalStore, m, f)
    return counter[0]


def die_at(n: int) -> None:
    """In the child: SIGKILL this process right before its n-th change to a store."""
    counter = [0]
    saved = {m: getattr(LocalStore, m) for m in MUTATIONS}

    def dying(name: str) -> Any:
        def wrapper(self: LocalStore, *a: Any, **k: Any) -> Any:
            counter[0] += 1
            if counter[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return saved[name](self, *a, **k)

        return wrapper

    for m in MUTATIONS:
        setattr(LocalStore, m, dying(m))


def killed_run(path: Path, n: int, run: Any) -> bool:
    """Fork a child that runs ``run(path)`` and dies at change ``n``; True if it was killed."""
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            die_at(n)
            run(path)
        except BaseException:
            traceback.print_exc()
            os._exit(2)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        return True
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return False
    raise RuntimeError(f"gc child ended with status {status}")


def check_repo(path: Path, keep: dict[str, Any], gone: dict[str, Any], where: str) -> list[str]:
    """What must hold after any crash; returns the defects found."""
    defects: list[str] = []
    with tv.Repo.open(path) as repo:
        report = tv.fsck(repo)
        defects += [f"{where}: fsck: {p}" for p in report.problems]
        for cid, state in keep.items():
            try:
                assert_same_value(repo.checkout(cid), state)
            except (AssertionError, tv.TensorVCSError) as e:
                defects.append(f"{where}: kept commit {cid[:12]}: {type(e).__name__}: {e}")
        for name, oid in repo.tags().items():
            if oid not in keep:
                defects.append(f"{where}: tag {name} names {oid[:12]}, not on main")
        # commit again what gc was deleting: it deduplicates against whatever is left
        for i, state in enumerate(gone.values()):
            c = repo.commit(state, f"again {i}", branch="again")
            try:
                assert_same_value(repo.checkout(c.id), state)
            except (AssertionError, tv.TensorVCSError) as e:
                defects.append(f"{where}: re-commit {i}: {type(e).__name__}: {e}")
    _gc(path)
    with tv.Repo.open(path) as repo:
        report = tv.fsck(repo)
        defects += [f"{where}: fsck after a full gc: {p}" for p in report.problems]
        for c in repo.log("again"):
            try:
                repo.checkout(c.id)
            except tv.TensorVCSError as e:
                defects.append(f"{where}: after a full gc, {c.id[:12]}: {e}")
    return defects


def main_gc(work: Path, kills: int, seed: int) -> dict[str, Any]:
    template = work / "template"
    keep, gone = build_template(template)
    total = count_mutations(template, work / "count", _gc)
    rng = random.Random(seed)
    points = sorted(rng.randint(1, total) for _ in range(kills)) if kills else range(1, total + 1)
    defects: list[str] = []
    killed = 0
    for i, n in enumerate(points):
        trial = work / f"t{i}"
        shutil.copytree(template, trial)
        killed += killed_run(trial, n, _gc)
        defects += check_repo(trial, keep, gone, f"kill at change {n}/{total}")
        shutil.rmtree(trial)
    return {"kills": killed, "trials": len(points), "points": total, "defects": defects}


def main_push(work: Path, kills: int, seed: int) -> dict[str, Any]:
    """A push interrupted before it moved the remote's ref leaves its objects unreferenced on
    the remote; a gc there is killed at random points; the push is run again: the remote's
    branch must then name a commit whose every object is there."""
    local, remote = work / "local", work / "remote"
    tv.Repo.init(remote, **REPO).close()  # the remote: a repository's .tvcs at a path
    with tv.Repo.init(local, **REPO) as repo:
        repo.commit(evolving_state(1), "one", step=1)
        push(repo, str(remote))
        second = repo.commit(evolving_state(2), "two", step=2)
        # the interrupted push: every object and the commit are sent, the ref is not moved
        from tensorvcs.remote import open_remote_repo, transfer

        dst = open_remote_repo(str(remote))
        transfer(repo, dst, [second.id])
        dst.close()
    total = count_mutations(remote, work / "count", _gc)
    rng = random.Random(seed)
    points = sorted(rng.randint(1, total) for _ in range(kills))
    defects: list[str] = []
    killed = 0
    for i, n in enumerate(points):
        trial = work / f"p{i}"
        shutil.copytree(remote, trial)
        killed += killed_run(trial, n, _gc)
        where = f"remote gc killed at change {n}/{total}"
        with tv.Repo.open(local) as repo:
            try:
                push(repo, str(trial))
            except tv.TensorVCSError as e:
                defects.append(f"{where}: push again: {type(e).__name__}: {e}")
                continue
        with tv.Repo.open(trial) as dst:
            if dst.refs.read(HEADS + "main") != second.id:
                defects.append(f"{where}: remote main is not the pushed commit")
        clone = work / f"c{i}"
        try:
            with tv.clone(str(trial), clone) as cl:
                for c in cl.log():
                    assert_same_value(cl.checkout(c.id), evolving_state(c.step))
        except (AssertionError, tv.TensorVCSError) as e:
            defects.append(f"{where}: clone: {type(e).__name__}: {e}")
        shutil.rmtree(trial)
        shutil.rmtree(clone)
    return {"kills": killed, "trials": len(points), "points": total, "defects": defects}


if __name__ == "__main__":
    mode, work, kills, seed = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    out = (main_gc if mode == "gc" else main_push)(work, kills, seed)
    print(json.dumps(out))
