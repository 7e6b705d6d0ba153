"""tvcs diff: added / removed / changed / dtype-or-shape changed, and --stats."""

from __future__ import annotations

from pathlib import Path

import torch

from .clihelp import Tvcs


def test_diff(work: Path, tvcs: Tvcs) -> None:
    g = torch.Generator().manual_seed(0)
    a = {
        "frozen": torch.randn(64, 64, generator=g),
        "moved": torch.randn(64, 64, generator=g),
        "row": torch.randn(32, 16, generator=g),
        "retype": torch.zeros(4),
        "gone": torch.ones(2),
        "epoch": 1,
    }
    torch.save(a, work / "m.pt")
    tvcs("commit", "m.pt", "-m", "a")
    b = dict(a)
    b["moved"] = a["moved"] + 1e-3 * torch.randn(64, 64, generator=g)
    b["row"] = a["row"].clone()
    b["row"][3] += 1.0  # one row of 32 changed
    b["retype"] = torch.zeros(4, dtype=torch.float16)
    del b["gone"]
    b["new"] = torch.ones(5)
    b["epoch"] = 2
    torch.save(b, work / "m.pt")
    tvcs("commit", "m.pt", "-m", "b")

    out = tvcs("diff", "HEAD~1", "HEAD").stdout
    assert "3 changed, 1 added, 1 removed, 1 dtype/shape changed" in out
    assert "+ m.pt/new  float32[5]" in out and "- m.pt/gone" in out
    assert "! m.pt/retype  float32[4] -> float16[4]" in out
    assert "~ m.pt/moved" in out and "~ m.pt/epoch  1 -> 2" in out and "frozen" not in out

    j = tvcs.json("diff", "HEAD~1")  # B defaults to HEAD
    assert [x["key"] for x in j["added"]] == ["m.pt/new"]
    assert [x["key"] for x in j["removed"]] == ["m.pt/gone"]
    assert {x["key"] for x in j["changed"]} == {"m.pt/moved", "m.pt/row", "m.pt/epoch"}
    assert j["unchanged"] == 1 and "max_abs_diff" not in j["changed"][0]

    st = tvcs.json("diff", "HEAD~1", "HEAD", "--stats", "--measure")
    rows = {x["key"]: x for x in st["changed"]}
    assert abs(rows["m.pt/row"]["frac_changed"] - 1 / 32) < 1e-9
    assert abs(rows["m.pt/row"]["max_abs_diff"] - 1.0) < 1e-6
    assert rows["m.pt/moved"]["frac_changed"] > 0.99
    assert 0 < rows["m.pt/moved"]["rel_l2"] < 0.01
    expected = float((b["moved"] - a["moved"]).double().norm() / a["moved"].double().norm())
    assert abs(rows["m.pt/moved"]["rel_l2"] - expected) < 1e-9

    text = tvcs("diff", "HEAD~1", "HEAD", "--stats", "--measure").stdout
    assert "max|Δ|" in text and "rel L2" in text and "changed" in text
    row_line = next(line for line in text.splitlines() if line.startswith("  m.pt/row "))
    assert "█" in row_line and "3.1%" in row_line
    assert tvcs.json("diff", "HEAD", "HEAD")["changed"] == []
    tvcs("diff", "HEAD~5", "HEAD", code=4)
