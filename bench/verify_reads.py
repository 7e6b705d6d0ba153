"""What a full checkout's read check costs: the content checksum against the BLAKE3 id.

Commits one synthetic state (bench/scale.py's) and torch.saves it, then times, in a fresh
process per repetition and interleaved round by round, `torch.load(weights_only=True)` of the
file and `repo.checkout()` with `settings.verify_reads` set to "checksum" (the default: each
object's XXH3-128 checksum) and to "hash" (each object's BLAKE3 id recomputed, the check every
read made before objects recorded checksums). Prints each mode's median, its range, and the ratio to
torch.load of the same round.

    python bench/verify_reads.py [--gb 1] [--dtype bf16] [--reps 9] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import tensorvcs as tv  # noqa: E402
from bench import common, scale  # noqa: E402

MODES = ("torch-load", "checksum", "hash")


def _child(d: Path, mode: str) -> float:
    torch.set_num_threads(common.cores())
    if mode == "torch-load":
        t = time.perf_counter()
        state = torch.load(d / "state.pt", weights_only=True)
        dt = time.perf_counter() - t
    else:
        with tv.Repo.open(d / "repo") as r:
            r.objects.checksums = mode == "checksum"
            t = time.perf_counter()
            state = r.checkout()
            dt = time.perf_counter() - t
    del state
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--dir", default=None, help="work folder (kept; default: a temp folder)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    d = Path(a.dir) if a.dir else common.make_workdir(None)
    if a.child:
        print(json.dumps(_child(d, a.child)))
        return 0
    d.mkdir(parents=True, exist_ok=True)
    stamp = d / f"done-{a.gb:g}-{a.dtype}"
    if not stamp.exists():
        common.remove(d / "repo")
        state = scale.build_state(a.gb, a.dtype)
        with tv.Repo.init(d / "repo") as r:
            r.commit(state, "verify_reads")
        torch.save(state, d / "state.pt")
        del state
        for old in d.glob("done-*"):
            old.unlink()
        stamp.touch()
    times: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(a.reps):
        for m in MODES:
            out = subprocess.run([sys.executable, __file__, "--dir", str(d), "--child", m],
                                 check=True, capture_output=True, text=True).stdout
            times[m].append(float(out.strip().splitlines()[-1]))
    print(f"{a.gb:g} GB {a.dtype}, {a.reps} rounds, fresh process each")
    base = times["torch-load"]
    for m in MODES:
        ts = times[m]
        ratios = [x / b for x, b in zip(ts, base, strict=True)]
        print(f"  {m:>10}: median {common.median(ts) * 1000:7.1f} ms "
              f"({min(ts) * 1000:.0f}-{max(ts) * 1000:.0f}), "
              f"per-round ratio to torch.load median {common.median(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
