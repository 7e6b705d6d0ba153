"""``tvcs restore``: write checkpoint files back as a commit holds them, as git restore does:
HEAD and the branch do not move, and nothing is deleted."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import click

from ..errors import NotFoundError, UsageError
from ..io.worktree import file_digest
from ._util import complete_rev, rel_to_root, repo, short
from .checkout import _plan, run_jobs

_GLOB_CHARS = frozenset("*?[")


def _expand(root: Path, recorded: list[str], paths: tuple[str, ...], commit_name: str) -> list[str]:
    """PATH arguments as checkout takes them: a glob (relative to the current directory, '*'
    also matches '/') becomes the recorded files it matches, each as a path under ``root``.
    A glob that matches nothing is a NotFoundError (nothing is written then)."""
    out: list[str] = []
    for p in paths:
        if not _GLOB_CHARS & set(p):
            out.append(p)
            continue
        pattern = rel_to_root(root, p)
        hits = [
            f
            for f in recorded
            if fnmatch.fnmatchcase(f, pattern) or fnmatch.fnmatchcase(f, pattern + "/*")
        ]
        if not hits:
            raise NotFoundError(f"{p}: matches no file recorded in commit {commit_name}")
        out.extend(str(root / f) for f in hits)
    return out


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option(
    "-s",
    "--source",
    default="HEAD",
    show_default=True,
    shell_complete=complete_rev,
    help="The revision to take the files from.",
)
@click.option(
    "--unsafe-pickle",
    is_flag=True,
    help="Unpickle values committed with --unsafe-pickle (runs code stored in the repository).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def restore(paths: tuple[str, ...], source: str, unsafe_pickle: bool, as_json: bool) -> None:
    """Write the checkpoint files PATH... (files, folders or globs) back as commit SOURCE
    (default: HEAD) recorded them.

    Modified and deleted files are rewritten (that is restore's purpose; no --force needed);
    HEAD and the branch do not move, other files are untouched and nothing is deleted. A
    PATH that SOURCE does not record is an error (exit 4) and then nothing is written.
    """
    r = repo()
    cid = r.resolve(source)
    c = r.get_commit(cid)
    m = r.get_manifest(c.manifest)
    name = f"{short(cid)} ({source})"
    if not m.files:
        raise UsageError(
            f"commit {name} records no files (it was made through the Python API); "
            f"use 'tvcs checkout {source} -o FILE' to write its state"
        )
    wanted = _expand(r.root, [fe.path for fe in m.files], paths, name)
    jobs = _plan(r, m, wanted, None, None, (), (), name, c.metadata)
    for job in jobs:
        if job.dest.is_dir():
            raise UsageError(f"{job.dest}: is a directory (restore replaces files only)")
        if job.expected is not None and job.dest.is_file() and not job.dest.is_symlink():
            digest = file_digest(job.dest)
            if digest == job.expected:  # byte-identical already: not rewritten
                job.status, job.digest, job.size = "unchanged", digest, job.dest.stat().st_size
    run_jobs(r, cid, m, jobs, (), (), True, unsafe_pickle, as_json, "restored")


COMMANDS = [restore]
