"""Tags travel with clone and fetch (issue 12 item 4): CheckpointManager's ``step-N`` tags
resolve in a clone made through a local path and through the loopback S3 server, checkouts
by tag are bitwise those of the source, and fetch brings new tags and follows the tags that
retention re-points (a tag moved in the clone itself is kept)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import tensorvcs as tv
from tests.cli.clihelp import Tvcs, assert_same, sha256

TVCS = str(Path(sys.executable).with_name("tvcs"))


@pytest.fixture
def tvcs(monkeypatch: pytest.MonkeyPatch) -> Tvcs:
    monkeypatch.delenv("TVCS_REPO", raising=False)
    return Tvcs(CliRunner())


def train(
    repo: tv.Repo, steps: range, keep: list[tv.Policy] | None = None, branch: str | None = None
) -> dict[int, dict[str, torch.Tensor]]:
    """A tiny model trained for ``steps``, checkpointed at every step; {step: state saved}."""
    torch.manual_seed(steps.start)
    model = torch.nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mgr = tv.CheckpointManager(
        repo, every_n_steps=1, keep=keep, async_commit=False, save_rng=False, branch=branch
    )
    saved = {}
    for step in steps:
        loss = model(torch.randn(16, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mgr.save({"model": model.state_dict()}, step=step)
        saved[step] = {k: v.clone() for k, v in model.state_dict().items()}
    mgr.close()
    return saved


def tags(tvcs: Tvcs, *args: Any) -> dict[str, str]:
    """{tag: commit id} as ``tvcs tag --json`` lists them."""
    return {t["name"]: t["id"] for t in tvcs.json(*args, "tag")["tags"]}


def updated(doc: dict[str, Any]) -> dict[str, list[str | None]]:
    """{ref: [old, new]} of a push/fetch/clone --json document."""
    return {u["name"]: [u["old"], u["new"]] for u in doc["updated"]}


def checkout_same(tvcs: Tvcs, src: Path, clone: Path, tag: str, want: dict[str, Any]) -> None:
    """``tvcs checkout TAG -o`` in the clone writes the bytes the source writes, holding
    ``want`` bitwise."""
    a, b = src.parent / f"src-{tag.replace('/', '_')}.pt", clone / "out.pt"
    b.unlink(missing_ok=True)
    tvcs("--repo", src, "checkout", tag, "-o", a)
    tvcs("--repo", clone, "checkout", tag, "-o", b)
    assert sha256(a) == sha256(b)
    assert_same(dict(torch.load(b, weights_only=True)["model"]), want)


def test_manager_tags_travel_through_a_path_clone_and_fetch(
    tvcs: Tvcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, clone = tmp_path / "src", tmp_path / "cl"
    saved = train(tv.Repo.init(src), range(0, 5))
    monkeypatch.chdir(tmp_path)
    out = tvcs.json("clone", "src", "cl")  # a relative path: the remote is stored absolute
    assert sorted(r for r in updated(out) if r.startswith("refs/tags/")) == [
        f"refs/tags/step-{s}" for s in range(0, 5)
    ]
    assert out["tags_kept"] == []
    assert tvcs.json("--repo", clone, "remote", "list")["remotes"] == [
        {"name": "origin", "url": str(src)}
    ]
    assert tags(tvcs, "--repo", clone) == tags(tvcs, "--repo", src)
    monkeypatch.chdir(clone)
    for s in (0, 4):
        checkout_same(tvcs, src, clone, f"step-{s}", saved[s])

    # retention in the source drops steps 1, 3 and 5 and rewrites the commits after them, so
    # step-2 and step-4 move; step-6 is new
    before = tags(tvcs, "--repo", src)
    saved.update(train(tv.Repo.open(src), range(5, 7), keep=[tv.KeepLast(1), tv.KeepEvery(2)]))
    after = tags(tvcs, "--repo", src)
    assert sorted(after) == ["step-0", "step-2", "step-4", "step-6"]
    assert after["step-2"] != before["step-2"] and after["step-4"] != before["step-4"]
    tvcs("--repo", clone, "tag", "-f", "step-2", "step-1")  # moved here: fetch keeps it
    mine = tags(tvcs, "--repo", clone)["step-2"]

    # the real script, from another folder: the remote's path does not depend on the cwd
    env = {k: v for k, v in os.environ.items() if k != "TVCS_REPO"}
    proc = subprocess.run(
        [TVCS, "--repo", str(clone), "fetch", "--json"],
        cwd=tmp_path.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert updated(res) == {
        "refs/remotes/origin/main": [before["step-4"], after["step-6"]],
        "refs/tags/step-4": [before["step-4"], after["step-4"]],
        "refs/tags/step-6": [None, after["step-6"]],
    }
    assert res["tags_kept"] == ["refs/tags/step-2"]
    now = tags(tvcs, "--repo", clone)
    assert now["step-2"] == mine and now["step-4"] == after["step-4"]
    # as git, a tag the remote deleted stays (fetch does not prune)
    assert now["step-1"] == before["step-1"] and now["step-3"] == before["step-3"]
    assert now["step-0"] == after["step-0"] == before["step-0"]
    assert now["step-6"] == after["step-6"]
    for s in (4, 6):
        checkout_same(tvcs, src, clone, f"step-{s}", saved[s])
    proc = subprocess.run(
        [TVCS, "fetch"], cwd=clone, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == [
        " up to date  refs/remotes/origin/main",
        " ! kept      refs/tags/step-2 (differs from origin's; made or moved here)",
    ]


def test_manager_tags_travel_through_s3(
    tvcs: Tvcs,
    tmp_path: Path,
    s3_url: str,
    s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, clone = tmp_path / "src", tmp_path / "cl"
    repo = tv.Repo.init(src)
    saved = train(repo, range(1, 4))
    monkeypatch.chdir(src)
    tvcs("remote", "add", "origin", s3_url, "--endpoint-url", s3_endpoint)
    out = tvcs.json("push", "origin", "--all", "--tags")
    assert sorted(updated(out)) == ["refs/heads/main"] + [f"refs/tags/step-{s}" for s in (1, 2, 3)]
    monkeypatch.chdir(tmp_path)
    out = tvcs.json("clone", s3_url, clone, "--endpoint-url", s3_endpoint)
    assert tags(tvcs, "--repo", clone) == tags(tvcs, "--repo", src)
    monkeypatch.chdir(clone)
    checkout_same(tvcs, src, clone, "step-2", saved[2])

    # a run on a branch tags exp/step-N (nested names); fetch brings them
    exp = train(repo, range(4, 6), branch="exp")
    monkeypatch.chdir(src)
    tvcs("push", "origin", "exp", "exp/step-4", "exp/step-5")
    monkeypatch.chdir(clone)
    res = tvcs.json("fetch")
    assert sorted(updated(res)) == [
        "refs/remotes/origin/exp",
        "refs/tags/exp/step-4",
        "refs/tags/exp/step-5",
    ]
    assert tags(tvcs) == tags(tvcs, "--repo", src)
    checkout_same(tvcs, src, clone, "exp/step-5", exp[5])
