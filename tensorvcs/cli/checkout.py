"""``tvcs checkout``: write the files a commit recorded back to disk."""

from __future__ import annotations

import fnmatch
import os
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from ..errors import (
    CorruptObjectError,
    NotFoundError,
    OverwriteError,
    SelectionError,
    UnsupportedValueError,
    UsageError,
)
from ..format.manifest import FileEntry, Manifest
from ..format.values import KeyPath, path_str, walk_leaves
from ..io import exporter
from ..io.worktree import (
    WorktreeIndex,
    all_commits,
    check_recorded_path,
    committed_digests,
    file_digest,
    safe_destination,
)
from ._util import complete_rev, echo_json, human_size, note, rel_to_root, repo, short
from .progress import SYNCING, CountingFile, Progress

SUFFIX = {"pt": ".pt", "safetensors": ".safetensors"}
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _glob_hits(key: str, g: str) -> bool:
    # a glob also names everything under it, as a path does in git and in Repo.checkout
    # ("ckpt.pt/optimizer" selects "ckpt.pt/optimizer/state/0/exp_avg")
    return fnmatch.fnmatchcase(key, g) or fnmatch.fnmatchcase(key, g + "/*")


def make_select(include: Sequence[str], exclude: Sequence[str]) -> Callable[[KeyPath], bool] | None:
    """fnmatch globs on key paths as `tvcs ls` prints them ('*' also matches '/'); a glob
    also selects every key path below the one it matches."""
    if not include and not exclude:
        return None

    def select(path: KeyPath) -> bool:
        key = path_str(path)
        if include and not any(_glob_hits(key, g) for g in include):
            return False
        return not any(_glob_hits(key, g) for g in exclude)

    return select


def _globs_text(include: Sequence[str], exclude: Sequence[str]) -> str:
    return " ".join([f"--include {g!r}" for g in include] + [f"--exclude {g!r}" for g in exclude])


def _matches_include(m: Manifest, files: Sequence[FileEntry], include: Sequence[str]) -> bool:
    """True when some key path of ``m`` (or, for opaque files, file path) matches ``include``
    (an include that matches nothing is an error, whatever --exclude then removes)."""
    inc = make_select(include, ())
    if inc is None:
        return True
    if files:
        for fe in files:
            if fe.kind == "state":
                node = exporter.file_node(m, fe.path)
                if exporter.has_selected_leaf(node, (fe.path,), inc):
                    return True
            elif inc((fe.path,)):
                return True
        return False
    return any(inc(p) for p, _ in walk_leaves(m.tree))


@dataclass
class Job:
    entry: FileEntry | None  # None: the whole state of a commit made without files
    dest: Path
    fmt: str  # "pt", "safetensors" or "blob"
    exact: bool  # byte-identical to the committed file
    expected: str | None = None  # BLAKE3 the written file must have (exact jobs)
    status: str = "written"
    digest: str | None = None
    size: int = 0
    how: str = ""  # what shaped the written bytes, for the worktree index
    link: bool = False  # the destination is a symbolic link (replaced, never written through)
    part: exporter.FolderFile | None = None  # a file of a folder the Python API committed
    name: str | None = None  # what the job writes, as --json reports it (the recorded path)


