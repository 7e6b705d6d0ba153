"""Where a full checkout's CPU goes, part by part (issue 11 goal 3's profile).

Commits one synthetic state (bench/scale.py's: randn·0.02 matrices) and torch.saves it, then in
this one process checks it out twice on a single worker thread and loads the file with
torch.load, and prints each part's thread-CPU seconds: mapping the object files, zstd, merging
byte planes, BLAKE3 verification, and the rest (mostly the first write to freshly allocated
memory, which decoding pays inside the plane merge). The second checkout runs in memory the
process has touched before; the difference between the two is the price of fresh pages.

    python bench/checkout_parts.py [--gb 1] [--dtype fp32|bf16] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import tensorvcs as tv  # noqa: E402
from bench import common, scale  # noqa: E402
from tensorvcs.format import codecs  # noqa: E402
from tensorvcs.store import local, objects  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--dir", default=None, help="work folder (kept; default: a temp folder)")
    a = ap.parse_args(argv)
    d = Path(a.dir) if a.dir else common.make_workdir(None)
    d.mkdir(parents=True, exist_ok=True)
    repo_dir, pt = d / "repo", d / "state.pt"
    if not (d / "done").exists():
        shutil.rmtree(repo_dir, ignore_errors=True)
        state = scale.build_state(a.gb, a.dtype)
        with tv.Repo.init(repo_dir) as r:
            r.commit(state, "parts")
        torch.save(state, pt)
        (d / "done").touch()
        del state
    targets = [(local.LocalStore, "get_view", "map files"), (codecs, "_unzstd_into", "zstd"),
               (codecs, "merge_planes", "merge planes (+ first touch)"),
               (objects, "object_id", "BLAKE3 verify")]
    parts_cpu: dict[str, float] = {}
    print(f"{a.gb:g} GB {a.dtype}, one worker thread, load average {os.getloadavg()[0]:.1f}")
    with tv.Repo.open(repo_dir) as r, common.thread_cpu(targets, parts_cpu):
        r.workers = 1
        for run in ("first checkout", "second checkout"):
            parts_cpu.clear()
            c0 = time.process_time()
            got = r.checkout()
            total = time.process_time() - c0
            del got
            rest = total - sum(parts_cpu.values())
            parts = ", ".join(f"{k} {v:.2f}" for k, v in parts_cpu.items())
            print(f"{run}: {total:.2f} CPU-s ({parts}, rest {rest:.2f})")
    c0 = time.process_time()
    torch.load(pt, weights_only=True)
    print(f"torch.load(weights_only=True): {time.process_time() - c0:.2f} CPU-s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
