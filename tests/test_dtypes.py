"""Every tensor dtype and layout the store accepts comes back bitwise; the rest are refused."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from conftest import assert_bitwise_equal, random_tensor, tensor_bytes

import tensorvcs as tv
from tensorvcs.state.tensors import DTYPES

# ComplexHalf warns that it is experimental on creation; that is torch's business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")


def commit_and_checkout(repo: tv.Repo, state: Any, **kw: Any) -> Any:
    repo.commit(state, "test", **kw)
    fresh = tv.Repo.open(repo.root)  # nothing cached: everything is read back from disk
    try:
        return fresh.checkout()
    finally:
        fresh.close()


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_every_dtype_round_trips_bitwise(small_repo: tv.Repo, name: str) -> None:
    dtype = DTYPES[name]
    state = {
        "small": random_tensor(dtype, (3, 5), seed=1),  # packed
        "big": random_tensor(dtype, (48, 100), seed=2),  # > pack threshold: chunked
        "scalar": random_tensor(dtype, (), seed=3),
        "empty": random_tensor(dtype, (0, 3), seed=4),
    }
    out = commit_and_checkout(small_repo, state)
    assert list(out) == list(state)
    for k, t in state.items():
        assert type(out[k]) is torch.Tensor
        assert_bitwise_equal(out[k], t)
    info = {i.key: i for i in small_repo.tensors()}
    assert info["big"].dtype == name
    assert len(info["big"].objects) == math.ceil(48 * 100 * state["big"].element_size() / 4096)
    assert info["empty"].objects == [] and info["empty"].nbytes == 0


def test_float_special_values_are_bitwise(small_repo: tv.Repo) -> None:
    specials = [0.0, -0.0, math.inf, -math.inf, math.nan, 5e-324, -1.5]
    t = torch.tensor(specials, dtype=torch.float64)
    payload_nan = torch.tensor([0x7FF0000000000123, 0xFFF00000DEADBEEF - 2**64], dtype=torch.int64)
    state = {
        "t": t,
        "f32": t.float(),
        "bf16": t.bfloat16(),
        "nans": payload_nan.view(torch.float64),
    }
    out = commit_and_checkout(small_repo, state)
    for k, v in state.items():
        assert_bitwise_equal(out[k], v)
    assert torch.isnan(out["nans"]).all()


def test_zero_dim_and_empty_tensors(repo: tv.Repo) -> None:
    state = {
        "s": torch.tensor(3.5),
        "i": torch.tensor(7, dtype=torch.int64),
        "b": torch.tensor(True),
        "e1": torch.empty(0),
        "e2": torch.empty(0, 3, dtype=torch.float16),
        "e3": torch.empty(5, 0, 2, dtype=torch.int8),
    }
    out = commit_and_checkout(repo, state)
    for k, v in state.items():
        assert_bitwise_equal(out[k], v)
    assert out["s"].dim() == 0 and out["s"].item() == 3.5
    assert out["e2"].shape == (0, 3)


def test_non_contiguous_tensors(small_repo: tv.Repo) -> None:
    base = random_tensor(torch.float32, (40, 30), seed=5)
    state = {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "column": base[:, 7],
        "expanded": torch.arange(4.0).expand(6, 4),
        "permuted": random_tensor(torch.int16, (3, 4, 5), seed=6).permute(2, 0, 1),
        "negative_step": base.flip(0)[::3],
    }
    assert not any(v.is_contiguous() for k, v in state.items() if k != "negative_step")
    out = commit_and_checkout(small_repo, state)
    for k, v in state.items():
        assert_bitwise_equal(out[k], v)
        assert out[k].is_contiguous()


def test_views_into_a_bigger_tensor_store_only_the_view(small_repo: tv.Repo) -> None:
    big = random_tensor(torch.float32, (10000,), seed=7)
    view = big[100:400]
    out = commit_and_checkout(small_repo, {"v": view})
    assert_bitwise_equal(out["v"], view)
    (info,) = small_repo.tensors()
    assert info.nbytes == 300 * 4
    assert out["v"].untyped_storage().nbytes() == 300 * 4


def test_two_views_of_one_storage_stay_distinct(small_repo: tv.Repo) -> None:
    base = random_tensor(torch.float32, (8, 64), seed=8)
    state = {"a": base[0], "b": base[1], "c": base[0].view(torch.int32), "whole": base}
    out = commit_and_checkout(small_repo, state)
    for k, v in state.items():
        assert_bitwise_equal(out[k], v)
    assert len({id(v) for v in out.values()}) == 4


def test_conj_and_neg_views_of_complex(repo: tv.Repo) -> None:
    c = torch.randn(4, 3, dtype=torch.complex64, generator=torch.Generator().manual_seed(9))
    conj = c.conj()
    neg_imag = conj.imag  # a negative-bit view of c's imaginary parts
    assert conj.is_conj() and neg_imag.is_neg()
    state = {"c": c, "conj": conj, "neg": neg_imag, "conj_t": c.t().conj()}
    out = commit_and_checkout(repo, state)
    assert_bitwise_equal(out["c"], c)
    assert_bitwise_equal(out["conj"], conj.resolve_conj())
    assert_bitwise_equal(out["neg"], neg_imag.resolve_neg())
    assert_bitwise_equal(out["conj_t"], c.t().conj().resolve_conj())
    assert torch.equal(out["neg"], -c.imag)
    for v in out.values():
        assert not v.is_conj() and not v.is_neg()


def test_large_tensor_spans_several_chunks(small_repo: tv.Repo) -> None:
    t = random_tensor(torch.float32, (100, 103), seed=10)  # 41200 bytes: 11 chunks, last short
    out = commit_and_checkout(small_repo, {"w": t})
    assert_bitwise_equal(out["w"], t)
    (info,) = small_repo.tensors()
    assert len(info.objects) == 11 and len(set(info.objects)) == 11
    m = small_repo.get_manifest(small_repo.show().manifest)
    assert [n for _, n in m.tensors[0].chunks or []] == [4096] * 10 + [41200 - 40960]


def test_parameters_keep_type_and_requires_grad(repo: tv.Repo) -> None:
    g = torch.Generator().manual_seed(11)
    state = {
        "p": torch.nn.Parameter(torch.randn(3, 4, generator=g)),
        "frozen": torch.nn.Parameter(torch.randn(2, generator=g), requires_grad=False),
        "int_param": torch.nn.Parameter(torch.arange(5), requires_grad=False),
        "grad_tensor": torch.randn(2, generator=g).requires_grad_(),
        "plain": torch.randn(2, generator=g),
    }
    out = commit_and_checkout(repo, state)
    assert type(out["p"]) is torch.nn.Parameter and out["p"].requires_grad
    assert type(out["frozen"]) is torch.nn.Parameter and not out["frozen"].requires_grad
    assert type(out["int_param"]) is torch.nn.Parameter and not out["int_param"].requires_grad
    assert type(out["grad_tensor"]) is torch.Tensor and out["grad_tensor"].requires_grad
    assert type(out["plain"]) is torch.Tensor and not out["plain"].requires_grad
    for k, v in state.items():
        assert_bitwise_equal(out[k], v)


@pytest.mark.parametrize("shape", [(4, 8), (64, 64)], ids=["packed", "chunked"])
def test_tied_weights_come_back_as_one_tensor(small_repo: tv.Repo, shape: tuple[int, int]) -> None:
    w = random_tensor(torch.float32, shape, seed=12)
    state = {"embed.weight": w, "head.weight": w, "other": w.clone()}
    out = commit_and_checkout(small_repo, state)
    assert out["embed.weight"] is out["head.weight"]
    assert out["other"] is not out["embed.weight"]
    assert_bitwise_equal(out["head.weight"], w)
    m = small_repo.get_manifest(small_repo.show().manifest)
    assert len(m.tensors) == 2  # the tied pair is one entry; the clone is its own
    assert small_repo.last_write_stats.logical_bytes == 2 * w.numel() * 4


def test_tied_module_parameters(small_repo: tv.Repo) -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.head = torch.nn.Linear(16, 50, bias=False)
            self.head.weight = self.embed.weight

    sd = Tied().state_dict()
    assert sd["embed.weight"] is not sd["head.weight"]  # separate detached views of one storage
    out = commit_and_checkout(small_repo, {"model": sd})
    assert out["model"]["embed.weight"] is out["model"]["head.weight"]
    assert_bitwise_equal(out["model"]["head.weight"], sd["head.weight"])
    m = small_repo.get_manifest(small_repo.show().manifest)
    assert len(m.tensors) == 1


def test_identical_content_is_stored_once(small_repo: tv.Repo) -> None:
    a = random_tensor(torch.float32, (64, 64), seed=13)
    small_repo.commit({"a": a, "b": a.clone()})
    stats = small_repo.last_write_stats
    assert stats.new_objects == 4  # 16 KiB in 4 KiB chunks; b's chunks are a's
    assert stats.reused_objects == 4
    small_repo.commit({"a": a.clone(), "c": a.clone()})
    assert small_repo.last_write_stats.new_objects == 0


def test_numpy_arrays(repo: tv.Repo) -> None:
    rng = np.random.default_rng(14)
    legacy = np.random.RandomState(15).get_state()
    state = {
        "f32": rng.standard_normal((3, 4)).astype(np.float32),
        "u32": rng.integers(0, 2**32, 624, dtype=np.uint32),
        "be": np.arange(6, dtype=">f4").reshape(2, 3),
        "bool": rng.integers(0, 2, 10).astype(bool),
        "f64_fortran": np.asfortranarray(rng.standard_normal((3, 5))),
        "strided": np.arange(20, dtype=np.int16)[::3],
        "empty": np.zeros((0, 4), dtype=np.complex64),
        "zero_d": np.array(2.5, dtype=np.float16),
        "legacy_rng": legacy,
        "generator_state": np.random.default_rng(16).bit_generator.state,
    }
    out = commit_and_checkout(repo, state)
    for k in ("f32", "u32", "be", "bool", "f64_fortran", "strided", "empty", "zero_d"):
        assert type(out[k]) is np.ndarray, k
        assert out[k].dtype == state[k].dtype and out[k].dtype.str == state[k].dtype.str, k
        assert out[k].shape == state[k].shape, k
        assert out[k].tobytes() == state[k].tobytes(), k
    assert out["be"].dtype.byteorder == ">"
    assert out["be"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    out_legacy = out["legacy_rng"]
    assert type(out_legacy) is tuple and len(out_legacy) == len(legacy)
    assert out_legacy[0] == "MT19937"
    assert out_legacy[1].dtype == np.uint32 and np.array_equal(out_legacy[1], legacy[1])
    assert out_legacy[2:] == legacy[2:]
    restored = np.random.RandomState()
    restored.set_state(out_legacy)
    expect = np.random.RandomState()
    expect.set_state(legacy)
    assert np.array_equal(restored.random_sample(5), expect.random_sample(5))
    assert out["generator_state"] == state["generator_state"]


def test_numpy_scalars_keep_their_dtype(repo: tv.Repo) -> None:
    state = {
        "f32": np.float32(0.5),
        "f64": np.float64(-0.0),
        "f16": np.float16(1.5),
        "i64": np.int64(-3),
        "u8": np.uint8(255),
        "b": np.bool_(True),
        "c64": np.complex64(1 - 2j),
        "nan": np.float32("nan"),
        "be": np.array([1.25], dtype=">f8")[0],
    }
    out = commit_and_checkout(repo, state)
    for k, v in state.items():
        assert type(out[k]) is type(v), k
        assert out[k].dtype == v.dtype, k
        assert out[k].tobytes() == v.tobytes(), k


def test_torch_dtype_device_and_size_values(repo: tv.Repo) -> None:
    state = {
        "dtypes": [torch.float32, torch.bfloat16, torch.int8, torch.bool, torch.qint8],
        "devices": [torch.device("cpu"), torch.device("cuda", 1), torch.device("meta")],
        "size": torch.Size([2, 3]),
        "empty_size": torch.Size([]),
    }
    out = commit_and_checkout(repo, state)
    assert out["dtypes"] == state["dtypes"]
    assert all(isinstance(d, torch.dtype) for d in out["dtypes"])
    assert out["devices"] == state["devices"]
    assert all(type(d) is torch.device for d in out["devices"])
    assert type(out["size"]) is torch.Size and out["size"] == (2, 3)
    assert type(out["empty_size"]) is torch.Size and out["empty_size"] == ()


def _quantized() -> torch.Tensor:
    return torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (_quantized, "quantized"),
        (lambda: torch.randn(3, 3).to_sparse(), "layout"),
        (lambda: torch.randn(3, 3).to_sparse_csr(), "layout"),
        (lambda: torch.empty(3, device="meta"), "meta"),
    ],
    ids=["quantized", "sparse_coo", "sparse_csr", "meta"],
)
def test_unstorable_tensors_are_refused(repo: tv.Repo, make: Any, why: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sparse CSR is "beta"
        bad = make()
    state = {"model": {"ok": torch.ones(2), "layers": [{"w": bad}]}}
    with pytest.raises(tv.UnsupportedValueError) as ei:
        repo.commit(state, "refused")
    assert ei.value.key_path == "model/layers/0/w"
    assert "'model/layers/0/w'" in str(ei.value)
    assert why in str(ei.value)
    assert repo.log() == []
    assert repo.head() == ("main", None)


def test_checkout_values_are_fresh_tensors(repo: tv.Repo) -> None:
    t = torch.arange(6.0)
    repo.commit({"t": t})
    out = repo.checkout()
    out["t"][0] = 100.0
    assert t[0] == 0.0
    assert tensor_bytes(repo.checkout()["t"]) == tensor_bytes(t)


def test_common_dtype_table_agrees_with_torch() -> None:
    """format.manifest validates these dtypes without importing torch: each is one of this
    torch's dtypes, with its item size and whether it can require gradients."""
    from tensorvcs.format.manifest import COMMON_DTYPES

    for name, (itemsize, can_grad) in COMMON_DTYPES.items():
        d = DTYPES[name]
        assert (itemsize, can_grad) == (d.itemsize, d.is_floating_point or d.is_complex), name
