"""Helpers shared by the system tests (crash, concurrency, corruption, gc, real model).

Also imported by ``tests/proc_worker.py`` (the child-process script), so it depends on nothing
from pytest and builds every test state deterministically from a seed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

import tensorvcs as tv
from tensorvcs.store.objects import object_name

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "proc_worker.py"


# -- bitwise comparisons -------------------------------------------------------------------
def tensor_bytes(t: torch.Tensor) -> bytes:
    """The canonical bytes of a tensor (row-major, conj/neg resolved), for bitwise compares."""
    t = t.detach().cpu().resolve_conj().resolve_neg().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor, where: str = "") -> None:
    """Same class, dtype, shape and bytes (NaN payloads and -0.0 included)."""
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor), where
    assert a.dtype == b.dtype, (where, a.dtype, b.dtype)
    assert a.shape == b.shape, (where, a.shape, b.shape)
    assert tensor_bytes(a) == tensor_bytes(b), f"{where}: bytes differ"


def assert_same_value(a: Any, b: Any, where: str = "<root>") -> None:
    """Deep equality that also demands the same container types, key order, dtypes and bits."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert_bitwise_equal(a, b, where)
        assert a.requires_grad == b.requires_grad, where
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), f"{where}: array bytes differ"
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):  # dict and OrderedDict: same keys in the same order
        assert list(a.keys()) == list(b.keys()), f"{where}: keys differ"
        for k in a:
            assert_same_value(a[k], b[k], f"{where}/{k}")
        meta_a, meta_b = getattr(a, "_metadata", None), getattr(b, "_metadata", None)
        assert (meta_a is None) == (meta_b is None), f"{where}: _metadata"
        if meta_a is not None:
            assert_same_value(meta_a, meta_b, f"{where}/<_metadata>")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{where}: length {len(a)} vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_value(x, y, f"{where}/{i}")
    elif isinstance(a, float):
        assert a.hex() == b.hex(), f"{where}: {a!r} vs {b!r}"  # -0.0 and nan included
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


# -- deterministic states ------------------------------------------------------------------
def randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def random_bytes_tensor(seed: int, n: int) -> torch.Tensor:
    """float32 tensor of ``n`` elements with uniformly random bytes (incompressible)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (4 * n,), dtype=torch.uint8, generator=g).view(torch.float32)


def crash_state(seed: int) -> dict[str, Any]:
    """A training-like state for a repo with 64 KiB chunks and a 4 KiB pack threshold: two
    chunked tensors (4 + 2 chunks), two packed ones, and plain values."""
    return {
        "model": OrderedDict(
            w1=randn(10 * seed, 256, 256),
            w2=randn(10 * seed + 1, 128, 256),
            b1=randn(10 * seed + 2, 256),
            b2=randn(10 * seed + 3, 128),
        ),
        "optimizer": {"state": {0: {"step": torch.tensor(float(seed))}}, "lr": 0.1 * seed},
        "epoch": seed,
        "tag": f"state-{seed}",
    }


CRASH_REPO = {"chunk_size": 65536, "pack_threshold": 4096}


def nudged_state(seed: int) -> dict[str, Any]:
    """crash_state(seed) after a small training-like update of its chunked tensors: every
    chunk changes, and the parent's chunks become deltas against the new ones."""
    s = crash_state(seed)
    for k in ("w1", "w2"):
        s["model"][k] = s["model"][k] * (1 + 1e-4)
    s["epoch"] = seed + 1
    return s


def worker_state(proc: int, i: int) -> dict[str, Any]:
    """What process ``proc`` commits as its ``i``-th commit in the concurrency tests."""
    tag = proc * 1000 + i
    return {
        "proc": proc,
        "i": i,
        "mark": torch.full((300,), float(tag)),
        "big": randn(tag, 5000),  # 20 KB: chunked; seeds differ by > 1: no shared prefixes
        "shared": torch.arange(4096, dtype=torch.float32),  # the same in every commit
    }


CONCURRENT_REPO = {"chunk_size": 4096, "pack_threshold": 2048}


# -- the object store on disk --------------------------------------------------------------
def object_ids(repo: tv.Repo) -> set[str]:
    return set(repo.objects.ids())


def object_path(repo: tv.Repo, oid: str) -> Path:
    return repo.path / object_name(oid)


def kinds(repo: tv.Repo, oids: set[str]) -> dict[str, int]:
    """{kind name: count} of the objects ``oids``."""
    from tensorvcs.format.envelope import KIND_NAMES

    out: dict[str, int] = {}
    for oid in oids:
        name = KIND_NAMES[repo.objects.kind(oid)]
        out[name] = out.get(name, 0) + 1
    return out


def objects_bytes(repo: tv.Repo) -> int:
    """Total size of the files under .tvcs/objects."""
    return sum(p.stat().st_size for p in (repo.path / "objects").rglob("*") if p.is_file())


def flip_byte(path: Path, pos: int = -1, mask: int = 0xFF) -> None:
    """XOR one byte of the file in place (``pos`` < 0 counts from the end); flipping it again
    with the same mask restores it."""
    with open(path, "r+b") as f:
        if pos < 0:
            pos += f.seek(0, os.SEEK_END)
        f.seek(pos)
        (byte,) = f.read(1)
        f.seek(pos)
        f.write(bytes([byte ^ mask]))


# -- child processes -----------------------------------------------------------------------
def worker_cmd(*args: Any) -> list[str]:
    return [sys.executable, str(WORKER), *(str(a) for a in args)]


def run_worker(*args: Any, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        worker_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env
    )


def start_worker(*args: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        worker_cmd(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
