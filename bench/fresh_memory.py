"""What fresh memory costs on this machine right now: a check to run before timing writers.

Every writer through the page cache (torch.save, safetensors, tensorvcs) and every load into new
tensors (torch.load, a checkout) pays for the pages it touches first. On this project's VM that
cost is not steady: touching 4 GiB of new memory took from 0.4 to 9 s within one session, and
the same write of 4 GiB through the page cache 12.9 s once and 2.6 s a few minutes later
(docs/performance.md, "Caveats"). This script touches ``--gib`` of new memory (one write per 4
KiB page; with ``--huge``, advised for transparent huge pages, as numpy does for large arrays)
right after the previous round freed it and again after a pause of ``--pause`` seconds, and
prints the cost per MB. Quote it beside timings that compare writers.

    python bench/fresh_memory.py [--gib 4] [--rounds 3] [--pause 3] [--huge]
"""

from __future__ import annotations

import argparse
import mmap
import statistics
import time

import numpy as np


def touch(nbytes: int, huge: bool = False) -> float:
    """Seconds to map ``nbytes`` of anonymous memory and write one byte per 4 KiB page."""
    t = time.perf_counter()
    m = mmap.mmap(-1, nbytes)
    if huge:
        m.madvise(mmap.MADV_HUGEPAGE)
    pages = np.frombuffer(m, dtype=np.uint8)
    pages[::4096] = 1
    dt = time.perf_counter() - t
    del pages
    m.close()
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pause", type=float, default=3.0)
    ap.add_argument("--huge", action="store_true", help="advise MADV_HUGEPAGE")
    a = ap.parse_args(argv)
    n = int(a.gib * (1 << 30))
    mb = n / 1e6
    first = touch(n, a.huge)
    print(f"first touch of {a.gib:g} GiB: {first:.2f} s ({first / mb * 1e3:.3f} ms/MB)")
    again: list[float] = []
    paused: list[float] = []
    for i in range(a.rounds):
        again.append(touch(n, a.huge))
        time.sleep(a.pause)
        paused.append(touch(n, a.huge))
        print(f"round {i + 1}: right after a free {again[-1]:.2f} s, "
              f"after {a.pause:g} s {paused[-1]:.2f} s")
    ma, mp = statistics.median(again), statistics.median(paused)
    print(f"median ms/MB: right after a free {ma / mb * 1e3:.3f}, after {a.pause:g} s "
          f"{mp / mb * 1e3:.3f} ({mp / ma:.1f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
