"""Smoke test of the scale benchmark: `bench/scale.py --smoke` runs and writes sane JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs"
)


def test_scale_smoke(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "scale.py"), "--smoke", "--dtypes", "bf16",
         "--out", str(out), "--workdir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "goal 1" in proc.stdout and "tensorvcs first commit" in proc.stdout
    data = json.loads((out / "scale-smoke.json").read_text())
    assert data["smoke"] is True and data["sizes_gb"] == [0.05]
    assert data["bitwise_equal"] is True
    per_op = data["results"]["0.05/bf16"]
    for op in ("tvcs-commit1", "tvcs-commit2", "tvcs-checkout", "torch-save", "torch-load",
               "st-save", "st-load"):
        med = per_op[op]["median"]
        assert med["seconds"] > 0 and med["peak_rss"] > 0, op
        assert len(per_op[op]["reps"]) == 1
    second = per_op["tvcs-commit2"]["reps"][0]["second"]
    assert second["rewritten_objects"] > 0 and second["stored_bytes"] > 0
    goal = data["goal1"]
    assert goal["checked"] == 3 and isinstance(goal["met"], bool)
    assert goal["met"], goal["missed"]  # 50 MB: far under 512 MiB + 5 MB
    assert not list(tmp_path.glob("tvcs-bench-*"))  # scratch removed
