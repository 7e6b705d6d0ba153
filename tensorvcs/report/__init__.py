"""``tvcs report``: a run at a glance, as one self-contained HTML file.

``gather`` (data.py) collects what the report shows from a repository: metric curves, the
relative change of every layer per commit, storage per commit and the NaN/Inf warnings, from
the statistics recorded at commit time (no tensor bytes read) or, for commits without them,
measured from their tensors. ``render`` (page.py) turns that into HTML with inline SVG charts
and a small inline script for tooltips: no library, no network.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..repo import Repo
from .data import ReportData, gather
from .page import render


def build(repo: Repo, rev_range: str = "HEAD", title: str | None = None) -> tuple[ReportData, str]:
    """(the data, the HTML page) of the report of ``rev_range`` (``REV`` or ``A..B``)."""
    t0 = time.perf_counter()
    data = gather(repo, rev_range, title)
    data.build_seconds = time.perf_counter() - t0
    return data, render(data)


def write_report(
    repo: Repo, out: str | os.PathLike[str], rev_range: str = "HEAD", title: str | None = None
) -> ReportData:
    """Write the report of ``rev_range`` to ``out`` (via a temporary file and a rename)."""
    data, page = build(repo, rev_range, title)
    path = Path(out)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return data


__all__ = ["ReportData", "build", "gather", "render", "write_report"]
