"""``tvcs diff A B --plot out.png|out.svg``: per-tensor relative change ‖B−A‖/‖A‖ as a
horizontal bar chart (log scale), grouped as ``diff --stats`` groups it, drawn by matplotlib
(the optional extra ``tensorvcs[report]``; imported only here, only when a chart is drawn)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import UsageError

INSTALL = 'pip install "tensorvcs[report]"'
FORMATS = ("png", "svg")


@dataclass(frozen=True)
class PlotRow:
    key: str
    group: str
    rel: float  # ‖B−A‖/‖A‖; rows with a non-finite or zero value are not drawn


def plot_rows(rows: Sequence[PlotRow], groups: Sequence[str]) -> list[PlotRow]:
    """The rows the chart draws, top to bottom: finite, positive values, by group in
    ``groups`` order, in the given order within a group."""
    drawn = [r for r in rows if math.isfinite(r.rel) and r.rel > 0]
    return [r for g in groups for r in drawn if r.group == g]


def write_plot(
    rows: Sequence[PlotRow], groups: Sequence[str], title: str, out: str | os.PathLike[str]
) -> list[PlotRow]:
    """Draw ``plot_rows(rows, groups)`` to ``out`` (.png or .svg); returns what was drawn."""
    ext = os.fspath(out).rsplit(".", 1)[-1].lower()
    if ext not in FORMATS:
        raise UsageError(f"--plot {os.fspath(out)!r}: the file name must end in .png or .svg")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError(f"--plot needs matplotlib: {INSTALL}") from None
    drawn = plot_rows(rows, groups)
    colours = {g: f"C{i}" for i, g in enumerate(groups)}
    fig, ax = plt.subplots(figsize=(9, max(2.0, 0.3 * len(drawn) + 1.2)))
    try:
        y = list(range(len(drawn)))[::-1]
        for g in groups:
            ys = [yy for yy, r in zip(y, drawn, strict=True) if r.group == g]
            vs = [r.rel for r in drawn if r.group == g]
            if vs:
                ax.barh(ys, vs, color=colours[g], label=g, gid=f"group {g}")
        ax.set_yticks(y, [r.key for r in drawn], fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("relative change ‖B−A‖/‖A‖ (log scale)")
        ax.set_title(title)
        if drawn:
            ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(out, format=ext)
    finally:
        plt.close(fig)
    return drawn
