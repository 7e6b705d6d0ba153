"""W5 — checkout: full checkout of the W3 final state (model + optimizer, stored as a chain of
deltas) against torch.load of the same state; a partial checkout of the adapters only (W2's
final commit, include=["*lora*"]) against its full checkout; and lazy first-tensor latency:
one tensor via ``checkout(rev, include=[key])`` against torch.load(mmap=True) and
safetensors ``safe_open().get_tensor``. Each timing opens the repository (or file) afresh.
Files were just written, so reads come from a warm page cache for every reader alike.
"""

from __future__ import annotations

from typing import Any

import torch

import tensorvcs as tv
from tensorvcs.format import codecs

from . import common as c
from . import minilm, series, w2_lora_series, w3_finetune_series

NAME = "W5"
TITLE = "checkout"
LAZY_KEY = "model/encoder.layer.5.attention.self.query.weight"


def _w3_repo(ctx: c.Context) -> tuple[str, str, Any]:
    full, _ = minilm.finetune_series(
        w3_finetune_series.commits(ctx), w3_finetune_series.EVERY,
        w3_finetune_series.bf16_commits(ctx),
    )
    if "w3_repo" not in ctx.shared:
        sub = c.Context(ctx.quick, 1, ctx.workdir, ctx.out, ctx.log, ctx.shared)
        sub._counter = 5000
        res = series.run_series(sub, "w5-w3", full.states, full.steps, keep_repo=True)
        ctx.shared["w3_repo"], ctx.shared["w3_commit"] = res["kept_repo"], res["commit_ids"][-1]
    return ctx.shared["w3_repo"], ctx.shared["w3_commit"], full.states[-1]


def _w2_repo(ctx: c.Context) -> tuple[str, str]:
    if "w2_repo" not in ctx.shared:
        sub = c.Context(ctx.quick, 1, ctx.workdir, ctx.out, ctx.log, ctx.shared)
        sub._counter = 6000
        w2_lora_series.run(sub)
    return ctx.shared["w2_repo"], ctx.shared["w2_commit"]


def _checkout(path: str, rev: str, include: list[str] | None = None) -> Any:
    repo = tv.Repo.open(path)
    try:
        return repo.checkout(rev, include=include)
    finally:
        repo.close()


def _reps(ctx: c.Context, fn: Any) -> tuple[Any, list[float]]:
    out, times = None, []
    for _ in range(max(ctx.reps, 3)):
        out, s = c.timed(fn)
        times.append(s)
    return out, times


def _max_depth(path: str, rev: str) -> int:
    repo = tv.Repo.open(path)
    try:
        depth = 0
        for info in repo.tensors(rev):
            for oid in info.objects:
                h = repo.objects.header(oid)
                if h.codec == codecs.CODEC_DELTA:
                    depth = max(depth, int(h.params.get("depth", 1)))
        return depth
    finally:
        repo.close()


