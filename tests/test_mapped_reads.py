"""Checkout reads object files through read-only memory maps and decodes zstd straight into
its output, reusing per-thread scratch buffers (issue 11, goal 3).

What must hold whatever the path: a map shows exactly the file's bytes, a missing file is
ObjectNotFoundError as before, a map outlives the file being replaced or removed (puts rename,
deletes unlink), a zstd frame that ends early or holds more is refused with its reason, and a
decode never hands back (or later overwrites) a scratch buffer: every result stays as decoded
while other objects are decoded on the same thread.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest
import torch
import zstandard
from helpers import assert_bitwise_equal, object_ids, object_path, randn
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs import CorruptObjectError, ObjectNotFoundError
from tensorvcs.format import codecs
from tensorvcs.store.local import MAP_MIN, LocalStore


@pytest.mark.parametrize("size", [0, 1, MAP_MIN - 1, MAP_MIN, MAP_MIN + 1, 3 * MAP_MIN + 7])
def test_view_is_the_files_bytes(tmp_path: Path, size: int) -> None:
    store = LocalStore(tmp_path)
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    store.put("objects/ab/cd", [data])
    view = store.get_view("objects/ab/cd")
    assert isinstance(view, mmap.mmap) == (size >= MAP_MIN)
    assert bytes(view) == data == store.get("objects/ab/cd")


def test_view_of_a_missing_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.get_view("objects/ab/cd")
    store.put("objects/ab", [b"a file where a folder is looked for"])
    with pytest.raises(FileNotFoundError):
        store.get_view("objects/ab/cd")


def test_a_map_outlives_replacement_and_removal(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    old = b"\x01" * (2 * MAP_MIN)
    store.put("objects/ab/cd", [old])
    view = store.get_view("objects/ab/cd")
    store.put("objects/ab/cd", [b"\x02" * MAP_MIN])
    assert bytes(view) == old
    store.delete("objects/ab/cd")
    assert bytes(view) == old


def test_a_missing_object_is_named(repo: tv.Repo) -> None:
    cid = repo.commit({"w": randn(0, 512, 512)}, message="one")
    oid = max(object_ids(repo), key=lambda o: object_path(repo, o).stat().st_size)
    assert object_path(repo, oid).stat().st_size >= MAP_MIN  # the tensor's one chunk
    object_path(repo, oid).unlink()
    with pytest.raises(ObjectNotFoundError, match=f"'w'.*{oid}|{oid}.*'w'"):
        repo.checkout(cid)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.int64])
def test_checkout_through_maps_is_bitwise(
    tmp_path: Path, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks above MAP_MIN, several per tensor, delta chains on the later commits, decoded on
    the pool's threads: every commit checks out bitwise, in any order, twice."""
    maps = []
    get_view = LocalStore.get_view

    def counted(self: LocalStore, name: str) -> object:
        view = get_view(self, name)
        maps.append(isinstance(view, mmap.mmap))
        return view

    monkeypatch.setattr(LocalStore, "get_view", counted)
    r = tv.Repo.init(tmp_path, chunk_size=1 << 20)
    states, ids = [], []
    w = randn(1, 1024, 1536) * (1e6 if dtype == torch.int64 else 1)
    w = w.to(dtype)
    for i in range(4):
        state = {"w": w.clone(), "b": randn(10 + i, 4096).to(dtype)}
        states.append(state)
        ids.append(r.commit(state, message=f"step {i}"))
        w[i * 7 : i * 7 + 3] += 1
    for i in [3, 0, 2, 1, 3, 0]:
        out = r.checkout(ids[i])
        for k, v in states[i].items():
            assert_bitwise_equal(out[k], v)
    chunks = w.nbytes >> 20
    assert sum(maps) >= 6 * chunks  # each checkout mapped each of the weight's chunks
    r.close()


def _frame(data: bytes, *, with_size: bool) -> memoryview:
    return memoryview(zstandard.ZstdCompressor(write_content_size=with_size).compress(data))


@pytest.mark.parametrize("with_size", [True, False])
def test_unzstd_into_fills_its_output(with_size: bool) -> None:
    data = np.random.default_rng(3).integers(0, 4, 100_000, dtype=np.uint8)
    out = np.full(data.size, 0xAA, dtype=np.uint8)
    codecs._unzstd_into(_frame(data.tobytes(), with_size=with_size), out)
    assert out.tobytes() == data.tobytes()


@pytest.mark.parametrize("with_size", [True, False])
@pytest.mark.parametrize("short_by", [1, -1, 5000, -5000])
def test_unzstd_into_refuses_a_frame_of_another_size(with_size: bool, short_by: int) -> None:
    data = bytes(range(256)) * 200
    out = np.empty(len(data) + short_by, dtype=np.uint8)
    if with_size:
        msg = f"declares {len(data)} bytes, expected {out.nbytes}"
    elif short_by > 0:
        msg = f"holds {len(data)} bytes, expected {out.nbytes}"
    else:
        msg = f"holds more than the {out.nbytes} bytes expected"
    with pytest.raises(ValueError, match=msg):
        codecs._unzstd_into(_frame(data, with_size=with_size), out)