def _plan(
    r: Any,
    m: Manifest,
    paths: Sequence[str],
    out: str | None,
    fmt: str | None,
    include: Sequence[str],
    exclude: Sequence[str],
    commit_name: str,
    metadata: dict[str, Any],
) -> list[Job]:
    select = make_select(include, exclude)
    if not m.files:
        if not out:
            raise UsageError(
                f"commit {commit_name} records no files (it was made through the Python API); "
                "use -o FILE (or -o DIR/) to write its state"
            )
        if paths:
            raise UsageError(f"commit {commit_name} records no files; PATH arguments do not apply")
        if not _matches_include(m, [], include):
            raise SelectionError(
                f"nothing in commit {commit_name} matches {_globs_text(include, ())}"
            )
        if out.endswith(("/", os.sep)) or Path(out).is_dir():
            return _plan_folder(r, m, metadata, Path(out), fmt, select, commit_name)
        f = fmt or ("safetensors" if out.endswith(".safetensors") else "pt")
        return [Job(None, Path(out), f, False, link=Path(out).is_symlink())]
    chosen: list[FileEntry] = []
    if paths:
        for p in paths:
            rel = rel_to_root(r.root, p)
            hits = [
                fe
                for fe in m.files
                if rel == "." or fe.path == rel or fe.path.startswith(rel.rstrip("/") + "/")
            ]
            if not hits:
                raise NotFoundError(f"{p}: not recorded in commit {commit_name}")
            chosen.extend(fe for fe in hits if fe not in chosen)
    else:
        chosen = list(m.files)
    if include and not _matches_include(m, chosen, include):
        where = f" under {' '.join(repr(p) for p in paths)}" if paths else ""
        raise SelectionError(
            f"nothing in commit {commit_name}{where} matches {_globs_text(include, ())}"
        )
    kept: list[FileEntry] = []
    for fe in chosen:
        if select is not None:
            if fe.kind == "state":
                node = exporter.file_node(m, fe.path)
                if not exporter.has_selected_leaf(node, (fe.path,), select):
                    continue
            elif not select((fe.path,)):
                continue
        kept.append(fe)
    if not kept:
        raise SelectionError(
            f"nothing in commit {commit_name} is left by {_globs_text(include, exclude)}"
        )
    single = (
        out is not None
        and len(kept) == 1
        and not Path(out).is_dir()
        and not out.endswith(("/", os.sep))
    )
    jobs = []
    for fe in kept:
        if fe.kind == "state":
            f = fmt or fe.format
            if f not in SUFFIX:
                raise UsageError(f"{fe.path}: unknown stored format {fe.format!r}")
        else:
            f = "blob"
        if single:
            dest = Path(out)  # type: ignore[arg-type]
        else:
            rel = check_recorded_path(fe.path)
            if f != "blob" and f != fe.format:
                rel = str(Path(rel).with_suffix(SUFFIX[f]).as_posix())
            # the recorded path is checked before anything is written (it decides where)
            dest = safe_destination(Path(out) if out else r.root, rel, r.path)
        exact = fe.kind == "blob" or (fe.format == f == "safetensors" and select is None)
        expected = fe.extra.get("blake3") if exact else None
        jobs.append(
            Job(
                fe,
                dest,
                f,
                exact,
                expected if isinstance(expected, str) else None,
                link=dest.is_symlink(),
            )
        )
    return jobs


def _plan_folder(
    r: Any,
    m: Manifest,
    metadata: dict[str, Any],
    out: Path,
    fmt: str | None,
    select: Callable[[KeyPath], bool] | None,
    commit_name: str,
) -> list[Job]:
    """``-o DIR/`` for a commit made without files: a folder the Python API committed
    (``commit_dir``, the Hugging Face callback) comes back as its files; any other state as
    one file in DIR, ``state.pt`` (``state.safetensors`` with --format safetensors; a
    TVCSCheckpointIO checkpoint keeps the name it was saved as)."""
    parts = exporter.folder_files(m, metadata)
    if parts is None:
        f = fmt or "pt"
        name = exporter.state_file_name(metadata) + SUFFIX[f]
        dest = safe_destination(out, name, r.path)
        return [Job(None, dest, f, False, link=dest.is_symlink())]
    if fmt is not None:
        raise UsageError(
            f"commit {commit_name} is a committed folder: its files are written in their own "
            "formats (--format does not apply)"
        )
    jobs = []
    for part in parts:
        if select is not None and not exporter.has_selected_leaf(part.node, part.prefix, select):
            continue
        dest = safe_destination(out, check_recorded_path(part.rel), r.path)
        kind = {"safetensors": "safetensors", "torch": "pt", "bytes": "blob"}[part.format]
        jobs.append(Job(None, dest, kind, False, link=dest.is_symlink(), part=part, name=part.rel))
    return jobs


def _check_overwrites(r: Any, cid: str, jobs: list[Job], index: WorktreeIndex) -> None:
    """Refuse (OverwriteError) to replace a file whose content no commit holds."""
    known: set[str] | None = None
    conflicts: list[Path] = []
    links = [job.dest for job in jobs if job.link]
    if links:
        shown = ", ".join(_shown(p) for p in links[:3]) + (" ..." if len(links) > 3 else "")
        raise OverwriteError(
            f"checkout would replace {len(links)} symbolic link(s) with file(s): {shown} "
            "(checkout never writes through a link; use --force to replace them)"
        )
    for job in jobs:
        if not job.dest.exists():
            continue
        if job.dest.is_dir():
            raise UsageError(f"{job.dest}: is a directory")
        digest = file_digest(job.dest)
        same = job.expected is not None and digest == job.expected
        if same or index.wrote(digest, job.dest.resolve(), cid, job.how):
            job.status = "unchanged"
            job.digest = digest
            job.size = job.dest.stat().st_size
            continue
        if digest in index:
            continue
        if known is None:
            known = committed_digests(r, [cid, *all_commits(r)])
        if digest not in known:
            conflicts.append(job.dest)
    if conflicts:
        shown = ", ".join(_shown(p) for p in conflicts[:3]) + (" ..." if len(conflicts) > 3 else "")
        raise OverwriteError(
            f"checkout would overwrite {len(conflicts)} file(s) whose content is in no commit: "
            f"{shown} (commit them first, or use --force)"
        )


