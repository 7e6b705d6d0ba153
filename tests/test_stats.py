"""The statistics recorded at commit time (issue 13 item 1), against an independent float64
computation: numpy arrays of the committed tensors' elements, summed exactly (math.fsum).

What each dtype records (docs/format.md, the tensor entry's ``stats``):
- float dtypes (float64/32/16, bfloat16, the float8 kinds): counts, NaN, Inf; min/max exact;
  mean and L2 norm over the finite elements, within 1e-12 relative for float64 and 2e-6 for
  the others (float32 partial sums of at most 1024 elements, combined in float64);
- integer dtypes: nan = inf = 0, min/max as exact Python ints, mean and norm in float64;
- bool: min/max 0/1, mean the fraction of true elements;
- the change against the parent tensor (the commit's ``changes``): the float64 norm of the
  float64 difference, 1e-12 relative, named only when both tensors are entirely finite.

Tensors span several chunks (repositories with 4 KiB and 64 KiB chunks), or are packed
(under the pack threshold), so the per-chunk partial sums are merged.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli.clihelp import Tvcs
from click.testing import CliRunner
from conftest import random_tensor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.errors import CorruptObjectError
from tensorvcs.format.manifest import Manifest
from tensorvcs.format.stats import TensorStats
from tensorvcs.state.writer import TensorWriter

FLOATS = [
    torch.float64,
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float8_e4m3fn,
    torch.float8_e4m3fnuz,
    torch.float8_e5m2,
    torch.float8_e5m2fnuz,
    torch.float8_e8m0fnu,
]
INTS = [torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8,
        torch.uint16, torch.uint32, torch.uint64]
SPECIALS = [math.nan, math.inf, -math.inf, 0.0, -0.0]
CHUNKS = {"small": (4096, 1024), "large": (65536, 4096)}  # (chunk_size, pack_threshold)
EXAMPLES = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# -- the independent computation -----------------------------------------------------------------
def elements(t: torch.Tensor) -> np.ndarray:
    """The tensor's elements as a 1-D numpy array: float64 for float dtypes, the integer
    dtype itself for integers, uint8 for bool."""
    x = t.detach().reshape(-1)
    if t.dtype.is_floating_point:
        return x.to(torch.float64).numpy()
    if t.dtype == torch.bool:
        return x.to(torch.uint8).numpy()
    return x.numpy()


def reference(t: torch.Tensor) -> dict[str, Any]:
    v = elements(t)
    if t.dtype.is_floating_point:
        nan, inf = int(np.isnan(v).sum()), int(np.isinf(v).sum())
        fin = v[np.isfinite(v)]
    else:
        nan = inf = 0
        fin = v
    vals = [float(a) for a in fin]  # float64 values (integers rounded as the writer does)
    ref: dict[str, Any] = {"numel": t.numel(), "nan": nan, "inf": inf,
                           "min": None, "max": None, "mean": None, "norm": None}
    if len(fin):
        if t.dtype.is_floating_point:
            ref["min"], ref["max"] = float(fin.min()), float(fin.max())
        else:
            ref["min"], ref["max"] = int(fin.min()), int(fin.max())
        total, absolute, sumsq = (_fsum(vals), _fsum(abs(a) for a in vals),
                                  _fsum(a * a for a in vals))
        # a sum that overflows float64 is absent (docs/format.md)
        ref["mean"] = total / len(vals) if math.isfinite(total) else None
        ref["absmean"] = absolute / len(vals)
        ref["norm"] = math.sqrt(sumsq) if math.isfinite(sumsq) else None
    elif not t.numel():
        ref["norm"] = 0.0  # an empty sum (docs/format.md)
    return ref


def _fsum(xs: Any) -> float:
    try:
        return math.fsum(xs)
    except OverflowError:  # an intermediate sum beyond float64
        return math.inf


def tolerance(dtype: torch.dtype) -> float:
    """Relative precision of mean and norm (docs/format.md: float32 partial sums of at most
    1024 elements, float64 for float64 and integer tensors)."""
    return 2e-6 if dtype.is_floating_point and dtype != torch.float64 else 1e-12


def check(stats: TensorStats | None, t: torch.Tensor) -> None:
    assert stats is not None
    ref = reference(t)
    assert (stats.numel, stats.nan, stats.inf) == (ref["numel"], ref["nan"], ref["inf"])
    assert stats.min == ref["min"] and stats.max == ref["max"]
    if ref["min"] is not None and not t.dtype.is_floating_point:
        assert type(stats.min) is int and type(stats.max) is int  # exact integers
    tol = tolerance(t.dtype)
    if ref["mean"] is None:
        assert stats.mean is None
    else:
        assert stats.mean is not None
        assert abs(stats.mean - ref["mean"]) <= tol * ref["absmean"]
    if ref["norm"] is None:
        assert stats.norm is None
    else:
        assert stats.norm == pytest.approx(ref["norm"], rel=tol, abs=1e-300)


def change(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖b − a‖ with the difference and the sum in float64, exactly summed."""
    d = elements(b).astype(np.float64) - elements(a).astype(np.float64)
    return math.sqrt(_fsum(float(x) * float(x) for x in d))


