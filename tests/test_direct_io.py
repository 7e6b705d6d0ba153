"""With TVCS_DIRECT_IO=1, large durable writes of the local store go around the page cache
(O_DIRECT), issue 11.

The bytes of every file must be exactly what was put, whatever the size against the 4 KiB
alignment and the staging buffer and however the data is cut into pieces; where the file
system refuses direct writes (EINVAL at open or at write: tmpfs before Linux 6.6, some FUSE and
network file systems), the store writes through the page cache instead, from then on, and
leaves no temporary file. No file system here refuses O_DIRECT, so the refusal is the kernel's
EINVAL raised in its place.
"""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.store import local
from tensorvcs.store.local import DIRECT_ALIGN, DIRECT_MIN, DIRECT_STAGE, LocalStore

pytestmark = pytest.mark.skipif(not local.O_DIRECT, reason="no O_DIRECT on this platform")


@pytest.fixture(autouse=True)
def direct_io(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TVCS_DIRECT_IO", "1")


EDGES = [0, 1, DIRECT_ALIGN - 1, DIRECT_ALIGN, DIRECT_ALIGN + 1]
SIZES = st.one_of(
    st.sampled_from([DIRECT_MIN - 1, DIRECT_MIN, DIRECT_STAGE, 2 * DIRECT_STAGE + 1]),
    st.builds(
        lambda base, edge: base + edge,
        st.sampled_from([DIRECT_MIN, DIRECT_STAGE, 2 * DIRECT_STAGE]),
        st.sampled_from(EDGES),
    ),
    st.integers(0, 3 * DIRECT_STAGE),
)


def tmp_files(root: Path) -> list[Path]:
    d = root / local.TMP_DIR
    return sorted(d.iterdir()) if d.is_dir() else []


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(n=SIZES, cuts=st.lists(st.floats(0, 1), max_size=4), kind=st.sampled_from(["b", "mv", "np"]))
def test_bytes_are_exactly_what_was_put(
    tmp_path: Path, n: int, cuts: list[float], kind: str
) -> None:
    store = LocalStore(tmp_path)
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    bounds = sorted({0, n, *(int(c * n) for c in cuts)})
    pieces: list[Any] = []
    for a, b in itertools.pairwise(bounds):
        part = data[a:b]
        pieces.append({"b": part.tobytes(), "mv": memoryview(part), "np": part.view(np.uint16)
                       if part.size % 2 == 0 else part}[kind])  # fmt: skip
    name = f"objects/{n}-{len(pieces)}-{kind}"
    store.put(name, pieces)
    assert (tmp_path / name).stat().st_size == n
    assert store.get(name) == data.tobytes()
    assert store.direct  # this file system takes direct writes: nothing fell back
    assert tmp_files(tmp_path) == []


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """os.open / os.write raising EINVAL for direct I/O, as a refusing file system does; what
    was refused is counted."""
    real_open, real_write = os.open, os.write
    direct_fds: set[int] = set()
    refused = {"open": 0, "write": 0, "mode": 0}

    def fake_open(path: Any, flags: int, *a: Any, **k: Any) -> int:
        if flags & local.O_DIRECT and refused["mode"] == 0:
            refused["open"] += 1
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        fd = real_open(path, flags, *a, **k)
        if flags & local.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def fake_write(fd: int, data: Any) -> int:
        if fd in direct_fds:
            refused["write"] += 1
            direct_fds.discard(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(local.os, "open", fake_open)
    monkeypatch.setattr(local.os, "write", fake_write)
    return refused


@pytest.mark.parametrize("where", ["open", "write"])
def test_a_refusing_file_system_gets_buffered_writes(
    tmp_path: Path, refusing: dict[str, int], where: str
) -> None:
    refusing["mode"] = 0 if where == "open" else 1
    store = LocalStore(tmp_path)
    big = np.arange(DIRECT_STAGE + 12345, dtype=np.uint8).tobytes()
    store.put("objects/a", [big])
    assert refusing[where] == 1 and not store.direct
    assert store.get("objects/a") == big and tmp_files(tmp_path) == []
    store.put("objects/b", [big[:DIRECT_MIN], big[DIRECT_MIN:]])  # no second try
    assert refusing[where] == 1 and store.get("objects/b") == big
    assert sorted(p.name for p in (tmp_path / "objects").iterdir()) == ["a", "b"]


def test_a_repository_on_a_refusing_file_system(tmp_path: Path, refusing: dict[str, int]) -> None:
    repo = tv.Repo.init(tmp_path / "r")
    state = {"w": torch.randn(3, 1 << 20), "b": torch.arange(10)}
    c = repo.commit(state, "one")
    assert refusing["open"] >= 1
    out = repo.checkout(c)
    assert torch.equal(out["w"], state["w"]) and torch.equal(out["b"], state["b"])
    assert tv.fsck(repo).ok


def test_off_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert LocalStore(tmp_path).direct
    monkeypatch.setenv("TVCS_DIRECT_IO", "0")
    assert not LocalStore(tmp_path).direct
    monkeypatch.delenv("TVCS_DIRECT_IO")
    store = LocalStore(tmp_path)
    assert not store.direct
    big = bytes(range(256)) * (DIRECT_MIN // 256 + 1)
    store.put("objects/a", [big])
    assert store.get("objects/a") == big
