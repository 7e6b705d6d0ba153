"""Writing torch.save files one tensor at a time (io/torch_zip.py, `tvcs checkout -o x.pt`):
the file is the one torch.save of the checked-out state writes, record for record."""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import blake3
import numpy as np
import pytest
import torch
from helpers import assert_same_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.io import exporter, torch_zip

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int8,
          torch.uint8, torch.bool, torch.complex64, torch.float8_e4m3fn]


@st.composite
def tensors(draw: Any) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 7), max_size=3))
    if draw(st.booleans()):  # larger than a chunk of a small test chunk size
        shape = [draw(st.integers(1, 3)), 20_000]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    t = torch.randint(-100, 100, shape, generator=g).to(dtype) if dtype != torch.bool else (
        torch.randint(0, 2, shape, generator=g).bool())
    if dtype in (torch.float32, torch.float64) and t.numel():
        t = t * torch.rand(shape, generator=g, dtype=dtype)
    kind = draw(st.sampled_from(["plain", "param", "grad"]))
    if kind == "param" and t.is_floating_point():
        return torch.nn.Parameter(t, requires_grad=draw(st.booleans()))
    if kind == "grad" and t.is_floating_point() and dtype != torch.float8_e4m3fn:
        return t.requires_grad_(True)
    return t


leaves = (tensors() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=4)
          | st.none() | st.sampled_from([torch.float16, torch.Size([2, 3])]))


@st.composite
def states(draw: Any) -> dict[str, Any]:
    tree = draw(st.recursive(
        leaves,
        lambda kids: (st.dictionaries(st.text(min_size=1, max_size=4), kids, max_size=4)
                      | st.lists(kids, max_size=4) | st.lists(kids, max_size=3).map(tuple)
                      | st.dictionaries(st.text(min_size=1, max_size=3), kids, max_size=3)
                      .map(OrderedDict)),
        max_leaves=12,
    ))
    state: dict[str, Any] = {"tree": tree}
    if draw(st.booleans()):  # one tensor in two places (tied weights)
        w = draw(tensors())
        state["tied"] = [w, {"again": w}]
    if draw(st.booleans()):
        state["array"] = np.arange(draw(st.integers(0, 40)), dtype=np.int16).reshape(-1, 1)
    return state


def _commit(tmp: Path, state: Any) -> tuple[tv.Repo, Any]:
    # small chunks and packs: tensors of many objects, and several tensors in one pack
    repo = tv.Repo.init(tmp / f"repo-{os.urandom(4).hex()}", chunk_size=16 << 10,
                        pack_threshold=1 << 10)
    c = repo.commit(state, "s")
    return repo, repo.get_manifest(c.manifest)


def _streamed(repo: tv.Repo, m: Any, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setattr(exporter, "STREAM_PT_BYTES", 0)  # every state takes the streamed path

    def no_fallback(*_: Any) -> None:
        raise AssertionError("fell back to the scratch file")

    buf = io.BytesIO()
    with monkeypatch.context() as mp:
        mp.setattr(exporter, "_write_pt_via_scratch", no_fallback)
        digest = exporter.write_pt_file(repo, m, m.tree, (), None, True, buf, tmp)
    data = buf.getvalue()
    assert digest == blake3.blake3(data).hexdigest()
    return data


def _records(data: bytes) -> list[tuple[str, int, bytes]]:
    z = zipfile.ZipFile(io.BytesIO(data))
    assert z.testzip() is None  # every record's CRC-32 is right
    return [(i.filename, i.header_offset, z.read(i)) for i in z.infolist()
            if not i.filename.endswith(".data/serialization_id")]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(states())
def test_streamed_file_is_torch_saves_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           state: dict[str, Any]) -> None:
    """Record for record (and offset for offset) what torch.save of the in-memory checkout
    writes, every CRC right, the digest that of the bytes, and it loads back bitwise."""
    repo, m = _commit(tmp_path, state)
    with monkeypatch.context() as mp:
        streamed = _streamed(repo, m, tmp_path, mp)
    in_memory = io.BytesIO()
    exporter.write_pt(repo.materialize(m, None, None, True), in_memory)
    assert len(streamed) == len(in_memory.getvalue())
    assert _records(streamed) == _records(in_memory.getvalue())
    back = torch.load(io.BytesIO(streamed), weights_only=False)
    assert_same_value(back, repo.checkout(allow_pickle=True))
    repo.close()