# -- value generators ----------------------------------------------------------------------------
def _shape(numel: int, split: int) -> tuple[int, ...]:
    if split and numel % split == 0:
        return (split, numel // split)
    return (numel,)


@st.composite
def tensors(draw: Any, dtypes: list[torch.dtype]) -> torch.Tensor:
    """A tensor of one of ``dtypes``: every bit pattern (uniformly random bytes), or model-like
    values (normal, scaled, shifted) with NaN/Inf/±0 dropped in at drawn positions."""
    dtype = draw(st.sampled_from(dtypes))
    numel = draw(st.integers(0, 9000) | st.sampled_from([0, 1, 1023, 1024, 1025, 2048]))
    shape = _shape(numel, draw(st.sampled_from([0, 2, 3, 7])))
    seed = draw(st.integers(0, 2**31 - 1))
    if dtype == torch.bool:
        return random_tensor(torch.uint8, shape, seed) > draw(st.integers(0, 255))
    if not dtype.is_floating_point or (dtype != torch.float64 and draw(st.booleans())):
        return random_tensor(dtype, shape, seed)
    g = torch.Generator().manual_seed(seed)
    scale = 10.0 ** draw(st.integers(-30, 30)) if dtype != torch.float64 else 10.0 ** draw(
        st.integers(-150, 150))
    x = torch.randn(numel, generator=g, dtype=torch.float64) * scale + draw(
        st.sampled_from([0.0, 1.0, -3.5]))
    if numel:
        for _ in range(draw(st.integers(0, 4))):
            x[draw(st.integers(0, numel - 1))] = draw(st.sampled_from(SPECIALS))
    return x.to(dtype).reshape(shape)


# -- the statistics of one state -----------------------------------------------------------------
def _repos(tmp: str) -> dict[str, tv.Repo]:
    return {
        k: tv.Repo.init(Path(tmp) / k, chunk_size=cs, pack_threshold=pt)
        for k, (cs, pt) in CHUNKS.items()
    }


@pytest.mark.parametrize("kinds", ["float", "int"])
def test_recorded_statistics_match_float64(kinds: str) -> None:
    dtypes = FLOATS if kinds == "float" else [*INTS, torch.bool]
    with tempfile.TemporaryDirectory() as tmp:
        repos = _repos(tmp)

        @EXAMPLES
        @given(t=tensors(dtypes), which=st.sampled_from(sorted(CHUNKS)))
        def run(t: torch.Tensor, which: str) -> None:
            repo = repos[which]
            c = repo.commit({"t": t, "other": {"s": torch.tensor(2.5)}}, "one tensor")
            info = {i.key: i for i in repo.tensors(c.id)}
            assert info["t"].dtype == str(t.dtype).removeprefix("torch.")
            check(info["t"].stats, t)
            check(info["other/s"].stats, torch.tensor(2.5))

        run()
        for r in repos.values():
            r.close()


def test_every_float_dtype_and_the_documented_edges(small_repo: tv.Repo) -> None:
    """Fixed cases, each dtype: several chunks, NaN and Inf excluded from the values, all-NaN,
    empty, scalar, non-contiguous views; bool and ints as documented."""
    g = torch.Generator().manual_seed(5)
    state: dict[str, Any] = {}
    for d in FLOATS:
        name = str(d).removeprefix("torch.")
        base = torch.randn(3001, generator=g, dtype=torch.float64).to(d)  # > 1 chunk each
        base[17] = math.nan
        base[2000] = math.inf  # NaN where the kind has no Inf
        state[name] = {
            "big": base,
            "allnan": torch.full((9,), math.nan, dtype=torch.float64).to(d),
            "empty": torch.empty(0, 4, dtype=d),
            "scalar": torch.tensor(1.5, dtype=torch.float64).to(d),
            "view": torch.randn(70, 90, generator=g).to(d).t()[::3, 1::2],
        }
    state["int"] = {"i": torch.tensor([[-7, 3], [2**62, 0]], dtype=torch.int64),
                    "u": torch.tensor([0, 255, 9], dtype=torch.uint8),
                    "b": torch.tensor([True, False, True, True])}
    c = small_repo.commit(state, "edges")
    got = {i.key: i.stats for i in small_repo.tensors(c.id)}
    assert len(got) == 5 * len(FLOATS) + 3
    for key, s in got.items():
        node: Any = state
        for part in key.split("/"):
            node = node[part]
        assert not node.is_contiguous() or not key.endswith("view")
        check(s, node)
    f32 = got["float32/big"]
    assert f32 is not None and (f32.nan, f32.inf, f32.numel) == (1, 1, 3001)
    for d in FLOATS:
        name = str(d).removeprefix("torch.")
        s = got[f"{name}/allnan"]
        assert s == TensorStats(numel=9, nan=9)  # no finite values: no min/max/mean/norm
        assert got[f"{name}/empty"] == TensorStats(numel=0, norm=0.0)
    assert got["int/i"] == TensorStats(numel=4, min=-7, max=2**62, mean=(2**62 - 4) / 4,
                                       norm=float(2**62))
    assert got["int/b"] == TensorStats(numel=4, min=0, max=1, mean=0.75, norm=math.sqrt(3))


def test_extreme_magnitudes(small_repo: tv.Repo) -> None:
    """Values whose float32 squares overflow (min/max still recorded) or underflow (Adam's
    second moments: the norm stays accurate), and float64 sums that overflow (absent)."""
    state = {
        "huge32": torch.full((3000,), 1e20),
        "tiny32": torch.full((3000,), 1e-24),
        "tinybf16": torch.full((3000,), 3e-22, dtype=torch.bfloat16),
        "mixed": torch.cat([torch.full((1500,), 1e-25), torch.full((1500,), 2.0)]),
        "over64": torch.full((600,), 1e300, dtype=torch.float64),
    }
    c = small_repo.commit(state, "magnitudes")
    got = {i.key: i.stats for i in small_repo.tensors(c.id)}
    for k in ("huge32", "tiny32", "tinybf16", "mixed"):
        check(got[k], state[k])
    s = got["over64"]
    assert s is not None and s.min == s.max == 1e300 and s.mean == 1e300
    assert s.norm is None  # 600 * 1e600 overflows float64: absent, as documented


# -- the change against the parent ----------------------------------------------------------------
@st.composite
def pairs(draw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(parent, child): the child changes some elements of the parent (maybe none), or has
    another dtype or shape."""
    a = draw(tensors([torch.float32, torch.bfloat16, torch.float16, torch.float64,
                      torch.int32, torch.uint8]))
    how = draw(st.sampled_from(["some", "some", "none", "reshape", "dtype"]))
    if how == "reshape" and a.numel():
        return a, a.reshape(-1, 1)
    if how == "dtype":
        return a, a.to(torch.float64 if a.dtype != torch.float64 else torch.float32)
    b = a.clone()
    flat = b.view(-1)
    if how == "some" and a.numel():
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
        k = draw(st.integers(1, a.numel()))
        idx = torch.randint(0, a.numel(), (k,), generator=g)
        new = random_tensor(a.dtype, (k,), draw(st.integers(0, 99)))
        if a.dtype.is_floating_point and draw(st.booleans()):
            new = (flat[idx].double() + torch.randn(k, generator=g, dtype=torch.float64)).to(
                a.dtype)
        flat[idx] = new
    return a, b


def _finite(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point or bool(torch.isfinite(t.double()).all())


def test_change_norm_against_the_parent() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        repos = _repos(tmp)

        @EXAMPLES
        @given(ab=pairs(), which=st.sampled_from(sorted(CHUNKS)))
        def run(ab: tuple[torch.Tensor, torch.Tensor], which: str) -> None:
            a, b = ab
            repo = repos[which]
            repo.commit({"x": torch.zeros(0)}, "reset: no tensor at key path t")
            repo.commit({"t": a}, "parent")
            c = repo.commit({"t": b}, "child")
            got = {i.key: i.stats for i in repo.tensors(c.id)}["t"]
            check(got, b)
            assert got is not None
            paired = a.dtype == b.dtype and a.shape == b.shape
            same_bytes = paired and torch.equal(
                a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(
                    torch.uint8))
            tol = tolerance(b.dtype)
            if not paired or not (_finite(a) and _finite(b)):
                assert "t" not in c.changes
                if same_bytes:  # unchanged: 0, whatever it holds
                    assert got.delta_norm == 0.0
                else:
                    assert got.delta_norm is None
                return
            want = change(a, b)
            if not math.isfinite(want):  # overflows float64 (1e191 squared): absent
                assert "t" not in c.changes and got.delta_norm is None
            elif same_bytes:
                assert "t" not in c.changes and got.delta_norm == 0.0
            elif want == 0:  # other bytes, equal values (-0.0 for 0.0): change 0, not named
                assert "t" not in c.changes and got.delta_norm is None
            else:
                assert c.changes["t"] == pytest.approx(want, rel=tol)
                assert got.delta_norm == c.changes["t"]
                assert repo.get_commit(c.id).changes == {"t": c.changes["t"]}

        run()
        for r in repos.values():
            r.close()


def test_change_of_a_chunked_tensor_with_the_delta_path(small_repo: tv.Repo) -> None:
    """A training-like series: every commit changes a few elements of a 12-chunk tensor (the
    delta path pairs its chunks) and all of a packed one; each change is exact."""
    g = torch.Generator().manual_seed(11)
    w = torch.randn(12 * 1024, generator=g)
    bias = torch.randn(64, generator=g)
    prev = None
    for i in range(5):
        w2, b2 = w.clone(), bias + 1e-3 * torch.randn(64, generator=g)
        w2[i * 1500 : i * 1500 + 7] += 0.25
        c = small_repo.commit({"w": w2, "bias": b2}, f"step {i}")
        if prev is not None:
            assert c.changes["w"] == pytest.approx(change(prev[0], w2), rel=2e-6)
            assert c.changes["bias"] == pytest.approx(change(prev[1], b2), rel=2e-6)
        prev, w, bias = (w2, b2), w2, b2
        info = {t.key: t.stats for t in small_repo.tensors(c.id)}
        check(info["w"], w2)


# -- manifests written without statistics --------------------------------------------------------
def _old_repo(path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[tv.Repo, list[Any]]:
    """A repository whose commits were written as before statistics existed: no ``stats``
    field in any manifest entry, no ``changes`` in any commit."""
    monkeypatch.setattr(TensorWriter, "record_stats", False)
    repo = tv.Repo.init(path, chunk_size=4096, pack_threshold=1024)
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3000, generator=g)
    commits = []
    for i in range(3):
        w = w + 0.01 * torch.randn(3000, generator=g)
        nan = w.clone()
        nan[5] = math.nan
        commits.append(repo.commit({"model": {"w": nan if i == 1 else w, "b": torch.ones(3) * i},
                                    "step": i},
                                   f"old {i}", step=i, metrics={"loss": 1.0 / (i + 1)}))
    monkeypatch.undo()
    return repo, commits


def test_manifest_without_stats_reads_back_with_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, commits = _old_repo(tmp_path / "old", monkeypatch)
    for c in commits:
        raw = repo.objects.read_bytes(c.manifest)
        assert b'"stats"' not in raw and b'"changes"' not in repo.objects.read_bytes(c.id)
        m = Manifest.from_bytes(raw, c.manifest)
        assert [e.stats for e in m.tensors] == [None, None]
        assert [t.stats for t in repo.tensors(c.id)] == [None, None]
    # a new commit on top records statistics, its change measured against the old chunks
    w = repo.checkout()["model"]["w"]  # HEAD, commits[2]: all finite
    w2 = w.clone()
    w2[100] += 1.0
    c = repo.commit({"model": {"w": w2, "b": torch.ones(3)}, "step": 3}, "new")
    info = {t.key: t.stats for t in repo.tensors(c.id)}
    check(info["model/w"], w2)
    assert info["model/w"] is not None
    assert info["model/w"].delta_norm == pytest.approx(change(w, w2), rel=2e-6)
    repo.close()


def test_report_of_a_repository_without_stats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tvcs report measures such commits from their tensors (the real script, a subprocess;
    and in-process): the NaN is still found."""
    repo, commits = _old_repo(tmp_path / "old", monkeypatch)
    repo.close()
    tvcs_bin = Path(sys.executable).parent / "tvcs"
    env = {k: v for k, v in os.environ.items() if k not in ("TVCS_REPO", "TVCS_DEBUG")}
    p = subprocess.run(
        [str(tvcs_bin), "report", "-o", str(tmp_path / "run.html"), "--json"],
        cwd=tmp_path / "old", env=env, text=True, capture_output=True, timeout=300,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["stats_recorded_commits"] == 0 and doc["measured_commits"] == 3
    assert doc["nonfinite_commits"] == [commits[1].id]
    assert (tmp_path / "run.html").stat().st_size > 0
    monkeypatch.chdir(tmp_path / "old")
    res = Tvcs(CliRunner())("report", "-o", "again.html", "--json")
    assert json.loads(res.stdout)["nonfinite_commits"] == [commits[1].id]


def test_null_values_read_as_not_recorded(small_repo: tv.Repo) -> None:
    """docs/format.md: a value with none to record is left out by writers, and a reader
    accepts ``null`` for it, meaning the same; a string there is corruption."""
    c = small_repo.commit({"t": torch.full((4,), math.nan)}, "all NaN")
    raw = small_repo.objects.read_bytes(c.manifest)
    assert b'"stats":{"inf":0,"nan":4,"numel":4}' in raw or b'"nan":4' in raw
    nulls = raw.replace(b'"nan":4', b'"nan":4,"min":null,"max":null,"mean":null,"norm":null')
    assert nulls != raw
    m = Manifest.from_bytes(nulls, c.manifest)
    assert m.tensors[0].stats == TensorStats(numel=4, nan=4)
    bad = raw.replace(b'"nan":4', b'"nan":4,"min":"x"')
    with pytest.raises(CorruptObjectError, match="malformed stats: min 'x' is not a finite"):
        Manifest.from_bytes(bad, c.manifest)
