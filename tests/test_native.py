"""The optional native loops (tensorvcs/_native.c) against the numpy paths they replace.

Both paths run here in one process: the numpy one by setting the module's ``native`` to
None (what TVCS_NATIVE=0 or a build without a compiler gives). Byte planes must be
identical; statistics must have the same min, max and finiteness and sums within float32
rounding of the row sums. Where the extension was not built the comparisons skip with the
reason, and the rest of the suite runs on the numpy path. An install with no C compiler
must still succeed (setup.py marks the extension optional)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

import tensorvcs as tv
from tensorvcs import accel
from tensorvcs.format import codecs
from tensorvcs.state import stats

ROOT = Path(__file__).resolve().parent.parent
needs_native = pytest.mark.skipif(
    accel.native is None, reason=f"the C extension is not in use here ({accel.describe()})"
)


def _numpy_path(module: Any, fn: Any, *args: Any) -> Any:
    saved = module.native
    module.native = None
    try:
        return fn(*args)
    finally:
        module.native = saved


@needs_native
@settings(max_examples=200, deadline=None)
@given(width=st.sampled_from([1, 2, 3, 4, 5, 8, 16]), m=st.integers(0, 70_000),
       seed=st.integers(0, 9))  # fmt: skip
def test_planes_are_identical_bytes(width: int, m: int, seed: int) -> None:
    u8 = np.random.default_rng(seed).integers(0, 256, width * m, dtype=np.uint8)
    got = codecs.split_planes(u8, width)
    want = _numpy_path(codecs, codecs.split_planes, u8, width)
    assert got.shape == want.shape == (width, m)
    assert np.array_equal(got, want)
    out = np.full(u8.nbytes, 7, dtype=np.uint8)
    codecs.merge_planes(list(got), out)
    assert np.array_equal(out, u8)
    out2 = np.full(u8.nbytes, 7, dtype=np.uint8)
    _numpy_path(codecs, codecs.merge_planes, list(got), out2)
    assert np.array_equal(out2, u8)


@needs_native
def test_wide_and_strided_planes_take_the_numpy_path() -> None:
    """A width over the native limit or a non-contiguous buffer still works (numpy)."""
    u8 = np.arange(100 * 3 * 2, dtype=np.uint16).view(np.uint8)[::2].copy()
    wide = codecs.NATIVE_MAX_WIDTH + 2
    data = np.random.default_rng(1).integers(0, 256, wide * 5, dtype=np.uint8)
    planes = codecs.split_planes(data, wide)
    out = np.empty_like(data)
    codecs.merge_planes(list(planes), out)
    assert np.array_equal(out, data)
    strided = np.zeros(2 * u8.nbytes, dtype=np.uint8)[::2]
    codecs.merge_planes(list(codecs.split_planes(u8, 3)), strided)
    assert np.array_equal(strided, u8)


@needs_native
@settings(max_examples=200, deadline=None)
@given(width=st.sampled_from([1, 2, 4, 8, 16]), m=st.integers(0, 40_000),
       changed=st.sampled_from([0.0, 0.002, 0.3, 1.0]), seed=st.integers(0, 9),
       reuse=st.booleans())  # fmt: skip
def test_delta_is_identical_bytes(
    width: int, m: int, changed: float, seed: int, reuse: bool
) -> None:
    """The one-pass native delta (difference and plane split fused, and its inverse) stores
    the bytes numpy's delta_diff + split_planes store, and both paths decode either one back
    to the content exactly: sparse, dense and nil changes, every lane width."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, width * m, dtype=np.uint8)
    new = base.copy()
    hit = rng.random(new.size) < changed
    new[hit] = rng.integers(0, 256, int(hit.sum()), dtype=np.uint8)
    got = codecs.encode_delta(new, base, width, "b" * 64, 1, reuse=reuse)
    got_bytes, got_params = got.payload, got.params
    want = _numpy_path(codecs, codecs.encode_delta, new, base, width, "b" * 64, 1)
    assert got_params == want.params
    assert got_bytes == want.payload
    for path in ("native", "numpy"):
        out = base.copy()
        decode = codecs.decode_delta_into
        args = (got_params, memoryview(got_bytes), out, "c" * 64)
        if path == "native":
            decode(*args)
        else:
            _numpy_path(codecs, decode, *args)
        assert np.array_equal(out, new), path


