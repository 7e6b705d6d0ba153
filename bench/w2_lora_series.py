"""W2 — LoRA series: a frozen MiniLM base + rank-8 LoRA adapters on the attention query and
value projections, trained with real AdamW steps on the adapters only; the full state (base,
adapters, optimizer state, step, RNG) committed after every step.

Target (issue 4): the repository holds at most 1.05× the raw bytes of one base plus N times
the parts that change (adapters + optimizer state + step + RNG).
"""

from __future__ import annotations

from typing import Any

from . import common as c
from . import minilm, series

NAME = "W2"
TITLE = "LoRA series"
TARGET = 1.05


def run(ctx: c.Context) -> dict[str, Any]:
    n = 3 if ctx.quick else 10
    s = minilm.lora_series(n)
    ctx.log(f"  W2: {n} commits of the full state, trained in {c.fmt_s(s.train_seconds)}")
    first = s.states[0]
    total = c.logical_bytes(first)
    base = sum(
        t.numel() * t.element_size() for k, t in first["model"].items() if "lora" not in k
    )
    changing = total - base
    adapters = sum(t.numel() * t.element_size() for k, t in first["model"].items() if "lora" in k)
    res = series.run_series(ctx, "w2", s.states, s.steps, keep_repo=True)
    reference = base + n * changing
    res.update(
        {
            "title": TITLE,
            "commits_n": n,
            "losses": s.losses,
            "base_bytes": base,
            "adapter_bytes": adapters,
            "changing_bytes_per_commit": changing,
            "reference_bytes": reference,
            "repo_over_reference": c.ratio(res["repo_bytes"], reference),
            "target": TARGET,
        }
    )
    if res["kept_repo"]:
        ctx.shared["w2_repo"] = res["kept_repo"]
        ctx.shared["w2_commit"] = res["commit_ids"][-1]
    return res


def table(res: dict[str, Any]) -> str:
    rows = [
        ["commits", res["commits_n"]],
        ["frozen base (raw)", c.fmt_bytes(res["base_bytes"])],
        ["adapters + optimizer + step + RNG per commit (raw)",
         c.fmt_bytes(res["changing_bytes_per_commit"])],
        ["reference: one base + N × changing (raw)", c.fmt_bytes(res["reference_bytes"])],
        ["tensorvcs repository (all of .tvcs)", c.fmt_bytes(res["repo_bytes"])],
        ["**tensorvcs / reference** (target ≤ 1.05×)", c.fmt_x(res["repo_over_reference"])],
        ["folder of N torch.save files", c.fmt_bytes(res["torch_save_dir_bytes"])],
        ["tensorvcs / torch.save folder", c.fmt_x(res["repo_over_torch_save_dir"])],
        ["commit time, median of commits 2..N: tensorvcs",
         c.fmt_s(res["tvcs_commit_seconds_steady_median"])],
        ["commit time, median of commits 2..N: torch.save + fsync",
         c.fmt_s(res["torch_save_seconds_steady_median"])],
        ["tensorvcs / torch.save time", c.fmt_x(res["tvcs_over_torch_save_time"], 2)],
    ]
    return c.md_table(["W2 LoRA series", "value"], rows)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    v = res["repo_over_reference"]
    return [
        {
            "workload": NAME,
            "target": "repository ≤ 1.05× (one base + N × (adapters + optimizer)) raw",
            "limit": TARGET,
            "measured": v,
            "met": bool(v <= TARGET),
        }
    ]
