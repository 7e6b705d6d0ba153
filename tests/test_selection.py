"""Selections that match nothing are errors (SelectionError, a NotFoundError, exit 4) naming
the commit and the globs, in the Python API and the CLI; an exclude that leaves nothing is a
selection, not a mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import tensorvcs as tv
from tensorvcs.cli import cli
from tensorvcs.errors import SelectionError

STATE = {"model": {"w": torch.arange(6.0), "b": torch.zeros(2)}, "step": 7}


@pytest.fixture
def repo(tmp_path: Path) -> tv.Repo:
    r = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    r.commit(STATE, "one")
    return r


def test_checkout_include_matching_nothing_is_an_error(repo: tv.Repo) -> None:
    cid = repo.resolve("HEAD")
    with pytest.raises(SelectionError) as ei:
        repo.checkout("HEAD", include="nomatch/*")
    assert str(ei.value) == f"nothing in commit {cid[:12]} (HEAD) matches include 'nomatch/*'"
    assert isinstance(ei.value, tv.NotFoundError) and ei.value.exit_code == 4
    with pytest.raises(SelectionError, match=r"matches include 'nope', 'modl/\*'$"):
        repo.checkout("HEAD", include=["nope", "modl/*"], exclude="step")


def test_checkout_include_matching_something_still_works(repo: tv.Repo) -> None:
    out = repo.checkout("HEAD", include=["nomatch/*", "model/w"])
    assert list(out) == ["model"] and list(out["model"]) == ["w"]
    assert repo.checkout("HEAD", include="step") == {"step": 7}


def test_an_exclude_that_leaves_nothing_gives_an_empty_state(repo: tv.Repo) -> None:
    assert repo.checkout("HEAD", exclude="*") == {}
    assert repo.checkout("HEAD", include="model", exclude="model") == {}


def cli_run(*args: str, code: int) -> str:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    if code:
        assert len(lines) == 1 and lines[0].startswith("tvcs: error: "), res.stderr
        return lines[0][len("tvcs: error: ") :]
    return res.stdout


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TVCS_REPO", raising=False)
    cli_run("init", "--chunk-size", "64KiB", "--pack-threshold", "4KiB", code=0)
    torch.save({"enc": {"w": torch.ones(3)}, "epoch": 2}, tmp_path / "m.pt")
    cli_run("commit", "m.pt", "-m", "one", code=0)
    return tmp_path


def test_cli_checkout_include_matching_nothing(work: Path) -> None:
    with tv.Repo.open(work) as r:
        cid = r.resolve("HEAD")
    line = cli_run("checkout", "HEAD", "-o", "out.pt", "--include", "nomatch/*", code=4)
    assert line == f"nothing in commit {cid[:12]} (HEAD) matches --include 'nomatch/*'"
    assert not (work / "out.pt").exists()
    line = cli_run(
        "checkout", "HEAD", "m.pt", "--include", "enc/*", "--exclude", "x", code=4
    )  # the key paths of a file start with its path
    assert line == f"nothing in commit {cid[:12]} (HEAD) under 'm.pt' matches --include 'enc/*'"
    line = cli_run(
        "checkout", "HEAD", "-o", "o2.pt", "--include", "m.pt/*", "--exclude", "*", code=4
    )
    assert line == (
        f"nothing in commit {cid[:12]} (HEAD) is left by --include 'm.pt/*' --exclude '*'"
    )
    cli_run("checkout", "HEAD", "-o", "ok.pt", "--include", "m.pt/enc/*", code=0)
    ok = torch.load(work / "ok.pt")
    assert list(ok) == ["enc"] and torch.equal(ok["enc"]["w"], torch.ones(3))


def test_cli_checkout_of_a_commit_without_files_include_matching_nothing(work: Path) -> None:
    with tv.Repo.open(work) as r:
        c = r.commit(STATE, "api")
    line = cli_run("checkout", "HEAD", "-o", "s.pt", "--include", "nomatch", code=4)
    assert line == f"nothing in commit {c.id[:12]} (HEAD) matches --include 'nomatch'"
    assert not (work / "s.pt").exists()
    cli_run("checkout", "HEAD", "-o", "s.pt", "--include", "model/*", code=0)
    assert set(torch.load(work / "s.pt")["model"]) == {"w", "b"}
