"""Durability: a committing process is SIGKILLed at precise points of the write order
(tensor objects → manifest → commit → reflog → ref). Whatever the point, the repository stays
consistent: fsck is clean, the branch names the last complete commit, earlier commits check out
bitwise, no stale lock blocks the next commit, and gc reclaims exactly the orphaned objects.

The child (tests/proc_worker.py) wraps the library function that runs at the chosen moment so
that it SIGKILLs its own process there: the kill is real, the library has no test hooks.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    CRASH_REPO,
    assert_same_value,
    crash_state,
    kinds,
    nudged_state,
    object_ids,
    start_worker,
)

import tensorvcs as tv
from tensorvcs.format import codecs, envelope
from tensorvcs.format.envelope import HEADER_SIZE, KIND_COMMIT, MAGIC
from tensorvcs.maintenance import TMP_GRACE_SECONDS
from tensorvcs.refs import HEADS
from tensorvcs.store import local

MAIN = HEADS + "main"
# crash_state(3) stores as: w1 in 4 chunks, w2 in 2 chunks, the small tensors in 1 pack
TENSOR_OBJECTS = {"chunk": 6, "pack": 1}


def _two_commits(path: Path) -> tuple[str, str]:
    with tv.Repo.init(path, **CRASH_REPO) as repo:
        c1 = repo.commit(crash_state(1), "one", step=1)
        c2 = repo.commit(crash_state(2), "two", step=2)
    return c1.id, c2.id


def _kill_child(args: list[Any]) -> int:
    """Run the child to its kill point; its process id."""
    proc = start_worker(*args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, (
        f"child was not killed (status {proc.returncode}):\n{out}\n{err}"
    )
    return proc.pid


def _complete(data: bytes) -> bool:
    """A whole object file: its payload is all there (sizes and zstd frames fit the header)."""
    h = envelope.read_header(data, "temp file")
    try:
        envelope.check_fits(h, memoryview(data)[h.payload_offset :], "temp file")
    except tv.CorruptObjectError:
        return False
    return True


def _assert_no_stale_lock(repo: tv.Repo) -> None:
    # the dead child held these; the kernel released them with its file descriptors
    with repo.store.lock("gc", timeout=5), repo.store.lock("refs", timeout=5):
        pass


def _chunk_ids(repo: tv.Repo, commit: str) -> list[str]:
    """The chunk objects of ``commit``'s chunked tensors, in manifest order."""
    m = repo.get_manifest(repo.get_commit(commit).manifest)
    return [oid for e in m.tensors if e.chunks for oid, _ in e.chunks]


def _assert_good_history(repo: tv.Repo, c1: str, c2: str) -> None:
    assert repo.head() == ("main", c2)
    assert repo.branches() == {"main": c2}
    assert [c.id for c in repo.log()] == [c2, c1]
    assert_same_value(repo.checkout(c1), crash_state(1))
    assert_same_value(repo.checkout("main~1"), crash_state(1))
    assert_same_value(repo.checkout(), crash_state(2))


# kill point -> the objects the dead commit left behind, by kind
# A commit's chunks and packs get their names only at the store's sync before the manifest
# (LocalStore: deferred installs), so a kill before it leaves no named object at all: only
# unnamed temp files, the complete ones among them fsynced never, named never.
ORPHANS: dict[str, dict[str, int]] = {
    "tensors": {},  # killed after two tensor objects were written: two temp files, or more
    "object-midwrite": {},  # one writer thread: 2 complete temp files, a 3rd half written
    "object-midwrite-direct": {"chunk": 2},  # direct writes are not deferred: 2 named chunks
    "manifest": {**TENSOR_OBJECTS, "manifest": 1},
    "commit": {**TENSOR_OBJECTS, "manifest": 1, "commit": 1},
    "ref-rename": {**TENSOR_OBJECTS, "manifest": 1, "commit": 1},
}


