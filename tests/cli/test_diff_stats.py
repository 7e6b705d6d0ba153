"""tvcs diff --stats: ‖B−A‖/‖A‖ from the statistics recorded at commit time (no tensor byte
read) or computed from the tensors, sorted, filtered by key path globs, grouped, shortened to
the terminal, with a summary; --json with numbers as numbers."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st

from tensorvcs.cli.diff import log_fraction, shorten
from tensorvcs.repo import Repo
from tensorvcs.state.writer import TensorWriter

from .clihelp import Tvcs

# recorded statistics sum float32 blocks in float64 (docs/format.md: about 1e-6 relative);
# the computed path is float64 throughout
RECORDED_TOL = 1e-5
COMPUTED_TOL = 1e-12
LONG = "model/encoder.layer.11.attention.output.dense.weight_with_a_rather_long_name"


def _states() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    g = torch.Generator().manual_seed(7)
    a: dict[str, Any] = {
        "model": {
            "big_move.weight": torch.randn(32, 32, generator=g),
            "small_move.weight": torch.randn(64, 16, generator=g),
            LONG.split("/", 1)[1]: torch.randn(16, generator=g),
            "frozen.weight": torch.randn(8, 8, generator=g),
        },
        "optimizer": {
            "state": {
                0: {"exp_avg": torch.randn(100, generator=g) * 1e-3, "step": torch.tensor(10)}
            }
        },
        "epoch": 1,
    }
    b = {
        "model": dict(a["model"]),
        "optimizer": {"state": {0: dict(a["optimizer"]["state"][0])}},
        "epoch": 2,
    }
    b["model"]["big_move.weight"] = a["model"]["big_move.weight"] * 1.25
    b["model"]["small_move.weight"] = a["model"]["small_move.weight"] + 1e-4 * torch.randn(
        64, 16, generator=g
    )
    b["model"][LONG.split("/", 1)[1]] = a["model"][LONG.split("/", 1)[1]] + 0.01
    b["optimizer"]["state"][0]["exp_avg"] = a["optimizer"]["state"][0]["exp_avg"] * 0.9
    b["optimizer"]["state"][0]["step"] = torch.tensor(11)
    c = {"model": dict(b["model"]), "optimizer": b["optimizer"], "epoch": 3}
    c["model"]["small_move.weight"] = b["model"]["small_move.weight"] * 0.5
    return a, b, c


def _flat(state: dict[str, Any], prefix: str = "ckpt.pt") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        key = f"{prefix}/{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key))
        elif isinstance(v, torch.Tensor):
            out[key] = v
    return out


def _commit_all(work: Path, tvcs: Tvcs, states: tuple[dict[str, Any], ...]) -> None:
    for i, s in enumerate(states):
        torch.save(s, work / "ckpt.pt")
        tvcs("commit", "ckpt.pt", "-m", f"c{i}")


def _expected(sa: dict[str, Any], sb: dict[str, Any]) -> dict[str, tuple[float, float, float]]:
    """{key: (‖B−A‖, ‖A‖, ‖B−A‖/‖A‖)} of the changed tensors, in float64 by torch."""
    fa, fb = _flat(sa), _flat(sb)
    out = {}
    for k, ta in fa.items():
        tb = fb[k]
        if torch.equal(ta, tb):
            continue
        d = float((tb.double() - ta.double()).norm())
        n = float(ta.double().norm())
        out[k] = (d, n, d / n)
    return out


def _strict_json(text: str) -> Any:
    def refuse(name: str) -> None:
        raise AssertionError(f"non-JSON number {name} in the output")

    return json.loads(text, parse_constant=refuse)


def _check_against_torch(
    changed: list[dict[str, Any]], want: dict[str, tuple[float, float, float]], tol: float
) -> None:
    tensors = {x["key"]: x for x in changed if x["kind"] == "tensor"}
    assert set(tensors) == set(want)
    for k, (d, n, rel) in want.items():
        row = tensors[k]
        assert math.isclose(row["delta_norm"], d, rel_tol=tol), (k, row["delta_norm"], d)
        assert math.isclose(row["norm_a"], n, rel_tol=tol), (k, row["norm_a"], n)
        assert math.isclose(row["rel_l2"], rel, rel_tol=tol), (k, row["rel_l2"], rel)


def test_recorded_statistics_read_no_tensor_bytes(work: Path, tvcs: Tvcs) -> None:
    a, b, _ = _states()
    _commit_all(work, tvcs, (a, b))
    j = _strict_json(tvcs("diff", "HEAD~1", "HEAD", "--stats", "--json").stdout)
    _check_against_torch(j["changed"], _expected(a, b), RECORDED_TOL)
    tensors = [x for x in j["changed"] if x["kind"] == "tensor"]
    assert {x["source"] for x in tensors} == {"recorded"}
    assert all(x["max_abs_diff"] is None and x["frac_changed"] is None for x in tensors)
    assert j["summary"] == {
        "compared": 6,
        "changed": 5,
        "unchanged": 1,
        "dtype_or_shape_changed": 0,
        "added": 0,
        "removed": 0,
        "nonfinite": 0,
        "largest_rel_l2": j["summary"]["largest_rel_l2"],
        "largest_key": "ckpt.pt/model/big_move.weight",
        "recorded": 5,
        "computed": 0,
        "bytes_read": 0,
    }
    assert math.isclose(j["summary"]["largest_rel_l2"], 0.25, rel_tol=RECORDED_TOL)
    # reversed (A's parent is B): the same norms of the difference, relative to the new A
    back = tvcs.json("diff", "HEAD", "HEAD~1", "--stats")
    _check_against_torch(back["changed"], _expected(b, a), RECORDED_TOL)
    assert back["summary"]["recorded"] == 5
    text = tvcs("diff", "HEAD~1", "HEAD", "--stats").stdout

    # delete every object of the changed tensors, in both commits: the answer is the same
    repo = Repo.open(work)
    keys = {x["key"] for x in tensors}
    gone = {
        o
        for rev in ("HEAD~1", "HEAD")
        for t in repo.tensors(rev)
        if t.key in keys
        for o in t.objects
    }
    removed = 0
    for p in (work / ".tvcs").rglob("*"):
        if p.is_file() and p.parent.name + p.name in gone:
            p.unlink()
            removed += 1
    assert removed == len(gone) >= 3
    assert tvcs("diff", "HEAD~1", "HEAD", "--stats").stdout == text
    again = _strict_json(tvcs("diff", "HEAD~1", "HEAD", "--stats", "--json").stdout)
    assert again == j
    # reading them now fails, so the answer above really came from the statistics
    res = tvcs("diff", "HEAD~1", "HEAD", "--stats", "--measure", code=4)
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_computed_when_not_recorded(
    work: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = _states()
    _commit_all(work, tvcs, (a, b, c))
    # HEAD~2 is not HEAD's parent: computed from the tensors, in float64
    j = _strict_json(tvcs("diff", "HEAD~2", "HEAD", "--stats", "--json").stdout)
    _check_against_torch(j["changed"], _expected(a, c), COMPUTED_TOL)
    tensors = [x for x in j["changed"] if x["kind"] == "tensor"]
    assert {x["source"] for x in tensors} == {"computed"}
    assert j["summary"]["computed"] == 5 and j["summary"]["recorded"] == 0
    assert j["summary"]["bytes_read"] == 2 * sum(_flat(a)[x["key"]].nbytes for x in tensors)
    small = next(x for x in tensors if x["key"] == "ckpt.pt/model/small_move.weight")
    fa, fc = (
        _flat(a)["ckpt.pt/model/small_move.weight"],
        _flat(c)["ckpt.pt/model/small_move.weight"],
    )
    assert small["max_abs_diff"] == pytest.approx(float((fc.double() - fa.double()).abs().max()))
    assert small["frac_changed"] == 1.0
    # --measure on a parent/child pair: computed, and agrees with the recorded numbers
    rec = tvcs.json("diff", "HEAD~1", "HEAD", "--stats")
    meas = tvcs.json("diff", "HEAD~1", "HEAD", "--stats", "--measure")
    assert [x["key"] for x in rec["changed"]] == [x["key"] for x in meas["changed"]]
    for x, y in zip(rec["changed"], meas["changed"], strict=True):
        if x["kind"] == "tensor":
            assert (x["source"], y["source"]) == ("recorded", "computed")
            assert math.isclose(x["rel_l2"], y["rel_l2"], rel_tol=RECORDED_TOL)
    # commits written without statistics (an older manifest): computed too
    monkeypatch.setattr(TensorWriter, "record_stats", False)
    _commit_all(work, tvcs, (a, b))
    old = tvcs.json("diff", "HEAD~1", "HEAD", "--stats")
    _check_against_torch(old["changed"], _expected(a, b), COMPUTED_TOL)
    assert old["summary"]["computed"] == 5 and old["summary"]["bytes_read"] > 0


def test_sorted_grouped_filtered_shortened(work: Path) -> None:
    a, b, _ = _states()
    tvcs = Tvcs(CliRunner(env={"COLUMNS": "60"}))
    tvcs("init", "--chunk-size", "64KiB")
    _commit_all(work, tvcs, (a, b))
    want = _expected(a, b)
    out = tvcs("diff", "HEAD~1", "HEAD", "--stats").stdout
    lines = out.splitlines()
    table = lines[lines.index("") + 1 :]
    assert all(len(line) <= 60 for line in table[:-4]), table  # rows fit; the notes may wrap
    groups = [line for line in table if line.endswith(" changed)")]
    assert groups == ["weights (3 changed)", "optimizer moments (1 changed)", "other (1 changed)"]
    weights = table[table.index(groups[0]) + 1 : table.index(groups[1])]
    # largest relative change first: big (0.25), the long key (~0.01/‖A‖), small (~1e-4)
    order = sorted((k for k in want if "/model/" in k), key=lambda k: -want[k][2])
    cut = [shorten(k, 60 - 41) for k in order]  # 60 columns less the numbers' 41
    assert [w.split()[0] for w in weights] == cut
    long_row = weights[order.index("ckpt.pt/" + LONG)]
    head, tail = long_row.split()[0].split("…")
    assert ("ckpt.pt/" + LONG).startswith(head) and ("ckpt.pt/" + LONG).endswith(tail)
    assert out.splitlines()[-2].startswith(
        "6 tensors compared: 5 changed, 1 unchanged; 0 added, 0 removed; largest relative "
        "change 0.25 (ckpt.pt/model/big_move.weight)"
    )
    assert (
        out.splitlines()[-1]
        == "(statistics: 5 recorded at commit time, 0 computed, 0 B of tensors read)"
    )
    # bars relative to each tensor, on a log scale: 0.25 → 15.2 of 16 cells, 1e-4-ish → 8
    big = next(w for w in weights if w.split()[0] == cut[0])
    assert big.count("█") == int(16 * log_fraction(want[order[0]][2]))
    # --sort key / abs
    by_key = tvcs.json("diff", "HEAD~1", "--stats", "--sort", "key")
    tkeys = [x["key"] for x in by_key["changed"] if x["kind"] == "tensor"]
    assert tkeys == sorted(want)
    by_abs = tvcs.json("diff", "HEAD~1", "--stats", "--sort", "abs")
    tkeys = [x["key"] for x in by_abs["changed"] if x["kind"] == "tensor"]
    assert tkeys == sorted(want, key=lambda k: -want[k][0])
    # globs after --, with or without B
    for revs in (("HEAD~1", "HEAD"), ("HEAD~1",)):
        j = _strict_json(tvcs("diff", *revs, "--stats", "--json", "--", "ckpt.pt/model/*").stdout)
        assert {x["key"] for x in j["changed"]} == {k for k in want if "/model/" in k}
        assert j["summary"]["compared"] == 4 and j["summary"]["unchanged"] == 1
    j = _strict_json(
        tvcs("diff", "HEAD~1", "HEAD", "--stats", "--json", "--", "*exp_avg", "*epoch").stdout
    )
    assert [x["key"] for x in j["changed"]] == [
        "ckpt.pt/optimizer/state/0/exp_avg",
        "ckpt.pt/epoch",
    ]
    res = tvcs("diff", "HEAD~1", "HEAD", "--", "nothing/*", code=4)
    assert res.stderr.strip().endswith("matches 'nothing/*'")
    assert len(res.stderr.strip().splitlines()) == 1
    tvcs("diff", "HEAD~1", "--sort", "size", code=2)


def test_nonfinite_is_null_with_a_flag(work: Path, tvcs: Tvcs) -> None:
    a = {"w": torch.ones(4), "z": torch.zeros(3)}
    b = {"w": torch.tensor([1.0, float("nan"), 1.0, 1.0]), "z": torch.ones(3)}
    _commit_all(work, tvcs, (a, b))
    j = _strict_json(tvcs("diff", "HEAD~1", "--stats", "--json").stdout)
    rows = {x["key"]: x for x in j["changed"]}
    assert rows["ckpt.pt/w"]["rel_l2"] is None and rows["ckpt.pt/w"]["nonfinite"] is True
    assert rows["ckpt.pt/w"]["source"] == "computed"  # a NaN records no change norm
    assert rows["ckpt.pt/z"]["rel_l2"] is None and rows["ckpt.pt/z"]["nonfinite"] is True
    assert rows["ckpt.pt/z"]["delta_norm"] == pytest.approx(math.sqrt(3), rel=RECORDED_TOL)
    assert rows["ckpt.pt/z"]["norm_a"] == 0.0
    assert j["summary"]["nonfinite"] == 2 and j["summary"]["largest_rel_l2"] is None
    # NaN sorts first, then inf (a zero tensor that moved)
    assert [x["key"] for x in j["changed"]] == ["ckpt.pt/w", "ckpt.pt/z"]
    text = tvcs("diff", "HEAD~1", "--stats").stdout
    assert "  ckpt.pt/w " in text and " nan " in text and " inf " in text


def test_stats_through_the_tvcs_script(work: Path, tvcs: Tvcs) -> None:
    a, b, _ = _states()
    _commit_all(work, tvcs, (a, b))
    exe = Path(sys.executable).with_name("tvcs")
    env = dict(os.environ, COLUMNS="72")
    res = subprocess.run(
        [str(exe), "diff", "HEAD~1", "HEAD", "--stats", "--json", "--", "ckpt.pt/model/*"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    j = _strict_json(res.stdout)
    want = {k: v for k, v in _expected(a, b).items() if "/model/" in k}
    _check_against_torch(j["changed"], want, RECORDED_TOL)
    assert j["summary"]["bytes_read"] == 0
    res = subprocess.run(
        [str(exe), "diff", "HEAD~1", "--stats"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "weights (3 changed)" in res.stdout and "optimizer moments (1 changed)" in res.stdout
    res = subprocess.run(
        [str(exe), "diff", "HEAD~1", "--", "nope"],
        capture_output=True,
        text=True,
        env=env,
        cwd=work,
        check=False,
    )
    assert res.returncode == 4 and res.stderr.startswith("tvcs: error: no key path of ")


@given(st.text(min_size=0, max_size=200), st.integers(min_value=1, max_value=120))
@example("…" * 5 + "abc", 4)
def test_shorten_keeps_both_ends(key: str, width: int) -> None:
    s = shorten(key, width)
    assert len(s) <= width
    if len(key) <= width:
        assert s == key
    else:
        assert len(s) == width
        # the cut: one "…" between a head and a tail of the key, within one of equal length
        # (found by position, not by searching: the key may hold "…" itself)
        cuts = [
            h
            for h in range(width)
            if s[h] == "…"
            and abs(h - (width - 1 - h)) <= 1
            and key.startswith(s[:h])
            and key.endswith(s[h + 1 :])
        ]
        assert cuts, (key, s)


@given(st.floats(min_value=0, allow_nan=False), st.floats(min_value=0, allow_nan=False))
def test_log_bars_are_monotonic(x: float, y: float) -> None:
    lo, hi = sorted((x, y))
    assert 0.0 <= log_fraction(lo) <= log_fraction(hi) <= 1.0
    assert log_fraction(1e-8) == 0.0 and log_fraction(1.0) == 1.0
    assert log_fraction(1e-4) == pytest.approx(0.5)
