"""``tvcs log``, ``tvcs show`` and ``tvcs ls``."""

from __future__ import annotations

import contextlib
import fnmatch
import json
from typing import Any

import click

from ..errors import NotFoundError, UsageError
from ..format import jsonenc
from ..format.commit import Commit
from ..format.manifest import Manifest, TensorEntry
from ..format.stats import stats_problem
from ..format.values import path_str, walk_leaves
from ._util import (
    complete_rev,
    echo_json,
    fmt_metrics,
    human_size,
    json_safe,
    ref_json,
    repo,
    short,
    table,
)
from .graph import Graph, date_order, topo_order


def decorations(r: Any) -> dict[str, list[str]]:
    """{commit id: ["HEAD -> main", "tag: v1", "other"]} like git log --decorate."""
    out: dict[str, list[str]] = {}
    current, head = r.head()
    if head is not None and current is None:
        out.setdefault(head, []).append("HEAD")
    branches = r.branches()
    if current in branches:
        out.setdefault(branches[current], []).append(f"HEAD -> {current}")
    for name, oid in branches.items():
        if name != current:
            out.setdefault(oid, []).append(name)
    for name, oid in r.tags().items():
        out.setdefault(oid, []).append(f"tag: {name}")
    return out


def nonfinite(m: Manifest) -> list[dict[str, Any]]:
    """The tensors whose recorded statistics count NaN or Inf elements: [{"key", "nan",
    "inf"}] in key-path order (empty when none, or when the manifest recorded no stats)."""
    out: list[dict[str, Any]] = []
    if not any(e.stats is not None and e.stats.nonfinite for e in m.tensors):
        return out
    for path, node in walk_leaves(m.tree):
        if isinstance(node, list) and node and node[0] in ("tensor", "ndarray"):
            st = m.tensors[int(node[1])].stats
            if st is not None and st.nonfinite:
                out.append({"key": path_str(path), "nan": st.nan, "inf": st.inf})
    return out


def logged_nonfinite(r: Any, manifest: str) -> list[dict[str, Any]]:
    """``nonfinite`` of a stored manifest, read without loading torch (``tvcs log`` starts
    fast): only the tree and each entry's ``stats`` are looked at, malformed ones skipped."""
    doc = jsonenc.load_stored(r.objects.read_bytes(manifest), f"manifest {manifest}", manifest)
    entries = doc.get("tensors") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        return []
    counts: dict[int, tuple[int, int]] = {}
    for i, e in enumerate(entries):
        st = e.get("stats") if isinstance(e, dict) else None
        if st is not None and stats_problem(st) is None and st.get("nan", 0) + st.get("inf", 0):
            counts[i] = (st.get("nan", 0), st.get("inf", 0))
    if not counts:
        return []
    out: list[dict[str, Any]] = []
    for path, node in walk_leaves(doc.get("tree")):
        if isinstance(node, list) and len(node) > 1 and node[0] in ("tensor", "ndarray"):
            i = node[1]
            if type(i) is int and i in counts:
                out.append({"key": path_str(path), "nan": counts[i][0], "inf": counts[i][1]})
    return out


def nonfinite_mark(bad: list[dict[str, Any]]) -> str:
    """The warning mark of a commit with NaN/Inf tensors ("" when it has none)."""
    if not bad:
        return ""
    return click.style(f"! NaN/Inf in {len(bad)} tensor(s)", fg="red", bold=True)


