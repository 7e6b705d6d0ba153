"""W1 — first commit: write one state from scratch, durably, with tensorvcs and with its peers.

States: the real MiniLM fp32 weights; a synthetic ~1 GiB fp32 state shaped like a model
(randn·0.02 matrices of 192–256 MiB down to 4 MiB, plus small norm and bias vectors); the same
tensors in bf16. Writers: tensorvcs commit (a fresh repository each repetition), torch.save,
safetensors save_file, DCP FileSystemWriter, DCP with its ZStandard stream extension (when the
installed torch has it) and ZipNN (when it imports; it is checked for a lossless round trip
first). Every writer is timed until its data is fsynced. Bytes are file sizes on disk.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any

import torch

import tensorvcs as tv

from . import common as c
from .common import MiB

NAME = "W1"
TITLE = "first commit"


# -- states -------------------------------------------------------------------------------------
def synthetic_state(total_mib: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A model-shaped fp32 state of about ``total_mib`` MiB: a few large matrices (a quarter,
    three sixteenths... of the total), blocks of mid-size ones, and small vectors. Values are
    randn·0.02 (weights), 1 + randn·0.02 (norm scales) and randn·0.002 (biases)."""
    g = torch.Generator().manual_seed(seed)
    d = 1024
    rows_per_mib = MiB // (4 * d)  # rows of a d-wide fp32 matrix per MiB
    spec: list[tuple[str, tuple[int, ...]]] = [
        ("embed.weight", (total_mib // 4 * rows_per_mib, d)),
        ("lm_head.weight", (total_mib * 3 // 16 * rows_per_mib, d)),
        ("proj.weight", (total_mib * 3 // 16 * rows_per_mib, d)),
    ]
    left = total_mib - total_mib // 4 - 2 * (total_mib * 3 // 16)
    blocks = 8
    per_block = max(1, left // blocks)  # MiB of one block: qkv 3/8, o 1/8, up 2/8, down 2/8
    unit = max(1, per_block * rows_per_mib // 8)
    for i in range(blocks):
        p = f"blocks.{i}."
        spec += [
            (p + "attn.qkv.weight", (3 * unit, d)),
            (p + "attn.o.weight", (unit, d)),
            (p + "mlp.up.weight", (2 * unit, d)),
            (p + "mlp.down.weight", (d, 2 * unit)),
            (p + "norm1.weight", (d,)),
            (p + "norm2.weight", (d,)),
            (p + "attn.qkv.bias", (3 * unit,)),
            (p + "mlp.up.bias", (2 * unit,)),
        ]
    spec.append(("final_norm.weight", (d,)))
    out = {}
    for name, shape in spec:
        t = torch.randn(shape, generator=g)
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or "final_norm" in name:
            t.mul_(0.02).add_(1.0)
        elif name.endswith(".bias"):
            t.mul_(0.002)
        else:
            t.mul_(0.02)
        out[name] = t
    return out


# -- writers (each durable on return) -----------------------------------------------------------
def write_tvcs(state: dict[str, torch.Tensor], d: str) -> dict[str, Any]:
    repo = tv.Repo.init(d)
    try:
        _, secs = c.timed(lambda: repo.commit(state, "first commit", step=0))
        return {"seconds": secs, "bytes": c.dir_bytes(os.path.join(d, ".tvcs"))}
    finally:
        repo.close()


def write_torch_save(state: dict[str, torch.Tensor], d: str) -> dict[str, Any]:
    path = os.path.join(d, "state.pt")
    _, secs = c.timed(lambda: c.torch_save_fsync(state, path))
    return {"seconds": secs, "bytes": c.dir_bytes(path)}


def write_safetensors(state: dict[str, torch.Tensor], d: str) -> dict[str, Any]:
    path = os.path.join(d, "state.safetensors")
    _, secs = c.timed(lambda: c.safetensors_save_fsync(state, path))
    return {"seconds": secs, "bytes": c.dir_bytes(path)}


def _dcp(state: dict[str, torch.Tensor], d: str, zstd: bool) -> dict[str, Any]:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemWriter

    path = os.path.join(d, "dcp")
    kw: dict[str, Any] = {}
    if zstd:
        from torch.distributed.checkpoint._extension import ZStandard

        kw["_extensions"] = [ZStandard()]

    def save() -> None:
        with c.quiet_warnings():  # "assuming the intent is to save in a single process"
            dcp.save(state, storage_writer=FileSystemWriter(path, **kw))
        c.fsync_tree(path)

    _, secs = c.timed(save)
    return {"seconds": secs, "bytes": c.dir_bytes(path)}


def dcp_zstd_available() -> tuple[bool, str]:
    try:
        import inspect

        from torch.distributed.checkpoint import FileSystemWriter
        from torch.distributed.checkpoint._extension import ZStandard
    except ImportError as e:
        return False, f"no ZStandard extension in this torch: {e}"
    if "_extensions" not in inspect.signature(FileSystemWriter.__init__).parameters:
        return False, "FileSystemWriter takes no _extensions in this torch"
    if not ZStandard.is_available():
        return False, "ZStandard extension present but neither zstandard nor pyzstd imports"
    return True, "torch.distributed.checkpoint._extension.ZStandard"


def zipnn_status() -> tuple[bool, bool, str]:
    """(importable, lossless round trip on fp32 and bf16, note)."""
    try:
        import zipnn
    except Exception as e:  # not installed, or a broken build
        return False, False, f"zipnn does not import: {type(e).__name__}: {e}"
    version = getattr(zipnn, "__version__", None) or _dist_version("zipnn")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1 << 16, generator=g) * 0.02
    for t in (x, x.to(torch.bfloat16)):
        raw = t.view(torch.uint8).numpy().tobytes()
        z = zipnn.ZipNN(input_format="byte", bytearray_dtype=str(t.dtype)[6:], threads=1)
        if bytes(z.decompress(z.compress(raw))) != raw:
            return True, False, (
                f"zipnn {version}: decompress(compress(x)) != x for {t.dtype} in this install "
                "(not lossless); its figures are shown for reference only"
            )
    return True, True, f"zipnn {version}"


def _dist_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "?"


ZIPNN_DTYPES = ("float32", "bfloat16", "float16")


def write_zipnn(state: dict[str, torch.Tensor], d: str) -> dict[str, Any]:
    """Each float tensor's bytes compressed by ZipNN (byte grouping + entropy coding), other
    dtypes as is, written to one file: a length-prefixed JSON index, then the tensors; fsynced."""
    import json

    import zipnn

    threads = c.cores()
    path = os.path.join(d, "state.znn")
    coders: dict[str, Any] = {}

    def save() -> None:
        index, blobs = [], []
        for k, t in state.items():
            name = str(t.dtype)[6:]
            data = t.contiguous().view(torch.uint8).numpy().tobytes()
            if name in ZIPNN_DTYPES:
                z = coders.get(name)
                if z is None:
                    z = coders[name] = zipnn.ZipNN(
                        input_format="byte", bytearray_dtype=name, threads=threads
                    )
                b, how = z.compress(data), "zipnn"
            else:  # e.g. BERT's int64 position_ids: zipnn takes float dtypes only
                b, how = data, "raw"
            index.append([k, name, list(t.shape), how, len(b)])
            blobs.append(b)
        head = json.dumps(index).encode()
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(head)))
            f.write(head)
            for b in blobs:
                f.write(b)
            f.flush()
            os.fsync(f.fileno())
        c.fsync_path(d)

    _, secs = c.timed(save)
    return {"seconds": secs, "bytes": c.dir_bytes(path)}


def writers() -> tuple[list[tuple[str, Callable[..., dict[str, Any]]]], dict[str, Any]]:
    notes: dict[str, Any] = {}
    ws: list[tuple[str, Callable[..., dict[str, Any]]]] = [
        ("tensorvcs", write_tvcs),
        ("torch.save", write_torch_save),
        ("safetensors", write_safetensors),
        ("DCP", lambda s, d: _dcp(s, d, False)),
    ]
    ok, note = dcp_zstd_available()
    notes["DCP+zstd"] = note
    if ok:
        ws.append(("DCP+zstd", lambda s, d: _dcp(s, d, True)))
    importable, lossless, note = zipnn_status()
    notes["zipnn"] = note
    notes["zipnn_lossless"] = lossless
    if importable:
        ws.append(("zipnn" if lossless else "zipnn (round trip fails)", write_zipnn))
    return ws, notes


# -- the workload -------------------------------------------------------------------------------
def run(ctx: c.Context) -> dict[str, Any]:
    from . import minilm

    synth_mib = 64 if ctx.quick else 1024
    ws, notes = writers()
    cache: dict[str, dict[str, torch.Tensor]] = {}

    def synth() -> dict[str, torch.Tensor]:
        if "fp32" not in cache:
            cache["fp32"] = synthetic_state(synth_mib)
        return cache["fp32"]

    def synth_bf16() -> dict[str, torch.Tensor]:
        out = {k: v.to(torch.bfloat16) for k, v in synth().items()}
        cache.clear()
        return out

    states: list[tuple[str, Callable[[], dict[str, torch.Tensor]]]] = [
        ("MiniLM fp32", minilm.pretrained_state),
        (f"synthetic {synth_mib} MiB fp32", synth),
        (f"synthetic {synth_mib} MiB fp32 as bf16", synth_bf16),
    ]
    out: dict[str, Any] = {"title": TITLE, "writers": [w for w, _ in ws], "notes": notes,
                           "states": []}
    for label, make in states:
        state = make()
        raw = c.logical_bytes(state)
        ctx.log(f"  W1 {label}: {len(state)} tensors, {c.fmt_bytes(raw)}")
        per: dict[str, dict[str, list[float]]] = {w: {"seconds": [], "bytes": []} for w, _ in ws}
        for rep in range(ctx.reps):
            for w, fn in ws:
                d = ctx.fresh_dir(f"w1-{w}")
                r = fn(state, str(d))
                per[w]["seconds"].append(r["seconds"])
                per[w]["bytes"].append(r["bytes"])
                c.remove(d)
            ctx.log(
                f"    rep {rep + 1}/{ctx.reps}: "
                + ", ".join(f"{w} {c.fmt_s(per[w]['seconds'][-1])}" for w, _ in ws)
            )
        res: dict[str, Any] = {
            "state": label,
            "tensors": len(state),
            "raw_bytes": raw,
            "dtype": str(next(iter(state.values())).dtype)[6:],
            "writers": {},
        }
        tv_s = c.median(per["tensorvcs"]["seconds"])
        tv_b = c.median(per["tensorvcs"]["bytes"])
        for w, _ in ws:
            s, b = c.median(per[w]["seconds"]), c.median(per[w]["bytes"])
            res["writers"][w] = {
                "seconds_median": s,
                "seconds_all": per[w]["seconds"],
                "bytes": b,
                "bytes_over_raw": c.ratio(b, raw),
                "write_gb_per_s": c.ratio(raw, s) / 1e9,
                "tvcs_seconds_ratio": c.ratio(tv_s, s),
                "tvcs_bytes_ratio": c.ratio(tv_b, b),
            }
        out["states"].append(res)
        del state
    return out


def table(res: dict[str, Any]) -> str:
    rows = []
    for st in res["states"]:
        for w, r in st["writers"].items():
            rows.append(
                [
                    st["state"] if w == "tensorvcs" else "",
                    w,
                    c.fmt_s(r["seconds_median"]),
                    f"{r['write_gb_per_s']:.2f}",
                    c.fmt_bytes(r["bytes"]),
                    f"{r['bytes_over_raw']:.3f}",
                    "" if w == "tensorvcs" else c.fmt_x(r["tvcs_seconds_ratio"], 2),
                    "" if w == "tensorvcs" else c.fmt_x(r["tvcs_bytes_ratio"], 2),
                ]
            )
    head = ["state", "writer", "time (fsync)", "GB/s", "on disk", "disk/raw", "tvcs/peer time",
            "tvcs/peer bytes"]
    return c.md_table(head, rows)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    return []  # W1 has no numeric target in issue 4: it is a side-by-side comparison
