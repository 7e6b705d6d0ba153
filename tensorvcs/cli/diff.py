"""``tvcs diff``: which key paths were added, removed or changed between two commits.

Change detection reads no tensor data: two tensors are equal exactly when their manifest
entries have the same content key (dtype, shape, and chunk ids or packed id). ``--stats``
then says how much each changed tensor moved: ‖B−A‖/‖A‖ from the statistics recorded at
commit time when B's parent is A (or A's parent is B) and both manifests carry them (no tensor
byte is read); otherwise it reads each changed pair, one at a time, and measures it.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import click
import numpy as np
import torch

from ..errors import SelectionError
from ..format.commit import Commit
from ..format.manifest import Manifest, TensorEntry
from ..format.stats import relative
from ..format.values import KeyPath, path_str, walk_leaves
from ..repo import _globs_regex
from ..report.data import GROUPS, group_of
from ..state.reader import TensorReader
from ._util import bar, complete_rev, echo_json, human_size, repo, short

STATS_BLOCK = 1 << 22  # elements per step of the statistics (bounds temporary memory)
LOG_LO, LOG_HI = -8, 0  # the stats bars: log10 of the relative change, empty .. full
BAR_WIDTH = 16
SORTS = ("rel", "abs", "key")


@dataclass
class Leaf:
    key: str
    kind: str  # "tensor", "value" or "file"
    content: Any  # what equality is decided on
    entry: TensorEntry | None = None
    text: str = ""  # dtype[shape] or the value, for people
    path: KeyPath = ()


def leaves(m: Manifest) -> dict[str, Leaf]:
    out: dict[str, Leaf] = {}
    for path, node in walk_leaves(m.tree):
        key = path_str(path)
        if isinstance(node, list) and node and node[0] in ("tensor", "ndarray"):
            e = m.tensors[int(node[1])]
            dt = e.dtype if node[0] == "tensor" else f"ndarray {node[2]}"
            shape = e.shape if node[0] == "tensor" else list(node[3])
            out[key] = Leaf(
                key, "tensor", (dt, tuple(shape), e.content_key()), e, f"{dt}{list(shape)}", path
            )
        else:
            text = json.dumps(node, ensure_ascii=False)
            shown = text if len(text) <= 40 else text[:37] + "..."
            out[key] = Leaf(key, "value", text, None, shown, path)
    for f in m.files:
        if f.kind == "blob":
            out[f.path] = Leaf(
                f.path,
                "file",
                tuple(c[0] for c in f.chunks),
                None,
                f"file ({f.format}, {human_size(f.size)})",
                (f.path,),
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


def filter_leaves(ls: dict[str, Leaf], globs: Sequence[str]) -> dict[str, Leaf]:
    """The leaves whose key path matches one of ``globs`` (fnmatch; a glob also names what
    lies under it, as ``checkout --include`` does)."""
    rx = _globs_regex(globs)
    return {k: v for k, v in ls.items() if rx.fullmatch(k)}


def tensor_stats(ta: torch.Tensor, tb: torch.Tensor) -> dict[str, float]:
    """max |b-a|, ||b-a|| / ||a|| (with ||b-a||, ||a||, ||b||), and the fraction of elements
    whose bits differ, in float64 (complex128 for complex tensors)."""
    n = ta.numel()
    width = ta.element_size()
    ua = ta.reshape(-1).view(torch.uint8).numpy().reshape(n, width) if n else None
    ub = tb.reshape(-1).view(torch.uint8).numpy().reshape(n, width) if n else None
    numeric = ta.dtype != torch.bool
    max_abs = 0.0
    diff_sq = 0.0
    base_sq = 0.0
    new_sq = 0.0
    changed = 0
    fa, fb = ta.reshape(-1), tb.reshape(-1)
    for lo in range(0, n, STATS_BLOCK):
        hi = min(n, lo + STATS_BLOCK)
        assert ua is not None and ub is not None
        changed += int(np.count_nonzero((ua[lo:hi] != ub[lo:hi]).any(axis=1)))
        if not numeric:
            continue
        wide = torch.complex128 if ta.dtype.is_complex else torch.float64
        xa, xb = fa[lo:hi].to(wide), fb[lo:hi].to(wide)
        d = (xb - xa).abs()
        base, new = xa.abs(), xb.abs()
        if d.numel():
            m = float(d.max())
            max_abs = m if math.isnan(m) or math.isnan(max_abs) else max(max_abs, m)
        diff_sq += float((d * d).sum())
        base_sq += float((base * base).sum())
        new_sq += float((new * new).sum())
    if not numeric:
        max_abs = 1.0 if changed else 0.0
        diff_sq, base_sq = float(changed), float(int(ta.sum()))
        new_sq = float(int(tb.sum()))
    delta, norm_a = math.sqrt(diff_sq), math.sqrt(base_sq)
    rel = relative(delta, norm_a)
    return {
        "max_abs_diff": max_abs,
        "rel_l2": math.nan if rel is None else rel,
        "delta_norm": delta,
        "norm_a": norm_a,
        "norm_b": math.sqrt(new_sq),
        "frac_changed": changed / n if n else 0.0,
    }


@dataclass
class Change:
    """How much one changed tensor moved from A to B."""

    key: str
    group: str
    rel_l2: float  # ‖B−A‖/‖A‖ (inf: A is zero; nan: not finite)
    delta_norm: float
    norm_a: float
    norm_b: float
    max_abs_diff: float | None  # None: from recorded statistics (not recorded there)
    frac_changed: float | None
    source: str  # "recorded" or "computed"

    @property
    def nonfinite(self) -> bool:
        return not all(
            math.isfinite(v)
            for v in (self.rel_l2, self.delta_norm, self.norm_a, self.norm_b)
            + ((self.max_abs_diff,) if self.max_abs_diff is not None else ())
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"group": self.group}
        for k in ("rel_l2", "delta_norm", "norm_a", "norm_b", "max_abs_diff", "frac_changed"):
            v = getattr(self, k)
            out[k] = v if v is not None and math.isfinite(v) else None
        out["nonfinite"] = self.nonfinite
        out["source"] = self.source
        return out


def recorded_change(
    key: str, x: TensorEntry, y: TensorEntry, ca: Commit, ida: str, cb: Commit, idb: str
) -> tuple[float, float, float] | None:
    """(‖B−A‖, ‖A‖, ‖B‖) from the statistics recorded at commit time, or None when they do
    not say: B's first parent must be A (its ``changes`` then hold ‖B−A‖), or A's first
    parent B, and both manifests must carry entirely finite statistics for the tensor."""
    sa, sb = x.stats, y.stats
    if sa is None or sb is None or sa.norm is None or sb.norm is None:
        return None
    if sa.nonfinite or sb.nonfinite:
        return None
    if cb.parents and cb.parents[0] == ida:
        delta = cb.changes.get(key)
    elif ca.parents and ca.parents[0] == idb:
        delta = ca.changes.get(key)
    else:
        return None
    if delta is None:  # changed, yet no change recorded (e.g. it was not finite)
        return None
    return float(delta), float(sa.norm), float(sb.norm)


def measure_changes(
    pairs: list[tuple[Leaf, Leaf]],
    ca: Commit,
    ida: str,
    cb: Commit,
    idb: str,
    reader_of: Callable[[], TensorReader],
    use_recorded: bool = True,
) -> tuple[list[Change], int]:
    """The Change of every changed tensor pair, and the tensor bytes read to measure them
    (none for the pairs the recorded statistics answer, when ``use_recorded``)."""
    out: list[Change] = []
    read_bytes = 0
    reader: TensorReader | None = None
    for x, y in pairs:
        assert x.entry is not None and y.entry is not None
        group = group_of(y.path, y.entry.dtype)
        rec = recorded_change(x.key, x.entry, y.entry, ca, ida, cb, idb) if use_recorded else None
        if rec is not None:
            delta, na, nb = rec
            rel = relative(delta, na)
            out.append(
                Change(
                    x.key,
                    group,
                    math.nan if rel is None else rel,
                    delta,
                    na,
                    nb,
                    None,
                    None,
                    "recorded",
                )
            )
            continue
        if reader is None:
            reader = reader_of()
        key = x.key
        got = reader.read({0: x.entry, 1: y.entry}, lambda i: key)  # noqa: B023
        read_bytes += x.entry.nbytes + y.entry.nbytes
        s = tensor_stats(got[0].detach(), got[1].detach())
        del got
        out.append(
            Change(
                x.key,
                group,
                s["rel_l2"],
                s["delta_norm"],
                s["norm_a"],
                s["norm_b"],
                s["max_abs_diff"],
                s["frac_changed"],
                "computed",
            )
        )
    return out, read_bytes


def sort_changes(rows: list[Change], by: str) -> list[Change]:
    """Largest first (``rel``: ‖B−A‖/‖A‖, ``abs``: ‖B−A‖; a NaN first of all, as an alarm),
    or by key path (``key``)."""
    if by == "key":
        return sorted(rows, key=lambda c: c.key)

    def rank(c: Change) -> tuple[int, float, str]:
        v = c.rel_l2 if by == "rel" else c.delta_norm
        return (0 if math.isnan(v) else 1, -v if not math.isnan(v) else 0.0, c.key)

    return sorted(rows, key=rank)


def shorten(key: str, width: int) -> str:
    """``key`` cut in the middle (``…``) to at most ``width`` characters."""
    if len(key) <= width:
        return key
    if width <= 1:
        return "…"[:width]
    tail = (width - 1) // 2
    head = width - 1 - tail
    return key[:head] + "…" + key[len(key) - tail :]


def log_fraction(rel: float) -> float:
    """Where ``rel`` sits on the bars' log scale: 0 at 10**LOG_LO (and for 0), 1 at
    10**LOG_HI and above (and for inf and nan)."""
    if math.isnan(rel) or rel == math.inf:
        return 1.0
    if rel <= 0:
        return 0.0
    return min(max((math.log10(rel) - LOG_LO) / (LOG_HI - LOG_LO), 0.0), 1.0)


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf"
    return f"{x:.3g}" if x == 0 or 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def _json_num(x: float) -> float | None:
    return x if math.isfinite(x) else None


class _DiffCommand(click.Command):
    """Splits ``tvcs diff A B -- GLOB...`` at ``--`` (as git does): what follows is key path
    globs even when only A is given."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta["diff_globs"] = args[i + 1 :]
            args = args[:i]
        return super().parse_args(ctx, args)