def commit_json(
    c: Commit, refs: list[dict[str, Any]] | None = None, bad: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    return {
        "id": c.id,
        "parents": list(c.parents),
        "manifest": c.manifest,
        "author": c.author,
        "timestamp": c.timestamp,
        "message": c.message,
        "step": c.step,
        "metrics": json_safe(c.metrics),
        "metadata": json_safe(c.metadata),
        "refs": refs or [],
        "nonfinite": bad or [],
    }


def _date(c: Commit) -> str:
    return c.timestamp.replace("T", " ")[:19] + " UTC"


@click.command()
@click.argument("rev", default="HEAD", required=False, shell_complete=complete_rev)
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("-n", "--max-count", "n", type=click.IntRange(min=0), help="At most N commits.")
@click.option("--graph", is_flag=True, help="Draw the commit graph beside the commits (as git).")
@click.option("--all", "all_refs", is_flag=True, help="Start from every branch, tag and HEAD.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def log(rev: str, oneline: bool, n: int | None, graph: bool, all_refs: bool, as_json: bool) -> None:
    """Show the commits reachable from REV (default HEAD), newest first. With --graph in
    topological order (no commit before its descendants) with the graph drawn; --all starts
    from every branch and tag as well."""
    if graph and as_json:
        raise UsageError(
            "--graph has no JSON form: use --json without --graph (each commit lists its parents)"
        )
    r = repo()
    commits = log_commits(r, rev, n, graph, all_refs)
    decos = decorations(r)
    bad = {c.id: logged_nonfinite(r, c.manifest) for c in commits}
    if as_json:
        refs = ref_json(r)
        echo_json({"commits": [commit_json(c, refs.get(c.id), bad[c.id]) for c in commits]})
        return
    drawing = Graph() if graph else None
    for i, c in enumerate(commits):
        text = commit_text(c, decos.get(c.id), bad[c.id], oneline)
        if drawing is None:
            if i and not oneline:
                click.echo()
            click.echo("\n".join(text))
            continue
        if i and not oneline:
            click.echo(drawing.padding())
        click.echo("\n".join(drawing.lines(c.id, c.parents, text)))


def log_commits(r: Any, rev: str, n: int | None, graph: bool, all_refs: bool) -> list[Commit]:
    """The commits ``log`` shows, in the order it shows them."""
    if not graph and not all_refs:
        return list(r.log(rev, n=n))
    starts: list[str] = []
    if not (all_refs and rev == "HEAD" and r.head()[1] is None):  # --all in an unborn HEAD
        starts.append(r.resolve(rev))
    if all_refs:
        starts += [*r.branches().values(), *r.tags().values()]
    cache: dict[str, Commit] = {}

    def get(oid: str) -> Commit:
        if oid not in cache:
            cache[oid] = r.get_commit(oid)
        return cache[oid]

    order = topo_order if graph else date_order
    ids = order(starts, lambda o: get(o).parents, lambda o: get(o).timestamp)
    if n is not None:
        ids = ids[:n]
    return [get(o) for o in ids]


def commit_text(
    c: Commit, d: list[str] | None, bad: list[dict[str, Any]], oneline: bool
) -> list[str]:
    """The lines ``log`` prints for one commit (without the graph)."""
    deco = f" ({', '.join(d)})" if d else ""
    subject = c.message.splitlines()[0] if c.message else ""
    mark = nonfinite_mark(bad)
    if oneline:
        bits = [short(c.id) + deco]
        if mark:
            bits.append(mark)
        if c.step is not None:
            bits.append(f"step {c.step}")
        if c.metrics:
            bits.append(fmt_metrics(c.metrics))
        bits.append(subject)
        return ["  ".join(b for b in bits if b)]
    out = [click.style(f"commit {c.id}", fg="yellow") + deco]
    if len(c.parents) > 1:
        out.append(f"Merge: {' '.join(short(p) for p in c.parents)}")
    out += _fields(c)
    if mark:
        out.append(mark + " (tvcs show lists them)")
    out.append("")
    out += [f"    {line}" for line in (c.message or "").splitlines() or [""]]
    return out


def _fields(c: Commit) -> list[str]:
    """The Author, Date, Step and Metrics lines that log and show print for a commit."""
    out = [f"Author: {c.author}", f"Date:   {_date(c)}"]
    if c.step is not None:
        out.append(f"Step:   {c.step}")
    if c.metrics:
        out.append(f"Metrics: {fmt_metrics(c.metrics)}")
    return out


def manifest_summary(m: Manifest) -> dict[str, Any]:
    return {
        "tensors": len(m.tensors),
        "logical_bytes": sum(e.nbytes for e in m.tensors),
        "files": [
            {
                "path": f.path,
                "kind": f.kind,
                "format": f.format,
                "size": f.size,
                **({"metadata": f.extra["metadata"]} if "metadata" in f.extra else {}),
            }
            for f in m.files
        ],
    }


@click.command()
@click.argument("rev", default="HEAD", required=False, shell_complete=complete_rev)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def show(rev: str, as_json: bool) -> None:
    """Show one commit: message, step, metrics, and the files and tensors it holds."""
    r = repo()
    c = r.get_commit(r.resolve(rev))
    m = r.get_manifest(c.manifest)
    decos = decorations(r).get(c.id)
    summary = manifest_summary(m)
    bad = nonfinite(m)
    if as_json:
        echo_json({**commit_json(c, ref_json(r).get(c.id), bad), **summary})
        return
    deco = f" ({', '.join(decos)})" if decos else ""
    click.echo(click.style(f"commit {c.id}", fg="yellow") + deco)
    if c.parents:
        click.echo(f"Parents: {' '.join(short(p) for p in c.parents)}")
    for line in _fields(c):
        click.echo(line)
    if c.metadata:
        click.echo(f"Metadata: {json.dumps(json_safe(c.metadata), ensure_ascii=False)}")
    click.echo()
    for line in (c.message or "").splitlines() or [""]:
        click.echo(f"    {line}")
    click.echo()
    click.echo(f"{summary['tensors']} tensor(s), {human_size(summary['logical_bytes'])}")
    if m.files:
        rows = [[f.path, f.kind, f.format, human_size(f.size)] for f in m.files]
        click.echo(table(rows, ["file", "kind", "format", "size"], right=[3]))
    if bad:
        click.echo()
        click.echo(nonfinite_mark(bad) + ":")
        rows = [[b["key"], str(b["nan"]), str(b["inf"])] for b in bad]
        click.echo(table(rows, ["key", "nan", "inf"], right=[1, 2]))


def stored_sizes(r: Any, m: Manifest) -> dict[int, int]:
    """Stored bytes per tensor entry: its chunks' files, or its share of its pack's file."""
    cache: dict[str, int] = {}
    pack_len: dict[str, int] = {}

    def size(oid: str) -> int:
        if oid not in cache:
            try:
                cache[oid] = r.objects.stored_size(oid)
            except OSError:
                cache[oid] = 0
        return cache[oid]

    out: dict[int, int] = {}
    for i, e in enumerate(m.tensors):
        if e.pack is not None:
            if e.pack not in pack_len:
                try:
                    pack_len[e.pack] = r.objects.header(e.pack).length
                except Exception:
                    pack_len[e.pack] = 0
            total = pack_len[e.pack]
            out[i] = round(size(e.pack) * e.nbytes / total) if total else 0
        else:
            out[i] = sum(size(oid) for oid, _ in e.chunks or [])
    return out


def tensor_rows(r: Any, m: Manifest, glob: str | None) -> list[dict[str, Any]]:
    stored = stored_sizes(r, m)
    rows: list[dict[str, Any]] = []
    for path, node in walk_leaves(m.tree):
        if isinstance(node, list) and node and node[0] in ("tensor", "ndarray"):
            key = path_str(path)
            if glob is not None and not fnmatch.fnmatchcase(key, glob):
                continue
            i = int(node[1])
            e: TensorEntry = m.tensors[i]
            dtype, shape = e.dtype, list(e.shape)
            if node[0] == "ndarray":
                dtype, shape = f"ndarray {node[2]}", list(node[3])
            rows.append(
                {
                    "key": key,
                    "dtype": dtype,
                    "shape": shape,
                    "logical_bytes": e.nbytes,
                    "stored_bytes": stored[i],
                    "kind": "tensor",
                    "stats": None if e.stats is None else e.stats.to_json(),
                }
            )
    for f in m.files:
        if f.kind == "blob" and (glob is None or fnmatch.fnmatchcase(f.path, glob)):
            st = 0
            for oid, _ in f.chunks:
                with contextlib.suppress(OSError):
                    st += r.objects.stored_size(oid)
            rows.append(
                {
                    "key": f.path,
                    "dtype": f"file ({f.format})",
                    "shape": None,
                    "logical_bytes": f.size,
                    "stored_bytes": st,
                    "kind": "file",
                    "stats": None,
                }
            )
    return rows


STAT_COLUMNS = ("numel", "nan", "inf", "min", "max", "mean", "norm")


def fmt_stat(v: Any) -> str:
    """One statistic in a column: integers as they are, other numbers to 4 significant
    digits, "-" when not recorded."""
    if v is None:
        return "-"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


@click.command(name="ls")
@click.argument("rev", default="HEAD", required=False, shell_complete=complete_rev)
@click.argument("glob", required=False)
@click.option(
    "--stats",
    "with_stats",
    is_flag=True,
    help="Show each tensor's statistics recorded at commit time (numel, nan, inf, min, max, "
    "mean, norm); '-' where none were recorded.",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def ls(rev: str, glob: str | None, with_stats: bool, as_json: bool) -> None:
    """List the tensors (and opaque files) of REV: key path, dtype, shape, logical and stored
    size. GLOB filters key paths (fnmatch; '*' also matches '/'); `tvcs ls GLOB` lists HEAD's.
    A GLOB that matches nothing is an error (exit 4)."""
    r = repo()
    if glob is None and any(ch in rev for ch in "*?["):
        rev, glob = "HEAD", rev
    cid = r.resolve(rev)
    m = r.get_manifest(r.get_commit(cid).manifest)
    rows = tensor_rows(r, m, glob)
    if glob is not None and not rows:
        raise NotFoundError(f"no key path of {rev} matches {glob!r}")
    if as_json:
        echo_json({"id": cid, "tensors": rows})
        return
    if with_stats:
        body = []
        for row in rows:
            st = row["stats"] or {}
            cells = [row["key"], row["dtype"], "-" if row["shape"] is None else str(row["shape"])]
            body.append(cells + [fmt_stat(st.get(k)) for k in STAT_COLUMNS])
        right = list(range(3, 3 + len(STAT_COLUMNS)))
        click.echo(table(body, ["key", "dtype", "shape", *STAT_COLUMNS], right=right))
    else:
        body = [
            [
                row["key"],
                row["dtype"],
                "-" if row["shape"] is None else str(row["shape"]),
                human_size(row["logical_bytes"]),
                human_size(row["stored_bytes"]),
            ]
            for row in rows
        ]
        click.echo(table(body, ["key", "dtype", "shape", "size", "stored"], right=[3, 4]))
    total = sum(row["logical_bytes"] for row in rows)
    stored = sum(row["stored_bytes"] for row in rows)
    click.echo(f"{len(rows)} item(s), {human_size(total)} logical, {human_size(stored)} stored")


COMMANDS = [log, show, ls]