@pytest.mark.parametrize("point", list(ORPHANS))
def test_kill_before_ref_update_keeps_last_good_commit(tmp_path: Path, point: str) -> None:
    if point.endswith("-direct") and not local.O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    c1, c2 = _two_commits(tmp_path)
    with tv.Repo.open(tmp_path) as repo:
        before = object_ids(repo)
    assert not os.listdir(tmp_path / ".tvcs" / "tmp")

    child = _kill_child(["crash", tmp_path, point, 3])

    repo = tv.Repo.open(tmp_path)
    after = object_ids(repo)
    assert before <= after
    orphans = after - before
    assert kinds(repo, orphans) == ORPHANS[point]
    # temp files the dead child left: only its own
    leftovers = sorted((tmp_path / ".tvcs" / "tmp").iterdir())
    assert all(f.name.startswith(f"{child}-") for f in leftovers)
    contents = {f: f.read_bytes() for f in leftovers}
    deferred = [b for b in contents.values() if b.startswith(MAGIC)]
    if point == "tensors":  # the two objects written before the kill, complete, never named
        # (other writer threads may have been cut short mid-file)
        assert sum(map(_complete, deferred)) >= 2
        # the rest were being written (a file is written from its start: the magic first)
        assert all(len(b) < len(MAGIC) for b in contents.values() if not b.startswith(MAGIC))
    elif point == "object-midwrite":  # two complete, the third cut short
        assert len(deferred) == len(leftovers) == 3
        short = [b for b in deferred if not _complete(b)]
        assert len(short) == 1 and len(short[0]) > HEADER_SIZE + 1000
    elif point == "object-midwrite-direct":
        # the object being written when the process died: a partial object file
        (partial,) = deferred
        assert len(leftovers) == 1 and len(partial) > HEADER_SIZE + 1000
    elif point == "ref-rename":
        # the new ref's temp file, complete, naming the orphaned commit; never renamed
        (commit_id,) = (o for o in orphans if repo.objects.kind(o) == KIND_COMMIT)
        assert [f.read_bytes() for f in leftovers] == [commit_id.encode() + b"\n"]
    else:
        assert leftovers == []

    report = tv.fsck(repo)
    assert report.ok, [str(p) for p in report.problems]
    # once the commit object exists, the reflog line (written before the ref moves) names it
    logged = point in ("commit", "ref-rename")
    assert report.dangling == (0 if logged else len(orphans))
    _assert_good_history(repo, c1, c2)
    if logged:
        (c3,) = (o for o in orphans if repo.objects.kind(o) == KIND_COMMIT)
        assert repo.refs.reflog("HEAD")[-1].new == c3
        assert_same_value(repo.checkout(c3), crash_state(3))
    else:
        assert repo.refs.reflog(MAIN)[-1].new == c2
    _assert_no_stale_lock(repo)

    c4 = repo.commit(crash_state(4), "after the crash", step=4)
    assert c4.parents == [c2]
    assert_same_value(repo.checkout(), crash_state(4))
    with_c4 = object_ids(repo)
    assert not orphans & (with_c4 - after)  # crash_state(4) shares nothing with the orphans

    old = time.time() - 2 * TMP_GRACE_SECONDS
    for f in leftovers:
        os.utime(f, (old, old))
    gc = tv.gc(repo, prune="now", reflog_expire="now")
    assert gc.deleted_objects == len(orphans)
    assert orphans or leftovers  # the dead commit left something behind to clean
    assert not any((tmp_path / ".tvcs" / "tmp").iterdir())  # stale temp files are removed
    assert object_ids(repo) == with_c4 - orphans
    report = tv.fsck(repo)
    assert report.ok and report.dangling == 0, [str(p) for p in report.problems]
    assert [c.id for c in repo.log()] == [c4.id, c2, c1]
    assert_same_value(repo.checkout(c1), crash_state(1))
    assert_same_value(repo.checkout(c2), crash_state(2))
    repo.close()


