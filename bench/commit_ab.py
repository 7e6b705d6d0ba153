"""Paired A/B of the first commit: the same state committed by two checkouts of tensorvcs, in
fresh processes, one after the other, round after round.

Each measurement is a new process that builds bench/scale.py's state of ``--size`` GB,
initialises a repository in ``--dir``, runs ``os.sync()`` (so the previous round's
write-back does not fall into this one), times ``repo.commit(state)`` and removes the
repository. ``--before`` is the root of the other checkout (a ``git worktree`` of the commit to
compare against, with the native library copied in); it goes first on ``PYTHONPATH``.
Prints every time and the medians; a ratio below 1 means this checkout is faster.

    git worktree add /tmp/before <commit> && cp tensorvcs/_native*.so /tmp/before/tensorvcs/
    .venv/bin/python bench/commit_ab.py --before /tmp/before --sizes 1,4 --dtypes fp32,bf16
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import os, shutil, sys, time
from pathlib import Path
import tensorvcs as tv  # first: importing the bench puts its own checkout on sys.path
sys.path.insert(1, {bench!r})
import scale
size, dtype, d = float(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
shutil.rmtree(d, ignore_errors=True)
state = scale.build_state(size, dtype)
repo = tv.Repo.init(d)
os.sync()
t = time.perf_counter()
repo.commit(state, "first")
print(time.perf_counter() - t, tv.__file__)
repo.close()
shutil.rmtree(d, ignore_errors=True)
"""


def one(root: Path, size: float, dtype: str, d: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(root))
    code = CHILD.format(bench=str(ROOT / "bench"))
    out = subprocess.run(
        [sys.executable, "-c", code, str(size), dtype, str(d)],
        env=env,
        cwd=root,  # ("-c" puts the working folder first on sys.path)
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not out[1].startswith(str(root)):
        raise SystemExit(f"{root}: imported tensorvcs from {out[1]}")
    return float(out[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="root of the checkout to compare against")
    ap.add_argument("--sizes", default="1")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=str(ROOT / "bench" / "results" / "ab-repo"))
    a = ap.parse_args()
    d = Path(a.dir)
    d.parent.mkdir(parents=True, exist_ok=True)
    print("| state | before: commit times | after: commit times | median after / before |")
    print("|---|---|---|---:|")
    for size in [float(x) for x in a.sizes.split(",")]:
        for dtype in a.dtypes.split(","):
            times: dict[str, list[float]] = {"before": [], "after": []}
            for _ in range(a.rounds):
                times["before"].append(one(Path(a.before).resolve(), size, dtype, d))
                times["after"].append(one(ROOT, size, dtype, d))
            b, f = (statistics.median(times[k]) for k in ("before", "after"))
            row = [" ".join(f"{t:.2f}" for t in times[k]) for k in ("before", "after")]
            print(f"| {size:g} GB {dtype} | {row[0]} s | {row[1]} s | {f / b:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
