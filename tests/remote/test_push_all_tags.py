"""`tvcs push --tags / --all / --force`, and tags that travel with clone and fetch (issue 12
item 4): CheckpointManager's step-N tags resolve in a clone made through a local path remote
and through the loopback S3 server, with bitwise equal checkouts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from helpers import assert_same_value as assert_same

import tensorvcs as tv
from tensorvcs.cli import cli
from tensorvcs.remote import open_remote_repo

TVCS = Path(sys.executable).parent / "tvcs"


def run(*args: Any, code: int = 0) -> Any:
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, f"tvcs {args} -> {res.exit_code}\n{res.stdout}\n{res.stderr}"
    return res


def js(*args: Any) -> Any:
    doc = json.loads(run(*args, "--json").stdout)
    if isinstance(doc.get("updated"), list):  # push/fetch/clone: [{name, old, new}] as a map
        doc["updated"] = {u["name"]: [u["old"], u["new"]] for u in doc["updated"]}
    return doc


def commit_id(repo: Path | str, rev: str) -> str:
    return str(js("--repo", repo, "log", rev, "-n", "1")["commits"][0]["id"])


def remote_refs(bare: Path, prefix: str) -> dict[str, str]:
    r = open_remote_repo(str(bare))
    try:
        return r.refs.list(prefix)
    finally:
        r.close()


def test_push_tags_all_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TVCS_REPO", raising=False)
    a, bare = tmp_path / "a", tmp_path / "bare"
    a.mkdir()
    bare.mkdir()
    monkeypatch.chdir(a)
    run("init")
    torch.save({"w": torch.ones(4)}, a / "ck.pt")
    run("commit", "ck.pt", "-m", "one")
    run("tag", "v1")
    run("branch", "side")
    torch.save({"w": torch.zeros(4)}, a / "ck.pt")
    run("commit", "ck.pt", "-m", "two")
    run("tag", "v2")
    one, two = commit_id(a, "v1"), commit_id(a, "v2")
    run("remote", "add", "origin", bare)

    out = js("push", "origin", "--tags")  # only the tags (and the objects they need)
    assert out["updated"] == {"refs/tags/v1": [None, one], "refs/tags/v2": [None, two]}
    assert out["up_to_date"] == [] and out["commits"] == 2 and out["objects_sent"] > 0
    assert remote_refs(bare, "refs/heads/") == {}  # no branch travelled
    out = js("push", "origin", "--all")
    assert out["updated"] == {"refs/heads/main": [None, two], "refs/heads/side": [None, one]}
    assert out["objects_sent"] == 0 and out["commits"] == 0
    out = js("push", "origin", "--all", "--tags")
    assert out["updated"] == {} and out["objects_sent"] == 0
    assert out["up_to_date"] == [
        "refs/heads/main",
        "refs/heads/side",
        "refs/tags/v1",
        "refs/tags/v2",
    ]
    text = run("push", "origin", "--tags").stdout.splitlines()
    assert text[1:] == [" up to date  refs/tags/v1", " up to date  refs/tags/v2"]

    run("tag", "-f", "v1", "v2")  # the local tag now names another commit
    res = run("push", "origin", "--tags", code=6)
    assert res.stderr.strip() == (
        f"tvcs: error: rejected: tag v1 already exists on origin with another commit "
        f"({one[:12]}); use --force to replace it"
    )
    assert remote_refs(bare, "refs/tags/") == {"v1": one, "v2": two}  # nothing moved
    out = js("push", "origin", "--tags", "--force")
    assert out["updated"] == {"refs/tags/v1": [one, two]}
    assert out["up_to_date"] == ["refs/tags/v2"]
    assert remote_refs(bare, "refs/tags/") == {"v1": two, "v2": two}

    run("--repo", tmp_path / "empty", "init")  # no tags at all: a one-line error, exit 4
    res = run("--repo", tmp_path / "empty", "push", bare, "--tags", code=4)
    assert res.stderr.strip() == "tvcs: error: nothing to push: the repository has no tags"


def train(repo: tv.Repo, steps: range, model: torch.nn.Linear) -> dict[int, dict[str, Any]]:
    """A tiny training loop that checkpoints every 2 steps (tags step-N); the states saved."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mgr = tv.CheckpointManager(repo, every_n_steps=2, async_commit=False, save_rng=False)
    saved: dict[int, dict[str, Any]] = {}
    g = torch.Generator().manual_seed(steps.start)
    for step in steps:
        x = torch.randn(8, 3, generator=g)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 2 == 0:
            mgr.save({"model": model}, step=step)
            saved[step] = copy.deepcopy(model.state_dict())
    mgr.close()
    return saved