def test_a_short_zstd_payload_is_a_corrupt_object() -> None:
    data = (bytes(range(8)) * 4096)[:30_000]
    frame = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    out = np.empty(len(data) + 1, dtype=np.uint8)
    with pytest.raises(CorruptObjectError, match="object o1"):
        codecs.decode_into(codecs.CODEC_ZSTD, {}, memoryview(frame), out, "o1")


ARRAYS = st.tuples(
    st.sampled_from([1, 2, 4, 8]),
    st.integers(min_value=1, max_value=70_000),
    st.integers(min_value=0, max_value=2**32 - 1),
)


def _smooth(width: int, count: int, seed: int) -> np.ndarray:
    """Weight-like bytes: float32 noise (or its low bytes) so the planes codec compresses."""
    rng = np.random.default_rng(seed)
    f = (rng.standard_normal(count * width // 4 + 1) * 0.02).astype(np.float32)
    return f.view(np.uint8)[: count * width].copy()


@settings(max_examples=40, deadline=None)
@given(st.lists(ARRAYS, min_size=2, max_size=6))
def test_results_never_share_scratch(specs: list[tuple[int, int, int]]) -> None:
    """Plane and delta decodes on one thread, one after another: each result still holds its
    content after all the others were decoded (scratch buffers are only intermediates)."""
    results = []
    for width, count, seed in specs:
        content = _smooth(width, count, seed)
        base = _smooth(width, count, seed + 1)
        plain = codecs.encode_elements(content, width)
        out = np.empty(content.nbytes, dtype=np.uint8)
        codecs.decode_into(plain.codec, plain.params, memoryview(plain.payload), out, "p")
        results.append((out, content))
        delta = codecs.encode_delta(content, base, width, "b" * 64, 1)
        out2 = base.copy()
        codecs.decode_delta_into(delta.params, memoryview(delta.payload), out2, "d")
        results.append((out2, content))
    for out, content in results:
        assert out.tobytes() == content.tobytes()


CHAIN_CHILD = """
import os, resource, sys, hashlib
import tensorvcs as tv
from tensorvcs.store import objects
if len(sys.argv) > 2:
    objects.MAPPED_LINKS = int(sys.argv[2])
r = tv.Repo.open(sys.argv[1])
ids = [c.id for c in r.log()][-1:]  # the oldest commit: the deepest chains
open_now = len(os.listdir("/proc/self/fd"))
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 24, hard))
for cid in ids:
    w = r.checkout(cid)["w"]
    print(cid, hashlib.sha256(w.numpy().tobytes()).hexdigest())
"""


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_deep_chain_of_large_deltas_needs_few_file_descriptors(tmp_path: Path) -> None:
    """Dense updates give deltas above MAP_MIN; a checkout of the oldest commit decodes a
    chain of 30 of them on each worker at once. Under a tight RLIMIT_NOFILE (24 beyond what
    the process holds) it still checks out bitwise: a chain maps at most
    MAPPED_LINKS files. (With every link mapped, the same run fails: Too many open files.)"""
    import hashlib
    import subprocess
    import sys

    r = tv.Repo.init(tmp_path, chunk_size=1 << 20)
    r.delta_max_depth = 40
    w = randn(5, 512, 1024)  # 2 MiB: two chunks per commit
    want = {}
    g = torch.Generator().manual_seed(6)
    for i in range(31):
        cid = r.commit({"w": w}, message=f"step {i}").id
        want[cid] = hashlib.sha256(w.numpy().tobytes()).hexdigest()
        w = w + 1e-4 * torch.randn(w.shape, generator=g)
    oldest = next(iter(want))
    m = r.get_manifest(r.get_commit(oldest).manifest)
    (entry,) = [t for t in m.tensors if t.chunks]
    chain = r.objects.chain(entry.chunks[0][0])
    assert len(chain) == 31
    sizes = [object_path(r, o).stat().st_size for o in chain[:-1]]
    assert min(sizes) >= MAP_MIN  # every delta of the chain is a mapped size
    r.close()

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-c", CHAIN_CHILD, str(tmp_path), *extra]
        return subprocess.run(args, capture_output=True, text=True, timeout=300)

    done = run()
    assert done.returncode == 0, done.stderr[-2000:]
    got = dict(line.split() for line in done.stdout.splitlines())
    assert got == {oldest: want[oldest]}
    unbounded = run(str(10**6))
    assert unbounded.returncode != 0 and "Too many open files" in unbounded.stderr
