"""Helpers: sizes, bars, the progress bar, shell completion, and the page dropper."""

from __future__ import annotations

import io
import mmap
import os
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from tensorvcs.cli import _util, cli
from tensorvcs.io import mapped

from .clihelp import Tvcs


def test_sizes_and_bars() -> None:
    assert _util.human_size(0) == "0 B"
    assert _util.human_size(1536) == "1.5 KiB"
    assert _util.human_size(3 << 30) == "3.0 GiB"
    assert _util.parse_size("4MiB") == 4 << 20
    assert _util.parse_size("64k") == 64 << 10
    assert _util.parse_size("4096") == 4096
    with pytest.raises(click.BadParameter):
        _util.parse_size("lots")
    assert _util.bar(1.0, 4) == "████"
    assert _util.bar(0.0, 4) == "    "
    assert _util.bar(0.5, 3) == "█▌ "
    assert _util.bar(1e-9, 3).strip() == "▏"  # non-zero always shows
    assert len(_util.bar(0.37, 10)) == 10


def test_progress_draws_only_when_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setattr(sys, "stderr", buf)
    p = _util.Progress(enabled=True, min_interval=0.0)
    p.start("storing", 4 << 20)
    p.update(1 << 20)
    p.update(1 << 20)
    p.finish()
    text = buf.getvalue()
    assert "storing" in text and "MiB" in text and "/s" in text and "\r" in text
    buf.truncate(0)
    q = _util.Progress(enabled=False)
    q.start("x", 10)
    q.update(5)
    q.finish()
    assert buf.getvalue() == ""
    assert _util.Progress().enabled is False  # stderr is not a terminal here


def test_shell_completion(work: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch) -> None:
    r = CliRunner().invoke(cli, [], env={"_TVCS_COMPLETE": "bash_source"}, prog_name="tvcs")
    assert "_TVCS_COMPLETE" in r.stdout and "complete" in r.stdout
    tvcs("tag", "release", code=4)  # nothing to tag yet
    (work / "f").write_bytes(b"1")
    tvcs("commit", "f", "-m", "x", "--tag", "release")
    env = {"_TVCS_COMPLETE": "bash_complete", "COMP_WORDS": "tvcs log re", "COMP_CWORD": "2"}
    r = CliRunner().invoke(cli, [], env=env, prog_name="tvcs")
    assert "release" in r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise/mincore: Linux")
def test_page_dropper_releases_pages(tmp_path: Path) -> None:
    p = tmp_path / "big"
    p.write_bytes(os.urandom(1 << 20) * 16)  # 16 MiB
    seen: list[int] = []
    with open(p, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    arr = np.frombuffer(mm, dtype=np.uint8)
    with mapped.PageDropper([p], interval=3600, on_bytes=seen.append) as d:
        assert len(d._ranges) == 1
        base = mapped.rss_file()
        assert int(arr[::4096].sum()) >= 0  # touch every page
        assert mapped.rss_file() - base >= 15 << 20
        d.tick()
        assert mapped.rss_file() - base < 2 << 20
        assert sum(seen) >= 15 << 20
        assert bytes(arr[:16]) == p.read_bytes()[:16]  # still readable after the drop
    del arr
    mm.close()
