"""`tvcs checkout REV -o DIR/` of commits made through the Python API, and `--include` of a
container key path (issue 12, item 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from tensorvcs import Repo

from .clihelp import Tvcs, assert_same


def api_state() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3}


def test_api_commit_checks_out_into_a_folder(work: Path, tvcs: Tvcs) -> None:
    state = api_state()
    with Repo.open(work) as r:
        r.commit(state, "from python")
        expected = r.checkout("HEAD")
    res = tvcs("checkout", "HEAD", "-o", "out/")
    assert (work / "out").is_dir() and sorted(p.name for p in (work / "out").iterdir()) == [
        "state.pt"
    ]
    assert res.stdout.splitlines()[-1].startswith("checked out 1 file(s) from ")
    assert_same(torch.load(work / "out" / "state.pt", weights_only=True), expected)

    (work / "existing").mkdir()  # an existing folder, named without the slash
    tvcs("checkout", "HEAD", "-o", "existing")
    assert_same(torch.load(work / "existing" / "state.pt", weights_only=True), expected)

    res = tvcs("checkout", "HEAD", "-o", "st/", "--format", "safetensors")
    got = load_file(str(work / "st" / "state.safetensors"))
    assert sorted(got) == sorted(
        [f"model.{k}" for k in state["model"]]
        + [f"optimizer.state.0.{k}" for k in state["optimizer"]["state"][0]]
        + [f"optimizer.state.1.{k}" for k in state["optimizer"]["state"][1]]
    )
    assert torch.equal(got["model.weight"], state["model"]["weight"])

    tvcs("checkout", "HEAD", "-o", "one.pt")  # a file name stays one file
    assert (work / "one.pt").is_file()
    assert_same(torch.load(work / "one.pt", weights_only=True), expected)
    # the JSON names where each file went; a state written whole has no recorded path
    doc = tvcs.json("checkout", "HEAD", "-o", "out/")
    assert [(f["path"], f["dest"], f["format"]) for f in doc["files"]] == [
        (None, "out/state.pt", "pt")
    ]


def test_include_of_a_container_path(work: Path, tvcs: Tvcs) -> None:
    state = api_state()
    torch.save(state, work / "ckpt.pt")
    tvcs("commit", "ckpt.pt", "-m", "file")
    with Repo.open(work) as r:
        python_side = r.checkout("HEAD", include="ckpt.pt/optimizer")["ckpt.pt"]
        no_opt = r.checkout("HEAD", exclude="ckpt.pt/optimizer")["ckpt.pt"]
    tvcs("checkout", "HEAD", "ckpt.pt", "--include", "ckpt.pt/optimizer", "-o", "opt.pt")
    got = torch.load(work / "opt.pt", weights_only=True)
    assert list(got) == ["optimizer"]
    assert_same(got, python_side)
    assert_same(got["optimizer"], state["optimizer"])

    tvcs("checkout", "HEAD", "ckpt.pt", "--exclude", "ckpt.pt/optimizer", "-o", "rest.pt")
    rest = torch.load(work / "rest.pt", weights_only=True)
    assert list(rest) == ["model", "step"]
    assert_same(rest, no_opt)

    # a commit without files: the same, on the state's own key paths
    with Repo.open(work) as r:
        r.commit(state, "from python")
    tvcs("checkout", "HEAD", "-o", "api/", "--include", "optimizer/state")
    got = torch.load(work / "api" / "state.pt", weights_only=True)
    assert list(got) == ["optimizer"] and list(got["optimizer"]) == ["state"]
    assert_same(got["optimizer"]["state"], state["optimizer"]["state"])
    res = tvcs("checkout", "HEAD", "-o", "none/", "--include", "optim", code=4)
    assert res.stderr.startswith("tvcs: error: nothing in commit ")
