"""tvcs diff A B --plot out.png|out.svg: a valid file whose bars are the statistics; without
matplotlib a one-line error naming the extra to install."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from cli.clihelp import Tvcs
from click.testing import CliRunner

from tensorvcs.report.data import GROUPS
from tensorvcs.report.plot import PlotRow, plot_rows

TVCS = str(Path(sys.executable).with_name("tvcs"))


@pytest.fixture
def two_commits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Tvcs, Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TVCS_REPO", raising=False)
    tvcs = Tvcs(CliRunner())
    tvcs("init")
    g = torch.Generator().manual_seed(3)
    a = {
        "model": {
            "l1.weight": torch.randn(16, 16, generator=g),
            "l2.weight": torch.randn(8, generator=g),
            "frozen": torch.randn(4, generator=g),
        },
        "optimizer": {"state": {0: {"exp_avg": torch.randn(16, generator=g)}}},
    }
    torch.save(a, tmp_path / "ckpt.pt")
    tvcs("commit", "ckpt.pt", "-m", "a")
    b = {
        "model": dict(a["model"]),
        "optimizer": {"state": {0: {"exp_avg": a["optimizer"]["state"][0]["exp_avg"] * 0.5}}},
    }
    b["model"]["l1.weight"] = a["model"]["l1.weight"] * 1.01
    b["model"]["l2.weight"] = a["model"]["l2.weight"] * 1.3
    torch.save(b, tmp_path / "ckpt.pt")
    tvcs("commit", "ckpt.pt", "-m", "b")
    return tvcs, tmp_path


def test_plot_png_and_svg_draw_the_statistics(two_commits: tuple[Tvcs, Path]) -> None:
    tvcs, work = two_commits
    st = tvcs.json("diff", "HEAD~1", "HEAD", "--stats")
    rows = [PlotRow(x["key"], x["group"], x["rel_l2"]) for x in st["changed"]]
    drawn = plot_rows(rows, GROUPS)
    assert [(r.key, r.group) for r in drawn] == [
        ("ckpt.pt/model/l2.weight", "weights"),
        ("ckpt.pt/model/l1.weight", "weights"),
        ("ckpt.pt/optimizer/state/0/exp_avg", "optimizer moments"),
    ]
    assert [r.rel for r in drawn] == pytest.approx([0.3, 0.01, 0.5], rel=1e-5)
    tvcs("diff", "HEAD~1", "HEAD", "--plot", work / "d.png")
    png = (work / "d.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    tvcs("diff", "HEAD~1", "HEAD", "--plot", work / "d.svg")
    root = ET.parse(work / "d.svg").getroot()
    assert root.tag.endswith("svg")
    ns = "{http://www.w3.org/2000/svg}"
    # each bar is a <g id="group NAME"> holding its rectangle's path
    ids = [g.get("id") for g in root.iter(f"{ns}g") if (g.get("id") or "").startswith("group ")]
    assert sorted(ids) == ["group optimizer moments", "group weights", "group weights"]
    text = (work / "d.svg").read_text()
    assert "HEAD~1" in text  # the title names the revisions
    res = tvcs("diff", "HEAD~1", "--plot", work / "d.gif", code=2)
    assert "must end in .png or .svg" in res.stderr


def test_plot_without_matplotlib_names_the_extra(two_commits: tuple[Tvcs, Path]) -> None:
    _, work = two_commits
    block = work / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'matplotlib' or name.startswith('matplotlib.'):\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, _Block())\n"
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(block), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    res = subprocess.run(
        [TVCS, "diff", "HEAD~1", "--plot", "x.png"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 2, res.stderr
    assert (
        res.stderr.strip()
        == 'tvcs: error: --plot needs matplotlib: pip install "tensorvcs[report]"'
    )
    assert not (work / "x.png").exists()
    ok = subprocess.run(
        [TVCS, "diff", "HEAD~1", "--plot", "y.svg", "--stats", "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert (work / "y.svg").stat().st_size > 1000
    rel = {x["key"]: x["rel_l2"] for x in json.loads(ok.stdout)["changed"]}
    assert math.isclose(rel["ckpt.pt/model/l2.weight"], 0.3, rel_tol=1e-5)
