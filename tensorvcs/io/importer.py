"""Committing files: checkpoint files become state subtrees, other files opaque blobs.

Each file is recorded by its path relative to the repository root (a ``FileEntry`` in the
manifest). A parsed file's content lives in the state tree under the key ``[path]``, so its
tensors dedup and delta-compress against the same key path of the parent commit:

- ``.safetensors``: the tensors by name (views of a read-only mapping) plus the exact header
  bytes as a blob (``FileEntry.chunks``), so checkout can rebuild the file byte for byte. A file
  whose tensors do not tile its data region exactly is stored as opaque bytes instead.
- ``.pt`` / ``.pth`` / ``.ckpt`` / ``.bin`` torch.save files: ``torch.load(weights_only=True,
  mmap=True)``; a pickle that needs arbitrary code is refused unless ``unsafe_pickle``.
  TorchScript archives and files that are not torch checkpoints are stored opaquely.
- anything else: opaque bytes, cut into ``chunk_size`` blob objects.

Memory: tensors are never copied up front; while the commit runs, ``mapped.PageDropper``
drops the pages the writer has read, so peak memory does not grow with the file size.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import blake3

from ..errors import NotFoundError, TensorVCSError, UnsupportedValueError, UsageError
from ..format import codecs, envelope
from ..format.commit import Commit
from ..format.ids import object_id
from ..format.manifest import FileEntry
from . import safetensors_file as stf
from . import torch_file
from .mapped import PageDropper
from .worktree import WorktreeIndex

if TYPE_CHECKING:
    from ..repo import Repo

REPO_DIR = ".tvcs"
# torch files that pickle a settings object rather than a checkpoint (the Hugging Face
# Trainer's TrainingArguments): when torch.load(weights_only=True) refuses one, it is stored
# as opaque bytes (never unpickled; checkout writes it back byte for byte) instead of
# failing the commit of its folder
KEPT_AS_BYTES = frozenset({"training_args.bin"})


class ProgressSink:
    """What the importer reports to (the CLI draws bars; this default draws nothing)."""

    enabled = False

    def start(self, label: str, total: int) -> None:
        pass

    def update(self, n: int) -> None:
        pass

    def phase(self, name: str, total: int = 0) -> None:
        pass

    def finish(self) -> None:
        pass


class ProgressLike(Protocol):
    """Phases of byte work: ``start`` begins one; ``phase`` begins one or, named as the one
    running, adds ``total`` bytes to it; ``update`` (from any thread) counts bytes done."""

    def start(self, label: str, total: int) -> None: ...

    def update(self, n: int) -> None: ...

    def phase(self, name: str, total: int = 0) -> None: ...

    def finish(self) -> None: ...


@dataclass
class InputFile:
    path: Path  # absolute
    rel: str  # relative to the repository root, '/'-separated
    size: int


@dataclass
class CommitResult:
    commit: Commit
    files: list[FileEntry]
    notes: list[str] = field(default_factory=list)
    logical_bytes: int = 0
    new_stored_bytes: int = 0


def collect(root: Path, args: Sequence[str | os.PathLike[str]]) -> list[InputFile]:
    """The files named by ``args`` (directories: every file below them, except ``.tvcs``),
    sorted by path. Errors: a missing path, a path outside the repository, a symbolic link
    (named, met in a folder, or on the way to a named path: links are never followed, so a
    commit holds only files of the work tree)."""
    root = root.resolve()
    found: dict[str, InputFile] = {}

    def add(p: Path) -> None:
        ap = Path(os.path.abspath(p))
        try:
            rel = ap.relative_to(root)
        except ValueError:
            raise UsageError(f"{p}: outside the repository at {root}") from None
        if REPO_DIR in rel.parts:
            return
        if not rel.parts:
            raise UsageError(f"{p}: is the repository root, not a file")
        _refuse_links(root, rel, p)
        found[rel.as_posix()] = InputFile(ap, rel.as_posix(), ap.stat().st_size)

    for arg in args:
        p = Path(arg)
        if p.is_symlink() or not p.exists():
            if p.is_symlink():
                raise _link_error(p, p)
            raise NotFoundError(f"{arg}: no such file or directory")
        if p.is_dir():
            if _inside(p, root):
                rel = Path(os.path.abspath(p)).relative_to(root)
                if REPO_DIR in rel.parts:
                    continue
                _refuse_links(root, rel, p)
            for dirpath, dirnames, filenames in os.walk(p):
                for d in dirnames:  # os.walk lists linked folders here but never enters them
                    if d != REPO_DIR and os.path.islink(os.path.join(dirpath, d)):
                        raise _link_error(Path(dirpath) / d, p)
                dirnames[:] = sorted(d for d in dirnames if d != REPO_DIR)
                for fn in filenames:
                    fp = Path(dirpath) / fn
                    if fp.is_symlink():
                        raise _link_error(fp, p)
                    if fp.is_file():
                        add(fp)
        elif p.is_file():
            add(p)
        else:
            raise UsageError(f"{arg}: not a regular file or directory")
    return [found[k] for k in sorted(found)]


def _refuse_links(root: Path, rel: Path, arg: Path) -> None:
    """UsageError when a component of ``root/rel`` below ``root`` is a symbolic link."""
    here = root
    for part in rel.parts:
        here = here / part
        if here.is_symlink():
            raise _link_error(here, arg)


def _link_error(link: Path, arg: Path) -> UsageError:
    try:
        target = f" (-> {os.readlink(link)})"
    except OSError:
        target = ""
    shown = _shown(link)
    la, aa = Path(os.path.abspath(link)), Path(os.path.abspath(arg))
    where = f" on the way to {arg}" if aa != la and aa.is_relative_to(la) else ""
    return UsageError(
        f"{shown}: is a symbolic link{target}{where}; commit does not follow symbolic "
        "links: commit the file it points to by its own path inside the repository, or "
        "replace the link with a copy"
    )


def _shown(p: Path) -> str:
    try:
        return os.path.relpath(p)
    except ValueError:
        return str(p)


def _inside(p: Path, root: Path) -> bool:
    try:
        Path(os.path.abspath(p)).relative_to(root)
        return True
    except ValueError:
        return False


def _store_blob(
    repo: Repo, path: Path, progress: ProgressLike
) -> tuple[list[tuple[str, int]], str, int]:
    """Store a file as opaque chunks: (chunks, BLAKE3 of the whole file, new stored bytes)."""
    cs = repo.config.chunk_size
    h = blake3.blake3()
    chunks: list[tuple[str, int]] = []
    new = 0
    window: deque[tuple[int, Future[tuple[str, int]]]] = deque()

    def put(data: bytes) -> tuple[str, int]:
        oid = object_id(data)
        if repo.objects.has(oid):
            return oid, 0
        enc = codecs.encode_bytes(data).checked(data)
        return oid, repo.objects.write(oid, envelope.KIND_BLOB, len(data), enc)

    def drain(limit: int) -> None:
        nonlocal new
        while len(window) > limit:
            n, fut = window.popleft()
            oid, written = fut.result()
            chunks.append((oid, n))
            new += written
            progress.update(n)

    with open(path, "rb") as f:
        while True:
            data = f.read(cs)
            if not data:
                break
            h.update(data)
            window.append((len(data), repo.pool.submit(put, data)))
            drain(2 * repo.workers)
    drain(0)
    return chunks, h.hexdigest(), new


def _pickle_hint(err: UnsupportedValueError, inputs: list[InputFile]) -> UnsupportedValueError:
    kp = err.key_path or ""
    rel = next((i.rel for i in inputs if kp == i.rel or kp.startswith(i.rel + "/")), None)
    msg = str(err)
    hint = "allow_pickle" in msg
    msg = re.sub(r"\s*\(pass allow_pickle=True[^)]*\)", "", msg)
    if rel is not None:
        msg = f"{rel}: {msg}"
    if hint:
        msg += "; commit with --unsafe-pickle to store such values as opaque pickles"
    return UnsupportedValueError(msg, err.key_path)


def commit_files(
    repo: Repo,
    inputs: list[InputFile],
    message: str,
    *,
    step: int | None = None,
    metrics: dict[str, Any] | None = None,
    branch: str | None = None,
    author: str | None = None,
    unsafe_pickle: bool = False,
    progress: ProgressLike | None = None,
    note: Callable[[str], None] | None = None,
) -> CommitResult:
    """Commit ``inputs`` as one commit (see the module docstring)."""
    from ..repo import GC_LOCK

    if progress is None:
        progress = ProgressSink()
    notes: list[str] = []

    def say(text: str) -> None:
        notes.append(text)
        if note is not None:
            note(text)

    if not inputs:
        raise UsageError("nothing to commit: no files given")
    state: dict[str, Any] = {}
    entries: list[FileEntry] = []
    mapped: list[Path] = []
    keepalive: list[Any] = []  # mappings that must outlive the commit
    blob_new = 0
    logical = 0
    # Objects written before the commit starts must not be collected by a concurrent gc:
    # hold the gc lock shared from the first object write until the ref names the commit.
    with repo.store.lock(GC_LOCK, shared=True, timeout=3600):
        plan: list[tuple[InputFile, str]] = []
        for inp in inputs:
            plan.append((inp, _classify(inp)))
        parsed = ("safetensors", torch_file.TORCH_ZIP, torch_file.TORCH_LEGACY)
        hash_total = sum(i.size for i, k in plan if k in parsed)
        if hash_total:
            progress.start("hashing", hash_total)
        digests = {}
        index = WorktreeIndex(repo)  # digests of files unchanged since they were last hashed
        for inp, kind in plan:
            if kind in parsed:
                read = [0]

                def count(n: int, read: list[int] = read) -> None:
                    read[0] += n
                    progress.update(n)

                digests[inp.rel] = index.digest(inp.path, count)
                if read[0] < inp.size:  # a digest cached from an earlier hash: nothing read
                    progress.update(inp.size - read[0])
        if index.changed:
            index.save()
        # then 'encoding': opaque files and headers here, the tensors' bytes in the writer
        # (which adds them to the phase and then starts 'syncing')
        progress.phase("encoding", 0)
        for inp, kind in plan:
            fe: FileEntry | None = None
            if kind == "safetensors":
                layout = stf.read_layout(inp.path)
                if layout.problem is None:
                    mm, tensors = stf.tensor_views(inp.path, layout)
                    keepalive.append(mm)
                    state[inp.rel] = tensors
                    hid = repo.objects.put_bytes(envelope.KIND_BLOB, layout.header)
                    extra: dict[str, Any] = {"blake3": digests[inp.rel]}
                    if layout.metadata is not None:
                        extra["metadata"] = layout.metadata
                    chunks = [(hid, len(layout.header))]
                    fe = FileEntry(inp.rel, "state", "safetensors", inp.size, chunks, extra)
                    mapped.append(inp.path)
                    progress.phase("encoding", len(layout.header))
                    progress.update(len(layout.header))
                else:
                    say(f"{inp.rel}: stored as opaque bytes ({layout.problem})")
                    kind = "blob:safetensors"
            elif kind in (torch_file.TORCH_ZIP, torch_file.TORCH_LEGACY):
                try:
                    obj = torch_file.load(inp.path, kind, unsafe_pickle=unsafe_pickle, name=inp.rel)
                except UnsupportedValueError:
                    if inp.path.name not in KEPT_AS_BYTES:
                        raise
                    obj = None
                    say(
                        f"{inp.rel}: a pickle of settings, not a checkpoint: stored as opaque "
                        "bytes, never unpickled"
                    )
                    kind = "blob:pickle"
            if kind in (torch_file.TORCH_ZIP, torch_file.TORCH_LEGACY):
                state[inp.rel] = obj
                extra = {"blake3": digests[inp.rel]}
                if unsafe_pickle:
                    extra["unsafe_pickle"] = True
                fe = FileEntry(inp.rel, "state", "pt", inp.size, [], extra)
                if kind == torch_file.TORCH_ZIP:
                    mapped.append(inp.path)
                else:
                    say(f"{inp.rel}: legacy torch.save format: loaded into memory (no mmap)")
            if fe is None:
                fmt = kind.split(":", 1)[1] if ":" in kind else kind
                if kind == torch_file.TORCHSCRIPT:
                    say(f"{inp.rel}: TorchScript archive: stored as opaque bytes, never loaded")
                elif kind in (torch_file.UNKNOWN, torch_file.OTHER_ZIP) and _torch_suffix(inp):
                    say(f"{inp.rel}: not a torch checkpoint: stored as opaque bytes")
                if fmt == "blob":
                    fmt = "raw"
                progress.phase("encoding", inp.size)
                chunks, digest, new = _store_blob(repo, inp.path, progress)
                blob_new += new
                fe = FileEntry(inp.rel, "blob", fmt, inp.size, chunks, {"blake3": digest})
            entries.append(fe)
            logical += inp.size
        try:
            shown = getattr(progress, "enabled", True)
            with PageDropper(mapped):
                c = repo.commit(
                    state,
                    message,
                    step=step,
                    metrics=metrics,
                    branch=branch,
                    author=author,
                    allow_pickle=unsafe_pickle,
                    files=entries,
                    on_bytes=progress.update if shown else None,
                    on_phase=progress.phase if shown else None,
                )
        except UnsupportedValueError as e:
            raise _pickle_hint(e, inputs) from None
        finally:
            progress.finish()
        del state, keepalive
    stats = getattr(repo, "last_write_stats", None)
    new = blob_new + (getattr(stats, "new_stored_bytes", 0) or 0)
    return CommitResult(c, entries, notes, logical, new)


def _torch_suffix(inp: InputFile) -> bool:
    return inp.path.suffix.lower() in torch_file.TORCH_SUFFIXES


def _classify(inp: InputFile) -> str:
    """'safetensors', a torch_file kind, or 'blob'."""
    suffix = inp.path.suffix.lower()
    try:
        if suffix == ".safetensors":
            return "safetensors"
        if suffix in torch_file.TORCH_SUFFIXES:
            return torch_file.sniff(inp.path, inp.rel)
    except TensorVCSError:
        raise
    except OSError as e:
        raise NotFoundError(f"{inp.rel}: cannot read: {e.strerror}") from None
    return "blob"