def run(ctx: c.Context) -> dict[str, Any]:
    w3_path, w3_rev, state = _w3_repo(ctx)
    w2_path, w2_rev = _w2_repo(ctx)
    raw = c.logical_bytes(state)
    ctx.log(f"  W5: W3 final state {c.fmt_bytes(raw)}; W2 final commit {w2_rev[:12]}")

    d = ctx.fresh_dir("w5-peers")
    pt = str(d / "state.pt")
    c.torch_save_fsync(state, pt)
    flat = {k: v.contiguous() for k, v in c.flatten(state).items()}
    st = str(d / "state.safetensors")
    c.safetensors_save_fsync(flat, st)

    # full
    got, tv_full = _reps(ctx, lambda: _checkout(w3_path, w3_rev))
    bit_exact = c.states_equal(got, state)
    del got
    _, tl_full = _reps(ctx, lambda: torch.load(pt, weights_only=True))

    # partial (adapters only) vs full, on W2's final commit
    part, tv_part = _reps(ctx, lambda: _checkout(w2_path, w2_rev, ["*lora*"]))
    part_keys = list(c.flatten(part))
    part_bytes = c.logical_bytes(part)
    fullw2, tv_w2_full = _reps(ctx, lambda: _checkout(w2_path, w2_rev))
    w2_bytes = c.logical_bytes(fullw2)
    del fullw2, part

    # lazy: one tensor
    one, tv_one = _reps(ctx, lambda: _checkout(w3_path, w3_rev, [LAZY_KEY]))
    one_ok = c.flatten(one).keys() == {LAZY_KEY} and torch.equal(
        c.flatten(one)[LAZY_KEY], flat[LAZY_KEY]
    )
    mk, mkey = LAZY_KEY.split("/", 1)

    def mmap_one() -> torch.Tensor:
        return torch.load(pt, weights_only=True, mmap=True)[mk][mkey].clone()

    _, tl_one = _reps(ctx, mmap_one)

    def st_one() -> torch.Tensor:
        from safetensors import safe_open

        with safe_open(st, framework="pt") as f:
            return f.get_tensor(LAZY_KEY)

    _, st_one_t = _reps(ctx, st_one)
    c.remove(d)

    r = {
        "title": TITLE,
        "state_raw_bytes": raw,
        "w3_final_max_delta_depth": _max_depth(w3_path, w3_rev),
        "full_checkout_bit_exact": bit_exact,
        "tvcs_full_seconds": c.median(tv_full),
        "tvcs_full_seconds_all": tv_full,
        "torch_load_seconds": c.median(tl_full),
        "torch_load_seconds_all": tl_full,
        "tvcs_full_over_torch_load": c.ratio(c.median(tv_full), c.median(tl_full)),
        "tvcs_full_gb_per_s": c.ratio(raw, c.median(tv_full)) / 1e9,
        "w2_state_bytes": w2_bytes,
        "w2_full_seconds": c.median(tv_w2_full),
        "w2_partial_seconds": c.median(tv_part),
        "w2_partial_keys": len(part_keys),
        "w2_partial_bytes": part_bytes,
        "partial_over_full": c.ratio(c.median(tv_part), c.median(tv_w2_full)),
        "lazy_key": LAZY_KEY,
        "lazy_tensor_bytes": flat[LAZY_KEY].numel() * flat[LAZY_KEY].element_size(),
        "lazy_ok": bool(one_ok),
        "tvcs_one_tensor_seconds": c.median(tv_one),
        "torch_load_mmap_one_tensor_seconds": c.median(tl_one),
        "safetensors_one_tensor_seconds": c.median(st_one_t),
    }
    for k in ("w2_repo", "w3_repo"):
        if ctx.shared.get(k):
            c.remove(ctx.shared.pop(k))
    return r


def table(res: dict[str, Any]) -> str:
    rows = [
        [f"full: W3 final state ({c.fmt_bytes(res['state_raw_bytes'])}, delta depth ≤ "
         f"{res['w3_final_max_delta_depth']})", "tensorvcs checkout",
         c.fmt_s(res["tvcs_full_seconds"]), ""],
        ["", "torch.load", c.fmt_s(res["torch_load_seconds"]),
         f"tvcs/torch.load {c.fmt_x(res['tvcs_full_over_torch_load'], 2)}"],
        [f"partial: W2 final commit, include=['*lora*'] ({res['w2_partial_keys']} tensors, "
         f"{c.fmt_bytes(res['w2_partial_bytes'])})", "tensorvcs partial",
         c.fmt_s(res["w2_partial_seconds"]), ""],
        [f"  vs the full W2 state ({c.fmt_bytes(res['w2_state_bytes'])})", "tensorvcs full",
         c.fmt_s(res["w2_full_seconds"]), f"partial/full {c.fmt_x(res['partial_over_full'], 3)}"],
        [f"lazy: one tensor ({res['lazy_key']}, {c.fmt_bytes(res['lazy_tensor_bytes'])})",
         "tensorvcs include=[key]", c.fmt_s(res["tvcs_one_tensor_seconds"]), ""],
        ["", "torch.load(mmap=True)[key]", c.fmt_s(res["torch_load_mmap_one_tensor_seconds"]),
         ""],
        ["", "safetensors get_tensor", c.fmt_s(res["safetensors_one_tensor_seconds"]), ""],
    ]
    return c.md_table(["W5 checkout", "reader", "time (median)", "ratio"], rows)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    return []  # no numeric target in issue 4; bit-exactness is checked instead


def checks(res: dict[str, Any]) -> dict[str, bool]:
    return {"full checkout bit-exact": res["full_checkout_bit_exact"],
            "one-tensor checkout correct": res["lazy_ok"]}

