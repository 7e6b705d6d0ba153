"""Measuring a commit's statistics never writes into the bytes being committed.

The change norm of a complex128 tensor was taken by an in-place subtraction on its float64
(re, im) view, which shares memory with the chunk about to be hashed and encoded (and with
the caller's tensor): the stored object then failed its hash check on checkout, and the
caller's tensor held the difference. The other dtypes here guard the float64 views the
statistics now read in place (float64 chunks and their row tails, packed tensors).
"""

from __future__ import annotations

import torch
from conftest import assert_bitwise_equal

import tensorvcs as tv


def test_the_committed_tensors_and_objects_are_left_as_they_were(small_repo: tv.Repo) -> None:
    g = torch.Generator().manual_seed(3)
    parent = {
        "c128": torch.randn(3000, generator=g, dtype=torch.complex128),  # chunked
        "f64": torch.randn(3001, generator=g, dtype=torch.float64),  # chunks with a tail
        "f64small": torch.randn(100, generator=g, dtype=torch.float64),  # packed
        "c128small": torch.randn(50, generator=g, dtype=torch.complex128),
        "bf16": torch.randn(5001, generator=g).to(torch.bfloat16),
        "f32": torch.randn(4099, generator=g),
    }
    small_repo.commit(parent, "parent")
    child = {
        k: v + (torch.arange(v.numel()).reshape(v.shape) % 7 == 0).to(v.dtype)
        for k, v in parent.items()
    }
    before = {k: v.clone() for k, v in child.items()}
    c = small_repo.commit(child, "child")
    for k, v in child.items():
        assert_bitwise_equal(v, before[k])  # the caller's tensors are unchanged
        assert k in c.changes
    out = small_repo.checkout(c.id)
    for k, v in before.items():
        assert_bitwise_equal(out[k], v)  # and the objects hash to their ids
