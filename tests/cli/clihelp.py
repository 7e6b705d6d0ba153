"""Helpers for the CLI tests (imported as ``clihelp``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from tensorvcs.cli import cli


class Tvcs:
    """Runs ``tvcs ARGS`` in-process; checks the exit code."""

    def __init__(self, runner: CliRunner) -> None:
        self.runner = runner

    def __call__(self, *args: Any, code: int = 0) -> Result:
        res = self.runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)
        assert res.exit_code == code, (
            f"tvcs {' '.join(map(str, args))} exited {res.exit_code}, expected {code}\n"
            f"stdout: {res.stdout}\nstderr: {res.stderr}"
        )
        return res

    def json(self, *args: Any) -> Any:
        return json.loads(self(*args, "--json").stdout)


def sha256(p: Path | str) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Same nesting, same types, tensors bitwise equal, other values equal."""
    import numpy as np
    import torch

    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, path
        ab = a.detach().contiguous().reshape(-1).view(torch.uint8)
        bb = b.detach().contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(ab, bb), path
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), f"{path}: keys {list(a)} != {list(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}/{i}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
