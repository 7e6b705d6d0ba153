"""``tvcs du``, ``tvcs gc``, ``tvcs compact``, ``tvcs fsck`` and ``tvcs reflog``."""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from .. import compaction, maintenance
from ..errors import CorruptObjectError, NotFoundError, TensorVCSError
from ..format.manifest import Manifest
from ._util import complete_rev, echo_json, human_size, note, ratio, repo, short, table


def _content_lengths(r: Any, m: Manifest, header_len: Any) -> dict[str, int]:
    """{object id: content bytes} of every object a manifest references."""
    out: dict[str, int] = {}
    for e in m.tensors:
        if e.pack is not None:
            if e.pack not in out:
                out[e.pack] = header_len(e.pack)
        else:
            for oid, n in e.chunks or []:
                out[oid] = n
    for f in m.files:
        for oid, n in f.chunks:
            out[oid] = n
    for oid in m.object_ids():
        if oid not in out:
            out[oid] = header_len(oid)  # opaque pickles of values
    return out


def _logical(m: Manifest) -> int:
    tensors = sum(e.nbytes for e in m.tensors)
    blobs = sum(n for f in m.files for _, n in f.chunks)
    pickles = 0
    return tensors + blobs + pickles


@click.command()
@click.argument("rev", default="HEAD", required=False, shell_complete=complete_rev)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def du(rev: str, as_json: bool) -> None:
    """Disk usage of the history of REV (default HEAD), oldest commit first.

    logical: the bytes of the commit's tensors and files as they would be on disk; new: the
    content of objects no older commit had; stored: what those new objects take in the store
    (after compression and deltas). dedup = logical / new, compression = new / stored.
    """
    r = repo()
    commits = list(reversed(r.log(rev)))
    sizes: dict[str, int] = {}
    lengths: dict[str, int] = {}

    def stored(oid: str) -> int:
        if oid not in sizes:
            try:
                sizes[oid] = r.objects.stored_size(oid)
            except OSError:
                sizes[oid] = 0
        return sizes[oid]

    def header_len(oid: str) -> int:
        if oid not in lengths:
            try:
                lengths[oid] = r.objects.header(oid).length
            except TensorVCSError:
                lengths[oid] = 0
        return lengths[oid]

    seen: set[str] = set()
    rows: list[dict[str, Any]] = []
    for c in commits:
        m = r.get_manifest(c.manifest)
        objs = _content_lengths(r, m, header_len)
        new = {o: n for o, n in objs.items() if o not in seen}
        seen.update(new)
        meta = stored(c.id) + (stored(c.manifest) if c.manifest not in seen else 0)
        seen.add(c.manifest)
        logical = _logical(m)
        content = sum(new.values())
        st = sum(stored(o) for o in new) + meta
        rows.append(
            {
                "id": c.id,
                "step": c.step,
                "message": c.message.splitlines()[0] if c.message else "",
                "logical_bytes": logical,
                "new_content_bytes": content,
                "stored_bytes": st,
                "dedup_ratio": logical / content if content else None,
                "compression_ratio": content / st if st else None,
            }
        )
    tl = sum(x["logical_bytes"] for x in rows)
    tc = sum(x["new_content_bytes"] for x in rows)
    ts = sum(x["stored_bytes"] for x in rows)
    all_ids = list(r.objects.ids())
    on_disk = sum(stored(o) for o in all_ids)
    total = {
        "commits": len(rows),
        "logical_bytes": tl,
        "unique_content_bytes": tc,
        "stored_bytes": ts,
        "dedup_ratio": tl / tc if tc else None,
        "compression_ratio": tc / ts if ts else None,
        "overall_ratio": tl / ts if ts else None,
        "store_objects": len(all_ids),
        "store_bytes": on_disk,
    }
    if as_json:
        echo_json({"commits": rows, "total": total})
        return
    body = [
        [
            short(x["id"]),
            "-" if x["step"] is None else str(x["step"]),
            human_size(x["logical_bytes"]),
            human_size(x["new_content_bytes"]),
            human_size(x["stored_bytes"]),
            ratio(x["logical_bytes"], x["new_content_bytes"]),
            ratio(x["new_content_bytes"], x["stored_bytes"]),
            x["message"][:40],
        ]
        for x in rows
    ]
    body.append(
        [
            "total",
            "",
            human_size(tl),
            human_size(tc),
            human_size(ts),
            ratio(tl, tc),
            ratio(tc, ts),
            f"overall {ratio(tl, ts)}",
        ]
    )
    click.echo(
        table(
            body,
            ["commit", "step", "logical", "new", "stored", "dedup", "compr", "message"],
            right=[1, 2, 3, 4, 5, 6],
        )
    )
    click.echo(f"store: {len(all_ids)} objects, {human_size(on_disk)} on disk")


