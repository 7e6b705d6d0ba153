"""A live module, optimizer or scheduler committed instead of its state_dict() (issue 12 item
10): refused naming the key path and suggesting ``.state_dict()``, in Python and from the CLI;
nothing is stored. ``allow_pickle=True`` still stores one as an opaque pickle."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cli.clihelp import Tvcs
from click.testing import CliRunner

import tensorvcs as tv
from tensorvcs.errors import UnsupportedValueError

MODULE_MSG = (
    "cannot store an nn.Module (torch.nn.modules.linear.Linear) at key path 'model': commit "
    "module.state_dict() instead (its tensors and settings; load it back with "
    "module.load_state_dict)"
)


def _objects(repo: tv.Repo) -> list[Path]:
    return sorted(p for p in (repo.path / "objects").rglob("*") if p.is_file())


def test_module_optimizer_and_scheduler_are_refused_with_a_hint(repo: tv.Repo) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    before = _objects(repo)
    cases = [
        ({"model": model, "step": 1}, "model", MODULE_MSG),
        (
            {"train": {"opt": opt}, "w": torch.ones(3)},
            "train/opt",
            "cannot store an optimizer (torch.optim.adamw.AdamW) at key path 'train/opt': "
            "commit optimizer.state_dict() instead (its tensors and settings; load it back "
            "with optimizer.load_state_dict)",
        ),
        (
            {"sched": [sched]},
            "sched/0",
            "cannot store a torch.optim.lr_scheduler.StepLR at key path 'sched/0': commit its "
            "state_dict() instead (its tensors and settings; load it back with "
            "load_state_dict)",
        ),
        (
            {"seq": torch.nn.Sequential(torch.nn.ReLU())},
            "seq",
            "cannot store an nn.Module (torch.nn.modules.container.Sequential) at key path "
            "'seq': commit module.state_dict() instead",
        ),
    ]
    for state, key, msg in cases:
        with pytest.raises(UnsupportedValueError) as info:
            repo.commit(state, "by mistake")
        assert str(info.value).startswith(msg)
        assert info.value.key_path == key
    assert repo.log() == [] and _objects(repo) == before  # nothing stored
    c = repo.commit({"model": model.state_dict(), "opt": opt.state_dict()}, "the right way")
    back = torch.nn.Linear(3, 2)
    back.load_state_dict(repo.checkout(c.id)["model"])
    assert torch.equal(back.weight, model.weight)


def test_opt_in_pickle_still_stores_a_module(repo: tv.Repo) -> None:
    model = torch.nn.Linear(3, 2)
    c = repo.commit({"model": model}, "pickled on purpose", allow_pickle=True)
    got = repo.checkout(c.id, allow_pickle=True)["model"]
    assert type(got) is torch.nn.Linear and torch.equal(got.weight, model.weight)


CLI_MSG = (
    "tvcs: error: model.pt: refusing to load a pickle that torch.load(weights_only=True) "
    "rejects (it needs torch.nn.modules.linear.Linear); nothing was executed. Pass "
    "--unsafe-pickle only if you trust this file (it runs code from the file); it holds a "
    "whole nn.Module: save module.state_dict() instead\n"
)


def test_cli_commit_of_a_saved_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``torch.save(model)`` files: exit 7, one line with the hint, nothing committed; the
    same through the installed tvcs script."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TVCS_REPO", raising=False)
    tvcs = Tvcs(CliRunner())
    tvcs("init")
    model = torch.nn.Linear(3, 2)
    torch.save(model, tmp_path / "model.pt")
    torch.save({"optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}, tmp_path / "opt.pt")
    res = tvcs("commit", "model.pt", "-m", "whole module", code=7)
    assert res.stderr == CLI_MSG
    res = tvcs("commit", "opt.pt", "-m", "whole optimizer", code=7)
    assert res.stderr.endswith(
        "(it needs torch.optim.sgd.SGD); nothing was executed. Pass --unsafe-pickle only if "
        "you trust this file (it runs code from the file); it holds an optimizer object: "
        "save optimizer.state_dict() instead\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TVCS_REPO", "TVCS_DEBUG")}
    p = subprocess.run(
        [str(Path(sys.executable).parent / "tvcs"), "commit", "model.pt", "-m", "x"],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120,
    )
    assert (p.returncode, p.stdout, p.stderr) == (7, "", CLI_MSG)
    assert tv.Repo.open(tmp_path).log() == []