@click.command(cls=_DiffCommand)
@click.argument("a", shell_complete=complete_rev)
@click.argument("b", default="HEAD", required=False, shell_complete=complete_rev)
@click.argument("globs", nargs=-1, required=False, metavar="[-- GLOB...]")
@click.option("--stats", is_flag=True, help="Show how much each changed tensor moved (‖B−A‖/‖A‖).")
@click.option(
    "--sort",
    type=click.Choice(SORTS),
    default="rel",
    show_default=True,
    help="--stats rows: by relative change, by ‖B−A‖ (largest first), or by key path.",
)
@click.option(
    "--measure",
    is_flag=True,
    help="--stats: read the tensors even where statistics are recorded (adds max|Δ| and the "
    "fraction of elements changed).",
)
@click.option(
    "--plot",
    "plot_to",
    type=click.Path(dir_okay=False),
    help="Also draw the relative change per tensor to OUT.png or OUT.svg (needs "
    'pip install "tensorvcs[report]").',
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def diff(
    ctx: click.Context,
    a: str,
    b: str,
    globs: tuple[str, ...],
    stats: bool,
    sort: str,
    measure: bool,
    plot_to: str | None,
    as_json: bool,
) -> None:
    """Compare commit A with commit B (default HEAD): key paths added (+), removed (-),
    changed (~), and tensors whose dtype or shape changed (!). Globs after -- keep only the
    key paths they match."""
    patterns = list(globs) + list(ctx.meta.get("diff_globs", []))
    r = repo()
    ida, idb = r.resolve(a), r.resolve(b)
    ca, cb = r.get_commit(ida), r.get_commit(idb)
    la, lb = leaves(r.get_manifest(ca.manifest)), leaves(r.get_manifest(cb.manifest))
    if patterns:
        la, lb = filter_leaves(la, patterns), filter_leaves(lb, patterns)
        if not la and not lb:
            shown = " ".join(repr(p) for p in patterns)
            raise SelectionError(f"no key path of {short(ida)} or {short(idb)} matches {shown}")
    res = compare(la, lb)
    n_same = len(lb) - len(res["added"]) - len(res["changed"]) - len(res["retyped"])
    changes: list[Change] = []
    read_bytes = 0
    if stats or plot_to:
        pairs = [(x, y) for x, y in res["changed"] if x.kind == "tensor"]
        changes, read_bytes = measure_changes(
            pairs, ca, ida, cb, idb, lambda: TensorReader(r.objects, r.pool), not measure
        )
        changes = sort_changes(changes, sort)
    if plot_to:
        from ..report.plot import PlotRow, write_plot

        rows = [PlotRow(c.key, c.group, c.rel_l2) for c in changes]
        write_plot(rows, GROUPS, f"{a} ({short(ida)}) .. {b} ({short(idb)})", plot_to)
    summary = _summary(la, lb, res, changes, read_bytes) if stats else None
    if as_json:
        by_key = {c.key: c for c in changes}
        order = {c.key: i for i, c in enumerate(changes)}
        changed = sorted(res["changed"], key=lambda p: order.get(p[0].key, len(order)))

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
                        **(by_key[x.key].to_json() if x.key in by_key else {}),
                    }
                    for x, y in changed
                ],
                "dtype_or_shape_changed": [
                    {"key": x.key, "a": x.text, "b": y.text} for x, y in res["retyped"]
                ],
                "unchanged": n_same,
                **({"summary": summary, "sort": sort} if summary is not None else {}),
            }
        )
        return
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
    measured = {c.key for c in changes}
    for x, y in res["changed"]:
        if x.key in measured:
            continue
        suffix = f"  {x.text} -> {y.text}" if x.kind == "value" else f"  {y.text}"
        click.echo(click.style(f"~ {x.key}{suffix}", fg="yellow"))
    if summary is not None:
        _stats_table(changes)
        click.echo(_summary_line(summary))