@needs_native
def test_native_delta_refuses_what_does_not_fit() -> None:
    """The native loops name themselves and the problem instead of reading out of bounds."""
    nat = accel.native
    assert nat is not None
    a, b, out = np.zeros(12, np.uint8), np.zeros(12, np.uint8), np.zeros(12, np.uint8)
    with pytest.raises(ValueError, match="delta_split: width must be 2, 4 or 8"):
        nat.delta_split(a, b, 3, out)
    with pytest.raises(ValueError, match="delta_split: sizes do not match"):
        nat.delta_split(a, np.zeros(8, np.uint8), 4, out)
    with pytest.raises(ValueError, match="delta_merge: unsupported width or size"):
        nat.delta_merge([a[:4]] * 3, out)
    with pytest.raises(ValueError, match="delta_merge: a plane has the wrong size"):
        nat.delta_merge([a[:6], a[:5]], out)
    with pytest.raises(ValueError, match="merge_planes: a plane has the wrong size"):
        nat.merge_planes([a[:6], a[:5]], out)


def _values(kind: str, draw: Any) -> torch.Tensor:
    n = draw(st.integers(0, 5000))
    scale = draw(st.sampled_from([1.0, 1e-20, 1e-30, 1e30, 3e38]))
    x = torch.randn(n, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))) * scale
    if n and draw(st.booleans()):
        special = draw(st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -0.0]))
        x[draw(st.integers(0, n - 1))] = special
    return x.to(torch.bfloat16 if kind == "bf16" else torch.float32)


@needs_native
@settings(max_examples=300, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["fp32", "bf16"]), values=st.booleans(),
       change=st.booleans())  # fmt: skip
def test_scan_agrees_with_numpy(data: Any, kind: str, values: bool, change: bool) -> None:
    x = _values(kind, data.draw)
    new = x.view(torch.uint8).numpy()
    old = None
    if change:
        step = torch.randn(x.numel()).mul(1e-3) * x.float().abs().clamp(max=1e30)
        y = (x.float() + step).to(x.dtype)
        old = y.view(torch.uint8).numpy()
    if not values and old is None:
        values = True
    got = stats._scan(new, old, x.dtype, values)
    want = _numpy_path(stats, stats._scan, new, old, x.dtype, values)
    assert got.finite() == want.finite()
    if values and got.finite():
        assert got.lo == want.lo and got.hi == want.hi
        ref = x.double()
        bound = 1e-5 * float(ref.abs().sum()) + 1e-300
        assert abs(got.total - want.total) <= bound
        assert got.sumsq == pytest.approx(want.sumsq, rel=1e-5, abs=1e-300)
        assert got.sumsq == pytest.approx(float((ref * ref).sum()), rel=1e-5, abs=1e-300)
    if old is not None and np.isfinite(want.delta):
        assert got.delta == pytest.approx(want.delta, rel=1e-5, abs=1e-300)


def test_scan_keeps_tiny_squares() -> None:
    """Rows whose float32 squares underflow (Adam's second moments) are summed in float64."""
    x = torch.full((4096,), 1e-22)
    s = stats._scan(x.view(torch.uint8).numpy(), None, torch.float32)
    assert s.sumsq == pytest.approx(4096 * float(torch.tensor(1e-22).double()) ** 2, rel=1e-6)


