"""Per-object cost of the local store (issue 11, goal 6): is one file per 4 MiB chunk slower
than fewer, larger files?

Writes the same bytes (default 1 GiB of random data) as one file fsynced once, as 4 MiB files
each fsynced in turn (1 or 8 threads), as 4 MiB files all written by 8 threads and then
fsynced by 8 (what a commit does since its installs are deferred to the store's sync,
store/local.py), and as 64 MiB files (packs), in a folder on the disk under test; medians of
``--reps`` runs.

    .venv/bin/python bench/object_cost.py [--dir /work/tmp] [--mib 1024] [--reps 3]

With cases 4 and 5 run it ends with goal 6's verdict (bench/goal6.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.goal6 import verdict  # noqa: E402

PIECE = 4 << 20
PACK = 64 << 20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="folder on the disk under test")
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated case numbers (1-5) to run")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="tvcs-objcost-", dir=a.dir)
    buf = os.urandom(PIECE)
    n = a.mib * (1 << 20) // PIECE

    def put(i: int) -> None:
        with open(os.path.join(work, f"o{i}"), "wb") as f:
            f.write(buf)
            f.flush()
            os.fsync(f.fileno())

    def one_file() -> None:
        with open(os.path.join(work, "big"), "wb") as f:
            for _ in range(n):
                f.write(buf)
            f.flush()
            os.fsync(f.fileno())

    def sequential() -> None:
        for i in range(n):
            put(i)

    def threads() -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put, range(n)))

    def packs() -> None:  # PACK-sized files, each fsynced, 8 threads
        per = PACK // PIECE

        def put_pack(j: int) -> None:
            with open(os.path.join(work, f"p{j}"), "wb") as f:
                for _ in range(per):
                    f.write(buf)
                f.flush()
                os.fsync(f.fileno())

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(put_pack, range(n // per)))

    def batched() -> None:  # 4 MiB files, no fsync while writing, then all fsynced at the end
        def write(i: int) -> None:
            with open(os.path.join(work, f"o{i}"), "wb") as f:
                f.write(buf)

        def sync(i: int) -> None:
            fd = os.open(os.path.join(work, f"o{i}"), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(write, range(n)))
            list(pool.map(sync, range(n)))

    cases: list[tuple[str, Callable[[], None]]] = [
        ("one file, one fsync", one_file),
        (f"{n} files of 4 MiB, fsync each, 1 thread", sequential),
        (f"{n} files of 4 MiB, fsync each, 8 threads (tensorvcs before deferred installs)",
         threads),
        (f"{n} files of 4 MiB, written by 8 threads, then fsynced by 8 (tensorvcs)", batched),
        (f"{n * PIECE // PACK} files of 64 MiB, fsync each, 8 threads", packs),
    ]
    try:
        print(f"| {a.mib} MiB written as | median | GiB/s |\n|---|---|---|")
        chosen = {int(x) for x in a.only.split(",") if x}
        medians: dict[int, float] = {}
        for k, (name, fn) in enumerate(cases, 1):
            if chosen and k not in chosen:
                continue
            times = []
            for _ in range(a.reps):
                for f in os.listdir(work):
                    os.unlink(os.path.join(work, f))
                os.sync()
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            med = medians[k] = statistics.median(times)
            print(f"| {name} | {med:.2f} s | {a.mib / 1024 / med:.2f} |")
        if 4 in medians and 5 in medians:  # what a commit does now, against 64 MiB packs
            print(verdict([("the local disk", medians[4], medians[5])]))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
