"""``tvcs diff``: which key paths were added, removed or changed between two commits.

Change detection reads no tensor data: two tensors are equal exactly when their manifest
entries have the same content key (dtype, shape, and chunk ids or packed id). ``--stats``
then reads each changed pair, one at a time, to measure how much it moved.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import click
import numpy as np
import torch

from ..format.manifest import Manifest, TensorEntry
from ..format.values import path_str, walk_leaves
from ..state.reader import TensorReader
from ._util import bar, complete_rev, echo_json, human_size, repo, short

STATS_BLOCK = 1 << 22  # elements per step of the statistics (bounds temporary memory)


@dataclass
class Leaf:
    key: str
    kind: str  # "tensor", "value" or "file"
    content: Any  # what equality is decided on
    entry: TensorEntry | None = None
    text: str = ""  # dtype[shape] or the value, for people


def leaves(m: Manifest) -> dict[str, Leaf]:
    out: dict[str, Leaf] = {}
    for path, node in walk_leaves(m.tree):
        key = path_str(path)
        if isinstance(node, list) and node and node[0] in ("tensor", "ndarray"):
            e = m.tensors[int(node[1])]
            dt = e.dtype if node[0] == "tensor" else f"ndarray {node[2]}"
            shape = e.shape if node[0] == "tensor" else list(node[3])
            out[key] = Leaf(
                key, "tensor", (dt, tuple(shape), e.content_key()), e, f"{dt}{list(shape)}"
            )
        else:
            text = json.dumps(node, ensure_ascii=False)
            shown = text if len(text) <= 40 else text[:37] + "..."
            out[key] = Leaf(key, "value", text, None, shown)
    for f in m.files:
        if f.kind == "blob":
            out[f.path] = Leaf(
                f.path,
                "file",
                tuple(c[0] for c in f.chunks),
                None,
                f"file ({f.format}, {human_size(f.size)})",
            )
    return out


def compare(a: dict[str, Leaf], b: dict[str, Leaf]) -> dict[str, list[Any]]:
    res: dict[str, list[Any]] = {"added": [], "removed": [], "changed": [], "retyped": []}
    for k, lb in b.items():
        la = a.get(k)
        if la is None:
            res["added"].append(lb)
        elif la.content != lb.content:
            if la.kind == lb.kind == "tensor":
                if la.content[:2] != lb.content[:2]:
                    res["retyped"].append((la, lb))
                else:
                    res["changed"].append((la, lb))
            elif la.kind != lb.kind:
                res["retyped"].append((la, lb))
            else:
                res["changed"].append((la, lb))
    for k, la in a.items():
        if k not in b:
            res["removed"].append(la)
    return res


def tensor_stats(ta: torch.Tensor, tb: torch.Tensor) -> dict[str, float]:
    """max |b-a|, ||b-a|| / ||a||, and the fraction of elements whose bits differ."""
    n = ta.numel()
    width = ta.element_size()
    ua = ta.reshape(-1).view(torch.uint8).numpy().reshape(n, width) if n else None
    ub = tb.reshape(-1).view(torch.uint8).numpy().reshape(n, width) if n else None
    numeric = ta.dtype != torch.bool
    max_abs = 0.0
    diff_sq = 0.0
    base_sq = 0.0
    changed = 0
    fa, fb = ta.reshape(-1), tb.reshape(-1)
    for lo in range(0, n, STATS_BLOCK):
        hi = min(n, lo + STATS_BLOCK)
        assert ua is not None and ub is not None
        changed += int(np.count_nonzero((ua[lo:hi] != ub[lo:hi]).any(axis=1)))
        if not numeric:
            continue
        if ta.dtype.is_complex:
            xa, xb = fa[lo:hi].to(torch.complex128), fb[lo:hi].to(torch.complex128)
            d = (xb - xa).abs()
            base = xa.abs()
        else:
            xa, xb = fa[lo:hi].to(torch.float64), fb[lo:hi].to(torch.float64)
            d = (xb - xa).abs()
            base = xa.abs()
        if d.numel():
            m = float(d.max())
            max_abs = m if math.isnan(m) or math.isnan(max_abs) else max(max_abs, m)
        diff_sq += float((d * d).sum())
        base_sq += float((base * base).sum())
    if not numeric:
        max_abs = 1.0 if changed else 0.0
        diff_sq, base_sq = float(changed), float(n)
    rel = math.sqrt(diff_sq) / math.sqrt(base_sq) if base_sq > 0 else (math.inf if diff_sq else 0.0)
    return {
        "max_abs_diff": max_abs,
        "rel_l2": rel,
        "frac_changed": changed / n if n else 0.0,
    }


def _num(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _json_num(x: float) -> float | None:
    return x if math.isfinite(x) else None


@click.command()
@click.argument("a", shell_complete=complete_rev)
@click.argument("b", default="HEAD", required=False, shell_complete=complete_rev)
@click.option("--stats", is_flag=True, help="Read changed tensors and show how much each moved.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def diff(a: str, b: str, stats: bool, as_json: bool) -> None:
    """Compare commit A with commit B (default HEAD): key paths added (+), removed (-),
    changed (~), and tensors whose dtype or shape changed (!)."""
    r = repo()
    ida, idb = r.resolve(a), r.resolve(b)
    ma = r.get_manifest(r.get_commit(ida).manifest)
    mb = r.get_manifest(r.get_commit(idb).manifest)
    la, lb = leaves(ma), leaves(mb)
    res = compare(la, lb)
    rows_stats: dict[str, dict[str, float]] = {}
    if stats:
        reader = TensorReader(r.objects, r.pool)
        for x, y in res["changed"]:
            if x.kind != "tensor" or x.entry is None or y.entry is None:
                continue
            key = x.key
            got = reader.read({0: x.entry, 1: y.entry}, lambda i: key)  # noqa: B023
            rows_stats[x.key] = tensor_stats(got[0].detach(), got[1].detach())
            del got
    if as_json:

        def one(leaf: Leaf) -> dict[str, Any]:
            return {"key": leaf.key, "kind": leaf.kind, "what": leaf.text}

        echo_json(
            {
                "a": ida,
                "b": idb,
                "added": [one(x) for x in res["added"]],
                "removed": [one(x) for x in res["removed"]],
                "changed": [
                    {
                        "key": x.key,
                        "kind": x.kind,
                        "a": x.text,
                        "b": y.text,
                        **(
                            {k: _json_num(v) for k, v in rows_stats[x.key].items()}
                            if x.key in rows_stats
                            else {}
                        ),
                    }
                    for x, y in res["changed"]
                ],
                "dtype_or_shape_changed": [
                    {"key": x.key, "a": x.text, "b": y.text} for x, y in res["retyped"]
                ],
                "unchanged": len(lb)
                - len(res["added"])
                - len(res["changed"])
                - len(res["retyped"]),
            }
        )
        return
    n_same = len(lb) - len(res["added"]) - len(res["changed"]) - len(res["retyped"])
    click.echo(
        f"diff {short(ida)} ({a}) .. {short(idb)} ({b}): {len(res['changed'])} changed, "
        f"{len(res['added'])} added, {len(res['removed'])} removed, "
        f"{len(res['retyped'])} dtype/shape changed, {n_same} unchanged"
    )
    for x in res["added"]:
        click.echo(click.style(f"+ {x.key}  {x.text}", fg="green"))
    for x in res["removed"]:
        click.echo(click.style(f"- {x.key}  {x.text}", fg="red"))
    for x, y in res["retyped"]:
        click.echo(click.style(f"! {x.key}  {x.text} -> {y.text}", fg="magenta"))
    if not stats or not rows_stats:
        for x, y in res["changed"]:
            suffix = f"  {x.text} -> {y.text}" if x.kind == "value" else f"  {y.text}"
            click.echo(click.style(f"~ {x.key}{suffix}", fg="yellow"))
        return
    for x, y in res["changed"]:
        if x.key not in rows_stats:
            click.echo(click.style(f"~ {x.key}  {x.text} -> {y.text}", fg="yellow"))
    _stats_table([(x.key, rows_stats[x.key]) for x, _ in res["changed"] if x.key in rows_stats])


def _stats_table(rows: list[tuple[str, dict[str, float]]]) -> None:
    if not rows:
        return
    finite = [s["rel_l2"] for _, s in rows if math.isfinite(s["rel_l2"])]
    top = max(finite) if finite else 1.0
    keyw = min(60, max(len("key"), *(len(k) for k, _ in rows)))
    head = f"{'key':<{keyw}}  {'max|Δ|':>9}  {'rel L2':>9} {'':<16}  {'changed':>7} {'':<10}"
    click.echo()
    click.echo(head.rstrip())
    for key, s in rows:
        k = key if len(key) <= keyw else "…" + key[-(keyw - 1) :]
        rel = s["rel_l2"]
        rel_frac = (rel / top if top > 0 else 0.0) if math.isfinite(rel) else 1.0
        click.echo(
            f"{k:<{keyw}}  {_num(s['max_abs_diff']):>9}  {_num(rel):>9} {bar(rel_frac, 16)}  "
            f"{s['frac_changed'] * 100:6.1f}% {bar(s['frac_changed'], 10)}".rstrip()
        )
    click.echo(
        f"(rel L2 = ||B-A|| / ||A||, bars scaled to the largest ({_num(top)}); changed = "
        "fraction of elements whose bits differ)"
    )


COMMANDS = [diff]