def _summary(
    la: dict[str, Leaf],
    lb: dict[str, Leaf],
    res: dict[str, list[Any]],
    changes: list[Change],
    read_bytes: int,
) -> dict[str, Any]:
    """Counts over the tensors of A and B (after the globs) and the largest relative change."""
    ta = {k for k, v in la.items() if v.kind == "tensor"}
    tb = {k for k, v in lb.items() if v.kind == "tensor"}
    both = ta & tb
    retyped = sum(1 for x, y in res["retyped"] if x.kind == y.kind == "tensor")
    top = changes[0] if changes else None
    finite = [c for c in changes if not math.isnan(c.rel_l2)]
    if finite:
        top = max(finite, key=lambda c: c.rel_l2)
    return {
        "compared": len(both),
        "changed": len(changes),
        "unchanged": len(both) - len(changes) - retyped,
        "dtype_or_shape_changed": retyped,
        "added": len(tb - ta),
        "removed": len(ta - tb),
        "nonfinite": sum(1 for c in changes if c.nonfinite),
        "largest_rel_l2": _json_num(top.rel_l2) if top is not None else None,
        "largest_key": top.key if top is not None else None,
        "recorded": sum(1 for c in changes if c.source == "recorded"),
        "computed": sum(1 for c in changes if c.source == "computed"),
        "bytes_read": read_bytes,
    }