def _shown(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


def _pickle_hint(e: UnsupportedValueError) -> UnsupportedValueError:
    msg = re.sub(
        r"pass allow_pickle=True to unpickle it",
        "check out with --unsafe-pickle to unpickle it",
        str(e),
    )
    return UnsupportedValueError(msg, e.key_path)


def _write(
    r: Any,
    m: Manifest,
    job: Job,
    select: Callable[[KeyPath], bool] | None,
    unsafe_pickle: bool,
    progress: Progress,
    fp: Any,
) -> str:
    if job.part is not None:
        return _write_part(r, m, job.part, select, unsafe_pickle, progress, fp, job.dest.parent)
    fe = job.entry
    if fe is not None and fe.kind == "blob":
        progress.start("writing", fe.size)
        return exporter.write_blob(r, fe, fp, progress.update)
    node = exporter.file_node(m, fe.path) if fe is not None else m.tree
    prefix: KeyPath = (fe.path,) if fe is not None else ()
    label = fe.path if fe is not None else "the state"
    if node is None:
        raise CorruptObjectError(f"{label}: the commit's state has no key {label!r}")
    if job.exact:
        assert fe is not None
        progress.start("writing", fe.size)
        return exporter.write_safetensors_exact(r, m, fe, node, fp, progress.update)
    if job.fmt == "safetensors":
        items, others = exporter.tensor_items(m, node, prefix, select)
        if others:
            note(
                f"{label}: left out {len(others)} non-tensor value(s) a safetensors file cannot "
                f"hold (e.g. {others[0]!r}); use --format pt to keep them"
            )
        meta = fe.extra.get("metadata") if fe is not None and fe.format == "safetensors" else None
        progress.start("writing", sum(it.entry.nbytes for it in items))
        return exporter.write_safetensors_converted(
            r, items, meta if isinstance(meta, dict) else {"format": "pt"}, fp, progress.update
        )
    wanted, _ = m.selected_tensors(node, prefix, select)
    total = sum(e.nbytes for e in wanted.values())
    progress.start("reading", total)
    try:
        return exporter.write_pt_file(
            r, m, node, prefix, select, unsafe_pickle, _saving(fp, progress, total),
            job.dest.parent, progress.update,
        )
    except UnsupportedValueError as e:
        raise _pickle_hint(e) from None


def _saving(fp: Any, progress: Progress, total: int) -> Any:
    """``fp`` for torch.save once the tensors are read: its first write begins the 'writing'
    phase (about ``total`` bytes: the file's tensors and a little pickle around them)."""
    if not progress.enabled:
        return fp

    def wrote(n: int) -> None:
        if progress.label != "writing":
            if progress.label == "reading":  # torch.save starts once every tensor is read
                progress.update(max(0, progress.total - progress.done))
            progress.start("writing", total)
        progress.update(n)

    return CountingFile(fp, wrote)


def _write_part(
    r: Any,
    m: Manifest,
    part: exporter.FolderFile,
    select: Callable[[KeyPath], bool] | None,
    unsafe_pickle: bool,
    progress: Progress,
    fp: Any,
    scratch: Path,
) -> str:
    """One file of a folder the Python API committed (see ``exporter.folder_files``)."""
    if part.format == "bytes":
        data = r.materialize(Manifest(part.node, m.tensors), None, None, False, root=part.prefix)
        if not isinstance(data, bytes):
            raise CorruptObjectError(f"{part.rel}: the committed folder holds no bytes for it")
        return exporter.write_bytes(data, fp)
    if part.format == "safetensors":
        items, _ = exporter.tensor_items(m, part.node, part.prefix, select)
        meta = None
        if part.metadata is not None:
            meta = r.materialize(Manifest(part.metadata, m.tensors), root=part.prefix)
        progress.start("writing", sum(it.entry.nbytes for it in items))
        return exporter.write_safetensors_converted(
            r, items, meta if isinstance(meta, dict) else None, fp, progress.update
        )
    wanted, _ = m.selected_tensors(part.node, part.prefix, select)
    total = sum(e.nbytes for e in wanted.values())
    progress.start("reading", total)
    try:
        return exporter.write_pt_file(
            r, m, part.node, part.prefix, select, unsafe_pickle, _saving(fp, progress, total),
            scratch, progress.update,
        )
    except UnsupportedValueError as e:
        raise _pickle_hint(e) from None


@click.command()
@click.argument("rev", shell_complete=complete_rev)
@click.argument("paths", nargs=-1, type=click.Path())
@click.option(
    "-o",
    "--output",
    "out",
    help="Write elsewhere: a file (when one file is checked "
    "out) or a folder that receives the recorded paths.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["pt", "safetensors"]),
    help="Convert checkpoint files to this format.",
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Only key paths matching GLOB (as `tvcs ls` prints them; repeatable).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Leave out key paths matching GLOB (repeatable).",
)
@click.option(
    "-f", "--force", is_flag=True, help="Overwrite files even if no commit holds their content."
)
@click.option(
    "--unsafe-pickle",
    is_flag=True,
    help="Unpickle values committed with --unsafe-pickle (runs code stored in the repository).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def checkout(
    rev: str,
    paths: tuple[str, ...],
    out: str | None,
    fmt: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    force: bool,
    unsafe_pickle: bool,
    as_json: bool,
) -> None:
    """Restore the files commit REV recorded (all, or those under PATH...).

    A .safetensors file comes back byte-identical; a torch file is written with torch.save
    and loads back equal. An existing file is replaced only when its content is in some
    commit (or checkout wrote it); otherwise checkout refuses unless --force. HEAD does not
    move.
    """
    r = repo()
    cid = r.resolve(rev)
    c = r.get_commit(cid)
    m = r.get_manifest(c.manifest)
    jobs = _plan(r, m, paths, out, fmt, include, exclude, f"{short(cid)} ({rev})", c.metadata)
    run_jobs(r, cid, m, jobs, include, exclude, force, unsafe_pickle, as_json, "checked out")


def run_jobs(
    r: Any,
    cid: str,
    m: Manifest,
    jobs: list[Job],
    include: Sequence[str],
    exclude: Sequence[str],
    force: bool,
    unsafe_pickle: bool,
    as_json: bool,
    verb: str,
) -> None:
    """Write the planned ``jobs`` of commit ``cid`` (each through a temporary file renamed
    into place), record them in the worktree index and report them ('<verb> N file(s) from
    <commit>', or the --json document). Shared by ``checkout`` and ``restore``."""
    select = make_select(include, exclude)
    for job in jobs:
        job.how = f"{job.fmt}|{include}|{exclude}" if select else job.fmt
    index = WorktreeIndex(r)
    if not force:
        _check_overwrites(r, cid, jobs, index)
    progress = Progress(enabled=False if as_json else None)  # bars on a terminal only
    try:
        for job in jobs:
            if job.status == "unchanged":
                continue
            job.dest.parent.mkdir(parents=True, exist_ok=True)
            progress.subject = _shown(job.dest)  # which file each line is about
            tmp = job.dest.parent / f".{job.dest.name}.tvcs-{secrets.token_hex(6)}.tmp"
            # a new file (O_EXCL: never an existing file or a link planted at the name)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW, 0o666)
            try:
                with open(fd, "wb") as fp:
                    job.digest = _write(r, m, job, select, unsafe_pickle, progress, fp)
                progress.phase(SYNCING)  # the check, the rename and the index: no bar at 100%
                if job.expected is not None and job.digest != job.expected:
                    raise CorruptObjectError(
                        f"{job.dest}: the written bytes do not match the committed file "
                        f"(blake3 {short(job.digest)} != {short(job.expected)})"
                    )
                os.replace(tmp, job.dest)
            except BaseException:
                progress.finish()
                tmp.unlink(missing_ok=True)
                raise
            st = job.dest.stat()
            job.size = st.st_size
            index.add(job.digest, job.dest.resolve(), cid, job.how)
            index.remember(job.dest.resolve(), st, job.digest, time.time_ns())
            progress.finish()
    finally:
        if any(j.status == "written" and j.digest for j in jobs):
            index.save()
    if as_json:
        echo_json(
            {
                "id": cid,
                "files": [
                    {
                        "path": j.entry.path if j.entry else j.name,
                        "dest": str(j.dest),
                        "format": j.fmt,
                        "status": j.status,
                        "size": j.size,
                        "blake3": j.digest,
                        "byte_identical": j.exact,
                    }
                    for j in jobs
                ],
            }
        )
        return
    for j in jobs:
        what = "unchanged" if j.status == "unchanged" else "wrote"
        click.echo(f"{what} {_shown(j.dest)} ({human_size(j.size)}, {j.fmt})")
    click.echo(f"{verb} {len(jobs)} file(s) from {short(cid)}")


COMMANDS = [checkout]
