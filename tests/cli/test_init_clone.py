"""Repo.init / open / clone refuse what they would silently get wrong: unknown keyword
arguments, storage options for a local path, a clone into a non-empty folder or into the
repository itself; Repo.init(exist_ok=True) reopens; the README's example runs twice."""

from __future__ import annotations

import os
import re
import runpy
import secrets
from pathlib import Path

import pytest
import torch

import tensorvcs as tv
from tensorvcs import remote as rm
from tensorvcs.errors import SelectionError

from .clihelp import Tvcs

STATE = {"model": {"w": torch.arange(12.0).reshape(3, 4)}, "step": 3}


def error_line(res: object) -> str:
    err = res.stderr  # type: ignore[attr-defined]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tvcs: error: ") and "Traceback" not in err, err
    return lines[0][len("tvcs: error: ") :]


# -- unknown keyword arguments (item 8) ------------------------------------------------------
def test_init_refuses_unknown_keyword_arguments(tmp_path: Path) -> None:
    with pytest.raises(TypeError) as ei:
        tv.Repo.init(tmp_path / "x", chunksize=8192, brnch="dev")
    assert str(ei.value) == (
        "Repo.init() got unexpected keyword argument(s) 'brnch', 'chunksize' (storage options "
        "apply only to a repository at a URL such as s3://bucket/prefix)"
    )
    assert not (tmp_path / "x").exists()


def test_open_refuses_storage_options_for_a_local_path(tmp_path: Path) -> None:
    tv.Repo.init(tmp_path).close()
    with pytest.raises(
        TypeError, match=r"Repo.open\(\) got unexpected keyword argument\(s\) 'anon'"
    ):
        tv.Repo.open(tmp_path, anon=True)


def test_url_init_refuses_options_its_store_does_not_take() -> None:
    url = f"memory://tvcs-test-init-kwargs-{secrets.token_hex(4)}"
    with pytest.raises(TypeError) as ei:
        tv.Repo.init(url, chunksize=8192)
    assert str(ei.value) == (
        "Repo.init() got unexpected keyword argument(s) 'chunksize' (not an option of "
        "Repo.init nor of the MemoryFileSystem storage of memory:// URLs)"
    )
    with pytest.raises(tv.RepoNotFoundError):
        tv.Repo.open(url)  # nothing was created
    with pytest.raises(TypeError, match="'endpoint'"):
        tv.Repo.open("s3://bucket/prefix", endpoint="http://x")


def test_clone_refuses_storage_options_for_a_local_path(tmp_path: Path) -> None:
    tv.Repo.init(tmp_path / "src").close()
    with pytest.raises(TypeError, match=r"^tensorvcs.clone\(\) got unexpected keyword argument"):
        tv.clone(str(tmp_path / "src"), tmp_path / "dst", anon=True)
    assert not (tmp_path / "dst").exists()


# -- Repo.init(exist_ok=True) (item 8) -------------------------------------------------------
def test_init_exist_ok_opens_the_existing_repository(tmp_path: Path) -> None:
    with tv.Repo.init(tmp_path, chunk_size=8192, pack_threshold=1024, branch="trunk") as r:
        c = r.commit(STATE, "one")
    with tv.Repo.init(tmp_path, exist_ok=True) as r:
        assert r.resolve("HEAD") == c.id and r.config.chunk_size == 8192
    with tv.Repo.init(tmp_path, chunk_size=8192, branch="trunk", exist_ok=True) as r:
        assert r.head() == ("trunk", c.id)
    with pytest.raises(tv.UsageError, match="already exists"):
        tv.Repo.init(tmp_path)  # without exist_ok, still refused


def test_init_exist_ok_new_repository(tmp_path: Path) -> None:
    with tv.Repo.init(tmp_path / "new", exist_ok=True, branch="dev") as r:
        assert r.head() == ("dev", None)


@pytest.mark.parametrize(
    "kw,problem",
    [
        ({"chunk_size": 4096}, "its chunk_size is 8192, not 4096"),
        ({"pack_threshold": 100}, "its pack_threshold is 1024, not 100"),
        ({"branch": "main"}, "HEAD is on branch 'trunk', not on 'main'"),
    ],
)
def test_init_exist_ok_refuses_contradicting_arguments(
    tmp_path: Path, kw: dict[str, object], problem: str
) -> None:
    tv.Repo.init(tmp_path, chunk_size=8192, pack_threshold=1024, branch="trunk").close()
    with pytest.raises(tv.UsageError) as ei:
        tv.Repo.init(tmp_path, exist_ok=True, **kw)  # type: ignore[arg-type]
    assert str(ei.value) == (
        f"a tensorvcs repository already exists at {tmp_path.resolve() / '.tvcs'}, and "
        f"{problem} (exist_ok=True opens it as it is: leave out the arguments that differ, or "
        "change them with 'tvcs config' / 'tvcs switch')"
    )


def test_init_exist_ok_on_a_url() -> None:
    url = f"memory://tvcs-test-exist-ok-{secrets.token_hex(4)}"
    with tv.Repo.init(url, chunk_size=8192, pack_threshold=1024) as r:
        c = r.commit(STATE, "one")
    with tv.Repo.init(url, exist_ok=True) as r:
        assert r.resolve("HEAD") == c.id
    with pytest.raises(tv.UsageError, match="its chunk_size is 8192, not 4096"):
        tv.Repo.init(url, chunk_size=4096, exist_ok=True)
    with pytest.raises(tv.UsageError, match="already exists"):
        tv.Repo.init(url)


