"""W3 — full fine-tune series: MiniLM trained with real AdamW steps (fp32 weights, lr 1e-5,
SimCSE loss on tokenized sentences); model + optimizer state + step + RNG committed every 2
steps. Bytes stored per commit over the raw bytes of the state.

Target (issue 4): ≤ 0.35× raw per commit (judged on the steady-state median, commits 2..N;
the first commit and the mean over all commits are reported next to it).
"""

from __future__ import annotations

from typing import Any

from . import common as c
from . import minilm, series

NAME = "W3"
TITLE = "full fine-tune series (fp32 + AdamW)"
TARGET = 0.35
EVERY = 2


def commits(ctx: c.Context) -> int:
    return 3 if ctx.quick else 8


def bf16_commits(ctx: c.Context) -> int:
    return 3 if ctx.quick else 8


def run(ctx: c.Context) -> dict[str, Any]:
    full, _ = minilm.finetune_series(commits(ctx), EVERY, bf16_commits(ctx))
    ctx.log(
        f"  W3: {len(full.states)} commits (every {EVERY} steps), trained in "
        f"{c.fmt_s(full.train_seconds)}"
    )
    res = series.run_series(ctx, "w3", full.states, full.steps, keep_repo=True)
    res.update(
        {"title": TITLE, "every": EVERY, "lr": 1e-5, "losses": full.losses, "target": TARGET}
    )
    if res["kept_repo"]:
        ctx.shared["w3_repo"] = res["kept_repo"]
        ctx.shared["w3_commit"] = res["commit_ids"][-1]
    return res


def summary_rows(res: dict[str, Any], label: str) -> list[list[Any]]:
    return [
        [f"{label}: first commit stored/raw", c.fmt_x(res["first_over_raw"])],
        [f"{label}: **steady-state median stored/raw** (commits 2..N)",
         c.fmt_x(res["steady_median_over_raw"])],
        [f"{label}: largest stored/raw of commits 2..N", c.fmt_x(res["steady_max_over_raw"])],
        [f"{label}: mean stored/raw over all commits", c.fmt_x(res["mean_over_raw"])],
        [f"{label}: repository / folder of torch.save files",
         c.fmt_x(res["repo_over_torch_save_dir"])],
        [f"{label}: commit time tensorvcs / torch.save+fsync (steady median)",
         f"{c.fmt_s(res['tvcs_commit_seconds_steady_median'])} / "
         f"{c.fmt_s(res['torch_save_seconds_steady_median'])} = "
         f"{c.fmt_x(res['tvcs_over_torch_save_time'], 2)}"],
    ]


def table(res: dict[str, Any]) -> str:
    return (
        series.commits_table(res)
        + "\n\n"
        + series.group_table(res)
        + "\n\n"
        + c.md_table(["W3 summary (target ≤ 0.35×)", "value"], summary_rows(res, "W3"))
    )


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    v = res["steady_median_over_raw"]
    return [
        {
            "workload": NAME,
            "target": "full fine-tune: stored ≤ 0.35× raw per commit (steady-state median)",
            "limit": TARGET,
            "measured": v,
            "mean_all_commits": res["mean_over_raw"],
            "steady_commits_over_limit": steady_over(res, TARGET),
            "met": bool(v <= TARGET),
        },
        time_target(res, NAME),
    ]


TIME_LIMIT = 1.0  # issue 11 goal 2: a steady commit at most torch.save+fsync of the state


def time_target(res: dict[str, Any], workload: str) -> dict[str, Any]:
    """Issue 11 goal 2 for a series' steady commits: the median commit time over commits
    2..N against the median torch.save+fsync of the same states, measured in the same run."""
    v = res["tvcs_over_torch_save_time"]
    return {
        "workload": workload,
        "target": "issue 11 goal 2: steady commit time ≤ 1.0× torch.save+fsync (medians)",
        "limit": TIME_LIMIT,
        "measured": v,
        "tvcs_seconds": res["tvcs_commit_seconds_steady_median"],
        "torch_save_seconds": res["torch_save_seconds_steady_median"],
        "met": bool(v <= TIME_LIMIT),
    }


def steady_over(res: dict[str, Any], limit: float) -> list[int]:
    """Commit numbers (1-based) among 2..N whose stored/raw exceeds ``limit``."""
    return [i + 1 for i, x in enumerate(res["commits"]) if i and x["stored_over_raw"] > limit]
