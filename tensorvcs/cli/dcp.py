"""``tvcs import`` and ``tvcs export``: DCP (torch.distributed.checkpoint) directories in and
out of the store (tensorvcs.dcp; docs/distributed.md). torch.distributed is imported only
when one of them runs."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import click

from ..errors import UsageError
from ..refs import TAGS, check_ref_name
from ._util import complete_rev, echo_json, human_size, repo, short


@click.command(name="import")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("-m", "--message", help="The commit message (default: 'import DCP checkpoint …').")
@click.option("--step", type=int, help="The training step this checkpoint was taken at.")
@click.option("-b", "--branch", help="Commit to this branch (created from HEAD if new).")
@click.option("--tag", "tag", help="Tag the new commit.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def import_dcp(
    path: str, message: str | None, step: int | None, branch: str | None, tag: str | None,
    as_json: bool,
) -> None:
    """Commit a DCP checkpoint directory (torch.distributed.checkpoint's FileSystemWriter
    layout: .metadata + *.distcp), keeping its shards.

    Unchanged shards cost nothing; changed ones are stored as deltas against the branch's last
    commit. The directory's .metadata is a pickle and is unpickled, as DCP does: import only
    directories you trust.
    """
    from ..dcp import import_dcp as _import

    if not (Path(path) / ".metadata").is_file():
        raise UsageError(f"{path} is not a DCP checkpoint directory (no .metadata)")
    r = repo()
    if tag is not None:
        check_ref_name(tag, "tag")
        if r.refs.exists(TAGS + tag):
            raise UsageError(f"tag {tag!r} already exists")
    c = _import(r, path, message=message, branch=branch, step=step)
    if tag is not None:
        r.tag(tag, c)
    stats = r.last_write_stats
    target, _ = r.head()
    where = branch or target or "detached HEAD"
    if as_json:
        echo_json(
            {
                "id": c.id,
                "branch": where,
                "tag": tag,
                "items": stats.tensors,
                "logical_bytes": stats.logical_bytes,
                "new_stored_bytes": stats.new_stored_bytes,
            }
        )
        return
    click.echo(f"[{where} {short(c.id)}] {c.message.splitlines()[0] if c.message else ''}")
    tagged = f"; tagged {tag}" if tag else ""
    click.echo(
        f" {stats.tensors} stored item(s), {human_size(stats.logical_bytes)}; "
        f"{human_size(stats.new_stored_bytes)} new in the store{tagged}"
    )


@click.command(name="export")
@click.argument("rev", shell_complete=complete_rev)
@click.argument("out", type=click.Path())
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["dcp", "pt", "safetensors"]),
    help="dcp: a DCP directory (plain dcp.load reads it); pt / safetensors: one consolidated "
    "file. Default: from OUT's suffix (.pt/.pth: pt, .safetensors: safetensors), else dcp.",
)
@click.option(
    "--unsafe-pickle",
    is_flag=True,
    help="For pt/safetensors of a DCP commit: unpickle its non-tensor values with full pickle "
    "(weights_only=False). Runs code from the checkpoint: only for checkpoints you trust.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def export_dcp(rev: str, out: str, fmt: str | None, unsafe_pickle: bool, as_json: bool) -> None:
    """Write commit REV as a DCP directory or as one consolidated .pt/.safetensors file.

    Works for commits saved through DCP (shards are kept in a DCP export, assembled in a file
    export) and for any other commit (its state, as one chunk per tensor).
    """
    from .. import dcp

    r = repo()
    cid = r.resolve(rev)
    if fmt is None:
        suffix = Path(out).suffix
        fmt = {".pt": "pt", ".pth": "pt", ".safetensors": "safetensors"}.get(suffix, "dcp")
    if fmt == "dcp":
        if Path(out).exists() and any(Path(out).iterdir()):
            raise UsageError(f"{out} exists and is not empty")
        dcp.export_dcp(r, cid, out)
    else:
        if fmt == "safetensors" and Path(out).suffix != ".safetensors":
            raise UsageError("a safetensors export needs an OUT ending in .safetensors")
        if fmt == "pt" and Path(out).suffix == ".safetensors":
            raise UsageError("a pt export needs an OUT not ending in .safetensors")
        if fmt == "pt":
            _save_pt(r, cid, Path(out), weights_only=not unsafe_pickle)
        else:
            dcp.export_torch_save(r, cid, out, weights_only=not unsafe_pickle)
    if as_json:
        echo_json({"id": cid, "format": fmt, "path": str(Path(out).resolve())})
        return
    click.echo(f"wrote {out} ({fmt}) from {short(cid)}")


def _save_pt(r: Any, cid: str, out: Path, weights_only: bool) -> None:
    """torch.save the consolidated state of ``cid`` to ``out`` (``dcp.write_torch_save``: one
    tensor in memory at a time) through a new temporary file renamed into place; written
    through a Python file, so a full disk is reported as such (ENOSPC), not as torch's
    "[enforce fail at inline_container.cc]"."""
    from .. import dcp

    tmp = out.with_name(f".{out.name}.tvcs-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    try:
        with open(fd, "wb") as fp:
            dcp.write_torch_save(r, cid, fp, weights_only=weights_only)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


COMMANDS = [import_dcp, export_dcp]