@click.command()
@click.option(
    "--prune",
    "prune",
    metavar="WHEN",
    default=None,
    help="Delete unreachable objects older than WHEN (default: setting gc.prune_expire, "
    "2.weeks.ago); 'now' deletes every unreachable object, 'never' none.",
)
@click.option(
    "--reflog-expire",
    metavar="WHEN",
    default=None,
    help="Forget reflog entries older than WHEN (default gc.reflog_expire, 90.days).",
)
@click.option(
    "--reflog-expire-unreachable",
    metavar="WHEN",
    default=None,
    help="Forget reflog entries older than WHEN that the ref no longer reaches "
    "(default gc.reflog_expire_unreachable, 30.days).",
)
@click.option("--keep-reflog", is_flag=True, hidden=True)  # the default now; kept for scripts
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def gc(
    prune: str | None,
    reflog_expire: str | None,
    reflog_expire_unreachable: str | None,
    keep_reflog: bool,
    as_json: bool,
) -> None:
    """Delete the objects that nothing keeps: not reachable from HEAD, a branch, a tag, a
    remote-tracking ref or an unexpired reflog entry, and older than the prune age.

    As git: a commit you left behind (detached HEAD, a moved branch, a dropped commit) stays
    findable with `tvcs reflog` for 90 days. To reclaim its bytes now:
    `tvcs gc --reflog-expire=now --prune=now`."""
    ages = {
        "prune": (prune, "--prune"),
        "reflog_expire": (reflog_expire, "--reflog-expire"),
        "reflog_expire_unreachable": (reflog_expire_unreachable, "--reflog-expire-unreachable"),
    }
    age = {k: None if v is None else maintenance.parse_age(v, o) for k, (v, o) in ages.items()}
    r = repo()
    rep = maintenance.gc(
        r,
        prune=age["prune"],
        reflog_expire=age["reflog_expire"],
        reflog_expire_unreachable=age["reflog_expire_unreachable"],
    )
    d = dataclasses.asdict(rep)
    if as_json:
        echo_json(d)
        return
    click.echo(
        f"removed {rep.deleted_objects} object(s) ({len(rep.deleted_commits)} commit(s)), "
        f"freed {human_size(rep.freed_bytes)}; kept {rep.reachable_objects} reachable "
        f"object(s), {human_size(rep.kept_bytes)}"
    )
    if rep.young_objects_kept:
        note(
            f"kept {rep.young_objects_kept} unreachable object(s) younger than the prune age "
            "(--prune=now deletes them)"
        )
    if rep.expired_reflog_entries:
        note(f"expired {rep.expired_reflog_entries} reflog entr(ies)")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def compact(as_json: bool) -> None:
    """Re-encode as deltas the older chunks that commits left whole (saves with
    defer_deltas: a CheckpointManager's background commits, DCP saves to object storage).
    What every checkout returns is unchanged; gc waits, commits go on."""
    rep = compaction.compact(repo())
    if as_json:
        echo_json(dataclasses.asdict(rep))
        return
    click.echo(
        f"re-encoded {rep.rewritten} of {rep.candidates} chunk(s) left whole "
        f"({rep.commits} commit(s) looked at), freed {human_size(rep.bytes_saved)}"
    )


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def fsck(as_json: bool) -> None:
    """Verify the repository: config, HEAD, refs, reflogs, and every object's hash and
    structure; name the dangling commits. Exits 5 on problems."""
    r = repo()
    rep = maintenance.fsck(r)
    if as_json:
        echo_json(
            {
                "ok": rep.ok,
                "objects_checked": rep.objects_checked,
                "commits": rep.commits,
                "dangling": rep.dangling,
                "dangling_commits": rep.dangling_commits,
                "problems": [dataclasses.asdict(p) for p in rep.problems],
            }
        )
    else:
        for p in rep.problems:
            click.echo(str(p))
        for oid in rep.dangling_commits:
            click.echo(f"dangling commit {oid}")
        click.echo(
            f"checked {rep.objects_checked} object(s), {rep.commits} commit(s); "
            f"{rep.dangling} dangling; {len(rep.problems)} problem(s)"
        )
    if not rep.ok:
        raise CorruptObjectError(f"fsck found {len(rep.problems)} problem(s)")


@click.command()
@click.argument("ref", default="HEAD", required=False)
@click.option("-n", "--max-count", type=int, default=None, help="Show at most N entries.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def reflog(ref: str, max_count: int | None, as_json: bool) -> None:
    """Where REF (default HEAD; a branch, tag or full ref name) has pointed, newest first:
    `REF@{N}` is the N-th entry. Commits no branch or tag reaches any more (a detached HEAD
    left behind, a moved or dropped branch) are found here; gc keeps them 90 days."""
    r = repo()
    full = ref
    if ref != "HEAD" and not ref.startswith("refs/"):
        for prefix in ("refs/heads/", "refs/tags/", "refs/remotes/"):
            if r.store.exists("logs/" + prefix + ref) or r.refs.exists(prefix + ref):
                full = prefix + ref
                break
        else:
            raise NotFoundError(f"no reflog for {ref!r} (not a branch, tag or ref)")
    entries = list(reversed(r.refs.reflog(full)))
    if max_count is not None:
        entries = entries[:max_count]
    rows: list[dict[str, Any]] = []
    for i, e in enumerate(entries):
        rows.append(
            {
                "selector": f"{ref}@{{{i}}}",
                "id": e.new,
                "old": e.old,
                "time": e.time,
                "who": e.who,
                "message": e.message,
                "exists": bool(e.new) and r.objects.has(e.new or ""),
            }
        )
    if as_json:
        echo_json({"ref": full, "entries": rows})
        return
    for x in rows:
        oid = short(x["id"]) if x["id"] else "(deleted)"
        gone = "" if x["exists"] or not x["id"] else " [pruned]"
        click.echo(f"{oid} {x['selector']}: {x['message']}{gone}")


COMMANDS = [du, gc, compact, fsck, reflog]
