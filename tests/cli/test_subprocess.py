"""The real entry points as subprocesses: `.venv/bin/tvcs` and `python -m tensorvcs.cli`.
Few and run concurrently: each one pays the torch import (seconds)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tensorvcs import Repo

from .clihelp import assert_same, sha256

TVCS = Path(sys.executable).parent / "tvcs"
MODULE = [sys.executable, "-m", "tensorvcs.cli"]


def start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TVCS_REPO", "TVCS_DEBUG")}
    return subprocess.Popen(
        args, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(p: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


class Evil:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_real_processes(tmp_path: Path) -> None:
    cmd = [str(TVCS)] if TVCS.exists() else MODULE
    good, bad, evil = tmp_path / "good", tmp_path / "bad", tmp_path / "evil"
    for d in (good, bad, evil):
        Repo.init(d).close()
    state = {"model": {"w": torch.randn(50, 50)}, "step": 7}
    torch.save(state, good / "m.pt")
    save_file({"x": torch.randn(30, 3)}, str(good / "w.safetensors"), metadata={"a": "b"})
    marker = tmp_path / "pwned"
    torch.save({"w": torch.ones(1), "payload": Evil(marker)}, evil / "evil.pt")

    procs = [
        start([*cmd, "commit", "m.pt", "w.safetensors", "-m", "sub", "--step", "7"], good),
        start([*MODULE, "log", "nope"], bad),
        start([*cmd, "commit", "evil.pt", "-m", "x"], evil),
    ]
    (c1, out1, err1), (c2, _, err2), (c3, _, err3) = [finish(p) for p in procs]
    assert c1 == 0, err1
    assert out1.startswith("[main ")
    assert c2 == 4 and err2.startswith("tvcs: error: ") and err2.count("\n") == 1, err2
    assert "Traceback" not in err2
    assert c3 == 7 and "evil.pt" in err3 and "--unsafe-pickle" in err3 and "Traceback" not in err3
    assert not marker.exists()  # the pickle's code never ran

    ref = sha256(good / "w.safetensors")
    shutil.move(good / "w.safetensors", tmp_path / "w.safetensors")
    (good / "m.pt").unlink()
    c, _, err = finish(start([*MODULE, "checkout", "HEAD"], good))
    assert c == 0, err
    assert sha256(good / "w.safetensors") == ref
    assert_same(torch.load(good / "m.pt", weights_only=True), state)


@pytest.mark.skipif(not TVCS.exists(), reason="the tvcs script is not installed in this venv")
def test_script_is_installed() -> None:
    assert TVCS.exists()
