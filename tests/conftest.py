"""Shared fixtures and helpers for the tensorvcs test suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import tensorvcs as tv


@pytest.fixture
def repo(tmp_path: Path) -> Any:
    """A fresh repository in a temporary directory (default chunk size and pack threshold)."""
    r = tv.Repo.init(tmp_path)
    yield r
    r.close()


@pytest.fixture
def small_repo(tmp_path: Path) -> Any:
    """A repository with tiny chunks (4 KiB) and pack threshold (1 KiB): many objects fast."""
    r = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    yield r
    r.close()


def tensor_bytes(t: torch.Tensor) -> bytes:
    """The canonical bytes of a tensor (row-major, conj/neg resolved), for bitwise compares."""
    t = t.detach().resolve_conj().resolve_neg().contiguous()
    return t.reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> None:
    """Same dtype, same shape, same bytes (NaN payloads and -0.0 included)."""
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    assert a.dtype == b.dtype, (a.dtype, b.dtype)
    assert a.shape == b.shape, (a.shape, b.shape)
    assert tensor_bytes(a) == tensor_bytes(b)


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """A tensor with uniformly random bytes: every bit pattern (NaN payloads too) can appear."""
    g = torch.Generator().manual_seed(seed)
    width = torch.empty((), dtype=dtype).element_size()
    n = 1
    for s in shape:
        n *= s
    raw = torch.randint(0, 256, (n * width,), dtype=torch.uint8, generator=g)
    return raw.view(dtype).reshape(shape)
