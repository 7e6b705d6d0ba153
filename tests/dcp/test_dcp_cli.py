"""`tvcs import` / `tvcs export` (tensorvcs/cli/dcp.py)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from click.testing import CliRunner

import tensorvcs as tv
from tensorvcs.cli import cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def run(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args), catch_exceptions=False, standalone_mode=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_import_and_export(tmp_path: Path) -> None:
    repo_dir = tmp_path / "repo"
    tv.Repo.init(repo_dir).close()
    src = tmp_path / "src"
    state = {"model": {"w": torch.arange(12.0).reshape(3, 4)}, "step": 9}
    dcp.save(state, checkpoint_id=str(src), no_dist=True)
    out = run("--repo", str(repo_dir), "import", str(src), "-m", "dcp dir", "--tag", "t", "--json")
    doc = json.loads(out)
    assert doc["tag"] == "t" and doc["new_stored_bytes"] > 0
    again = json.loads(run("--repo", str(repo_dir), "import", str(src), "--json"))
    assert again["new_stored_bytes"] == 0
    run("--repo", str(repo_dir), "export", "t", str(tmp_path / "cons.pt"))
    cons = torch.load(tmp_path / "cons.pt", weights_only=True)
    assert torch.equal(cons["model"]["w"], state["model"]["w"]) and cons["step"] == 9
    run("--repo", str(repo_dir), "export", "t", str(tmp_path / "dir"))
    target = {"model": {"w": torch.zeros(3, 4)}, "step": 0}
    dcp.load(target, checkpoint_id=str(tmp_path / "dir"), no_dist=True)
    assert torch.equal(target["model"]["w"], state["model"]["w"]) and target["step"] == 9
    res = CliRunner().invoke(cli, ["--repo", str(repo_dir), "import", str(tmp_path)])
    assert res.exit_code != 0 and "no .metadata" in res.output
