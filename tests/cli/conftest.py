"""Fixtures for the CLI tests: a repository folder as the current directory, and ``tvcs``
run in-process through click's CliRunner (see clihelp.Tvcs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from .clihelp import Tvcs


@pytest.fixture
def tvcs() -> Tvcs:
    return Tvcs(CliRunner())


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tvcs: Tvcs) -> Path:
    """An initialised repository (small chunks, so small tensors still make several chunks),
    as the current directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TVCS_REPO", raising=False)
    tvcs("init", "--chunk-size", "64KiB", "--pack-threshold", "4KiB")
    return tmp_path
