"""Every verb through click's CliRunner: init, commit, log, show, ls, tag, branch, switch,
config, du, gc, fsck, --version, --json."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tensorvcs import Repo

from .clihelp import Tvcs


def save(path: str, seed: int = 0, extra: float = 0.0) -> dict:
    g = torch.Generator().manual_seed(seed)
    state = {
        "model": {"w": torch.randn(64, 64, generator=g) + extra, "b": torch.zeros(8)},
        "step": seed,
    }
    torch.save(state, path)
    return state


def test_version_and_help(tvcs: Tvcs) -> None:
    assert tvcs("--version").stdout.startswith("tvcs 0.1.0")
    out = tvcs("--help").stdout
    for verb in (
        "init",
        "commit",
        "checkout",
        "log",
        "show",
        "ls",
        "diff",
        "tag",
        "branch",
        "du",
        "gc",
        "fsck",
        "config",
        "switch",
    ):
        assert verb in out


def test_init(tmp_path: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = tvcs("init", "sub", "--chunk-size", "1MiB", "-b", "trunk").stdout
    assert "Initialized empty tensorvcs repository" in out
    r = Repo.open(tmp_path / "sub")
    assert r.config.chunk_size == 1 << 20
    assert r.head() == ("trunk", None)
    r.close()
    # as git init: an existing repository is left as it is, with a note (issue 12, item 10)
    err = tvcs("init", "sub").stderr
    assert err.startswith("tvcs: note: a tensorvcs repository already exists")
    assert err.rstrip().endswith("nothing changed")
    assert "chunk_size" in tvcs("init", "bad", "--chunk-size", "1000", code=2).stderr
    doc = tvcs.json("init", "other")
    assert doc["branch"] == "main" and doc["chunk_size"] == 4 << 20


def test_commit_log_show_ls(work: Path, tvcs: Tvcs) -> None:
    save("a.pt", 1)
    Path("notes.txt").write_text("hello")
    out = tvcs(
        "commit",
        "a.pt",
        "notes.txt",
        "-m",
        "first\n\nbody",
        "--step",
        "10",
        "--metric",
        "loss=0.5",
        "--metric",
        "acc=1",
        "--tag",
        "v1",
    ).stdout
    assert out.startswith("[main ") and "first" in out and "tagged v1" in out
    save("a.pt", 2)
    tvcs("commit", "a.pt", "-m", "second", "--step", "20", "--metric", "loss=0.25")

    log = tvcs("log").stdout
    assert "Step:   20" in log and "Metrics: loss=0.25" in log and "    body" in log
    one = tvcs("log", "--oneline").stdout.splitlines()
    assert len(one) == 2
    assert "(HEAD -> main)" in one[0] and "step 20" in one[0] and "loss=0.25" in one[0]
    assert "tag: v1" in one[1] and "acc=1" in one[1]
    assert len(tvcs("log", "--oneline", "-n", "1").stdout.splitlines()) == 1
    j = tvcs.json("log")["commits"]
    assert [c["step"] for c in j] == [20, 10] and j[1]["metrics"] == {"loss": 0.5, "acc": 1}
    assert j[1]["message"] == "first\n\nbody" and j[0]["parents"] == [j[1]["id"]]
    assert tvcs.json("log", "v1")["commits"][0]["id"] == j[1]["id"]

    show = tvcs("show", "HEAD~1").stdout
    assert "notes.txt" in show and "blob" in show and "a.pt" in show and "Step:   10" in show
    sj = tvcs.json("show", "v1")
    assert {f["path"]: f["kind"] for f in sj["files"]} == {"a.pt": "state", "notes.txt": "blob"}
    assert sj["tensors"] == 2

    ls = tvcs("ls").stdout
    assert "a.pt/model/w" in ls and "float32" in ls and "[64, 64]" in ls and "16.0 KiB" in ls
    rows = tvcs.json("ls", "HEAD~1", "*/b")["tensors"]
    assert [r["key"] for r in rows] == ["a.pt/model/b"] and rows[0]["logical_bytes"] == 32
    rows = tvcs.json("ls", "*/b")["tensors"]  # GLOB alone: HEAD
    assert [r["key"] for r in rows] == ["a.pt/model/b"]
    rows = tvcs.json("ls", "v1")["tensors"]
    assert {r["key"] for r in rows} == {"a.pt/model/w", "a.pt/model/b", "notes.txt"}
    assert all(r["stored_bytes"] > 0 for r in rows)


def test_branch_tag_switch(work: Path, tvcs: Tvcs) -> None:
    save("a.pt", 1)
    tvcs("commit", "a.pt", "-m", "one")
    tvcs("branch", "exp")
    assert "* main" in tvcs("branch").stdout and "  exp" in tvcs("branch").stdout
    save("a.pt", 2)
    out = tvcs("commit", "a.pt", "-m", "on exp", "--branch", "exp").stdout
    assert out.startswith("[exp ")
    b = tvcs.json("branch")
    heads = {x["name"]: x["id"] for x in b["branches"]}
    assert b["current"] == "main" and set(heads) == {"main", "exp"}
    assert heads["main"] != heads["exp"]
    tvcs("branch", "exp", code=2)  # exists
    tvcs("branch", "exp", "main", "-f")
    assert {"name": "exp", "id": heads["main"], "head": False} in tvcs.json("branch")["branches"]
    tvcs("switch", "exp")
    assert tvcs.json("branch")["current"] == "exp"
    tvcs("branch", "-d", "exp", code=2)  # HEAD is on it
    tvcs("switch", "main")
    assert "Deleted branch exp" in tvcs("branch", "-d", "exp").stdout
    assert "detached" in tvcs("switch", "--detach", "HEAD").stdout
    tvcs("switch", "main")
    tvcs("switch", "nope", code=4)

    tvcs("tag", "t1")
    assert tvcs.json("tag") == {"schema": 1, "tags": [{"name": "t1", "id": heads["main"]}]}
    assert "t1" in tvcs("tag").stdout
    tvcs("tag", "t1", code=2)
    tvcs("tag", "bad name", code=2)
    assert "Deleted tag t1" in tvcs("tag", "-d", "t1").stdout
    tvcs("tag", "-d", "t1", code=4)


def test_config(work: Path, tvcs: Tvcs) -> None:
    assert tvcs("config", "chunk_size").stdout.startswith("65536")
    tvcs("config", "chunk_size", "128KiB")
    assert tvcs.json("config")["config"]["chunk_size"] == 128 << 10
    tvcs("config", "settings.author", "Ada <ada@example.org>")
    assert tvcs("config", "settings.author").stdout.strip() == "Ada <ada@example.org>"
    save("a.pt")
    tvcs("commit", "a.pt", "-m", "x")
    assert tvcs.json("log")["commits"][0]["author"] == "Ada <ada@example.org>"
    tvcs("config", "--unset", "settings.author")
    tvcs("config", "settings.author", code=2)
    tvcs("config", "format_version", "2", code=2)
    tvcs("config", "chunk_size", "1000", code=2)
    tvcs("config", "nope", code=2)
    assert "pack_threshold = " in tvcs("config").stdout


def test_du_gc_fsck(work: Path, tvcs: Tvcs) -> None:
    save("a.pt", 1)
    tvcs("commit", "a.pt", "-m", "one")
    tvcs("commit", "a.pt", "-m", "same again")
    save("a.pt", 1, extra=1.0)
    tvcs("commit", "a.pt", "-m", "changed", "--branch", "tmp")
    du = tvcs.json("du")
    rows = du["commits"]
    assert [r["message"] for r in rows] == ["one", "same again"]
    assert rows[0]["new_content_bytes"] >= rows[0]["logical_bytes"] - 64  # all new
    assert rows[1]["new_content_bytes"] == 0  # the same tensors: nothing new
    assert du["total"]["dedup_ratio"] >= 1.9
    text = tvcs("du").stdout
    assert "total" in text and "dedup" in text and "store:" in text

    assert "0 problem(s)" in tvcs("fsck").stdout
    assert tvcs.json("fsck")["ok"] is True
    tvcs("branch", "-d", "tmp")
    # as git: the deleted branch's commit stays while its reflog entry does (90 days)
    g = tvcs.json("gc")
    assert g["deleted_objects"] == 0 and g["deleted_commits"] == []
    g = tvcs.json("gc", "--reflog-expire=now")  # unreachable now, but younger than 2 weeks
    assert g["deleted_objects"] == 0 and g["young_objects_kept"] >= 1
    g = tvcs.json("gc", "--prune=now")
    assert g["deleted_objects"] >= 1 and len(g["deleted_commits"]) == 1
    assert "removed 0 object(s)" in tvcs("gc", "--prune=now", "--reflog-expire=now").stdout
    # corrupt one object: fsck reports it and exits 5
    obj = next(p for p in (work / ".tvcs" / "objects").rglob("*") if p.is_file())
    data = bytearray(obj.read_bytes())
    data[-1] ^= 0xFF
    obj.write_bytes(bytes(data))
    res = tvcs("fsck", code=5)
    assert "corrupt" in res.stdout and "tvcs: error: fsck found" in res.stderr


def test_repo_option_and_env(tmp_path: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "r"
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    tvcs("--repo", repo, "init")
    save(str(repo / "a.pt"))
    tvcs("--repo", repo, "commit", repo / "a.pt", "-m", "via --repo")
    assert tvcs.json("--repo", repo, "log")["commits"][0]["message"] == "via --repo"
    monkeypatch.setenv("TVCS_REPO", str(repo))
    assert tvcs.json("log")["commits"][0]["message"] == "via --repo"
    assert tvcs.json("show", "HEAD")["files"][0]["path"] == "a.pt"
    tvcs("commit", "a.pt", "-m", "outside", code=4)  # ./a.pt does not exist here
    (other / "b.pt").write_bytes(b"x")
    tvcs("commit", other / "b.pt", "-m", "outside", code=2)  # not inside the repository
    monkeypatch.delenv("TVCS_REPO")
    sub = repo / "deep" / "er"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)  # discovery walks up
    assert tvcs.json("log")["commits"][0]["message"] == "via --repo"
