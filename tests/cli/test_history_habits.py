"""History verbs' habits (issue 12 item 10) and NaN/Inf marks and `ls --stats` (issue 13
item 1): `checkout HEAD~99` past the root, `show`'s metadata as JSON, `ls GLOB` matching
nothing, the warning mark of a commit holding NaN/Inf in `log` and `show`, and each tensor's
recorded statistics in `ls --stats`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.format import envelope
from tensorvcs.format.commit import Commit

from .clihelp import Tvcs

TVCS = Path(sys.executable).parent / "tvcs"
STATS = ["numel", "nan", "inf", "min", "max", "mean", "norm"]


def three_commits(work: Path, tvcs: Tvcs) -> None:
    for i in range(3):
        torch.save({"w": torch.full((4,), float(i))}, work / "m.pt")
        tvcs("commit", "m.pt", "-m", f"c{i}")


@pytest.mark.parametrize("rev", ["HEAD~3", "HEAD~99", "HEAD^^^", "HEAD~2^", "HEAD^0~3", "@~3"])
def test_checkout_past_the_root_says_how_many_commits(work: Path, tvcs: Tvcs, rev: str) -> None:
    three_commits(work, tvcs)
    before = (work / "m.pt").read_bytes()
    base = "@" if rev.startswith("@") else "HEAD"
    res = tvcs("checkout", rev, code=4)
    assert res.stderr == (
        f"tvcs: error: revision {rev}: only 3 commits in the first-parent history of {base} "
        f"({base}~2 has no parent)\n"
    )
    assert (work / "m.pt").read_bytes() == before  # nothing was written
    tvcs("checkout", "HEAD~2")  # the root itself is fine


def test_parent_n_past_the_parents(work: Path, tvcs: Tvcs) -> None:
    three_commits(work, tvcs)
    res = tvcs("checkout", "HEAD^2", code=4)
    assert res.stderr == "tvcs: error: revision HEAD^2: HEAD has no parent 2 (it has 1 parent)\n"
    res = tvcs("show", "HEAD~2^2", code=4)
    assert res.stderr == (
        "tvcs: error: revision HEAD~2^2: HEAD~2 has no parent 2 (it has no parents)\n"
    )
    # after ^2 the first-parent count starts again from there
    r = tv.Repo.open(work)
    head = r.resolve("HEAD")
    merge = Commit(r.get_commit(head).manifest, [head, r.resolve("HEAD~2")], "m", "t")
    merge.id = r.objects.put_bytes(envelope.KIND_COMMIT, merge.to_bytes())
    r.store.sync()
    with r.refs.locked():
        r.refs.update(r.commit_ref(), merge.id, message="merge")
    r.close()
    res = tvcs("checkout", "HEAD^2~1", code=4)
    assert res.stderr == (
        "tvcs: error: revision HEAD^2~1: only 1 commit in the first-parent history of HEAD^2 "
        "(HEAD^2 has no parent)\n"
    )


METADATA = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**53), 2**53)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=6,
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=10, deadline=None)
@given(METADATA)
def test_show_prints_metadata_as_json(metadata: dict) -> None:
    import tempfile

    from click.testing import CliRunner

    with tempfile.TemporaryDirectory() as d:
        r = tv.Repo.init(d)
        r.commit({"w": torch.ones(2)}, "one", metadata=metadata)
        r.close()
        out = Tvcs(CliRunner())("--repo", d, "show").stdout
    line = next(ln for ln in out.split("\n") if ln.startswith("Metadata: "))
    assert json.loads(line[len("Metadata: ") :]) == metadata
    assert line == "Metadata: " + json.dumps(metadata, ensure_ascii=False)


def test_show_metadata_exact(tmp_path: Path, tvcs: Tvcs) -> None:
    r = tv.Repo.init(tmp_path)
    meta = {"lr": 0.1, "ok": True, "none": None, "tags": ["a", "é"], "bad": math.nan}
    r.commit({"w": torch.ones(2)}, "one", metadata=meta)
    r.close()
    out = tvcs("--repo", tmp_path, "show").stdout
    assert (
        'Metadata: {"lr": 0.1, "ok": true, "none": null, "tags": ["a", "é"], "bad": null}\n'
    ) in out
    assert tvcs.json("--repo", tmp_path, "show")["metadata"]["tags"] == ["a", "é"]


def test_ls_glob_that_matches_nothing_fails(work: Path, tvcs: Tvcs) -> None:
    torch.save({"model": {"w": torch.ones(3)}}, work / "m.pt")
    tvcs("commit", "m.pt", "-m", "one")
    res = tvcs("ls", "opt*", code=4)
    assert (res.stdout, res.stderr) == ("", "tvcs: error: no key path of HEAD matches 'opt*'\n")
    res = tvcs("ls", "HEAD", "m.pt/optimizer/*", code=4)
    assert res.stderr == "tvcs: error: no key path of HEAD matches 'm.pt/optimizer/*'\n"
    assert tvcs("ls", "m.pt/model/*").stdout.splitlines()[1].startswith("m.pt/model/w ")
    assert tvcs.json("ls")["tensors"][0]["key"] == "m.pt/model/w"  # no glob: never an error


def nan_inf_history(work: Path, tvcs: Tvcs) -> dict[str, torch.Tensor]:
    torch.save({"w": torch.ones(4)}, work / "m.pt")
    tvcs("commit", "m.pt", "-m", "clean")
    bad = {
        "w": torch.tensor([1.0, math.nan, math.inf, -math.inf, math.nan]),
        "b": torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64),
        "i": torch.arange(6, dtype=torch.int32).reshape(2, 3),
    }
    torch.save(bad, work / "m.pt")
    tvcs("commit", "m.pt", "-m", "broken", "--step", "7")
    return bad


def test_log_marks_commits_with_nan_or_inf(work: Path, tvcs: Tvcs) -> None:
    nan_inf_history(work, tvcs)
    lines = tvcs("log", "--oneline").stdout.splitlines()
    assert lines[0].endswith(" (HEAD -> main)  ! NaN/Inf in 1 tensor(s)  step 7  broken")
    assert lines[1].endswith("  clean") and "NaN" not in lines[1]
    graph = tvcs("log", "--oneline", "--graph").stdout.splitlines()
    assert graph[0] == "* " + lines[0]
    full = tvcs("log").stdout
    assert full.count("! NaN/Inf in 1 tensor(s) (tvcs show lists them)\n") == 1
    got = tvcs.json("log")["commits"]
    assert got[0]["nonfinite"] == [{"key": "m.pt/w", "nan": 2, "inf": 2}]
    assert got[1]["nonfinite"] == []


def test_show_lists_the_nan_inf_tensors(work: Path, tvcs: Tvcs) -> None:
    nan_inf_history(work, tvcs)
    out = tvcs("show").stdout
    assert out.endswith("\n! NaN/Inf in 1 tensor(s):\nkey     nan  inf\nm.pt/w    2    2\n")
    assert tvcs.json("show")["nonfinite"] == [{"key": "m.pt/w", "nan": 2, "inf": 2}]
    assert "NaN" not in tvcs("show", "HEAD~1").stdout


def test_ls_stats(work: Path, tvcs: Tvcs) -> None:
    bad = nan_inf_history(work, tvcs)
    rows = {row["key"]: row for row in tvcs.json("ls")["tensors"]}
    b = bad["b"]
    assert rows["m.pt/b"]["stats"] == {
        "numel": 3,
        "nan": 0,
        "inf": 0,
        "min": -2.0,
        "max": 3.0,
        "mean": b.mean().item(),
        "norm": b.norm().item(),
    }
    w = rows["m.pt/w"]["stats"]
    assert (w["numel"], w["nan"], w["inf"], w["min"], w["max"], w["norm"]) == (5, 2, 2, 1, 1, 1)
    assert rows["m.pt/i"]["stats"]["max"] == 5 and type(rows["m.pt/i"]["stats"]["max"]) is int
    out = tvcs("ls", "--stats").stdout.splitlines()
    assert out[0].split() == ["key", "dtype", "shape", *STATS]
    by_key = {ln.split()[0]: ln for ln in out[1:-1]}
    assert by_key["m.pt/b"].split()[-7:] == ["3", "0", "0", "-2", "3", "0.5", "3.64"]
    assert by_key["m.pt/w"].split()[-7:] == ["5", "2", "2", "1", "1", "1", "1"]
    assert by_key["m.pt/i"].split()[-7:] == ["6", "0", "0", "0", "5", "2.5", "7.416"]
    assert out[-1].startswith("3 item(s), ")


def test_ls_stats_of_a_commit_without_stats(work: Path, tvcs: Tvcs) -> None:
    """An older manifest records no statistics: '-' in every column, null in --json."""
    torch.save({"w": torch.ones(4)}, work / "m.pt")
    tvcs("commit", "m.pt", "-m", "one")
    r = tv.Repo.open(work)
    c = r.get_commit(r.resolve("HEAD"))
    m = r.get_manifest(c.manifest)
    old = dataclasses.replace(m, tensors=[dataclasses.replace(e, stats=None) for e in m.tensors])
    oid = r.objects.put_bytes(envelope.KIND_MANIFEST, old.to_bytes())
    c2 = Commit(oid, [c.id], "old style", "t")
    c2.id = r.objects.put_bytes(envelope.KIND_COMMIT, c2.to_bytes())
    r.store.sync()
    with r.refs.locked():
        r.refs.update(r.commit_ref(), c2.id, message="old")
    r.close()
    out = tvcs("ls", "--stats").stdout.splitlines()
    assert out[1].split() == ["m.pt/w", "float32", "[4]", *["-"] * 7]
    assert tvcs.json("ls")["tensors"][0]["stats"] is None
    assert "NaN" not in tvcs("log", "--oneline").stdout


def test_through_the_tvcs_script(work: Path, tvcs: Tvcs) -> None:
    nan_inf_history(work, tvcs)
    env = {k: v for k, v in os.environ.items() if k not in ("TVCS_REPO", "TVCS_DEBUG")}
    cmd = [str(TVCS)] if TVCS.exists() else [sys.executable, "-m", "tensorvcs.cli"]

    def run(*args: str) -> tuple[int, str, str]:
        p = subprocess.run(
            [*cmd, "--no-pager", *args], cwd=work, env=env, text=True, capture_output=True,
            timeout=120,
        )  # fmt: skip
        return p.returncode, p.stdout, p.stderr

    assert run("checkout", "HEAD~99") == (
        4,
        "",
        "tvcs: error: revision HEAD~99: only 2 commits in the first-parent history of HEAD "
        "(HEAD~1 has no parent)\n",
    )
    assert run("ls", "nothing*") == (4, "", "tvcs: error: no key path of HEAD matches 'nothing*'\n")
    code, out, err = run("log", "--oneline")
    assert (code, err) == (0, "") and "! NaN/Inf in 1 tensor(s)  step 7  broken" in out
    code, out, err = run("show")
    assert code == 0 and out.endswith("m.pt/w    2    2\n"), err
    code, out, err = run("ls", "--stats", "--json")
    assert code == 0 and json.loads(out)["tensors"][0]["stats"]["nan"] == 2