def test_fallback_when_the_layout_is_unknown(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch whose zip is not laid out as torch_zip expects: the scratch-file path writes
    the same records."""
    w = torch.randn(300, 70)
    state = {"w": w, "tied": w, "p": torch.nn.Parameter(torch.randn(9)), "n": 3,
             "a": np.arange(6, dtype=np.float32)}
    repo, m = _commit(tmp_path, state)
    streamed = _streamed(repo, m, tmp_path, monkeypatch)

    def refuse(*_: Any) -> Any:
        raise torch_zip.Unsupported("test")

    monkeypatch.setattr(torch_zip, "plan", refuse)
    fell_back = io.BytesIO()
    digest = exporter.write_pt_file(repo, m, m.tree, (), None, True, fell_back, tmp_path)
    assert digest == blake3.blake3(fell_back.getvalue()).hexdigest()
    assert _records(fell_back.getvalue()) == _records(streamed)
    assert not list(tmp_path.glob(".tvcs-*.tensors"))  # the scratch file is gone
    repo.close()


def test_plan_refuses_what_it_does_not_know() -> None:
    state = {"a": torch.empty(100), "b": torch.empty(3, dtype=torch.int8)}
    parts, storages = torch_zip.record(state)
    layout, gaps = torch_zip.plan(parts, storages)
    assert [(g.key, g.length) for g in gaps] == [(0, 400), (1, 3)]
    with pytest.raises(torch_zip.Unsupported, match="end of central directory"):
        torch_zip.plan(parts[:-1], storages)
    with pytest.raises(torch_zip.Unsupported, match="its storage is not"):
        torch_zip.plan(parts, [storages[0], torch.empty(4, dtype=torch.int8).untyped_storage()])
    with pytest.raises(torch_zip.Unsupported, match="not one gap"):
        torch_zip.plan(parts, storages[:1])
    merged = [p if isinstance(p, bytes) else b"\0" * p for p in parts]  # no gaps at all
    with pytest.raises(torch_zip.Unsupported, match="not one gap"):
        torch_zip.plan(merged, storages)
    with pytest.raises(ValueError, match="got 399 bytes for 400"):
        torch_zip.replay(layout, gaps, storages, lambda s: [bytes(s.nbytes() - 1)],
                         lambda b: None)


def test_zip64_layout(tmp_path: Path) -> None:
    """Past 4 GiB torch.save writes zip64 records; their CRCs and offsets are found too. The
    bytes are zeros written as holes of a sparse file, so nothing is held or stored."""
    big = torch.empty(4_400_000_000 // 4 + 3)  # never touched: address space only
    state = {"small": torch.empty(5, dtype=torch.int64), "big": big,
             "after": torch.empty(7, dtype=torch.int16)}
    parts, storages = torch_zip.record(state)
    layout, gaps = torch_zip.plan(parts, storages)
    assert [g.length for g in gaps] == [40, big.nbytes, 14]
    assert gaps[2].offset > 2**32
    zeros = memoryview(bytes(64 << 20))
    path = tmp_path / "sparse.pt"
    with open(path, "wb") as f:

        def write(piece: Any) -> None:
            if isinstance(piece, memoryview) and piece.obj is zeros.obj:
                f.seek(piece.nbytes, os.SEEK_CUR)
            else:
                f.write(piece)

        def fill(s: torch.UntypedStorage) -> Any:
            left = s.nbytes()
            while left:
                yield zeros[: min(left, zeros.nbytes)]
                left -= min(left, zeros.nbytes)

        torch_zip.replay(layout, gaps, storages, fill, write)
    assert path.stat().st_size == layout.size
    z = zipfile.ZipFile(path)
    crcs = {i.filename.rsplit("/", 1)[-1]: i.CRC for i in z.infolist() if "/data/" in i.filename}
    assert crcs == {"0": zlib.crc32(bytes(40)), "2": zlib.crc32(bytes(14)),
                    "1": _crc_of_zeros(big.nbytes)}
    back = torch.load(path, weights_only=True, mmap=True)
    assert back["big"].shape == big.shape and back["after"].dtype == torch.int16
    assert float(back["big"][-1]) == 0.0 and int(back["small"].sum()) == 0


def _crc_of_zeros(n: int) -> int:
    block = bytes(64 << 20)
    crc = 0
    while n:
        take = min(n, len(block))
        crc = zlib.crc32(memoryview(block)[:take], crc)
        n -= take
    return crc
