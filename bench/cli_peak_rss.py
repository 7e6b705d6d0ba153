"""Peak memory of `tvcs commit` and `tvcs checkout` on ~2 GB checkpoint files.

Creates a ~2 GB torch.save file and a ~2 GB safetensors file (32 float32 tensors of 64 MiB
each, random) in a temporary folder, then runs, each as its own subprocess:

    tvcs init
    tvcs commit big.pt -m ...
    tvcs commit big.safetensors -m ...
    tvcs checkout HEAD big.safetensors -o out.safetensors            (byte-identical, streams)
    tvcs checkout HEAD big.pt --format safetensors -o conv.safetensors (converted, streams)
    tvcs checkout HEAD big.pt -o out.pt                               (torch.save: whole state)

and prints each one's peak RSS (ru_maxrss of that child, from os.wait4) against the file size,
plus the peak of `tvcs --version` (interpreter + torch import) as the baseline.

    .venv/bin/python bench/cli_peak_rss.py [--size-gib 2] [--dir /tmp]

Not part of the test suite (it writes ~10 GB and takes minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TENSOR_MIB = 64


def make_files(d: Path, size_gib: float) -> None:
    import safetensors.torch
    import torch

    n = max(1, round(size_gib * 1024 / TENSOR_MIB))
    g = torch.Generator().manual_seed(0)
    state = {
        f"layers.{i}.weight": torch.randn(TENSOR_MIB << 18, generator=g).reshape(-1, 1024)
        for i in range(n)
    }
    pt = d / "big.pt"
    st = d / "big.safetensors"
    torch.save(state, pt)
    safetensors.torch.save_file(state, st, metadata={"format": "pt"})


def run(cmd: list[str], cwd: Path) -> tuple[int, float, int]:
    """(exit code, seconds, peak RSS in bytes) of one child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    dt = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read().decode() if p.stderr else ""
    if p.returncode:
        print(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{err}", file=sys.stderr)
    return p.returncode, dt, usage.ru_maxrss * 1024  # Linux reports KiB


def sha256(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gib", type=float, default=2.0)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--make", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:  # the child that writes the files (keeps this process small)
        make_files(Path(args.make), args.size_gib)
        return
    tvcs = [sys.executable, "-m", "tensorvcs.cli"]
    d = Path(tempfile.mkdtemp(prefix="tvcs-rss-", dir=args.dir))
    try:
        print(f"creating ~{args.size_gib:g} GiB files in {d} ...", flush=True)
        subprocess.run(
            [sys.executable, __file__, "--make", str(d), "--size-gib", str(args.size_gib)],
            check=True,
        )
        pt, st = d / "big.pt", d / "big.safetensors"
        size = pt.stat().st_size
        print(f"big.pt {size / 2**30:.2f} GiB, big.safetensors {st.stat().st_size / 2**30:.2f} GiB")
        steps = [
            ("tvcs --version (baseline)", [*tvcs, "--version"], None),
            ("tvcs init", [*tvcs, "init"], None),
            ("tvcs commit big.pt", [*tvcs, "commit", "big.pt", "-m", "pt"], pt),
            ("tvcs commit big.safetensors", [*tvcs, "commit", "big.safetensors", "-m", "st"], st),
            (
                "tvcs checkout (safetensors, exact)",
                [*tvcs, "checkout", "HEAD", "big.safetensors", "-o", "out.safetensors"],
                st,
            ),
            (
                "tvcs checkout big.pt --format safetensors",
                [
                    *tvcs,
                    "checkout",
                    "HEAD~1",
                    "big.pt",
                    "--format",
                    "safetensors",
                    "-o",
                    "conv.safetensors",
                ],
                pt,
            ),
            (
                "tvcs checkout big.pt (torch.save)",
                [*tvcs, "checkout", "HEAD~1", "big.pt", "-o", "out.pt"],
                pt,
            ),
        ]
        print(f"{'command':<44} {'exit':>4} {'seconds':>8} {'peak RSS':>10} {'of file':>8}")
        for label, cmd, f in steps:
            code, dt, rss = run(cmd, d)
            frac = f"{rss / f.stat().st_size * 100:6.1f}%" if f is not None else ""
            print(f"{label:<44} {code:>4} {dt:8.1f} {rss / 2**20:7.0f} MiB {frac:>8}", flush=True)
        same = sha256(st) == sha256(d / "out.safetensors")
        print(f"out.safetensors byte-identical to big.safetensors: {same}")
    finally:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
