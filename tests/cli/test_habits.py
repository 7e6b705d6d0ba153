"""Smaller habits of issue 12, item 10."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tensorvcs as tv

from .clihelp import Tvcs


def test_init_in_an_existing_repository_is_a_no_op_with_a_note(work: Path, tvcs: Tvcs) -> None:
    before = (work / ".tvcs" / "config.json").read_bytes()
    res = tvcs("init")
    assert res.stdout == ""
    assert res.stderr == (
        f"tvcs: note: a tensorvcs repository already exists at {work / '.tvcs'}; nothing changed\n"
    )
    assert (work / ".tvcs" / "config.json").read_bytes() == before
    assert tvcs.json("init")["existed"] is True
    res = tvcs("init", "--chunk-size", "1MiB", code=2)
    assert "already exists" in res.stderr and "with chunk_size 65536, not 1048576" in res.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
def test_metric_nan_is_refused(work: Path, tvcs: Tvcs, value: str) -> None:
    torch.save({"w": torch.ones(2)}, work / "m.pt")
    res = tvcs("commit", "m.pt", "-m", "x", "--metric", f"acc={value}", code=2)
    assert f"metric 'acc': '{value}' is not a finite number" in res.stderr
    assert tv.Repo.open(work).head()[1] is None  # nothing committed


def test_no_key_path_suggests_the_closest(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path)
    model = torch.nn.Linear(2, 2)
    repo.commit({"model": model.state_dict(), "optimizer": {}}, "one")
    with pytest.raises(tv.errors.NotFoundError) as e:
        repo.load_into(torch.nn.Linear(2, 2), "HEAD", key="modell")
    assert str(e.value).endswith("has no key path 'modell'; did you mean 'model'?")
    with pytest.raises(tv.errors.NotFoundError) as e:
        repo.load_into(torch.nn.Linear(2, 2), "HEAD", key="zzz")
    assert str(e.value).endswith("has no key path 'zzz'")
