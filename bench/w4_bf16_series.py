"""W4 — bf16 weight series, mixed-precision style: fp32 master weights are trained with AdamW
(the W3 run), and the bf16 copies of the weights are committed after every step.

Target (issue 4): ≤ 0.05× raw per commit (steady-state median, commits 2..N).
"""

from __future__ import annotations

from typing import Any

from . import common as c
from . import minilm, series
from .w3_finetune_series import (
    EVERY,
    bf16_commits,
    commits,
    steady_over,
    summary_rows,
    time_target,
)

NAME = "W4"
TITLE = "bf16 weight series (bf16 copies of AdamW-updated fp32 masters)"
TARGET = 0.05


def run(ctx: c.Context) -> dict[str, Any]:
    _, half = minilm.finetune_series(commits(ctx), EVERY, bf16_commits(ctx))
    ctx.log(f"  W4: {len(half.states)} commits of bf16 weights (one per step)")
    res = series.run_series(ctx, "w4", half.states, half.steps)
    res.update({"title": TITLE, "lr": 1e-5, "target": TARGET})
    return res


def table(res: dict[str, Any]) -> str:
    return (
        series.commits_table(res)
        + "\n\n"
        + series.group_table(res)
        + "\n\n"
        + c.md_table(["W4 summary (target ≤ 0.05×)", "value"], summary_rows(res, "W4"))
    )


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    v = res["steady_median_over_raw"]
    return [
        {
            "workload": NAME,
            "target": "bf16 weights every step: stored ≤ 0.05× raw per commit "
            "(steady-state median)",
            "limit": TARGET,
            "measured": v,
            "mean_all_commits": res["mean_over_raw"],
            "steady_commits_over_limit": steady_over(res, TARGET),
            "met": bool(v <= TARGET),
        },
        time_target(res, NAME),
    ]
