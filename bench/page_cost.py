"""What writing into the page cache costs on this machine: pages another file just freed, or
pages the kernel has to find elsewhere.

Writes ``--mib`` MiB of random bytes per round into a new file (44 writes of 1 MiB from 4
threads, as a W4 commit writes its chunks), fsyncs it, and either keeps the file (``kept``:
a folder of checkpoints, or a store's new objects) or deletes it before the next round
(``recycled``: a file saved over the last one). Prints each round's wall time of the writes,
the threads' CPU time in them, and the fsync, then the medians of the rounds after
``--warm`` for each mode. The modes alternate round by round in one process, each with its own
folder, so both see the same machine.

    .venv/bin/python bench/page_cost.py [--dir /work/tmp] [--mib 44] [--rounds 16] [--warm 8]

On this project's 2-core VM (docs/performance.md, "W3/W4 steady commits against kept
checkpoints") the kept files' writes cost several times the recycled ones' once a few hundred
MB have been kept: page-cache pages the guest has not touched recently cost far more to fill.
torch.save over one file gets the cheap pages; a series of kept checkpoints, and a store's new
objects, do not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

PIECE = 1 << 20


def one_round(folder: Path, name: str, bufs: list[np.ndarray], pool: ThreadPoolExecutor
              ) -> tuple[float, float, float]:
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        def put(k: int) -> float:
            cpu = time.thread_time()
            os.pwrite(fd, bufs[k], k * PIECE)
            return time.thread_time() - cpu

        t0 = time.perf_counter()
        cpu = sum(pool.map(put, range(len(bufs))))
        t1 = time.perf_counter()
        os.fsync(fd)
        t2 = time.perf_counter()
    finally:
        os.close(fd)
    return t1 - t0, cpu, t2 - t1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="folder on the disk under test")
    ap.add_argument("--mib", type=int, default=44)
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--warm", type=int, default=8, help="rounds left out of the medians")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    pool = ThreadPoolExecutor(4)
    rows: dict[str, list[tuple[float, float, float]]] = {"kept": [], "recycled": []}
    with tempfile.TemporaryDirectory(prefix="tvcs-pages-", dir=a.dir) as d:
        for mode in rows:
            (Path(d) / mode).mkdir()
        for r in range(a.rounds):
            bufs = [rng.integers(0, 256, PIECE, dtype=np.uint8) for _ in range(a.mib)]
            for mode, res in rows.items():
                folder = Path(d) / mode
                if mode == "recycled":
                    shutil.rmtree(folder)
                    folder.mkdir()
                res.append(one_round(folder, f"round-{r:03d}", bufs, pool))
                w, cpu, fs = res[-1]
                print(f"round {r:2d} {mode:8s} write {w * 1e3:6.1f} ms (CPU {cpu * 1e3:6.1f} ms)"
                      f"  fsync {fs * 1e3:5.1f} ms", flush=True)
    for mode, res in rows.items():
        tail = res[a.warm:] or res
        print(f"{mode:8s} medians of rounds {a.warm}-{a.rounds - 1}: write "
              f"{statistics.median(x[0] for x in tail) * 1e3:.1f} ms (CPU "
              f"{statistics.median(x[1] for x in tail) * 1e3:.1f} ms), fsync "
              f"{statistics.median(x[2] for x in tail) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
