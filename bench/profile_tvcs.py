"""Where tensorvcs spends its time: cProfile of one tensorvcs call, in every thread.

tensorvcs hashes, encodes and writes chunks on a thread pool, which a plain cProfile of the
main thread would not see. This script gives the repository a pool whose worker threads each
run their own profiler and merges them with the main thread's: the totals are thread-seconds
(two busy workers for 1 s count 2 s).

    python bench/profile_tvcs.py first-commit [--mib 1024]    # W1: a synthetic fp32 state
    python bench/profile_tvcs.py series-commit checkout       # several cases, one training run
    python bench/profile_tvcs.py series-commit                 # W3: a steady-state commit
    python bench/profile_tvcs.py bf16-commit                   # W4: a steady-state commit
    python bench/profile_tvcs.py checkout                      # W5: full checkout of W3's last

    python bench/profile_tvcs.py first-commit --mib 100 --cpu  # CPU time, not wall time

Writes <out>/profile-<case>.txt (top functions by own time and by cumulative time). By
default each thread's profile counts wall time, so with more busy threads than cores a
function's time includes the waits for a core; ``--cpu`` counts each thread's CPU time
(``time.thread_time``) instead, which says where the cores go.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tensorvcs as tv  # noqa: E402
from bench import common as c  # noqa: E402
from bench import minilm, w1_first_commit  # noqa: E402


class Profiled:
    """Profile the main thread and every worker of ``repo``'s pool while active."""

    timer: Any = None  # a cProfile timer (time.thread_time: CPU time); None: wall time

    def __init__(self, repo: tv.Repo) -> None:
        self.repo = repo
        self.profiles: list[cProfile.Profile] = []
        self.lock = threading.Lock()

    def _profile(self) -> cProfile.Profile:
        return cProfile.Profile(self.timer) if self.timer is not None else cProfile.Profile()

    def _start(self) -> None:
        p = self._profile()
        with self.lock:
            self.profiles.append(p)
        p.enable()

    def __enter__(self) -> Profiled:
        self.repo.close()
        self.repo._pool = ThreadPoolExecutor(
            self.repo.workers, thread_name_prefix="tvcs-prof", initializer=self._start
        )
        self.main = self._profile()
        self.main.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        self.main.disable()
        self.repo.close()  # workers exit; their profiles stop with them

    def report(self, title: str, seconds: float, top: int = 25) -> str:
        buf = io.StringIO()
        st = pstats.Stats(self.main, stream=buf)
        for p in self.profiles:
            st.add(p)
        unit = "CPU-seconds" if self.timer is not None else "thread-seconds (wall)"
        buf.write(f"# {title}\n# wall {seconds:.3f} s; {len(self.profiles)} worker threads "
                  f"+ main; times are {unit}\n\n")
        st.sort_stats("tottime").print_stats(top)
        st.sort_stats("cumulative").print_stats(top)
        return buf.getvalue()


def first_commit(work: Path, mib: int) -> tuple[str, float, Any]:
    state = w1_first_commit.synthetic_state(mib)
    repo = tv.Repo.init(work / "r")
    with Profiled(repo) as prof:
        _, secs = c.timed(lambda: repo.commit(state, "first"))
    return f"first commit of a synthetic {mib} MiB fp32 state", secs, prof


def _w3_repo(work: Path, commits: int) -> tuple[tv.Repo, Any]:
    full, _ = minilm.finetune_series(commits, 2, commits)
    repo = tv.Repo.init(work / "r")
    for s, k in zip(full.states[:-1], full.steps[:-1], strict=True):
        repo.commit(s, f"step {k}", step=k)
    return repo, full


def series_commit(work: Path, commits: int) -> tuple[str, float, Any]:
    repo, full = _w3_repo(work, commits)
    with Profiled(repo) as prof:
        _, secs = c.timed(lambda: repo.commit(full.states[-1], "last", step=full.steps[-1]))
    return f"commit {commits} of the W3 fine-tune series (deltas vs the parent)", secs, prof


def bf16_commit(work: Path, commits: int) -> tuple[str, float, Any]:
    _, half = minilm.finetune_series(commits, 2, commits)
    repo = tv.Repo.init(work / "r")
    for s, k in zip(half.states[:-1], half.steps[:-1], strict=True):
        repo.commit(s, f"step {k}", step=k)
    with Profiled(repo) as prof:
        _, secs = c.timed(lambda: repo.commit(half.states[-1], "last", step=half.steps[-1]))
    return f"commit {commits} of the W4 bf16 series (deltas vs the parent)", secs, prof


def checkout(work: Path, commits: int) -> tuple[str, float, Any]:
    repo, full = _w3_repo(work, commits)
    repo.commit(full.states[-1], "last", step=full.steps[-1])
    repo.close()
    repo = tv.Repo.open(work / "r")
    with Profiled(repo) as prof:
        _, secs = c.timed(lambda: repo.checkout("HEAD"))
    return f"full checkout of commit {commits} of the W3 series", secs, prof


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "case", nargs="+", choices=["first-commit", "series-commit", "bf16-commit", "checkout"]
    )
    ap.add_argument("--mib", type=int, default=1024, help="first-commit: state size")
    ap.add_argument("--commits", type=int, default=8, help="series/checkout: W3 commits")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--cpu", action="store_true", help="count CPU time per thread, not wall")
    a = ap.parse_args()
    if a.cpu:
        Profiled.timer = time.thread_time
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cases = {"first-commit": lambda w: first_commit(w, a.mib),
             "series-commit": lambda w: series_commit(w, a.commits),
             "bf16-commit": lambda w: bf16_commit(w, a.commits),
             "checkout": lambda w: checkout(w, a.commits)}
    for case in a.case:
        work = c.make_workdir(None)
        try:
            title, secs, prof = cases[case](work)
            text = prof.report(f"{title}; load average {os.getloadavg()[0]:.2f}", secs, a.top)
        finally:
            c.remove(work)
        path = out / f"profile-{case}.txt"
        path.write_text(text)
        print(text[:6000])
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
