"""Child-process roles for the crash and concurrency tests (run as a script, not collected).

    proc_worker.py crash REPO POINT SEED     commit crash_state(SEED), SIGKILLed at POINT
                                             (delta-* points: nudged_state(SEED))
    proc_worker.py gc-crash REPO             run gc, SIGKILLed after its first deletion
    proc_worker.py commit REPO PROC N GO     wait for file GO, commit worker_state(PROC, i) N times
    proc_worker.py reuse REPO PROC N GO      like commit, but each state is first committed to a
                                             scratch branch that is deleted again (its objects
                                             are unreferenced until the real commit names them)
    proc_worker.py gc-loop REPO GO STOP      wait for GO, run gc until file STOP exists
    proc_worker.py drop-crash REPO POINT     drop step-1 from main, SIGKILLed at POINT of its
                                             ref transaction (journal, branch, first-tag)

The kill is real (SIGKILL to this very process); the precise moment is chosen by wrapping the
library function that runs there. Exit status 3 means the kill point was never reached.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from helpers import crash_state, nudged_state, worker_state

import tensorvcs as tv
from tensorvcs.format import envelope
from tensorvcs.refs import RefStore
from tensorvcs.store import local
from tensorvcs.store.local import LocalStore
from tensorvcs.store.objects import ObjectStore

MAIN = "refs/heads/main"


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # not reached: SIGKILL cannot be caught


def patch(point: str) -> None:
    """Wrap the library function at ``point`` so that the process dies there."""
    if point == "tensors":  # after the 2nd tensor object is in the store, before the manifest
        write = ObjectStore.write
        written_objects = itertools.count(1)

        def write_then_die(
            self: ObjectStore, oid: str, kind: int, length: int, enc: Any, **kw: Any
        ) -> int:
            n = write(self, oid, kind, length, enc, **kw)
            tensor_object = kind in (envelope.KIND_CHUNK, envelope.KIND_PACK)
            if tensor_object and n and next(written_objects) == 2:
                die()
            return n

        ObjectStore.write = write_then_die  # type: ignore[method-assign]
    elif point == "manifest":  # the manifest is stored; the commit object is not
        put_bytes = ObjectStore.put_bytes

        def put_bytes_or_die(self: ObjectStore, kind: int, content: Any) -> str:
            if kind == envelope.KIND_COMMIT:
                die()
            return put_bytes(self, kind, content)

        ObjectStore.put_bytes = put_bytes_or_die  # type: ignore[method-assign]
    elif point == "commit":  # the commit object is stored; the branch is not updated
        update = RefStore.update

        def update_or_die(self: RefStore, name: str, new: str, **kw: Any) -> None:
            if name == MAIN:
                die()
            update(self, name, new, **kw)

        RefStore.update = update_or_die  # type: ignore[method-assign]
    elif point == "ref-rename":  # the new ref's temp file is written and fsynced, not renamed
        install = LocalStore._install

        def install_or_die(self: LocalStore, tmp: Path, path: Path, durable: bool) -> None:
            if path == self.root / MAIN:
                die()
            install(self, tmp, path, durable)

        LocalStore._install = install_or_die  # type: ignore[method-assign]
    elif point == "reflog":  # the reflog line is appended; the ref is not renamed into place
        log = RefStore.log

        def log_or_die(self: RefStore, name: str, *args: Any) -> None:
            log(self, name, *args)
            if name == MAIN:
                die()

        RefStore.log = log_or_die  # type: ignore[method-assign]
    elif point == "object-midwrite":  # half of the 3rd object file's payload is on disk
        put_if_absent = LocalStore.put_if_absent
        objects_started = itertools.count(1)

        def half_then_die(pieces: Iterable[Any]) -> Iterator[Any]:
            head, *payload = (memoryview(p).cast("B") for p in pieces)
            yield head
            left = sum(len(p) for p in payload) // 2
            for p in payload:  # the payload's first half (large: written through to the file)
                yield p[:left]
                left -= len(p[:left])
                if not left:
                    break
            die()

        def put_half(self: LocalStore, name: str, data: Iterable[Any], **kw: Any) -> bool:
            if name.startswith("objects/") and next(objects_started) == 3:
                data = half_then_die(data)
            return put_if_absent(self, name, data, **kw)

        LocalStore.put_if_absent = put_half  # type: ignore[method-assign]
    elif point == "object-midwrite-direct":  # the 3rd object dies inside its direct write
        local.DIRECT_MIN = 1  # the test repo's 64 KiB chunks go around the page cache too
        write = local.os.write
        direct_files = itertools.count(1)

        def write_half_then_die(fd: int, data: Any) -> int:
            # the first write of a direct file (at offset 0; fd numbers are reused)
            direct = fcntl.fcntl(fd, fcntl.F_GETFL) & local.O_DIRECT
            if direct and not os.lseek(fd, 0, 1) and next(direct_files) == 3:
                view = memoryview(data)
                half = len(view) // 2 // local.DIRECT_ALIGN * local.DIRECT_ALIGN
                write(fd, view[:half])
                die()
            return write(fd, data)

        local.os.write = write_half_then_die  # type: ignore[assignment]
    elif point == "delta-early-sync":  # re-encodings put in place as they come; dies mid-commit
        local.REPLACE_BATCH_BYTES = 1  # every re-encoding makes its worker sync
        write = ObjectStore.write
        chunks = itertools.count(1)

        def write_then_die(
            self: ObjectStore, oid: str, kind: int, length: int, enc: Any, **kw: Any
        ) -> int:
            if kind == envelope.KIND_CHUNK and next(chunks) == 4:
                die()  # the 4th new chunk: three written, re-encoded and synced before
            return write(self, oid, kind, length, enc, **kw)

        ObjectStore.write = write_then_die  # type: ignore[method-assign]
    elif point.startswith("delta-rename-"):  # the sync dies before its K-th re-encoding lands
        install = LocalStore._install
        renames = itertools.count(1)
        k = int(point.rsplit("-", 1)[1])

        def rename_or_die(self: LocalStore, tmp: Path, path: Path, durable: bool) -> None:
            # a commit renames object files only to put re-encodings in place (new objects
            # are linked): the sync's replacement step
            if path.is_relative_to(self.root / "objects") and next(renames) == k:
                die()
            install(self, tmp, path, durable)

        LocalStore._install = rename_or_die  # type: ignore[method-assign]
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def wait_for(path: Path) -> None:
    print("ready", flush=True)
    while not path.exists():
        time.sleep(0.001)


def main(argv: list[str]) -> int:
    role, repo_path = argv[0], Path(argv[1])
    repo = tv.Repo.open(repo_path)
    if role == "crash":
        point, seed = argv[2], int(argv[3])
        if point.startswith("object-midwrite") or point == "delta-early-sync":
            repo.workers = 1  # one writer thread: objects 1 and 2 complete, 3 half written
        patch(point)
        if point.endswith("-direct"):
            repo.store.direct = True  # as TVCS_DIRECT_IO=1 sets it
        state = nudged_state(seed) if point.startswith("delta-") else crash_state(seed)
        repo.commit(state, f"crash {seed}")
        return 3
    if role == "gc-crash":
        delete = ObjectStore.delete

        def delete_then_die(self: ObjectStore, oid: str) -> None:
            delete(self, oid)
            die()

        ObjectStore.delete = delete_then_die  # type: ignore[method-assign]
        tv.gc(repo, prune="now", reflog_expire="now")
        return 3
    if role == "drop-crash":
        point = argv[2]
        put = LocalStore.put

        def put_or_die(self: LocalStore, name: str, data: Any, **kw: Any) -> None:
            put(self, name, data, **kw)
            if (
                (point == "journal" and name == "refs-txn")
                or (point == "branch" and name == MAIN)
                or (point == "first-tag" and name.startswith("refs/tags/"))
            ):
                die()

        LocalStore.put = put_or_die  # type: ignore[method-assign]
        tv.drop(repo, ["step-1"])
        return 3
    if role in ("commit", "reuse"):
        proc, n, go = int(argv[2]), int(argv[3]), Path(argv[4])
        wait_for(go)
        for i in range(n):
            state = worker_state(proc, i)
            if role == "reuse":
                repo.commit(state, f"scratch p{proc} i{i}", branch="scratch")
                repo.delete_branch("scratch")
            c = repo.commit(state, f"p{proc} i{i}", step=i, metadata={"proc": proc, "i": i})
            print(c.id, flush=True)
        return 0
    if role == "gc-loop":
        go, stop = Path(argv[2]), Path(argv[3])
        wait_for(go)
        runs = 0
        while not (stop.exists() and runs > 0):
            tv.gc(repo, prune="now", reflog_expire="now")
            runs += 1
            time.sleep(0.005)  # let waiting committers take the lock between runs
        print(f"gc runs {runs}", flush=True)
        return 0
    raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
