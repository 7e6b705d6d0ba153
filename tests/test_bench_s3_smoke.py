"""Smoke test of the object-storage benchmarks: `bench/w8_dcp_s3.py --quick` (4 ranks, the
three saves with and without deferred deltas, the load, tv.compact) and
`bench/object_cost_s3.py` run against the loopback S3 server and report what they measure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("moto")
pytest.importorskip("s3fs")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")


def test_w8_quick(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "w8_dcp_s3.py"), "--quick",
                           "--out", str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "tv.compact afterwards (1 process)" in proc.stdout
    res = json.loads((tmp_path / "w8_dcp_s3.json").read_text())
    for name in ("tv", "tve", "fs"):
        for phase in ("save1", "save2_small", "save3_step"):
            (run,) = res[f"{name}_{phase}"]
            assert run["requests_total"] > 0 and run["bytes_sent"] > 0, (name, phase)
    assert res["tv_commits"] == ["after a training step", "one layer changed", "first"]
    assert res["files_left_on_rank_disks"] == []
    st = res["stored_bytes"][0]
    assert st["tv"] > 0 and st["tve"] > 0


def test_object_cost_s3_small(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "object_cost_s3.py"), "--mib",
                           "64", "--reps", "1", "--latency-ms", "0"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [ln.split() for ln in proc.stdout.splitlines() if ln.split()[:1] == ["0ms"]]
    # latency, size, "MiB", "objects", count, requests, seconds, MiB/s: one PUT per object
    assert [(r[1], r[4], r[5]) for r in rows] == [("4", "16", "16"), ("64", "1", "1")]
    assert all(float(r[6]) > 0 for r in rows)
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("goal 6 ")]
    assert "x at 0 ms latency" in line and ("does not matter" in line or "MATTERS" in line)


def test_object_cost_local_small(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "object_cost.py"), "--dir",
                           str(tmp_path), "--mib", "32", "--reps", "1", "--only", "4,5"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "8 files of 4 MiB, written by 8 threads, then fsynced by 8" in proc.stdout
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("goal 6 ")]
    assert "x at the local disk" in line
    assert list(tmp_path.iterdir()) == []  # its work folder is removed
