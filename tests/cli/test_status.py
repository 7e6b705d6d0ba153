"""`tvcs status` (issue 12, item 3): new / modified / deleted / unchanged checkpoint files
against HEAD, the branch and its remote-tracking ref, digests cached by stat."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from tensorvcs.io import worktree

from .clihelp import Tvcs


def status(tvcs: Tvcs) -> dict[str, Any]:
    doc = tvcs.json("status")
    assert doc["schema"] == 1
    return doc


def statuses(doc: dict[str, Any]) -> dict[str, str]:
    return {f["path"]: f["status"] for f in doc["files"]}


def make_tree(root: Path) -> None:
    torch.save({"w": torch.arange(12.0).reshape(3, 4), "step": 1}, root / "a.pt")
    (root / "hf").mkdir()
    save_file({"x": torch.ones(5)}, str(root / "hf" / "model.safetensors"))
    (root / "hf" / "config.json").write_text('{"hidden": 4}')
    (root / "notes.txt").write_text("not a checkpoint")


def age(paths: list[Path], seconds: int = 3600) -> None:
    """Set mtimes in the past (a file older than the racy window is cached by its stat)."""
    t = time.time() - seconds
    for p in paths:
        os.utime(p, (t, t))


def test_status_reports_each_kind_of_change(work: Path, tvcs: Tvcs) -> None:
    make_tree(work)
    before = status(tvcs)  # no commit yet: the checkpoint files are new
    assert before["head"] is None and before["branch"] == "main"
    assert statuses(before) == {"a.pt": "new", "hf/model.safetensors": "new"}
    assert "No commits yet" in tvcs("status").stdout

    tvcs("commit", "a.pt", "hf", "-m", "one")
    head = tvcs.json("show")["id"]
    doc = status(tvcs)
    assert doc == {
        "schema": 1,
        "head": head,
        "branch": "main",
        "upstream": None,
        "ahead": None,
        "behind": None,
        "files": [
            {"path": "a.pt", "status": "unchanged"},
            {"path": "hf/config.json", "status": "unchanged"},
            {"path": "hf/model.safetensors", "status": "unchanged"},
        ],
    }
    out = tvcs("status").stdout
    assert out.splitlines()[0] == "On branch main"
    assert out.splitlines()[-1] == (
        "nothing to commit: 3 checkpoint file(s), all unchanged against HEAD"
    )

    torch.save({"w": torch.zeros(3, 4), "step": 2}, work / "a.pt")  # modified
    (work / "hf" / "config.json").unlink()  # deleted
    (work / "hf" / "tokenizer.json").write_text("{}")  # new: in a folder HEAD records files of
    save_file({"y": torch.ones(2)}, str(work / "b.safetensors"))  # new: a checkpoint suffix
    (work / "other.txt").write_text("x")  # neither: not listed
    assert statuses(status(tvcs)) == {
        "a.pt": "modified",
        "b.safetensors": "new",
        "hf/config.json": "deleted",
        "hf/model.safetensors": "unchanged",
        "hf/tokenizer.json": "new",
    }
    lines = tvcs("status").stdout.splitlines()
    assert lines[-6:] == [
        "  new:      b.safetensors",
        "  new:      hf/tokenizer.json",
        "  modified: a.pt",
        "  deleted:  hf/config.json",
        "",
        "4 changed, 1 unchanged checkpoint file(s)",
    ]


def test_checked_out_pt_file_is_unchanged(work: Path, tvcs: Tvcs) -> None:
    """checkout writes a .pt file with torch.save: other bytes, same content: unchanged,
    also after checking it out from an older commit whose file equals HEAD's."""
    make_tree(work)
    tvcs("commit", "a.pt", "-m", "one")
    save_file({"x": torch.zeros(5)}, str(work / "hf" / "model.safetensors"))
    tvcs("commit", "a.pt", "hf/model.safetensors", "-m", "two")  # a.pt as in one
    (work / "a.pt").unlink()
    tvcs("checkout", "HEAD~1", "a.pt")
    assert statuses(status(tvcs))["a.pt"] == "unchanged"
    tvcs("checkout", "HEAD", "a.pt", "--include", "a.pt/w", "-f")  # a part only: not equal
    assert statuses(status(tvcs))["a.pt"] == "modified"
    tvcs("checkout", "HEAD", "a.pt", "-f")
    assert statuses(status(tvcs))["a.pt"] == "unchanged"


def test_status_hashes_only_files_whose_stat_changed(
    work: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_tree(work)
    files = [work / "a.pt", work / "hf" / "model.safetensors", work / "hf" / "config.json"]
    age(files)
    tvcs("commit", "a.pt", "hf", "-m", "one")
    read: list[str] = []
    real = worktree.file_digest

    def counting(path: Any, progress: object = None) -> str:
        read.append(Path(path).name)
        return real(path, progress)

    monkeypatch.setattr(worktree, "file_digest", counting)
    status(tvcs)
    # commit hashed a.pt and model.safetensors (and cached them); config.json once, here
    assert read == ["config.json"]
    read.clear()
    assert set(statuses(status(tvcs)).values()) == {"unchanged"}
    assert read == []  # every digest from the cache
    cache = json.loads((work / ".tvcs" / "worktree.json").read_text())["stat"]
    assert {Path(k).name for k in cache} == {"a.pt", "model.safetensors", "config.json"}

    torch.save({"w": torch.ones(3, 4), "step": 1}, work / "a.pt")  # same size, new content
    assert statuses(status(tvcs))["a.pt"] == "modified"
    assert read == ["a.pt"]
    read.clear()
    status(tvcs)  # just written: within the racy window, so read again, not trusted
    assert read == ["a.pt"]


def test_status_ahead_behind_and_detached(work: Path, tvcs: Tvcs, tmp_path: Path) -> None:
    make_tree(work)
    tvcs("commit", "a.pt", "-m", "one")
    tvcs("commit", "a.pt", "-m", "two")
    other = tmp_path / "other"
    tvcs("clone", work, other)
    os.chdir(other)
    doc = status(tvcs)
    assert (doc["upstream"], doc["ahead"], doc["behind"]) == ("origin/main", 0, 0)
    assert "Your branch is up to date with 'origin/main'." in tvcs("status").stdout
    tvcs("checkout", "HEAD", "-o", "./")
    tvcs("commit", "a.pt", "-m", "three (clone)")
    doc = status(tvcs)
    assert (doc["ahead"], doc["behind"]) == (1, 0)
    assert "Your branch is ahead of 'origin/main' by 1 commit(s)." in tvcs("status").stdout

    os.chdir(work)
    tvcs("commit", "a.pt", "-m", "three (origin)")
    tvcs("commit", "a.pt", "-m", "four (origin)")
    os.chdir(other)
    tvcs("fetch")
    doc = status(tvcs)
    assert (doc["ahead"], doc["behind"]) == (1, 2)
    assert (
        "Your branch and 'origin/main' have diverged, and have 1 and 2 different commits "
        "each, respectively." in tvcs("status").stdout
    )
    tvcs("switch", "--detach", "HEAD~1")
    doc = status(tvcs)
    assert doc["branch"] is None and doc["upstream"] is None and doc["ahead"] is None
    assert tvcs("status").stdout.startswith(f"HEAD detached at {doc['head'][:12]}\n")
