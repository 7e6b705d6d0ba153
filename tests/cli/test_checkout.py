"""checkout: overwrite protection, -o, --format, --include/--exclude, commits without files."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tensorvcs import Repo

from .clihelp import Tvcs, assert_same, sha256


def two_versions(work: Path, tvcs: Tvcs) -> tuple[dict, dict]:
    v1 = {"enc": {"w": torch.randn(40, 40), "b": torch.zeros(40)}, "head": torch.ones(3), "n": 1}
    torch.save(v1, work / "m.pt")
    save_file({"x": torch.arange(10.0)}, str(work / "m.safetensors"))
    tvcs("commit", "m.pt", "m.safetensors", "-m", "v1")
    v2 = {"enc": {"w": v1["enc"]["w"] * 2, "b": v1["enc"]["b"]}, "head": torch.ones(3), "n": 2}
    torch.save(v2, work / "m.pt")
    save_file({"x": torch.arange(10.0) + 1}, str(work / "m.safetensors"))
    tvcs("commit", "m.pt", "m.safetensors", "-m", "v2")
    return v1, v2


def test_overwrite_protection(work: Path, tvcs: Tvcs) -> None:
    v1, v2 = two_versions(work, tvcs)
    # the files on disk are committed versions: safe to replace
    tvcs("checkout", "HEAD~1")
    assert_same(torch.load(work / "m.pt", weights_only=True), v1)
    # a file checkout wrote (torch.save bytes, not the committed bytes) is also safe
    tvcs("checkout", "HEAD")
    assert_same(torch.load(work / "m.pt", weights_only=True), v2)
    again = tvcs("checkout", "HEAD").stdout  # both already what HEAD would write
    assert "unchanged m.safetensors" in again and "unchanged m.pt" in again
    # a local change that no commit holds: refused, nothing written
    torch.save({"mine": torch.zeros(1)}, work / "m.pt")
    mine = sha256(work / "m.pt")
    before_st = sha256(work / "m.safetensors")
    err = tvcs("checkout", "HEAD~1", code=12).stderr
    assert err.startswith("tvcs: error: checkout would overwrite 1 file(s)") and "m.pt" in err
    assert "--force" in err
    assert sha256(work / "m.pt") == mine and sha256(work / "m.safetensors") == before_st
    tvcs("checkout", "HEAD~1", "-f")
    assert_same(torch.load(work / "m.pt", weights_only=True), v1)
    # a path: only that file
    (work / "m.pt").unlink()
    out = tvcs("checkout", "HEAD", "m.pt").stdout
    assert "m.pt" in out and "m.safetensors" not in out
    tvcs("checkout", "HEAD", "nope.pt", code=4)
    # a directory where a file should go
    (work / "m.pt").unlink()
    (work / "m.pt").mkdir()
    tvcs("checkout", "HEAD", "m.pt", code=2)


def test_output_and_format(work: Path, tvcs: Tvcs) -> None:
    v1, v2 = two_versions(work, tvcs)
    tvcs("checkout", "HEAD~1", "m.pt", "-o", "one.pt")
    assert_same(torch.load(work / "one.pt", weights_only=True), v1)
    doc = tvcs.json("checkout", "HEAD", "-o", "export")  # a folder: recorded paths below it
    assert {Path(f["dest"]).name for f in doc["files"]} == {"m.pt", "m.safetensors"}
    assert sha256(work / "export" / "m.safetensors") == sha256(work / "m.safetensors")
    # pt -> safetensors: nested keys joined with '.', non-tensor values left out (noted)
    res = tvcs("checkout", "HEAD", "m.pt", "--format", "safetensors", "-o", "conv.safetensors")
    assert "left out 1 non-tensor value(s)" in res.stderr
    sd = load_file(str(work / "conv.safetensors"))
    assert list(sd) == ["enc.w", "enc.b", "head"] and torch.equal(sd["enc.w"], v2["enc"]["w"])
    # converting in place changes the suffix
    tvcs("checkout", "HEAD", "m.safetensors", "--format", "pt")
    assert torch.equal(torch.load(work / "m.pt", weights_only=True)["x"], torch.arange(10.0) + 1)


def test_include_exclude(work: Path, tvcs: Tvcs) -> None:
    two_versions(work, tvcs)
    tvcs("checkout", "HEAD", "-o", "part/", "--include", "m.pt/enc/*", "--exclude", "*/b")
    part = torch.load(work / "part" / "m.pt", weights_only=True)
    assert list(part) == ["enc"] and list(part["enc"]) == ["w"]
    assert not (work / "part" / "m.safetensors").exists()  # nothing of it matched
    # a partial safetensors file is rewritten with its own header, metadata kept
    tvcs("checkout", "HEAD", "-o", "p2/", "--include", "m.safetensors/*")
    assert list(load_file(str(work / "p2" / "m.safetensors"))) == ["x"]
    tvcs("checkout", "HEAD", "--include", "nothing*", code=4)
    # the Python API sees the same key paths
    with Repo.open(work) as r:
        st = r.checkout("HEAD", include=["m.pt/enc/*"], exclude=["*/b"])
    assert list(st) == ["m.pt"] and list(st["m.pt"]["enc"]) == ["w"]


def test_commit_without_files(work: Path, tvcs: Tvcs) -> None:
    with Repo.open(work) as r:
        state = {"model": {"w": torch.randn(4, 4)}, "epoch": 3}
        r.commit(state, "from the API")
    err = tvcs("checkout", "HEAD", code=2).stderr
    assert "records no files" in err and "-o" in err
    tvcs("checkout", "HEAD", "-o", "state.pt")
    assert_same(torch.load(work / "state.pt", weights_only=True), state)
    tvcs("checkout", "HEAD", "-o", "state.safetensors")
    assert torch.equal(load_file(str(work / "state.safetensors"))["w"], state["model"]["w"])


@pytest.mark.parametrize(
    "dtype",
    [torch.bfloat16, torch.float16, torch.int64, torch.bool, torch.float8_e4m3fn, torch.uint8],
)
def test_dtypes_convert(work: Path, tvcs: Tvcs, dtype: torch.dtype) -> None:
    t = torch.randint(0, 2, (33, 7)).to(dtype)
    save_file({"t": t}, str(work / "d.safetensors"))
    before = sha256(work / "d.safetensors")
    tvcs("commit", "d.safetensors", "-m", str(dtype))
    tvcs("checkout", "HEAD", "--format", "pt", "-o", "d.pt")
    back = torch.load(work / "d.pt", weights_only=True)["t"]
    assert back.dtype == dtype and torch.equal(back.view(torch.uint8), t.view(torch.uint8))
    tvcs("checkout", "HEAD", "-o", "d2.safetensors")
    assert sha256(work / "d2.safetensors") == before


def test_pt_streamed(work: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Large states are written one tensor at a time (io/torch_zip.py): same result, and no
    scratch file left (tests/test_torch_zip.py compares the files record by record)."""
    import numpy as np

    from tensorvcs.io import exporter

    monkeypatch.setattr(exporter, "STREAM_PT_BYTES", 0)
    w = torch.randn(30, 30)
    state = {
        "p": torch.nn.Parameter(torch.randn(5)),
        "tied": [w, w],
        "empty": torch.zeros(0, 3),
        "arr": np.arange(6, dtype=np.int16).reshape(2, 3),
        "bf": torch.randn(7).to(torch.bfloat16),
        "i8": torch.arange(3, dtype=torch.int8),  # odd sizes: offsets get aligned
        "meta": {"epoch": 4},
    }
    torch.save(state, work / "s.pt")
    tvcs("commit", "s.pt", "-m", "x", code=7)  # numpy arrays need the full unpickler
    tvcs("commit", "s.pt", "-m", "x", "--unsafe-pickle")
    tvcs("checkout", "HEAD", "-o", "back.pt")
    back = torch.load(work / "back.pt", weights_only=False)
    assert_same(state, back)
    assert not [p for p in work.iterdir() if p.name.endswith(".tensors")]  # scratch removed
    tvcs("checkout", "HEAD", "-o", "part.pt", "--include", "s.pt/meta/*")
    assert torch.load(work / "part.pt", weights_only=True) == {"meta": {"epoch": 4}}
