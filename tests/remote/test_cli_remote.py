"""tvcs remote / push / fetch / pull / clone through the CLI, against the loopback S3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from tensorvcs.cli import cli


def run(*args: Any, code: int = 0) -> Any:
    res = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == code, f"tvcs {args} -> {res.exit_code}\n{res.stdout}\n{res.stderr}"
    return res


def save(path: Path, seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    state = {"model": {"w": torch.randn(128, 128, generator=g)}, "step": seed}
    torch.save(state, path)
    return state


def test_cli_push_clone_pull(
    tmp_path: Path, s3_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TVCS_REPO", raising=False)
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    monkeypatch.chdir(a)
    run("init", "--chunk-size", "16KiB", "--pack-threshold", "4KiB")
    save(a / "ck.pt", 1)
    run("commit", "ck.pt", "-m", "one")
    run("remote", "add", "origin", s3_url, "--endpoint-url", s3_endpoint)
    assert json.loads(run("remote", "list", "--json").stdout)["remotes"] == [
        {"name": "origin", "url": s3_url}
    ]
    out = json.loads(run("push", "--json").stdout)
    assert out["objects_sent"] > 0 and out["bytes_sent"] > 0
    assert [u["name"] for u in out["updated"]] == ["refs/heads/main"]

    monkeypatch.chdir(tmp_path)
    out = json.loads(run("clone", s3_url, "b", "--endpoint-url", s3_endpoint, "--json").stdout)
    heads = {u["name"]: u["new"] for u in out["updated"]}
    assert (
        heads["refs/heads/main"]
        == json.loads(run("--repo", a, "log", "--json").stdout)["commits"][0]["id"]
    )

    monkeypatch.chdir(a)
    save(a / "ck.pt", 2)
    run("commit", "ck.pt", "-m", "two")
    run("push")
    monkeypatch.chdir(b)
    save(b / "ck.pt", 3)
    run("commit", "ck.pt", "-m", "diverging")
    res = run("push", code=6)
    assert "rejected: remote main moved; fetch first" in res.stderr
    res = run("pull", code=6)
    assert "diverged" in res.stderr
    monkeypatch.chdir(a)
    # the remote itself, opened directly (--repo with a URL; endpoint from the environment)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    log = json.loads(run("--repo", s3_url, "log", "--json").stdout)
    assert [c["message"] for c in log["commits"]] == ["two", "one"]
    run("remote", "remove", "origin")
    assert json.loads(run("remote", "list", "--json").stdout) == {"schema": 1, "remotes": []}


def test_cli_partial_clone(
    tmp_path: Path, s3_url: str, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TVCS_REPO", raising=False)
    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    torch.save(
        {"base": torch.randn(256, 256, generator=g), "adapter": torch.randn(8, 8, generator=g)},
        tmp_path / "ck.pt",
    )
    run("init", "--chunk-size", "64KiB", "--pack-threshold", "4KiB")
    run("commit", "ck.pt", "-m", "one")
    run("remote", "add", "origin", s3_url, "--endpoint-url", s3_endpoint)
    run("push", "origin", "main")
    out = json.loads(
        run(
            "clone", s3_url, "p", "--filter", "ck.pt/adapter",
            "--endpoint-url", s3_endpoint, "--json",
        ).stdout
    )
    assert 0 < out["bytes_sent"] < 0.05 * 256 * 256 * 4