def _summary_line(s: dict[str, Any]) -> str:
    largest = (
        f"; largest relative change {_num(s['largest_rel_l2'])} ({s['largest_key']})"
        if s["largest_key"] is not None and s["largest_rel_l2"] is not None
        else ""
    )
    nonfinite = f", {s['nonfinite']} not finite" if s["nonfinite"] else ""
    retyped = (
        f", {s['dtype_or_shape_changed']} dtype/shape changed"
        if s["dtype_or_shape_changed"]
        else ""
    )
    return (
        f"{s['compared']} tensors compared: {s['changed']} changed{nonfinite}, "
        f"{s['unchanged']} unchanged{retyped}; {s['added']} added, {s['removed']} removed"
        f"{largest}\n(statistics: {s['recorded']} recorded at commit time, {s['computed']} "
        f"computed, {human_size(s['bytes_read'])} of tensors read)"
    )


def _stats_table(rows: list[Change]) -> None:
    """Rows by group (weights, optimizer moments, other), key paths cut in the middle to fit
    the terminal; max|Δ| and changed only when some tensor was read."""
    if not rows:
        return
    cols = shutil.get_terminal_size((100, 24)).columns
    read = any(c.source == "computed" for c in rows)
    fixed = 2 + 2 + 9 + 1 + BAR_WIDTH + 2 + 9 + (2 + 9 + 2 + 7 if read else 0)
    keyw = max(12, min(max(len(c.key) for c in rows), cols - fixed))
    head = f"  {'key':<{keyw}}  {'rel L2':>9} {'':<{BAR_WIDTH}}  {'‖B−A‖':>9}"
    click.echo()
    click.echo(head + (f"  {'max|Δ|':>9}  {'changed':>7}" if read else ""))
    for group in GROUPS:
        members = [c for c in rows if c.group == group]
        if not members:
            continue
        click.echo(f"{group} ({len(members)} changed)")
        for c in members:
            line = (
                f"  {shorten(c.key, keyw):<{keyw}}  {_num(c.rel_l2):>9} "
                f"{bar(log_fraction(c.rel_l2), BAR_WIDTH)}  {_num(c.delta_norm):>9}"
            )
            if read:
                changed = "-" if c.frac_changed is None else f"{c.frac_changed * 100:6.1f}%"
                line += f"  {_num(c.max_abs_diff):>9}  {changed:>7}"
            click.echo(click.style(line, fg="red") if c.nonfinite else line)
    click.echo(
        f"(rel L2 = ‖B−A‖/‖A‖; bars: its log10, empty at 1e{LOG_LO}, full at {10**LOG_HI}"
        + (
            "; changed = elements whose bits differ; '-': from recorded statistics)"
            if read
            else ")"
        )
    )


COMMANDS = [diff]
