"""Checkout never writes outside its target folder (hostile recorded paths, symbolic links),
commit never follows symbolic links, and failures of the file system or of torch are one-line
errors with their documented exit codes (disk full, DCP's CheckpointException, a corrupt
pickle, a read-only repository)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import tensorvcs as tv
from tensorvcs.errors import CorruptObjectError, OverwriteError
from tensorvcs.format import envelope
from tensorvcs.format.commit import Commit
from tensorvcs.format.manifest import Manifest
from tensorvcs.io import exporter
from tensorvcs.io.worktree import INDEX, check_recorded_path, safe_destination

from .clihelp import Tvcs, sha256


def error_line(res: object) -> str:
    """The one line an error prints (asserting it is one line, with no traceback)."""
    err = res.stderr  # type: ignore[attr-defined]
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("tvcs: error: "), err
    assert "Traceback" not in err
    return lines[0][len("tvcs: error: ") :]


def files_under(top: Path) -> set[str]:
    """Every path below ``top`` (links not followed), relative to it."""
    out = set()
    for d, dirs, files in os.walk(top):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(d, n), top))
    return out


@pytest.fixture
def nested(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tvcs: Tvcs) -> Path:
    """A repository two folders below tmp_path (so '../..' stays inside tmp_path), as the
    current directory."""
    root = tmp_path / "a" / "b" / "work"
    root.mkdir(parents=True)
    monkeypatch.chdir(root)
    monkeypatch.delenv("TVCS_REPO", raising=False)
    tvcs("init", "--chunk-size", "64KiB", "--pack-threshold", "4KiB")
    return root


# -- hostile recorded paths (item 12) --------------------------------------------------------
def plant(root: Path, tvcs: Tvcs, path: str, kind: str) -> str:
    """Commit a benign file, then write by hand a commit whose manifest records it at ``path``
    (objects, manifest and commit put into the store directly; HEAD's branch moved to it)."""
    benign = "ok.pt" if kind == "pt" else "ok.bin"
    if kind == "pt":
        torch.save({"w": torch.arange(6.0)}, root / benign)
    else:
        (root / benign).write_bytes(b"pwned\n")
    tvcs("commit", benign, "-m", "benign")
    (root / benign).unlink()
    with tv.Repo.open(root) as r:
        head = r.resolve("HEAD")
        m = r.get_manifest(r.get_commit(head).manifest)
        (fe,) = m.files
        fe.path = path
        tree = ["dict", [[path if k == benign else k, v] for k, v in m.tree[1]]]
        mid = r.objects.put_bytes(
            envelope.KIND_MANIFEST, Manifest(tree, m.tensors, [fe]).to_bytes()
        )
        c = Commit(manifest=mid, parents=[head], message="hostile", author="mallory")
        cid = r.objects.put_bytes(envelope.KIND_COMMIT, c.to_bytes())
        r.refs.update("refs/heads/main", cid, expected=head, message="planted")
    return cid


@pytest.fixture
def no_read_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Turn off the checks of recorded paths in format.manifest (when a manifest is written,
    and when it is read), so that the check right before writing is what these tests see."""
    from tensorvcs.format import manifest

    monkeypatch.setattr(manifest, "file_path_problem", lambda p: None, raising=False)
    monkeypatch.setattr(manifest, "check_file_path", lambda p, *a, **k: p, raising=False)


HOSTILE = [
    ("../../pwned.txt", "has an empty, '.' or '..' part"),
    ("sub/../../x", "has an empty, '.' or '..' part"),
    ("a//b", "has an empty, '.' or '..' part"),
    ("./x", "has an empty, '.' or '..' part"),
    (".tvcs/refs/heads/planted", "is inside a .tvcs folder"),
    ("sub/.TVCS/HEAD", "is inside a .tvcs folder"),
]


@pytest.mark.parametrize("kind", ["blob", "pt"])
@pytest.mark.parametrize("path,why", HOSTILE)
@pytest.mark.parametrize("out", [None, "outdir/"])
def test_checkout_refuses_hostile_recorded_paths(
    nested: Path,
    tvcs: Tvcs,
    no_read_check: None,
    path: str,
    why: str,
    kind: str,
    out: str | None,
) -> None:
    if kind == "pt" and path.startswith(".tvcs"):
        path = ".tvcs/planted.pt"
    plant(nested, tvcs, path, kind)
    top = nested.parents[2]
    before = files_under(top)
    args = ["checkout", "HEAD"] + (["-o", out] if out else [])
    res = tvcs(*args, code=5)
    assert error_line(res) == (
        f"the commit records a file path checkout refuses to write: {path!r} ({why})"
    )
    assert files_under(top) == before  # nothing written anywhere, nor any folder made


@pytest.mark.parametrize("kind", ["blob", "pt"])
def test_checkout_refuses_an_absolute_recorded_path(
    nested: Path, tvcs: Tvcs, no_read_check: None, kind: str
) -> None:
    target = nested.parents[2] / ("abs.pt" if kind == "pt" else "abs.txt")
    plant(nested, tvcs, str(target), kind)
    for args in (["checkout", "HEAD"], ["checkout", "HEAD", "-o", "outdir/"]):
        res = tvcs(*args, code=5)
        assert error_line(res) == (
            f"the commit records a file path checkout refuses to write: {str(target)!r} (absolute)"
        )
    assert not target.exists() and not (nested / "outdir").exists()


def test_a_hostile_path_is_refused_before_any_other_file_is_written(
    nested: Path, tvcs: Tvcs, no_read_check: None
) -> None:
    (nested / "good.bin").write_bytes(b"good")
    (nested / "ok.bin").write_bytes(b"pwned\n")
    tvcs("commit", "good.bin", "ok.bin", "-m", "two files")
    with tv.Repo.open(nested) as r:
        head = r.resolve("HEAD")
        m = r.get_manifest(r.get_commit(head).manifest)
        m.files[1].path = "../escaped.bin"
        mid = r.objects.put_bytes(envelope.KIND_MANIFEST, m.to_bytes())
        cid = r.objects.put_bytes(
            envelope.KIND_COMMIT, Commit(manifest=mid, parents=[head]).to_bytes()
        )
        r.refs.update("refs/heads/main", cid, expected=head)
    (nested / "good.bin").unlink()
    tvcs("checkout", "HEAD", code=5)
    assert not (nested / "good.bin").exists()
    assert not (nested.parent / "escaped.bin").exists()


@pytest.mark.parametrize(
    "path",
    ["", "/x", "../x", "a/../b", "a/./b", "a//b", "a/", ".tvcs", ".tvcs/x", "x/.Tvcs/y", "a\0b"],
)
def test_check_recorded_path_refuses(path: str) -> None:
    with pytest.raises(CorruptObjectError, match="refuses to write"):
        check_recorded_path(path)


@pytest.mark.parametrize("path", ["m.pt", "a/b/c.safetensors", "..x", "x..", ".hidden/f", "a b"])
def test_check_recorded_path_keeps_ordinary_paths(path: str) -> None:
    assert check_recorded_path(path) == path


# -- symbolic links: commit (item 11) --------------------------------------------------------
def test_commit_of_a_folder_refuses_a_link_to_a_file_outside(work: Path, tvcs: Tvcs) -> None:
    secret = work.parent / f"{work.name}-secret.txt"
    secret.write_text("not yours")
    (work / "ck").mkdir()
    (work / "ck" / "a.bin").write_bytes(b"a")
    os.symlink(secret, work / "ck" / "leak.txt")
    res = tvcs("commit", "ck", "-m", "folder", code=2)
    assert error_line(res) == (
        f"ck/leak.txt: is a symbolic link (-> {secret}); commit does not follow symbolic "
        "links: commit the file it points to by its own path inside the repository, or "
        "replace the link with a copy"
    )
    assert tvcs.json("log")["commits"] == []


def test_commit_of_a_folder_refuses_a_linked_folder(work: Path, tvcs: Tvcs) -> None:
    outside = work.parent / f"{work.name}-outside"
    outside.mkdir()
    (outside / "f.bin").write_bytes(b"outside")
    (work / "ck").mkdir()
    os.symlink(outside, work / "ck" / "more")
    res = tvcs("commit", "ck", "-m", "folder", code=2)
    assert error_line(res).startswith(f"ck/more: is a symbolic link (-> {outside});")
    assert tvcs.json("log")["commits"] == []


def test_commit_refuses_a_named_link_and_a_path_through_a_link(work: Path, tvcs: Tvcs) -> None:
    outside = work.parent / f"{work.name}-out"
    outside.mkdir()
    torch.save({"w": torch.ones(2)}, outside / "m.pt")
    os.symlink(outside / "m.pt", work / "m.pt")
    os.symlink(outside, work / "linked")
    res = tvcs("commit", "m.pt", "-m", "x", code=2)
    assert error_line(res).startswith(f"m.pt: is a symbolic link (-> {outside / 'm.pt'});")
    res = tvcs("commit", "linked/m.pt", "-m", "x", code=2)
    assert error_line(res).startswith(
        f"linked: is a symbolic link (-> {outside}) on the way to linked/m.pt;"
    )
    assert tvcs.json("log")["commits"] == []


# -- symbolic links: checkout (item 11) ------------------------------------------------------
@pytest.fixture
def committed_sub(work: Path, tvcs: Tvcs) -> Path:
    """A commit of sub/f.bin and sub/m.pt (both then deleted, and sub removed)."""
    (work / "sub").mkdir()
    (work / "sub" / "f.bin").write_bytes(b"payload")
    torch.save({"w": torch.arange(4.0)}, work / "sub" / "m.pt")
    tvcs("commit", "sub", "-m", "sub")
    for f in ("f.bin", "m.pt"):
        (work / "sub" / f).unlink()
    (work / "sub").rmdir()
    return work


def test_checkout_refuses_a_linked_folder_leading_outside(committed_sub: Path, tvcs: Tvcs) -> None:
    work = committed_sub
    outside = work.parent / f"{work.name}-elsewhere"
    outside.mkdir()
    os.symlink(outside, work / "sub")
    for force in ([], ["--force"]):
        res = tvcs("checkout", "HEAD", *force, code=12)
        assert error_line(res) == (
            f"sub/f.bin: checkout refuses to write through the symbolic link sub "
            f"(-> {outside}), which leads out of {work.resolve()}"
        )
    assert list(outside.iterdir()) == []


def test_checkout_refuses_a_dangling_link_leading_outside(committed_sub: Path, tvcs: Tvcs) -> None:
    work = committed_sub
    gone = work.parent / f"{work.name}-not-yet"
    os.symlink(gone, work / "sub")
    res = tvcs("checkout", "HEAD", code=12)
    assert "which leads out of" in error_line(res)
    assert not gone.exists()  # mkdir did not follow the link


def test_checkout_refuses_a_link_into_the_repository_store(committed_sub: Path, tvcs: Tvcs) -> None:
    work = committed_sub
    os.symlink(work / ".tvcs" / "refs", work / "sub")
    res = tvcs("checkout", "HEAD", code=12)
    assert error_line(res).endswith("which leads into the repository's .tvcs folder")
    assert sorted(p.name for p in (work / ".tvcs" / "refs").iterdir()) == ["heads", "tags"]


def test_checkout_through_a_link_inside_the_work_tree_is_fine(
    committed_sub: Path, tvcs: Tvcs
) -> None:
    work = committed_sub
    (work / "real").mkdir()
    os.symlink("real", work / "sub")
    tvcs("checkout", "HEAD")
    assert (work / "real" / "f.bin").read_bytes() == b"payload"
    assert (work / "real" / "m.pt").is_file()


def test_checkout_with_o_folder_refuses_a_link_leading_out_of_it(
    committed_sub: Path, tvcs: Tvcs
) -> None:
    work = committed_sub
    (work / "out").mkdir()
    outside = work.parent / f"{work.name}-o-elsewhere"
    outside.mkdir()
    os.symlink(outside, work / "out" / "sub")
    res = tvcs("checkout", "HEAD", "-o", "out/", code=12)
    assert error_line(res).startswith("sub/f.bin: checkout refuses to write through the")
    assert error_line(res).endswith(f"which leads out of {(work / 'out').resolve()}")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name", ["f.bin", "m.pt"])
def test_checkout_replaces_a_link_at_the_destination_never_writes_through_it(
    committed_sub: Path, tvcs: Tvcs, name: str
) -> None:
    work = committed_sub
    victim = work.parent / f"{work.name}-victim-{name}"
    victim.write_bytes(b"precious")
    (work / "sub").mkdir()
    os.symlink(victim, work / "sub" / name)
    res = tvcs("checkout", "HEAD", code=12)
    assert error_line(res) == (
        f"checkout would replace 1 symbolic link(s) with file(s): sub/{name} (checkout never "
        "writes through a link; use --force to replace them)"
    )
    tvcs("checkout", "HEAD", "--force")
    assert victim.read_bytes() == b"precious"
    dest = work / "sub" / name
    assert not dest.is_symlink() and dest.is_file()
    if name == "f.bin":
        assert dest.read_bytes() == b"payload"
    else:
        assert torch.equal(torch.load(dest)["w"], torch.arange(4.0))


def test_checkout_o_file_that_is_a_link_is_replaced(committed_sub: Path, tvcs: Tvcs) -> None:
    work = committed_sub
    victim = work.parent / f"{work.name}-victim-o"
    victim.write_bytes(b"precious")
    os.symlink(victim, work / "x.bin")
    tvcs("checkout", "HEAD", "sub/f.bin", "-o", "x.bin", code=12)
    tvcs("checkout", "HEAD", "sub/f.bin", "-o", "x.bin", "-f")
    assert victim.read_bytes() == b"precious"
    assert not (work / "x.bin").is_symlink() and (work / "x.bin").read_bytes() == b"payload"


def test_safe_destination_checks_links_on_the_way(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "in").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", base / "esc")
    os.symlink(base / "in", base / "ok")
    assert safe_destination(base, "ok/f", base / ".tvcs") == base / "ok" / "f"
    with pytest.raises(OverwriteError, match="leads out of"):
        safe_destination(base, "esc/deeper/f", base / ".tvcs")


# -- a full disk (item 17b) ------------------------------------------------------------------
@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        pytest.skip("cannot run mount")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


@pytest.fixture
def big_commit(work: Path, tvcs: Tvcs) -> Path:
    """A commit of big.pt (1 MiB of float32) and big.safetensors."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    torch.save({"w": torch.randn(512, 512, generator=g)}, work / "big.pt")
    save_file({"w": torch.randn(512, 512, generator=g)}, str(work / "big.safetensors"))
    tvcs("commit", "big.pt", "big.safetensors", "-m", "big")
    return work


NO_SPACE = "No space left on device (the disk is full)"


@pytest.mark.parametrize(
    "args",
    [
        ["checkout", "HEAD", "big.pt", "-o", "{d}/x.pt"],
        ["checkout", "HEAD", "big.safetensors", "-o", "{d}/x.safetensors"],
        ["checkout", "HEAD", "big.pt", "--format", "safetensors", "-o", "{d}/y.safetensors"],
        ["checkout", "HEAD", "-o", "{d}/all/"],
        ["export", "HEAD", "{d}/x.pt"],
        ["export", "HEAD", "{d}/x.safetensors"],
        ["export", "HEAD", "{d}/dcp"],
    ],
)
def test_a_full_disk_is_one_line_and_exit_13(big_commit: Path, tvcs: Tvcs, args: list[str]) -> None:
    with tmpfs(big_commit / "small", "256k") as d:
        res = tvcs(*[a.format(d=d) for a in args], code=13)
        line = error_line(res)
        assert line.endswith(NO_SPACE), line
        assert "inline_container" not in line and "internal error" not in line
        leftovers = [p for p in files_under(d) if not p.startswith(("dcp", "all"))]
        assert leftovers == []  # no half-written file, no temporary file


class FillsUp(io.RawIOBase):
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (a disk that fills
    up while torch.save writes)."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        n = memoryview(b).nbytes  # type: ignore[arg-type]
        if n > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= n
        return n


@pytest.mark.parametrize("room", [0, 100, 300 << 10])
def test_write_pt_raises_the_os_error_of_a_full_disk(room: int) -> None:
    """torch.save into a file that runs out of space: the OSError comes out, not torch's
    RuntimeError "[enforce fail at inline_container.cc]"."""
    with pytest.raises(OSError) as ei:
        exporter.write_pt({"w": torch.zeros(1 << 18)}, FillsUp(room))  # type: ignore[arg-type]
    assert ei.value.errno == errno.ENOSPC


@pytest.mark.parametrize("wrapped", [False, True])
def test_enospc_while_committing_is_exit_13(
    work: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch, wrapped: bool
) -> None:
    """Without a small file system: object writes fail with ENOSPC, as an OSError, or as the
    context of a RuntimeError (what torch raises around a failed write)."""
    from tensorvcs.store import local

    def full(*a: object, **k: object) -> None:
        err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if not wrapped:
            raise err
        try:
            raise err
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904

    (work / "f.dat").write_bytes(b"x" * 1000)
    monkeypatch.setattr(local.LocalStore, "put_if_absent", full)
    monkeypatch.setattr(local.LocalStore, "put", full)
    res = tvcs("commit", "f.dat", "-m", "x", code=13)
    assert error_line(res) == NO_SPACE


# -- CheckpointException (item 17a) ----------------------------------------------------------
def _corrupt_largest_object(work: Path) -> None:
    objs = [p for p in (work / ".tvcs" / "objects").rglob("*") if p.is_file()]
    big = max(objs, key=lambda p: p.stat().st_size)
    data = bytearray(big.read_bytes())
    data[-10] ^= 0xFF
    big.chmod(0o644)
    big.write_bytes(bytes(data))


def test_export_dcp_of_a_corrupt_commit_is_one_line_exit_5(work: Path, tvcs: Tvcs) -> None:
    """dcp.save wraps the reader's CorruptObjectError in a CheckpointException (a
    BaseException): the CLI reports the error it wraps."""
    g = torch.Generator().manual_seed(0)
    torch.save({"w": torch.randn(256, 256, generator=g)}, work / "m.pt")
    tvcs("commit", "m.pt", "-m", "one")
    _corrupt_largest_object(work)
    res = tvcs("export", "HEAD", "out", code=5)
    line = error_line(res)  # "does not decode" or "is corrupt", by the bytes flipped
    assert line.startswith("object ") and ("does not decode" in line or "corrupt" in line), line


def test_a_checkpoint_exception_wrapping_a_bug_is_one_line_exit_1(
    work: Path, tvcs: Tvcs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.distributed.checkpoint.api import CheckpointException, _wrap_exception

    from tensorvcs import dcp

    def boom(*a: object, **k: object) -> None:
        try:
            raise ValueError("planner went wrong")
        except ValueError as e:
            raise CheckpointException("write", {0: _wrap_exception(e)}) from None

    torch.save({"w": torch.ones(3)}, work / "m.pt")
    tvcs("commit", "m.pt", "-m", "one")
    monkeypatch.setattr(dcp, "export_dcp", boom)
    res = tvcs("export", "HEAD", "out", code=1)
    assert error_line(res) == (
        "internal error: CheckpointException: ValueError: planner went wrong "
        "(run with --debug for the traceback)"
    )


# -- a corrupt pickle is a corrupt file, not an unsafe one (item 17c) ------------------------
def _zip_with_data_pkl(src: Path, dst: Path, data_pkl: bytes) -> None:
    import zipfile

    with zipfile.ZipFile(src) as z:
        items = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
        for n, d in items.items():
            z.writestr(n, data_pkl if n.endswith("/data.pkl") else d)


@pytest.mark.parametrize(
    "make",
    ["zip-garbage", "zip-truncated", "legacy-garbage"],
)
def test_a_corrupt_pickle_is_exit_11_not_7(work: Path, tvcs: Tvcs, make: str) -> None:
    good = work.parent / f"{work.name}-good.pt"
    torch.save({"w": torch.zeros(3)}, good)
    bad = work / "bad.pt"
    if make == "zip-garbage":
        _zip_with_data_pkl(good, bad, b"\x80\x02garbage that is no pickle")
    elif make == "zip-truncated":
        import zipfile

        with zipfile.ZipFile(good) as z:
            pkl = next(z.read(n) for n in z.namelist() if n.endswith("/data.pkl"))
        _zip_with_data_pkl(good, bad, pkl[: len(pkl) // 2])
    else:
        bad.write_bytes(b"\x80\x02" + bytes(range(7, 250)))
    res = tvcs("commit", "bad.pt", "-m", "x", code=11)
    line = error_line(res)
    assert line.startswith("bad.pt: corrupt torch file ("), line
    assert "--unsafe-pickle" not in line


def test_an_unsafe_pickle_is_still_exit_7(work: Path, tvcs: Tvcs) -> None:
    import collections

    torch.save({"c": collections.Counter(a=1).__class__}, work / "u.pt")  # a global
    res = tvcs("commit", "u.pt", "-m", "x", code=7)
    assert "--unsafe-pickle" in error_line(res)


# -- a read-only repository (item 17d) -------------------------------------------------------
def test_checkout_o_skips_the_digest_cache_when_it_cannot_be_written(
    work: Path, tvcs: Tvcs
) -> None:
    """The cache's folder is unusable (.tvcs/tmp is a regular file): checkout -o still writes
    its file and exits 0; the cache is left as it was."""
    torch.save({"w": torch.arange(5.0)}, work / "m.pt")
    tvcs("commit", "m.pt", "-m", "one")
    before = (work / ".tvcs" / INDEX).read_bytes()  # commit caches m.pt's digest there
    tmp = work / ".tvcs" / "tmp"
    for p in tmp.iterdir():
        p.unlink()
    tmp.rmdir()
    tmp.write_bytes(b"")
    tvcs("checkout", "HEAD", "-o", "elsewhere/m.pt")
    assert torch.equal(torch.load(work / "elsewhere" / "m.pt")["w"], torch.arange(5.0))
    assert (work / ".tvcs" / INDEX).read_bytes() == before


def test_checkout_o_from_a_read_only_repository(work: Path, tvcs: Tvcs) -> None:
    """A read-only bind mount of the repository (root ignores file modes, not a read-only
    mount); skipped where mounting is not allowed."""
    torch.save({"w": torch.arange(5.0)}, work / "m.pt")
    (work / "f.bin").write_bytes(b"blob")
    tvcs("commit", "m.pt", "f.bin", "-m", "one")
    store = work / ".tvcs"
    before = (store / INDEX).read_bytes()  # commit caches m.pt's digest there
    try:
        r = subprocess.run(["mount", "--bind", str(store), str(store)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot bind-mount here")
        r = subprocess.run(["mount", "-o", "remount,bind,ro", str(store)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot remount read-only here")
        with pytest.raises(OSError):
            (store / "probe").write_bytes(b"")
        out = work.parent / f"{work.name}-out"
        tvcs("checkout", "HEAD", "-o", str(out) + "/")
        assert torch.equal(torch.load(out / "m.pt")["w"], torch.arange(5.0))
        assert sha256(out / "f.bin") == sha256(work / "f.bin")
        assert (store / INDEX).read_bytes() == before  # unchanged: it could not be written
    finally:
        subprocess.run(["umount", "-l", str(store)], capture_output=True)