@needs_native
def test_commit_writes_the_same_objects_either_way(tmp_path: Path) -> None:
    """The chunk objects a commit writes are byte-identical with and without the native
    loops; the statistics agree within rounding."""
    script = (
        "import sys, torch, tensorvcs as tv\n"
        "g = torch.Generator().manual_seed(3)\n"
        "s = {'w': torch.randn(600_000, generator=g), 'b': torch.randn(300_000, generator=g)"
        ".bfloat16(), 'd': torch.randn(70_000, generator=g, dtype=torch.float64)}\n"
        "r = tv.Repo.init(sys.argv[1], chunk_size=1 << 20)\n"
        "c = r.commit(s, 'one')\n"
        "s2 = {k: v + 1e-3 for k, v in s.items()}\n"
        "r.commit(s2, 'two')\n"
        "for e in sorted(r.tensors('HEAD'), key=lambda e: e.key):\n"
        "    print(e.key, e.stats.min, e.stats.max, e.stats.norm, e.stats.delta_norm)\n"
    )
    outs = {}
    for flag in ("1", "0"):
        env = {**os.environ, "TVCS_NATIVE": flag}
        p = subprocess.run([sys.executable, "-c", script, str(tmp_path / flag)], env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
        assert p.returncode == 0, p.stderr
        outs[flag] = p.stdout.split()
    chunks = {}
    for flag in ("1", "0"):
        objs = tmp_path / flag / ".tvcs" / "objects"
        chunks[flag] = {
            f.relative_to(objs): f.read_bytes()
            for f in objs.rglob("*")
            if f.is_file() and f.stat().st_size > 100_000
        }
    assert chunks["1"] and chunks["1"] == chunks["0"]
    a, b = outs["1"], outs["0"]
    assert len(a) == len(b) == 15
    for x, y in zip(a, b, strict=True):
        if x != y:
            assert float(x) == pytest.approx(float(y), rel=1e-5)


def test_switch_off() -> None:
    env = {**os.environ, "TVCS_NATIVE": "0"}
    p = subprocess.run(
        [sys.executable, "-c", "from tensorvcs import accel as a; print(a.native, a.describe())"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "None native loops: off (TVCS_NATIVE=0)"


def test_installs_without_a_compiler(tmp_path: Path) -> None:
    """setup.py's extension is optional: with no working C compiler the wheel still builds,
    without the module, and tensorvcs imports and commits from it on the numpy path."""
    src = tmp_path / "src"  # a copy: the build writes build/ and egg-info beside it
    shutil.copytree(ROOT / "tensorvcs", src / "tensorvcs",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))  # fmt: skip
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false"}
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist"), str(src)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    (wheel,) = (tmp_path / "dist").glob("tensorvcs-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tensorvcs/accel.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd"))], names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    check = (
        "import sys\n"
        # the suite's editable install maps tensorvcs to the checkout ahead of sys.path
        "sys.meta_path[:] = [f for f in sys.meta_path\n"
        "                    if not getattr(f, '__module__', '').startswith('__editable__')]\n"
        "import torch, tensorvcs as tv\n"
        "assert tv.__file__.startswith(sys.argv[2]), tv.__file__\n"
        "from tensorvcs import accel\n"
        "assert accel.native is None, accel.native\n"
        "r = tv.Repo.init(sys.argv[1])\n"
        "s = {'w': torch.randn(300_000)}\n"
        "c = r.commit(s, 'one')\n"
        "assert torch.equal(r.checkout(c.id)['w'], s['w'])\n"
        "print(accel.describe())\n"
    )
    # TVCS_NATIVE=0 (the suite's numpy rerun) would make "off" the answer, not "not built"
    env = {k: v for k, v in os.environ.items() if k not in ("CC", "LDSHARED", "TVCS_NATIVE")}
    env["PYTHONPATH"] = str(site)
    p = subprocess.run([sys.executable, "-c", check, str(tmp_path / "r"), str(site)], env=env,
                       cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "native loops: not built (numpy fallback)"
    assert tv  # the suite's own import is the editable one
