"""User errors: one line `tvcs: error: ...` on stderr, the documented exit code, no traceback
(unless --debug); bugs: one line, a hint, exit 1."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch

from .clihelp import Tvcs


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("tvcs: error: "), err
    assert "Traceback" not in err
    return err


def test_no_repo(tmp_path: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TVCS_REPO", raising=False)
    for args in (["log"], ["commit", "x", "-m", "m"], ["ls"], ["gc"], ["fsck"], ["du"]):
        err = one_line(tvcs(*args, code=3).stderr)
        assert "not inside a tensorvcs repository" in err
    assert "not a tensorvcs repository" in tvcs("--repo", tmp_path / "nope", "log", code=3).stderr


def test_revisions_and_files(work: Path, tvcs: Tvcs) -> None:
    one_line(tvcs("show", code=4).stderr)  # HEAD is unborn
    torch.save({"w": torch.ones(2)}, work / "a.pt")
    tvcs("commit", "a.pt", "-m", "x")
    for args in (
        ["show", "nope"],
        ["log", "HEAD~3"],
        ["checkout", "v9"],
        ["diff", "x", "HEAD"],
        ["ls", "abcd1234"],
    ):
        assert "nope" in args or "revision" in one_line(tvcs(*args, code=4).stderr)
    err = one_line(tvcs("commit", "missing.pt", "-m", "x", code=4).stderr)
    assert "missing.pt: no such file or directory" in err
    one_line(tvcs("checkout", "HEAD", "other.pt", code=4).stderr)


def test_corrupt_inputs(work: Path, tvcs: Tvcs) -> None:
    torch.save({"w": torch.randn(100, 100)}, work / "t.pt")
    data = (work / "t.pt").read_bytes()
    (work / "trunc.pt").write_bytes(data[: len(data) // 2])
    err = one_line(tvcs("commit", "trunc.pt", "-m", "x", code=11).stderr)
    assert "trunc.pt" in err
    (work / "bad.safetensors").write_bytes(struct.pack("<Q", 10**9) + b"{}")
    err = one_line(tvcs("commit", "bad.safetensors", "-m", "x", code=11).stderr)
    assert "bad.safetensors: not a safetensors file" in err
    (work / "bad2.safetensors").write_bytes(struct.pack("<Q", 5) + b"{nope")
    assert (
        "not a valid safetensors header"
        in tvcs("commit", "bad2.safetensors", "-m", "x", code=11).stderr
    )
    assert tvcs.json("log")["commits"] == []  # nothing was committed by the failures


def test_usage_errors(work: Path, tvcs: Tvcs) -> None:
    err = one_line(tvcs("commit", "a.pt", code=2).stderr)
    assert "Missing option '-m'" in err and "tvcs commit --help" in err
    one_line(tvcs("frobnicate", code=2).stderr)
    one_line(tvcs("commit", "-m", "x", code=2).stderr)  # no paths
    (work / "f").write_bytes(b"1")
    assert "--metric" in one_line(tvcs("commit", "f", "-m", "x", "--metric", "loss", code=2).stderr)
    one_line(tvcs("commit", "f", "-m", "x", "--metric", "loss=abc", code=2).stderr)
    one_line(tvcs("commit", "f", "-m", "x", "--branch", "bad..name", code=2).stderr)
    one_line(tvcs("checkout", "HEAD", "--format", "onnx", code=2).stderr)
    one_line(tvcs("log", "-n", "-1", code=2).stderr)


def test_unexpected_exception(work: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorvcs.repo

    def boom(*a: object, **k: object) -> None:
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(tensorvcs.repo.Repo, "log", boom)
    res = tvcs("log", code=1)
    err = one_line(res.stderr)
    assert "internal error: ZeroDivisionError: simulated bug" in err
    assert "(run with --debug for the traceback)" in err
    dbg = tvcs("--debug", "log", code=1).stderr
    assert "Traceback" in dbg and dbg.rstrip().endswith("(run with --debug for the traceback)")
