"""A commit to one consolidated .safetensors file (``tv.dcp.export_torch_save``, ``tvcs export``):
streamed from the store, one tensor at a time, with the names and bytes of
``flatten_state_dict(load_state(...))`` — the in-memory path it replaced — for any state."""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file
from torch.distributed.checkpoint._nested_dict import flatten_state_dict

import tensorvcs as tv
from tensorvcs.io import safetensors_file as stf

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int64, torch.int8,
          torch.uint8, torch.bool, torch.float8_e4m3fn, torch.complex64, torch.complex32]


@st.composite
def tensors(draw: Any) -> torch.Tensor:
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(st.lists(st.integers(0, 6), max_size=3))
    if draw(st.booleans()):  # several chunks of the test repository's 16 KiB chunks
        shape = [draw(st.integers(1, 3)), 9_000]
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    t = torch.randint(-100, 100, shape, generator=g)
    t = t.bool() if dtype == torch.bool else t.to(dtype)
    if draw(st.booleans()) and t.is_floating_point() and dtype != torch.float8_e4m3fn:
        return torch.nn.Parameter(t, requires_grad=draw(st.booleans()))
    return t




@st.composite
def states(draw: Any) -> dict[str, Any]:
    tree = draw(st.recursive(
        tensors(),
        lambda kids: (st.dictionaries(st.text("ab.c", min_size=1, max_size=3), kids, max_size=4)
                      | st.lists(kids, max_size=3)
                      | st.dictionaries(st.text("xy", min_size=1, max_size=2), kids, max_size=3)
                      .map(OrderedDict)),
        max_leaves=10,
    ))
    state: dict[str, Any] = {"tree": tree}
    if draw(st.booleans()):  # one tensor in two places (tied weights): both names are written
        w = draw(tensors())
        state["tied"] = {"a": w, "b": [w]}
    # now and then a value safetensors cannot hold, so the refusal is exercised: a number, a
    # tuple (a leaf to DCP's flattening), a numpy array
    extra = draw(st.sampled_from([None] * 7 + ["step", "tuple", "array"]))
    if extra == "step":
        state["step"] = 3
    elif extra == "tuple":
        state["pair"] = (draw(tensors()), draw(tensors()))
    elif extra == "array":
        state["array"] = np.arange(6, dtype=np.int16)
    return state


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(state=states())
def test_export_equals_flattened_load_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: dict[str, Any]
) -> None:
    repo = tv.Repo.init(tmp_path / f"r-{os.urandom(4).hex()}", chunk_size=16 << 10,
                        pack_threshold=1 << 10)
    repo.commit(state, "s")
    flat, _ = flatten_state_dict(tv.dcp.load_state(repo, "HEAD"))
    values = [k for k, v in flat.items() if not isinstance(v, torch.Tensor)]
    unfit = [k for k, v in flat.items()
             if isinstance(v, torch.Tensor) and v.dtype not in stf.DTYPE_NAMES]
    out = tmp_path / f"{os.urandom(4).hex()}.safetensors"
    with monkeypatch.context() as mp:  # the export never holds the state
        mp.setattr(tv.dcp.convert, "load_state", lambda *a, **k: pytest.fail("load_state"))
        mp.setattr(tv.Repo, "checkout", lambda *a, **k: pytest.fail("checkout"))
        if values or "array" in state:
            with pytest.raises(tv.UnsupportedValueError, match="non-tensor value"):
                tv.dcp.export_torch_save(repo, "HEAD", out)
            assert not out.exists()
            return
        if unfit:
            with pytest.raises(tv.UnsupportedValueError, match="which safetensors cannot hold"):
                tv.dcp.export_torch_save(repo, "HEAD", out)
            assert not out.exists()
            return
        tv.dcp.export_torch_save(repo, "HEAD", out)
    got = load_file(str(out))
    assert sorted(got) == sorted(flat)
    for k, v in flat.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        raw = v.detach().contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(got[k].reshape(-1).view(torch.uint8), raw), k
    assert not list(tmp_path.glob(".*.tmp-*"))


def test_export_names_the_value_and_the_dtype_it_refuses(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path / "r")
    repo.commit({"model": {"w": torch.ones(3)}, "step": 4}, "with a step")
    with pytest.raises(tv.UnsupportedValueError, match=r"1 non-tensor value\(s\).*'step'"):
        tv.dcp.export_torch_save(repo, "HEAD", tmp_path / "a.safetensors")
    repo.commit({"model": {"w": torch.ones(3, dtype=torch.complex32)}}, "complex")
    with pytest.raises(tv.UnsupportedValueError, match=r"'model\.w' has dtype complex32"):
        tv.dcp.export_torch_save(repo, "HEAD", tmp_path / "b.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]
