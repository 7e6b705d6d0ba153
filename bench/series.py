"""Committing a series of training states: bytes and time per commit, for tensorvcs and for a
folder of torch.save files (one file per checkpoint, each fsynced), and where the stored bytes
go (which tensors, stored whole or as deltas)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tensorvcs as tv
from tensorvcs.format import codecs

from . import common as c


def default_group(key: str) -> str:
    """Byte-accounting group of a tensor key path ('model/…', 'optimizer/state/3/exp_avg')."""
    if key.startswith("optimizer/"):
        last = key.rsplit("/", 1)[-1]
        return f"optimizer {last}"
    if key.startswith("model/"):
        return "model lora" if "lora" in key else "model weights"
    return key.split("/", 1)[0]


def _objects_dir(repo_dir: Path) -> Path:
    return repo_dir / ".tvcs" / "objects"


def _breakdown(
    repo: tv.Repo, commit_id: str, new: dict[str, int], group: Callable[[str], str]
) -> dict[str, Any]:
    """Attribute the growth of the store caused by one commit to tensor groups: its new object
    files, and the (negative) change of the parent's chunks it re-encoded as deltas; count how
    many of those bytes are deltas."""
    owner: dict[str, str] = {}
    shared: set[str] = set()
    commits = [commit_id, *repo.get_commit(commit_id).parents[:1]]
    for cid in commits:
        for info in repo.tensors(cid):
            g = group(info.key)
            for oid in info.objects:
                if oid in owner and owner[oid] != g:
                    shared.add(oid)
                owner.setdefault(oid, g)
    by_group: dict[str, int] = {}
    delta_bytes = whole_bytes = 0
    for oid, size in new.items():
        g = "packs (small tensors, mixed)" if oid in shared else owner.get(oid, "manifest + commit")
        by_group[g] = by_group.get(g, 0) + size
        if oid in owner:
            if repo.objects.header(oid).codec == codecs.CODEC_DELTA:
                delta_bytes += size
            else:
                whole_bytes += size
    return {"by_group": by_group, "delta_bytes": delta_bytes, "whole_bytes": whole_bytes}


def run_series(
    ctx: c.Context,
    name: str,
    states: list[Any],
    steps: list[int],
    *,
    group: Callable[[str], str] = default_group,
    keep_repo: bool = False,
) -> dict[str, Any]:
    """Commit ``states`` into a fresh repository ``ctx.reps`` times (and write them as a folder
    of torch.save files as often); medians per commit."""
    n = len(states)
    raw = [c.logical_bytes(s) for s in states]
    raw_by_group: dict[str, int] = {}
    for key, t in c.flatten(states[-1]).items():
        g = group(key)
        raw_by_group[g] = raw_by_group.get(g, 0) + t.numel() * t.element_size()
    tv_secs: list[list[float]] = [[] for _ in range(n)]
    tv_bytes: list[list[int]] = [[] for _ in range(n)]
    tv_total: list[int] = []
    ts_secs: list[list[float]] = [[] for _ in range(n)]
    ts_bytes: list[int] = [0] * n
    breakdown: list[dict[str, Any]] = []
    kept: str | None = None
    commit_ids: list[str] = []
    for rep in range(ctx.reps):
        d = ctx.fresh_dir(f"{name}-tvcs")
        repo = tv.Repo.init(d)
        objs = _objects_dir(d)
        seen = c.file_sizes(objs)
        last_rep = rep == ctx.reps - 1
        try:
            for i, (state, step) in enumerate(zip(states, steps, strict=True)):
                t0 = c.now()
                commit = repo.commit(state, f"step {step}", step=step)
                secs = c.now() - t0
                now = c.file_sizes(objs)
                # stored = growth of .tvcs/objects: new files, plus the change in size of the
                # parent's chunks that the commit re-encoded as deltas (reverse deltas)
                new = {
                    p.replace(os.sep, ""): sz - seen.get(p, 0)
                    for p, sz in now.items()
                    if sz != seen.get(p)
                }
                growth = sum(now.values()) - sum(seen.values())
                seen = now
                tv_secs[i].append(secs)
                tv_bytes[i].append(growth)
                if last_rep:
                    commit_ids.append(commit.id)
                    breakdown.append(_breakdown(repo, commit.id, new, group))
            tv_total.append(c.dir_bytes(d / ".tvcs"))
        finally:
            repo.close()
        if keep_repo and last_rep:
            kept = str(d)
        else:
            c.remove(d)
        # the peer: one torch.save file per checkpoint, in one folder
        pd = ctx.fresh_dir(f"{name}-torchsave")
        for i, (state, step) in enumerate(zip(states, steps, strict=True)):
            path = pd / f"step-{step:06d}.pt"
            t0 = c.now()
            c.torch_save_fsync(state, path)
            secs = c.now() - t0
            ts_secs[i].append(secs)
            ts_bytes[i] = c.dir_bytes(path)
        c.remove(pd)
        ctx.log(
            f"    {name} rep {rep + 1}/{ctx.reps}: tensorvcs {c.fmt_s(sum(x[-1] for x in tv_secs))}"
            f" {c.fmt_bytes(tv_total[-1])}, torch.save {c.fmt_s(sum(x[-1] for x in ts_secs))}"
            f" {c.fmt_bytes(sum(ts_bytes))}"
        )
    commits: list[dict[str, Any]] = []
    for i in range(n):
        b = c.median(tv_bytes[i])
        commits.append(
            {
                "step": steps[i],
                "raw_bytes": raw[i],
                "stored_bytes": b,
                "stored_bytes_all_reps": tv_bytes[i],
                "stored_over_raw": c.ratio(b, raw[i]),
                "tvcs_seconds": c.median(tv_secs[i]),
                "torch_save_seconds": c.median(ts_secs[i]),
                "torch_save_bytes": ts_bytes[i],
                "breakdown": breakdown[i] if i < len(breakdown) else None,
            }
        )
    ratios = [x["stored_over_raw"] for x in commits]
    steady = commits[1:] or commits
    total = c.median(tv_total)
    return {
        "commits": commits,
        "commit_ids": commit_ids,
        "first_over_raw": ratios[0],
        "steady_median_over_raw": c.median(r["stored_over_raw"] for r in steady),
        "steady_max_over_raw": max(r["stored_over_raw"] for r in steady),
        "raw_bytes_by_group": raw_by_group,
        "mean_over_raw": c.mean(ratios),
        "total_raw_bytes": sum(raw),
        "repo_bytes": total,
        "repo_bytes_all_reps": tv_total,
        "torch_save_dir_bytes": sum(ts_bytes),
        "repo_over_torch_save_dir": c.ratio(total, sum(ts_bytes)),
        "tvcs_commit_seconds_steady_median": c.median(r["tvcs_seconds"] for r in steady),
        "torch_save_seconds_steady_median": c.median(r["torch_save_seconds"] for r in steady),
        "tvcs_over_torch_save_time": c.ratio(
            c.median(r["tvcs_seconds"] for r in steady),
            c.median(r["torch_save_seconds"] for r in steady),
        ),
        # repetitions differ by a few bytes only: commits hold timestamps (and parent ids), and
        # zstd of the commit and manifest objects varies with them
        "stored_bytes_max_spread_over_reps": max(max(x) - min(x) for x in tv_bytes),
        "kept_repo": kept,
    }


def commits_table(res: dict[str, Any]) -> str:
    rows = []
    for i, x in enumerate(res["commits"]):
        bd = x.get("breakdown") or {}
        groups = sorted((bd.get("by_group") or {}).items(), key=lambda kv: -kv[1])[:3]
        top = ", ".join(f"{g} {c.fmt_bytes(b)}" for g, b in groups)
        rows.append(
            [
                i + 1,
                x["step"],
                c.fmt_bytes(x["raw_bytes"]),
                c.fmt_bytes(x["stored_bytes"]),
                f"{x['stored_over_raw']:.3f}",
                c.fmt_s(x["tvcs_seconds"]),
                c.fmt_s(x["torch_save_seconds"]),
                top,
            ]
        )
    head = ["commit", "step", "raw", "stored", "stored/raw", "tvcs commit", "torch.save",
            "largest new bytes"]
    return c.md_table(head, rows)


def group_table(res: dict[str, Any]) -> str:
    """New bytes of the last commit by tensor group, against each group's raw bytes."""
    last = res["commits"][-1]
    bd = (last.get("breakdown") or {}).get("by_group") or {}
    raw = res.get("raw_bytes_by_group") or {}
    rows = []
    for g in sorted(set(bd) | set(raw), key=lambda k: -bd.get(k, 0)):
        r, b = raw.get(g, 0), bd.get(g, 0)
        rows.append([g, c.fmt_bytes(r) if r else "-", c.fmt_bytes(b),
                     f"{b / r:.3f}" if r else "-"])
    delta = (last.get("breakdown") or {}).get("delta_bytes", 0)
    whole = (last.get("breakdown") or {}).get("whole_bytes", 0)
    rows.append(["(chunks/packs stored as deltas / whole)", "",
                 f"{c.fmt_bytes(delta)} / {c.fmt_bytes(whole)}", ""])
    return c.md_table([f"last commit (step {last['step']}) by group", "raw", "stored",
                       "stored/raw"], rows)
