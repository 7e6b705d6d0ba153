"""Kill loop for CheckpointManager async commits (run by tests/test_gc_crash.py).

    async_kill_worker.py WORK KILLS SEED

This process imports torch and tensorvcs once; each trial forks a child that runs a training-
like loop saving every step through a CheckpointManager (async commits, KeepLast(3)
retention, so drop and gc run in the background too) on a fresh repository, and SIGKILLs it
after a random delay. Then, in this process, what a resume relies on:

- ``mgr.latest()`` is a complete checkpoint and ``mgr.restore()`` brings back its state bit
  for bit; the branch holds at most 3 checkpoints of consecutive saved steps plus the newest;
- every tag names a commit on the branch; fsck finds no problem;
- the run goes on: one more save, and it is the newest.

The kills also land in the background re-encodings of each commit's parent chunks as deltas
(``compact_in_background``): the drifting weight gives them something to re-encode.

Prints one JSON line: {"kills": n, "defects": [...], "steps": [newest step per trial],
"deltas": delta objects found}.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from helpers import assert_same_value

import tensorvcs as tv
from tensorvcs.format.codecs import CODEC_DELTA

# the children are forked from this process: no OpenMP thread pool may exist here (libgomp is
# not fork-safe), so torch runs single-threaded on both sides
torch.set_num_threads(1)


BASE = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))


def state(step: int) -> dict[str, Any]:
    """A weight that drifts a little each step (so each checkpoint's parent chunks become
    deltas: in the background after each commit, where the kill may land) and one that does
    not resemble the last (its chunks stay whole)."""
    g = torch.Generator().manual_seed(step)
    drift = BASE + 1e-3 * torch.randn(256, 256, generator=g)
    return {"w": torch.randn(256, 256, generator=g), "drift": drift, "step_value": step}


def child(path: Path) -> None:
    repo = tv.Repo.open(path)
    mgr = tv.CheckpointManager(repo, keep=[tv.KeepLast(3)], every_n_steps=1)
    step = 0
    while True:
        step += 1
        mgr.save(state(step), step=step)
        if step % 3 == 0:  # let the background re-encodings run to their end now and then
            mgr.wait(compaction=True)


def check(path: Path, where: str) -> tuple[list[str], int | None, int]:
    defects: list[str] = []
    with tv.Repo.open(path) as repo:
        mgr = tv.CheckpointManager(repo, keep=[tv.KeepLast(3)])
        latest = mgr.latest()
        if latest is None:
            return defects, None, 0
        deltas = sum(repo.objects.header(o).codec == CODEC_DELTA for o in repo.objects.ids())
        rest = mgr.restore()
        got = repo.checkout(latest.commit)
        got.pop("_tvcs")
        try:
            assert_same_value(got, state(latest.step))
            assert_same_value(rest, state(latest.step))  # no module given: all comes back
            assert mgr.step == latest.step
        except AssertionError as e:
            defects.append(f"{where}: restore of step {latest.step}: {e}")
        steps = [c.step for c in mgr.checkpoints()]
        if steps != sorted(steps) or len(steps) > 4 or steps[-1] != latest.step:
            defects.append(f"{where}: checkpoints on the branch: {steps}")
        chain = {c.id for c in repo.log()}
        for name, oid in repo.tags().items():
            if oid not in chain:
                defects.append(f"{where}: tag {name} is off the branch")
        report = tv.fsck(repo)
        defects += [f"{where}: fsck: {p}" for p in report.problems]
        mgr.save(state(latest.step + 1), step=latest.step + 1)
        mgr.close()
        after = tv.CheckpointManager(repo).latest()
        if after is None or after.step != latest.step + 1:
            defects.append(f"{where}: the save after the resume is not the newest")
        return defects, latest.step, deltas


def main(work: Path, kills: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    defects: list[str] = []
    killed = 0
    steps: list[int | None] = []
    deltas = 0  # delta objects found after the kills (re-encodings done in the background)
    for i in range(kills):
        path = work / f"r{i}"
        tv.Repo.init(path, chunk_size=65536, pack_threshold=4096).close()
        delay = rng.uniform(0.05, 1.5)
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            try:
                child(path)
            except BaseException:
                traceback.print_exc()
                os._exit(2)
            os._exit(0)
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed += os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        d, newest, n = check(path, f"kill after {delay:.2f}s")
        defects += d
        deltas += n
        steps.append(newest)
        shutil.rmtree(path)
    return {"kills": killed, "defects": defects, "steps": steps, "deltas": deltas}


if __name__ == "__main__":
    out = main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps(out))
