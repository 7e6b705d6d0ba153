"""Helpers: sizes (SI and IEC, issue 12 item 9), bars, shell completion, and the page
dropper. The progress bars: test_progress.py."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorvcs.cli import _util, cli
from tensorvcs.io import mapped

from .clihelp import Tvcs


def test_sizes_and_bars() -> None:
    assert _util.human_size(0) == "0 B"
    assert _util.human_size(1023) == "1023 B"
    assert _util.human_size(1536) == "1.5 KiB"
    assert _util.human_size(3 << 30) == "3.0 GiB"
    assert _util.human_size(5 << 50) == "5.0 PiB"
    assert _util.parse_size("4MiB") == 4 << 20
    assert _util.parse_size("64KiB") == 64 << 10
    assert _util.parse_size("4096") == 4096
    with pytest.raises(click.BadParameter):
        _util.parse_size("lots")
    assert _util.bar(1.0, 4) == "████"
    assert _util.bar(0.0, 4) == "    "
    assert _util.bar(0.5, 3) == "█▌ "
    assert _util.bar(1e-9, 3).strip() == "▏"  # non-zero always shows
    assert len(_util.bar(0.37, 10)) == 10


UNIT_TABLE = {
    "B": 1, "kB": 1000, "KB": 1000, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15,
    "KiB": 1024, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "PiB": 1 << 50,
    "Ki": 1024, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
}


@pytest.mark.parametrize("unit", sorted(UNIT_TABLE))
def test_size_units_exact(unit: str) -> None:
    assert _util.parse_size(f"4{unit}") == 4 * UNIT_TABLE[unit]
    assert _util.parse_size(f" 3 {unit} ") == 3 * UNIT_TABLE[unit]
    if unit != "B":  # a fraction of a unit: rounded to the byte (of a byte: refused)
        assert _util.parse_size(f"1.5{unit}") == round(1.5 * UNIT_TABLE[unit])
    assert _util.parse_size(f"0{unit}") == 0


def test_sizes_si_and_iec_as_the_convention_has_them() -> None:
    assert _util.parse_size("4MB") == 4_000_000
    assert _util.parse_size("4MiB") == 4_194_304
    assert _util.parse_size(".5MiB") == 524_288
    with pytest.raises(click.BadParameter) as e:
        _util.parse_size("4M")
    assert e.value.message == (
        "ambiguous size '4M': write 4MB (4,000,000 bytes) or 4MiB (4,194,304 bytes)"
    )
    with pytest.raises(click.BadParameter) as e:
        _util.parse_size("64k")
    assert e.value.message == (
        "ambiguous size '64k': write 64kB (64,000 bytes) or 64KiB (65,536 bytes)"
    )
    for wrong in ("4mb", "4mib", "4Kib", "4gB"):  # b is a bit, m is milli: not guessed
        with pytest.raises(click.BadParameter) as e:
            _util.parse_size(wrong)
        assert "unknown unit" in e.value.message and "iB (" in e.value.message
    for bad in ("", "-4MiB", "4 MiB B", "1e6", "4,096", "0.5", "0.5B", "MiB"):
        with pytest.raises(click.BadParameter):
            _util.parse_size(bad)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=1 << 60))
def test_size_format_parse_round_trip(n: int) -> None:
    text = _util.human_size(n)
    unit = text.split()[-1]
    assert unit in _util.IEC_UNITS  # one convention for printing: IEC
    back = _util.parse_size(text)
    assert abs(back - n) <= UNIT_TABLE.get(unit, 1) * 0.05 + 0.5  # one decimal: within rounding
    if unit == "B":
        assert back == n


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNIT_TABLE)))
def test_size_whole_values_exact(k: int, unit: str) -> None:
    assert _util.parse_size(f"{k}{unit}") == k * UNIT_TABLE[unit]


def test_cli_size_options(work: Path, tvcs: Tvcs) -> None:
    res = tvcs("init", "other", "--chunk-size", "4M", code=2)
    assert "ambiguous size '4M': write 4MB (4,000,000 bytes) or 4MiB (4,194,304 bytes)" in (
        res.stderr
    )
    assert "Traceback" not in res.stderr and not (work / "other").exists()
    assert "chunk_size" in tvcs("init", "si", "--chunk-size", "4MB", "--json").stdout
    assert tvcs("--repo", "si", "config", "chunk_size").stdout == "4000000 (3.8 MiB)\n"
    res = tvcs("config", "chunk_size", "8M", code=2)
    assert res.stderr.strip() == (
        "tvcs: error: config chunk_size: ambiguous size '8M': write 8MB (8,000,000 bytes) or "
        "8MiB (8,388,608 bytes)"
    )
    tvcs("config", "chunk_size", "8MiB")
    assert tvcs("config", "chunk_size").stdout == "8388608 (8.0 MiB)\n"
    tvcs("config", "pack_threshold", "64kB")
    assert tvcs("config", "pack_threshold").stdout == "64000 (62.5 KiB)\n"


def test_cli_size_refusal_in_a_subprocess(work: Path) -> None:
    tvcs_script = Path(sys.executable).parent / "tvcs"
    env = {k: v for k, v in os.environ.items() if k not in ("TVCS_REPO", "TVCS_DEBUG")}
    p = subprocess.run([str(tvcs_script), "config", "chunk_size", "1G"], cwd=work, env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "1GB (1,000,000,000 bytes) or 1GiB" in p.stderr
    assert json.loads((work / ".tvcs" / "config.json").read_text())["chunk_size"] == 65536


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
