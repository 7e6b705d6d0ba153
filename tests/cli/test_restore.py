"""`tvcs restore PATH... [--source REV]` (issue 12 item 4): checkpoint files written back as a
commit holds them; HEAD and the branch stay, other files are untouched, nothing is deleted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from .clihelp import Tvcs, assert_same, sha256
from .test_status import status, statuses

TVCS = Path(sys.executable).parent / "tvcs"


def make_tree(root: Path, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    torch.save({"w": torch.randn(3, 4, generator=g), "step": seed}, root / "a.pt")
    (root / "hf").mkdir(exist_ok=True)
    save_file({"x": torch.randn(5, generator=g)}, str(root / "hf" / "model.safetensors"))
    (root / "hf" / "config.json").write_text(f'{{"seed": {seed}}}')


def head(tvcs: Tvcs) -> str:
    return str(tvcs.json("log")["commits"][0]["id"])


def test_restore_modified_and_deleted_files(work: Path, tvcs: Tvcs) -> None:
    make_tree(work, 1)
    tvcs("commit", "a.pt", "hf", "-m", "one")
    one = {p: sha256(work / p) for p in ("hf/model.safetensors", "hf/config.json")}
    a_one = torch.load(work / "a.pt")
    tip = head(tvcs)
    (work / "a.pt").unlink()
    (work / "hf" / "model.safetensors").write_bytes(b"garbage")
    (work / "hf" / "config.json").write_text('{"seed": 99}')
    (work / "notes.txt").write_text("not a checkpoint file")
    assert statuses(status(tvcs)) == {
        "a.pt": "deleted",
        "hf/model.safetensors": "modified",
        "hf/config.json": "modified",
    }

    res = tvcs("restore", "a.pt", "hf/*.safetensors")
    assert res.stdout.splitlines()[-1] == f"restored 2 file(s) from {tip[:12]}"
    assert sha256(work / "hf" / "model.safetensors") == one["hf/model.safetensors"]
    assert_same(torch.load(work / "a.pt"), a_one)
    assert (work / "hf" / "config.json").read_text() == '{"seed": 99}'  # not named: untouched
    assert statuses(status(tvcs)) == {
        "a.pt": "unchanged",
        "hf/model.safetensors": "unchanged",
        "hf/config.json": "modified",
    }

    doc = tvcs.json("restore", "hf")  # a folder
    assert doc["id"] == tip
    assert {f["path"]: f["status"] for f in doc["files"]} == {
        "hf/model.safetensors": "unchanged",
        "hf/config.json": "written",
    }
    assert sha256(work / "hf" / "config.json") == one["hf/config.json"]
    assert (work / "notes.txt").read_text() == "not a checkpoint file"  # never deleted
    assert head(tvcs) == tip and status(tvcs)["branch"] == "main"
    assert set(statuses(status(tvcs)).values()) == {"unchanged"}


def test_restore_source_keeps_head(work: Path, tvcs: Tvcs) -> None:
    make_tree(work, 1)
    tvcs("commit", "a.pt", "hf", "-m", "one")
    first = sha256(work / "hf" / "model.safetensors")
    a_one = torch.load(work / "a.pt")
    make_tree(work, 2)
    tvcs("commit", "a.pt", "hf", "-m", "two")
    tip = head(tvcs)
    second = sha256(work / "hf" / "config.json")
    res = tvcs("restore", "--source", "HEAD~1", "hf/model.safetensors", "a.pt")
    assert res.stdout.splitlines()[-1].startswith("restored 2 file(s) from ")
    assert sha256(work / "hf" / "model.safetensors") == first
    assert_same(torch.load(work / "a.pt"), a_one)
    assert sha256(work / "hf" / "config.json") == second
    assert head(tvcs) == tip  # neither HEAD nor the branch moved
    doc = status(tvcs)
    assert statuses(doc) == {
        "a.pt": "modified",
        "hf/model.safetensors": "modified",
        "hf/config.json": "unchanged",
    }


def test_restore_refuses_unknown_paths_and_writes_nothing(work: Path, tvcs: Tvcs) -> None:
    make_tree(work, 1)
    tvcs("commit", "a.pt", "-m", "one")  # hf/ is not committed
    (work / "a.pt").unlink()
    before = sha256(work / "hf" / "model.safetensors")
    res = tvcs("restore", "a.pt", "hf/model.safetensors", code=4)
    assert res.stderr.strip().splitlines() == [
        f"tvcs: error: hf/model.safetensors: not recorded in commit {head(tvcs)[:12]} (HEAD)"
    ]
    assert not (work / "a.pt").exists()  # nothing written
    res = tvcs("restore", "*.safetensors", code=4)
    assert res.stderr.strip() == (
        f"tvcs: error: *.safetensors: matches no file recorded in commit {head(tvcs)[:12]} (HEAD)"
    )
    assert tvcs("restore", "a.pt", "--source", "nope", code=4).stderr.startswith("tvcs: error: ")
    assert "Traceback" not in tvcs("restore", code=2).stderr  # PATH is required
    assert sha256(work / "hf" / "model.safetensors") == before  # not in the commit: untouched
    assert not (work / "a.pt").exists()


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(damage=st.lists(st.sampled_from(["delete", "garble", "keep"]), min_size=3, max_size=3))
def test_restore_any_damage(work: Path, tvcs: Tvcs, damage: list[str]) -> None:
    names = ["s0.safetensors", "s1.safetensors", "s2.safetensors"]
    if not (work / names[0]).exists() or tvcs.json("status")["head"] is None:
        for i, n in enumerate(names):
            save_file({"t": torch.full((7,), float(i))}, str(work / n))
        tvcs("commit", *names, "-m", "base")
    want = {n: sha256(work / n) if (work / n).exists() else None for n in names}
    for n, d in zip(names, damage, strict=True):
        if d == "delete":
            (work / n).unlink(missing_ok=True)
        elif d == "garble":
            (work / n).write_bytes(b"x" * 10)
    tvcs("restore", "s*.safetensors")
    for n in names:
        if want[n] is not None:
            assert sha256(work / n) == want[n]
    assert set(statuses(status(tvcs)).values()) == {"unchanged"}


def test_restore_subprocess(tmp_path: Path) -> None:
    cmd = [str(TVCS)] if TVCS.exists() else [sys.executable, "-m", "tensorvcs.cli"]

    def run(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([*cmd, *args], cwd=tmp_path, text=True, capture_output=True, timeout=120)
        assert p.returncode == code, p.stderr
        return p

    run("init")
    make_tree(tmp_path, 3)
    want = sha256(tmp_path / "hf" / "model.safetensors")
    run("commit", "hf", "-m", "one")
    (tmp_path / "hf" / "model.safetensors").unlink()
    out = run("restore", "hf/model.safetensors").stdout
    assert out.splitlines()[-1].startswith("restored 1 file(s) from ")
    assert sha256(tmp_path / "hf" / "model.safetensors") == want
    err = run("restore", "missing.pt", code=4).stderr
    assert err.startswith("tvcs: error: missing.pt: not recorded in commit ") and "Trace" not in err
