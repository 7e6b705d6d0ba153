"""``tvcs status``: the checkpoint files of the work tree against HEAD, and HEAD against its
remote-tracking branch.

A file HEAD recorded is *unchanged* when its bytes hash to the digest the commit recorded, or
when checkout wrote it from a commit whose file at that path has that same digest (a ``.pt``
file comes back through ``torch.save``: equal content, other bytes; the work-tree index in
``.tvcs/worktree.json`` knows it); otherwise *modified*; *deleted* when it is gone. *New*
files are the ones HEAD does not record that either have a checkpoint suffix (``.pt``,
``.pth``, ``.ckpt``, ``.bin``, ``.safetensors``) or sit in a folder (below the root) where HEAD
records a file, as the ``config.json`` of a Hugging Face folder does.

Digests come from the stat cache of the work-tree index (io/worktree.py): only files whose
size, mtime, ctime or inode changed are read again. Nothing here imports torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..format.manifest import FileEntry
from ..io.worktree import REPO_DIR, WorktreeIndex
from ._util import echo_json, repo, short

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
REMOTES = "refs/remotes/"  # as remote.py (not imported: it is not needed to read refs)
ORDER = ("new", "modified", "deleted", "unchanged")


@dataclass
class FileStatus:
    path: str  # relative to the repository root, '/'-separated
    status: str  # one of ORDER


def _skipped(name: str) -> bool:
    # checkout's temporary files (".NAME.tvcs-XXXX.tmp") and its scratch files
    return name.startswith(".") and (".tvcs-" in name and name.endswith((".tmp", ".tensors")))


def work_files(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` (relative '/'-path: absolute path), not following
    symbolic links and skipping ``.tvcs`` folders and nested repositories."""
    out: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d != REPO_DIR and not os.path.islink(here / d) and not (here / d / REPO_DIR).is_dir()
        )
        for fn in filenames:
            p = here / fn
            if _skipped(fn) or p.is_symlink() or not p.is_file():
                continue
            out[p.relative_to(root).as_posix()] = p
    return out


def upstream(r: Any, branch: str | None) -> tuple[str | None, str | None]:
    """(``<remote>/<branch>``, its commit) of the remote-tracking ref of ``branch``: the one of
    the remote ``origin`` if it has one, else of the first remote (by name) that has one."""
    if branch is None:
        return None, None
    found: list[tuple[str, str]] = []
    for ref, oid in r.refs.list(REMOTES).items():
        remote, _, name = ref.partition("/")
        if name == branch:
            found.append((remote, oid))
    if not found:
        return None, None
    found.sort(key=lambda x: (x[0] != "origin", x[0]))
    remote, oid = found[0]
    return f"{remote}/{branch}", oid


def file_statuses(r: Any, head: str | None) -> tuple[list[FileStatus], bool]:
    """The status of every checkpoint file (see the module doc), sorted by path; and whether
    HEAD records files at all."""
    root = r.root.resolve()
    recorded: dict[str, FileEntry] = {}
    if head is not None:
        m = r.get_manifest(r.get_commit(head).manifest)
        recorded = {fe.path: fe for fe in m.files}
    present = work_files(root)
    folders = {p.rsplit("/", 1)[0] for p in recorded if "/" in p}
    index = WorktreeIndex(r)
    same_file: dict[tuple[str, str], bool] = {}  # (commit, path): its digest equals HEAD's

    def checked_out_equal(digest: str, fe: FileEntry, where: Path) -> bool:
        e = index.entries.get(digest)
        if not isinstance(e, dict) or e.get("path") != str(where):
            return False
        cid, how = e.get("commit"), e.get("how")
        want = "blob" if fe.kind == "blob" else fe.format
        if not isinstance(cid, str) or how != want:
            return False
        if cid == head:
            return True
        key = (cid, fe.path)
        if key not in same_file:
            try:
                other = r.get_manifest(r.get_commit(cid).manifest)
            except Exception:  # a commit gc removed: unknown, so not the same
                same_file[key] = False
            else:
                mine = fe.extra.get("blake3")
                same_file[key] = any(
                    f.path == fe.path and f.extra.get("blake3") == mine for f in other.files
                )
        return same_file[key]

    out: list[FileStatus] = []
    for rel, fe in recorded.items():
        p = present.get(rel)
        if p is None:
            out.append(FileStatus(rel, "deleted"))
            continue
        digest = index.digest(p)
        ok = digest == fe.extra.get("blake3") or checked_out_equal(digest, fe, p.resolve())
        out.append(FileStatus(rel, "unchanged" if ok else "modified"))
    for rel in present:
        if rel in recorded:
            continue
        parent = rel.rsplit("/", 1)[0] if "/" in rel else None
        if rel.lower().endswith(CHECKPOINT_SUFFIXES) or (parent is not None and parent in folders):
            out.append(FileStatus(rel, "new"))
    if index.changed:
        index.save()
    out.sort(key=lambda f: f.path)
    return out, bool(recorded)


def _tracking_line(up: str, ahead: int, behind: int) -> str:
    if ahead and behind:
        return (
            f"Your branch and '{up}' have diverged, and have {ahead} and {behind} different "
            "commits each, respectively."
        )
    if ahead:
        return f"Your branch is ahead of '{up}' by {ahead} commit(s)."
    if behind:
        return f"Your branch is behind '{up}' by {behind} commit(s)."
    return f"Your branch is up to date with '{up}'."


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(as_json: bool) -> None:
    """Which checkpoint files of the work tree are new, modified, deleted or unchanged
    against HEAD; HEAD's branch and how far it is ahead of or behind its remote-tracking
    branch.

    A file checkout wrote from a commit whose file has the same content is unchanged (a .pt
    file comes back with torch.save's bytes). Only files whose stat changed are hashed.
    """
    r = repo()
    branch, head = r.head()
    up, theirs = upstream(r, branch)
    ahead = behind = None
    if up is not None and theirs is not None:
        from ..remote import count_only

        ahead = count_only(r, head, theirs) if head is not None else 0
        behind = count_only(r, theirs, head)
    files, recorded = file_statuses(r, head)
    if as_json:
        echo_json(
            {
                "schema": 1,
                "head": head,
                "branch": branch,
                "upstream": up,
                "ahead": ahead,
                "behind": behind,
                "files": [{"path": f.path, "status": f.status} for f in files],
            }
        )
        return
    if branch is not None:
        click.echo(f"On branch {branch}")
    else:
        click.echo(f"HEAD detached at {short(head)}")
    if up is not None and ahead is not None and behind is not None:
        click.echo(_tracking_line(up, ahead, behind))
    if head is None:
        click.echo("No commits yet")
    else:
        c = r.get_commit(head)
        first = c.message.splitlines()[0] if c.message else ""
        click.echo(f"HEAD {short(head)}  {first}".rstrip())
        if not recorded:
            click.echo("(HEAD records no files: it was made through the Python API)")
    changed = [f for f in files if f.status != "unchanged"]
    width = max((len(s) for s in ORDER[:3]), default=0) + 2
    if changed:
        click.echo("")
        for kind in ORDER[:3]:
            for f in changed:
                if f.status == kind:
                    click.echo(f"  {(kind + ':').ljust(width)}{f.path}")
    kept = len(files) - len(changed)
    click.echo("")
    if changed:
        click.echo(f"{len(changed)} changed, {kept} unchanged checkpoint file(s)")
    else:
        click.echo(f"nothing to commit: {kept} checkpoint file(s), all unchanged against HEAD")


COMMANDS = [status]