@pytest.mark.parametrize("k", [1, 2, 5])
def test_kill_while_the_sync_puts_re_encodings_in_place(tmp_path: Path, k: int) -> None:
    """The next commit changes every chunk slightly, so its sync names the new chunks and then
    renames the parent's chunks, re-encoded as deltas on them, into place. Killed before the
    k-th rename: the re-encodings before it are in place (their bases named and durable), the
    rest are temp files; every commit still checks out bit for bit, fsck is clean, gc keeps
    the new chunks the deltas need, and the commit goes through when retried."""
    c1, c2 = _two_commits(tmp_path)
    with tv.Repo.open(tmp_path) as repo:
        before = object_ids(repo)
        parent_chunks = _chunk_ids(repo, c2)
    assert len(parent_chunks) == TENSOR_OBJECTS["chunk"]

    child = _kill_child(["crash", tmp_path, f"delta-rename-{k}", 2])

    repo = tv.Repo.open(tmp_path)
    deltas = [o for o in parent_chunks if repo.objects.header(o).codec == codecs.CODEC_DELTA]
    assert len(deltas) == k - 1
    orphans = object_ids(repo) - before
    assert kinds(repo, orphans) == {"chunk": TENSOR_OBJECTS["chunk"]}  # named at the sync
    for o in deltas:
        assert repo.objects.header(o).params["base"] in orphans
    leftovers = sorted((tmp_path / ".tvcs" / "tmp").iterdir())
    waiting = [f for f in leftovers if not f.name.endswith(".old")]
    assert len(waiting) == TENSOR_OBJECTS["chunk"] - (k - 1)  # the renames not done
    # the second names that kept the replaced files alive (the k-th made before the kill):
    # their reaper never ran, gc unlinks them; the k-th still names a stored object too
    assert len(leftovers) - len(waiting) == k
    assert all(f.name.startswith(f"{child}-") for f in leftovers)
    report = tv.fsck(repo)
    assert report.ok, [str(p) for p in report.problems]
    _assert_good_history(repo, c1, c2)
    _assert_no_stale_lock(repo)

    old = time.time() - 2 * TMP_GRACE_SECONDS
    for f in leftovers:
        os.utime(f, (old, old))
    gc = tv.gc(repo, prune="now", reflog_expire="now")
    # the deltas' bases are needed by nothing else: gc re-encodes the deltas on their own first
    assert gc.deleted_objects == len(orphans) and gc.rewritten_objects == len(deltas)
    assert not any((tmp_path / ".tvcs" / "tmp").iterdir())
    assert tv.fsck(repo).ok
    _assert_good_history(repo, c1, c2)
    c3 = repo.commit(nudged_state(2), "retried", step=3)
    assert_same_value(repo.checkout(c3.id), nudged_state(2))
    assert all(repo.objects.header(o).codec == codecs.CODEC_DELTA for o in parent_chunks)
    assert_same_value(repo.checkout(c2), crash_state(2))
    assert_same_value(repo.checkout(c1), crash_state(1))
    assert tv.fsck(repo).ok
    repo.close()


def test_kill_after_early_syncs_of_re_encodings(tmp_path: Path) -> None:
    """A commit whose waiting re-encodings pass REPLACE_BATCH_BYTES syncs mid-commit (here
    after each one, one writer thread): killed at its 4th new chunk, three new chunks are
    named and three parent chunks are deltas on them, and no manifest names them. Every
    commit still checks out bit for bit, fsck is clean, gc frees the three (re-encoding the
    deltas on their own first), and the commit goes through when retried."""
    c1, c2 = _two_commits(tmp_path)
    with tv.Repo.open(tmp_path) as repo:
        before = object_ids(repo)
        parent_chunks = _chunk_ids(repo, c2)

    _kill_child(["crash", tmp_path, "delta-early-sync", 2])

    repo = tv.Repo.open(tmp_path)
    orphans = object_ids(repo) - before
    assert kinds(repo, orphans) == {"chunk": 3}
    deltas = [o for o in parent_chunks if repo.objects.header(o).codec == codecs.CODEC_DELTA]
    assert len(deltas) == 3
    assert {repo.objects.header(o).params["base"] for o in deltas} == orphans
    report = tv.fsck(repo)
    assert report.ok, [str(p) for p in report.problems]
    assert report.dangling == 0  # each of the three is the base of a reachable delta
    _assert_good_history(repo, c1, c2)
    _assert_no_stale_lock(repo)
    gc = tv.gc(repo, prune="now", reflog_expire="now")
    assert gc.deleted_objects == 3 and gc.rewritten_objects == 3
    assert tv.fsck(repo).ok
    _assert_good_history(repo, c1, c2)
    c3 = repo.commit(nudged_state(2), "retried", step=3)
    assert_same_value(repo.checkout(c3.id), nudged_state(2))
    assert_same_value(repo.checkout(c2), crash_state(2))
    assert tv.fsck(repo).ok
    repo.close()