def test_readme_python_example_runs_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text("utf-8")
    section = readme[readme.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    script = tmp_path / "example.py"
    script.write_text(code.group(1), "utf-8")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        runpy.run_path(str(script), run_name="__main__")
    with tv.Repo.open(tmp_path / "run") as r:
        assert len(r.log()) == 6


# -- clone destinations (item 6) -------------------------------------------------------------
@pytest.fixture
def bare(tmp_path: Path) -> Path:
    """A bare repository (what a push to a local path makes) at tmp_path/bare, with a work
    repository at tmp_path/work that pushed to it."""
    with tv.Repo.init(tmp_path / "work", chunk_size=4096, pack_threshold=1024) as w:
        w.commit(STATE, "one")
        tv.remote_add(w, "origin", str(tmp_path / "bare"))
        tv.push(w)
    assert (tmp_path / "bare" / "config.json").is_file()
    return tmp_path / "bare"


def listing(p: Path) -> list[str]:
    return sorted(str(x.relative_to(p)) for x in p.rglob("*"))


def test_clone_into_itself_is_refused(bare: Path) -> None:
    before = listing(bare)
    for dest, what in ((bare, "the repository"), (bare / "sub", "inside the repository")):
        with pytest.raises(tv.UsageError) as ei:
            tv.clone(str(bare), dest)
        assert str(ei.value) == (
            f"cannot clone {bare} into itself: '{dest}' is {what} being cloned (name another "
            "destination folder)"
        )
    assert listing(bare) == before


def test_clone_of_a_work_repository_into_its_store_is_refused(bare: Path) -> None:
    work = bare.parent / "work"
    with pytest.raises(tv.UsageError, match=r"into itself: .* is the repository being cloned"):
        tv.clone(str(work), work)
    with pytest.raises(tv.UsageError, match="is inside the repository being cloned"):
        tv.clone(str(work), work / ".tvcs" / "x")
    assert not (work / ".tvcs" / "x").exists()


def test_clone_into_a_non_empty_folder_or_a_file_is_refused(bare: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "afile").write_text("mine")
    for dest in (tmp_path / "full", tmp_path / "afile"):
        with pytest.raises(tv.UsageError) as ei:
            tv.clone(str(bare), dest)
        assert str(ei.value) == (
            f"destination path '{dest}' already exists and is not an empty directory"
        )
    assert listing(tmp_path / "full") == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    with tv.clone(str(bare), tmp_path / "empty") as r:
        assert r.checkout("HEAD")["step"] == 3


def test_cli_clone_next_to_a_bare_repository(
    bare: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bare.parent)
    monkeypatch.delenv("TVCS_REPO", raising=False)
    before = listing(bare)
    res = tvcs("clone", "bare", code=2)
    assert error_line(res) == (
        "cannot clone bare into itself: 'bare' is the repository being cloned (name another "
        "destination folder)"
    )
    assert listing(bare) == before and not (bare / ".tvcs").exists()
    (bare.parent / "taken").mkdir()
    (bare.parent / "taken" / "x").write_text("x")
    res = tvcs("clone", "bare", "taken", code=2)
    assert error_line(res) == (
        "destination path 'taken' already exists and is not an empty directory"
    )
    tvcs("clone", "bare", "copy")
    assert (bare.parent / "copy" / ".tvcs" / "config.json").is_file()


# -- a partial clone whose filter matches nothing (item 7) -----------------------------------
def test_partial_clone_with_a_filter_matching_nothing_creates_nothing(
    bare: Path, tmp_path: Path
) -> None:
    with rm.open_remote_repo(str(bare)) as b:
        tip = b.resolve("main")
    with pytest.raises(SelectionError) as ei:
        tv.clone(str(bare), tmp_path / "p", filter=["nomatch/*", "adapter"])
    assert str(ei.value) == (
        f"nothing in commit {tip[:12]} (main of {bare}) matches the clone filter 'nomatch/*', "
        "'adapter' (key paths as 'tvcs ls' prints them, e.g. 'ckpt.pt/model/*')"
    )
    assert isinstance(ei.value, tv.NotFoundError)
    assert not (tmp_path / "p").exists()
    with tv.clone(str(bare), tmp_path / "ok", filter=["model"]) as r:
        assert torch.equal(r.checkout("HEAD", include="model")["model"]["w"], STATE["model"]["w"])


def test_cli_partial_clone_filter_matching_nothing(
    bare: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(bare.parent)
    monkeypatch.delenv("TVCS_REPO", raising=False)
    res = tvcs("clone", "bare", "p", "--filter", "nomatch", code=4)
    assert error_line(res).startswith("nothing in commit ")
    assert "matches the clone filter 'nomatch'" in error_line(res)
    assert not (bare.parent / "p").exists()


def test_a_clone_that_fails_midway_removes_what_it_made(bare: Path, tmp_path: Path) -> None:
    objs = [p for p in (bare / "objects").rglob("*") if p.is_file()]
    for p in objs:  # every object gone: the fetch fails after the repository was made
        os.chmod(p, 0o644)
        p.unlink()
    with pytest.raises(tv.NotFoundError):
        tv.clone(str(bare), tmp_path / "half")
    assert not (tmp_path / "half").exists()
    (tmp_path / "mine").mkdir()
    with pytest.raises(tv.NotFoundError):
        tv.clone(str(bare), tmp_path / "mine")
    assert (tmp_path / "mine").is_dir() and listing(tmp_path / "mine") == []
