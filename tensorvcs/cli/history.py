"""``tvcs log``, ``tvcs show`` and ``tvcs ls``."""

from __future__ import annotations

import contextlib
import fnmatch
from typing import Any

import click

from ..format.commit import Commit
from ..format.manifest import Manifest, TensorEntry
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


def commit_json(c: Commit, refs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
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
    }


def _date(c: Commit) -> str:
    return c.timestamp.replace("T", " ")[:19] + " UTC"


@click.command()
@click.argument("rev", default="HEAD", required=False, shell_complete=complete_rev)
@click.option("--oneline", is_flag=True, help="One line per commit.")
@click.option("-n", "--max-count", "n", type=click.IntRange(min=0), help="At most N commits.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def log(rev: str, oneline: bool, n: int | None, as_json: bool) -> None:
    """Show the commits reachable from REV (default HEAD), newest first."""
    r = repo()
    commits = r.log(rev, n=n)
    decos = decorations(r)
    if as_json:
        refs = ref_json(r)
        echo_json({"commits": [commit_json(c, refs.get(c.id)) for c in commits]})
        return
    for i, c in enumerate(commits):
        d = decos.get(c.id)
        deco = f" ({', '.join(d)})" if d else ""
        subject = c.message.splitlines()[0] if c.message else ""
        if oneline:
            bits = [short(c.id) + deco]
            if c.step is not None:
                bits.append(f"step {c.step}")
            if c.metrics:
                bits.append(fmt_metrics(c.metrics))
            bits.append(subject)
            click.echo("  ".join(b for b in bits if b))
            continue
        if i:
            click.echo()
        click.echo(click.style(f"commit {c.id}", fg="yellow") + deco)
        click.echo(f"Author: {c.author}")
        click.echo(f"Date:   {_date(c)}")
        if c.step is not None:
            click.echo(f"Step:   {c.step}")
        if c.metrics:
            click.echo(f"Metrics: {fmt_metrics(c.metrics)}")
        click.echo()
        for line in (c.message or "").splitlines() or [""]:
            click.echo(f"    {line}")


def manifest_summary(m: Manifest) -> dict[str, Any]:
    return {
        "tensors": len(m.tensors),
        "tensor_bytes": sum(e.nbytes for e in m.tensors),
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
    if as_json:
        echo_json({**commit_json(c, ref_json(r).get(c.id)), **summary})
        return
    deco = f" ({', '.join(decos)})" if decos else ""
    click.echo(click.style(f"commit {c.id}", fg="yellow") + deco)
    if c.parents:
        click.echo(f"Parents: {' '.join(short(p) for p in c.parents)}")
    click.echo(f"Author: {c.author}")
    click.echo(f"Date:   {_date(c)}")
    if c.step is not None:
        click.echo(f"Step:   {c.step}")
    if c.metrics:
        click.echo(f"Metrics: {fmt_metrics(c.metrics)}")
    if c.metadata:
        click.echo(f"Metadata: {json_safe(c.metadata)}")
    click.echo()
    for line in (c.message or "").splitlines() or [""]:
        click.echo(f"    {line}")
    click.echo()
    click.echo(f"{summary['tensors']} tensor(s), {human_size(summary['tensor_bytes'])}")
    if m.files:
        rows = [[f.path, f.kind, f.format, human_size(f.size)] for f in m.files]
        click.echo(table(rows, ["file", "kind", "format", "size"], right=[3]))


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
                }
            )
    return rows


@click.command(name="ls")
@click.argument("rev", default="HEAD", required=False, shell_complete=complete_rev)
@click.argument("glob", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def ls(rev: str, glob: str | None, as_json: bool) -> None:
    """List the tensors (and opaque files) of REV: key path, dtype, shape, logical and stored
    size. GLOB filters key paths (fnmatch; '*' also matches '/'); `tvcs ls GLOB` lists HEAD's."""
    r = repo()
    if glob is None and any(ch in rev for ch in "*?["):
        rev, glob = "HEAD", rev
    cid = r.resolve(rev)
    m = r.get_manifest(r.get_commit(cid).manifest)
    rows = tensor_rows(r, m, glob)
    if as_json:
        echo_json({"id": cid, "tensors": rows})
        return
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