@pytest.mark.parametrize("where", ["path", "s3"])
def test_manager_tags_travel_with_clone_and_fetch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, where: str
) -> None:
    monkeypatch.delenv("TVCS_REPO", raising=False)
    if where == "s3":
        url = request.getfixturevalue("s3_url")
        extra = ["--endpoint-url", request.getfixturevalue("s3_endpoint")]
    else:
        (tmp_path / "bare").mkdir()
        url, extra = str(tmp_path / "bare"), []
    src, dst = tmp_path / "src", tmp_path / "dst"
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    repo = tv.Repo.init(src)
    saved = train(repo, range(1, 7), model)
    repo.close()
    assert sorted(saved) == [2, 4, 6]

    monkeypatch.chdir(src)
    run("remote", "add", "origin", url, *extra)
    out = js("push", "--all", "--tags")
    assert sorted(out["updated"]) == [
        "refs/heads/main",
        "refs/tags/step-2",
        "refs/tags/step-4",
        "refs/tags/step-6",
    ]
    monkeypatch.chdir(tmp_path)
    out = js("clone", url, "dst", *extra)
    assert {r for r in out["updated"] if r.startswith("refs/tags/")} == {
        "refs/tags/step-2",
        "refs/tags/step-4",
        "refs/tags/step-6",
    }
    monkeypatch.chdir(dst)
    for step in (2, 4, 6):
        assert commit_id(dst, f"step-{step}") == commit_id(src, f"step-{step}")
        run("checkout", f"step-{step}", "-o", f"x{step}.pt")
        assert_same(torch.load(dst / f"x{step}.pt")["model"], saved[step])

    repo = tv.Repo.open(src)  # training goes on; the next push brings step-8 and step-10
    saved.update(train(repo, range(7, 11), model))
    repo.close()
    monkeypatch.chdir(src)
    out = js("push", "--tags", "--all")
    assert sorted(out["updated"]) == ["refs/heads/main", "refs/tags/step-10", "refs/tags/step-8"]
    assert out["up_to_date"] == ["refs/tags/step-2", "refs/tags/step-4", "refs/tags/step-6"]
    monkeypatch.chdir(dst)
    out = js("fetch")
    assert sorted(out["updated"]) == [
        "refs/remotes/origin/main",
        "refs/tags/step-10",
        "refs/tags/step-8",
    ]
    run("checkout", "step-8", "-o", "x8.pt")
    assert_same(torch.load(dst / "x8.pt")["model"], saved[8])
    assert js("fetch")["updated"] == {}  # nothing new: nothing moves


def test_push_tags_subprocess(tmp_path: Path) -> None:
    """The real tvcs script: push --tags to a path, clone it, a tag resolves there."""
    cmd = [str(TVCS)] if TVCS.exists() else [sys.executable, "-m", "tensorvcs.cli"]

    def tvcs(*args: Any, cwd: Path = tmp_path / "src", code: int = 0) -> str:
        p = subprocess.run(
            [*cmd, *map(str, args)], cwd=cwd, text=True, capture_output=True, timeout=120
        )
        assert p.returncode == code, p.stderr
        return p.stdout

    torch.manual_seed(1)
    model = torch.nn.Linear(3, 2)
    repo = tv.Repo.init(tmp_path / "src")
    saved = train(repo, range(1, 5), model)
    repo.close()
    (tmp_path / "bare").mkdir()
    out = json.loads(tvcs("push", tmp_path / "bare", "--tags", "--all", "--json"))
    assert sorted(u["name"] for u in out["updated"]) == [
        "refs/heads/main",
        "refs/tags/step-2",
        "refs/tags/step-4",
    ]
    assert "up to date  refs/tags/step-4" in tvcs("push", tmp_path / "bare", "--tags")
    tvcs("clone", tmp_path / "bare", tmp_path / "dst", cwd=tmp_path)
    tvcs("checkout", "step-2", "-o", "x.pt", cwd=tmp_path / "dst")
    assert_same(torch.load(tmp_path / "dst" / "x.pt")["model"], saved[2])