def test_kill_after_the_reflog_line_before_the_ref_moves(tmp_path: Path) -> None:
    """Killed after the reflog line was appended, before the branch file was renamed into
    place (git's order: the reflog first, so a failed append never leaves a moved ref behind
    an error). The branch still names the previous commit; the new commit is complete and
    the reflog line that names it keeps it for gc's reflog period."""
    c1, c2 = _two_commits(tmp_path)
    with tv.Repo.open(tmp_path) as repo:
        before = object_ids(repo)

    _kill_child(["crash", tmp_path, "reflog", 3])

    repo = tv.Repo.open(tmp_path)
    new = object_ids(repo) - before
    assert kinds(repo, new) == {**TENSOR_OBJECTS, "manifest": 1, "commit": 1}
    (c3,) = (o for o in new if repo.objects.kind(o) == KIND_COMMIT)
    report = tv.fsck(repo)
    assert report.ok and report.dangling == 0, [str(p) for p in report.problems]
    assert repo.head() == ("main", c2)
    assert [c.id for c in repo.log()] == [c2, c1]
    assert repo.refs.reflog(MAIN)[-1].new == c3  # the move that did not happen
    assert_same_value(repo.checkout(c3), crash_state(3))  # found through the reflog
    assert_same_value(repo.checkout(c2), crash_state(2))
    _assert_no_stale_lock(repo)

    c4 = repo.commit(crash_state(4), "after the crash")
    assert c4.parents == [c2]
    assert repo.refs.reflog(MAIN)[-1].old == c2
    assert tv.gc(repo).deleted_objects == 0  # git's defaults: the reflog keeps c3
    assert tv.gc(repo, prune="now", reflog_expire="now").deleted_objects == len(new)
    assert tv.fsck(repo).ok
    repo.close()


def test_kill_during_gc_loses_nothing(tmp_path: Path) -> None:
    """gc killed after its first deletion: the rest of the garbage stays until the next gc,
    and nothing reachable is touched."""
    c1, c2 = _two_commits(tmp_path)
    with tv.Repo.open(tmp_path) as repo:
        kept = object_ids(repo)
        repo.commit(crash_state(5), "doomed", branch="doomed")
        repo.commit(crash_state(6), "doomed too", branch="doomed")
        repo.delete_branch("doomed")
        garbage = object_ids(repo) - kept
    assert len(garbage) == 2 * (7 + 2)  # two commits of 7 tensor objects, manifest, commit

    _kill_child(["gc-crash", tmp_path])

    repo = tv.Repo.open(tmp_path)
    left = object_ids(repo)
    assert kept <= left and len(left - kept) == len(garbage) - 1
    report = tv.fsck(repo)
    assert report.ok, [str(p) for p in report.problems]
    _assert_good_history(repo, c1, c2)
    _assert_no_stale_lock(repo)
    assert tv.gc(repo, prune="now", reflog_expire="now").deleted_objects == len(garbage) - 1
    assert object_ids(repo) == kept
    assert repo.commit(crash_state(7), "after").parents == [c2]
    repo.close()
