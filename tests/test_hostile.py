"""Hostile repositories: every stored byte an attacker (or a broken disk) controls is refused
with a project error that names the object or file, never a crash, a hang, a huge allocation
or a file written outside the working directory.

The hostile repositories are built by code here (no checked-in binaries), one per case:

=================================  ==========================================================
case                               what must happen
=================================  ==========================================================
file entry path traversal          ``../../pwned.txt``, ``/abs``, ``sub/../../x``,
                                   ``.tvcs/refs/heads/planted``, ``a//b``, backslashes, NUL,
                                   drives: CorruptObjectError naming the manifest and the path
                                   (parse, checkout, fsck, ``tvcs checkout`` exit 5, nothing
                                   written)
delta self-loop, A -> B -> A       CorruptObjectError naming the object ("loops"/"itself")
                                   from read, checkout, fsck and transfer, within a timeout
3,000-deep valid delta chain       decodes (iteratively); a chain past MAX_DELTA_CHAIN is
                                   CorruptObjectError
decompression bomb                 a zstd payload that expands past the declared length, a
                                   length the payload cannot hold, a frame declaring another
                                   size: CorruptObjectError, no large allocation
header claiming 1 TB               CorruptObjectError before anything is allocated
torn reflog                        the torn last line is skipped; the next append cuts it
reflog with a flipped byte         CorruptObjectError naming logs/HEAD and the line number
corrupt remotes.json               CorruptObjectError naming remotes.json
deeply nested safetensors header   InputFileError naming the file (``tvcs commit`` exit 11,
                                   one line, no traceback); a stored one: CorruptObjectError
=================================  ==========================================================
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zstandard
from click.testing import CliRunner
from helpers import object_path, random_bytes_tensor

import tensorvcs as tv
from tensorvcs.cli import cli
from tensorvcs.errors import CorruptObjectError, InputFileError
from tensorvcs.format import codecs, envelope, jsonenc, values
from tensorvcs.format.commit import Commit
from tensorvcs.format.ids import object_id
from tensorvcs.format.manifest import FileEntry, Manifest, TensorEntry, check_file_path
from tensorvcs.io import safetensors_file as stf
from tensorvcs.maintenance import fsck
from tensorvcs.store import objects as objects_mod

CHUNK = 4096


# -- building hostile repositories ----------------------------------------------------------
def _within(seconds: float, fn: Callable[[], Any]) -> Any:
    """fn() run in a daemon thread: fails the test instead of hanging it."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed back to the test
            box["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"{fn} did not finish within {seconds}s (a loop?)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _repo(tmp_path: Path) -> tuple[tv.Repo, str, list[str]]:
    """A repo (4 KiB chunks) whose main commit has a two-chunk tensor ``w``, a packed one and
    a blob file entry ``ok.bin``; returns (repo, commit id, w's chunk ids)."""
    repo = tv.Repo.init(tmp_path / "src", chunk_size=CHUNK, pack_threshold=1024)
    data = b"file bytes\n" * 10
    blob = repo.objects.put_bytes(envelope.KIND_BLOB, data)
    fe = FileEntry("ok.bin", "blob", "raw", len(data), [(blob, len(data))], {})
    state = {"w": random_bytes_tensor(1, 2 * CHUNK // 4), "b": torch.arange(8.0)}
    c = repo.commit(state, "good", files=[fe])
    (w,) = (t for t in repo.tensors() if t.key == "w")
    assert len(w.objects) == 2
    return repo, c.id, w.objects


def _manifest_doc(repo: tv.Repo, cid: str) -> dict[str, Any]:
    mid = repo.get_commit(cid).manifest
    return dict(jsonenc.loads(repo.objects.read_bytes(mid)))


def _put(repo: tv.Repo, kind: int, data: bytes) -> str:
    """Store ``data`` as an object with its correct id (so only its structure is wrong)."""
    oid = object_id(data)
    repo.objects.write(oid, kind, len(data), codecs.encode_bytes(data))
    return oid


def _commit_to(repo: tv.Repo, mid: str, branch: str = "hostile") -> str:
    c = Commit(manifest=mid, parents=[], message="hostile", author="mallory")
    cid = _put(repo, envelope.KIND_COMMIT, c.to_bytes())
    repo.refs.update("refs/heads/" + branch, cid)
    return cid


def _write_object(repo: tv.Repo, oid: str, kind: int, length: int, enc: codecs.Encoded) -> None:
    """Put an object file at ``oid``'s place whatever it holds (no fsync: tests only)."""
    path = object_path(repo, oid)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(bytes(p) for p in envelope.pack(kind, length, enc)))


def _delta(base: str, length: int, width: int = 4, payload: bytes | None = None) -> codecs.Encoded:
    params = {
        "base": base,
        "depth": 1,
        "op": "sub-zigzag",
        "width": width,
        "inner": {"codec": codecs.CODEC_RAW, "params": {}},
    }
    return codecs.Encoded(codecs.CODEC_DELTA, params, (payload or bytes(length),))


def _problem_ids(repo: tv.Repo) -> set[str | None]:
    return {p.object_id for p in fsck(repo).problems}


def _run_cli(*args: Any) -> Any:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(res: Any, code: int) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    err = res.stderr.strip()
    assert err.startswith("tvcs: error: ") and "\n" not in err, err
    assert "Traceback" not in res.stdout + res.stderr
    return err


# -- file entry paths ------------------------------------------------------------------------
BAD_PATHS = [
    "../../pwned.txt",
    "/abs",
    "sub/../../x",
    ".tvcs/refs/heads/planted",
    ".TVCS/config.json",
    "sub/.tvcs/x",
    "a//b",
    "a\\b",
    "..\\..\\pwned.txt",
    "C:/Windows/x",
    "c:x",
    "./a",
    "a/.",
    "a/",
    "",
    "x\x00y",
    "..",
]


@pytest.mark.parametrize("bad", BAD_PATHS)
def test_check_file_path_refuses(bad: str) -> None:
    with pytest.raises(CorruptObjectError, match="unsafe file path"):
        check_file_path(bad)


@pytest.mark.parametrize("good", ["a.pt", "dir/sub/model.safetensors", "with space/ü.bin", ".x"])
def test_check_file_path_accepts(good: str) -> None:
    assert check_file_path(good) == good


@pytest.mark.parametrize("bad", BAD_PATHS[:10])
def test_manifest_with_traversal_path_is_refused(tmp_path: Path, bad: str) -> None:
    repo, cid, _ = _repo(tmp_path)
    doc = _manifest_doc(repo, cid)
    doc["files"][0]["path"] = bad
    mid = _put(repo, envelope.KIND_MANIFEST, jsonenc.dumps(doc))
    _commit_to(repo, mid)

    with pytest.raises(CorruptObjectError) as e:
        Manifest.from_bytes(repo.objects.read_bytes(mid), mid)
    assert e.value.object_id == mid and mid in str(e.value) and repr(bad) in str(e.value)
    with pytest.raises(CorruptObjectError) as e:
        repo.checkout("hostile")
    assert e.value.object_id == mid
    assert mid in _problem_ids(repo)
    repo.close()

    # the CLI: exit 5, one line naming the manifest, and nothing written anywhere
    before = {p for p in tmp_path.rglob("*")}
    res = _run_cli("--repo", repo.root, "checkout", "hostile", "--force")
    err = _one_line_error(res, 5)
    assert mid in err
    assert {p for p in tmp_path.rglob("*")} - before <= {
        p for p in tmp_path.rglob("*") if ".tvcs" in p.parts
    }
    assert not (repo.root / "../../pwned.txt").resolve().exists()
    assert not (repo.root / ".tvcs/refs/heads/planted").exists()


def test_writer_refuses_an_unsafe_path(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path)
    fe = FileEntry("a\\b", "blob", "raw", 0, [], {})
    with pytest.raises(tv.UsageError, match="backslash"):
        repo.commit({"x": 1}, "m", files=[fe])
    repo.close()


# -- delta loops and deep chains -------------------------------------------------------------
def test_delta_self_loop(tmp_path: Path) -> None:
    repo, cid, (c1, _) = _repo(tmp_path)
    _write_object(repo, c1, envelope.KIND_CHUNK, CHUNK, _delta(c1, CHUNK))

    with pytest.raises(CorruptObjectError, match="itself") as e:
        _within(30, lambda: repo.objects.read(c1))
    assert e.value.object_id == c1 and c1 in str(e.value)
    with pytest.raises(CorruptObjectError) as e:
        _within(30, lambda: repo.checkout(cid))
    assert e.value.object_id == c1 and "'w'" in str(e.value)
    assert c1 in _within(60, lambda: _problem_ids(repo))
    repo.close()
    _assert_transfer_refuses(repo.root, c1)


def test_delta_two_cycle(tmp_path: Path) -> None:
    repo, cid, (c1, c2) = _repo(tmp_path)
    _write_object(repo, c1, envelope.KIND_CHUNK, CHUNK, _delta(c2, CHUNK))
    _write_object(repo, c2, envelope.KIND_CHUNK, CHUNK, _delta(c1, CHUNK))

    for a, b in ((c1, c2), (c2, c1)):
        with pytest.raises(CorruptObjectError, match="loops") as e:
            _within(30, lambda a=a: repo.objects.read(a))
        assert e.value.object_id == a and b in str(e.value)
        with pytest.raises(CorruptObjectError, match="loops"):
            _within(30, lambda a=a: repo.objects.chain(a))
    with pytest.raises(CorruptObjectError, match="loops") as e:
        _within(30, lambda: repo.checkout(cid))
    assert e.value.object_id in (c1, c2) and "'w'" in str(e.value)
    assert {c1, c2} <= _within(60, lambda: _problem_ids(repo))
    repo.close()
    _assert_transfer_refuses(repo.root, c1, c2)


TRANSFER = textwrap.dedent(
    """
    import sys
    import tensorvcs as tv
    from tensorvcs.remote import transfer
    src = tv.Repo.open(sys.argv[1])
    cfg = src.config
    dst = tv.Repo.init(sys.argv[2], chunk_size=cfg.chunk_size, pack_threshold=cfg.pack_threshold)
    try:
        transfer(src, dst, [src.resolve("main")], threads=4)
    except tv.CorruptObjectError as e:
        print("CorruptObjectError", e.object_id)
        sys.exit(0)
    print("transferred without an error")
    sys.exit(1)
    """
)


def _assert_transfer_refuses(root: Path, *oids: str) -> None:
    """A transfer of the hostile repo fails with CorruptObjectError (in a child process, so
    a transfer that waits on itself cannot hang the test run)."""
    dst = root.parent / "dst"
    try:
        res = subprocess.run(
            [sys.executable, "-c", TRANSFER, str(root), str(dst)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("transfer hung on a delta loop")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.split()[0] == "CorruptObjectError" and res.stdout.split()[1] in oids


def _write_chain(repo: tv.Repo, depth: int, n: int = 64) -> tuple[str, bytes]:
    """A valid chain of ``depth`` deltas over a self-contained object (files written
    directly); returns (the top object's id, its content)."""
    rng = np.random.default_rng(0)
    contents = [rng.integers(0, 256, n, dtype=np.uint8) for _ in range(depth + 1)]
    ids = [object_id(c.data) for c in contents]
    _write_object(repo, ids[-1], envelope.KIND_CHUNK, n, codecs.encode_elements(contents[-1], 8))
    for k in range(depth - 1, -1, -1):
        enc = codecs.encode_delta(contents[k], contents[k + 1], 8, ids[k + 1], depth - k)
        _write_object(repo, ids[k], envelope.KIND_CHUNK, n, enc)
    return ids[0], contents[0].tobytes()


def test_3000_deep_chain_decodes(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path)
    top, content = _write_chain(repo, 3000)
    assert len(repo.objects.chain(top)) == 3001
    assert repo.objects.read_bytes(top) == content
    entry = TensorEntry("uint8", [64], 64, chunks=[(top, 64)])
    mid = _put(repo, envelope.KIND_MANIFEST, Manifest(["tensor", 0], [entry]).to_bytes())
    _commit_to(repo, mid, "deep")
    out = repo.checkout("deep")
    assert bytes(out.numpy()) == content
    repo.close()


def test_fsck_decodes_each_object_of_a_deep_chain_once(tmp_path: Path) -> None:
    """fsck verifies the 3,000-deep chain reading each object once (one decode per object,
    each delta applied to its base's content), not once per link of every chain (quadratic:
    about 4.5 million reads here)."""
    repo = tv.Repo.init(tmp_path)
    top, _ = _write_chain(repo, 3000)
    entry = TensorEntry("uint8", [64], 64, chunks=[(top, 64)])
    mid = _put(repo, envelope.KIND_MANIFEST, Manifest(["tensor", 0], [entry]).to_bytes())
    _commit_to(repo, mid, "deep")
    before = repo.objects.objects_read
    report = tv.fsck(repo)
    assert report.ok, [str(p) for p in report.problems]
    assert report.objects_checked == 3001 + 2
    assert repo.objects.objects_read - before <= 2 * (3001 + 2)  # the walk reads the few tops
    repo.close()


def test_chain_past_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tv.Repo.init(tmp_path)
    top, _ = _write_chain(repo, 60)
    monkeypatch.setattr(objects_mod, "MAX_DELTA_CHAIN", 50)
    for read in (repo.objects.read, repo.objects.chain):
        with pytest.raises(CorruptObjectError, match="longer than 50") as e:
            read(top)
        assert e.value.object_id == top
    repo.close()


def test_delta_of_another_length_is_refused(tmp_path: Path) -> None:
    repo, _, (c1, _) = _repo(tmp_path)
    _, small = _write_chain(repo, 0, 64)
    small_id = object_id(small)
    _write_object(repo, c1, envelope.KIND_CHUNK, CHUNK, _delta(small_id, CHUNK))
    with pytest.raises(CorruptObjectError, match="does not fit its delta base") as e:
        repo.objects.read(c1)
    assert e.value.object_id == c1 and small_id in str(e.value)
    repo.close()


# -- allocation bounds -----------------------------------------------------------------------
def _zeros_frame(n: int, with_size: bool) -> bytes:
    c = zstandard.ZstdCompressor(write_content_size=with_size)
    return c.compress(bytes(n))


def _peak(fn: Callable[[], Any]) -> int:
    """Peak bytes traced (numpy included) while fn() runs; fn must raise CorruptObjectError."""
    tracemalloc.start()
    try:
        with pytest.raises(CorruptObjectError) as e:
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        _peak.error = e.value  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("kind", "length", "frame", "match"),
    [
        # the header claims 1 TB: beyond what any chunk or blob may hold
        (envelope.KIND_CHUNK, 1 << 40, (1 << 20, False), "more than a chunk may hold"),
        (envelope.KIND_BLOB, 1 << 40, (1 << 20, False), "more than a blob may hold"),
        # a length the small payload cannot hold: refused before allocating 32 GiB / 1 GiB
        (envelope.KIND_BLOB, 1 << 35, (16 << 20, False), "cannot hold"),
        (envelope.KIND_CHUNK, 1 << 30, (16 << 20, False), "cannot hold"),
        # a bomb: 4 KiB declared, the frame expands to 16 MiB: decoding stops at 4 KiB
        (envelope.KIND_CHUNK, CHUNK, (16 << 20, False), "does not decode"),
        # the frame declares another size than the header
        (envelope.KIND_CHUNK, CHUNK, (16 << 20, True), "declares 16777216 bytes"),
    ],
)
def test_bomb_and_absurd_lengths(
    tmp_path: Path, kind: int, length: int, frame: tuple[int, bool], match: str
) -> None:
    repo, cid, (c1, _) = _repo(tmp_path)
    enc = codecs.Encoded(codecs.CODEC_ZSTD, {}, (_zeros_frame(*frame),))
    _write_object(repo, c1, kind, length, enc)
    assert _peak(lambda: repo.objects.read(c1)) < 8 << 20
    err = _peak.error  # type: ignore[attr-defined]
    assert err.object_id == c1 and c1 in str(err)
    assert match in str(err), str(err)
    with pytest.raises(CorruptObjectError) as e:
        repo.checkout(cid)
    assert e.value.object_id == c1
    assert c1 in _problem_ids(repo)
    repo.close()


@pytest.mark.parametrize(
    "params",
    [
        {"width": 1 << 40, "planes": []},
        {"width": 4, "planes": [["zstd", 1 << 40]] * 4},
        {"width": 4, "planes": [["raw", -5]] * 4},
    ],
)
def test_plane_parameters_asking_for_huge_allocations(
    tmp_path: Path, params: dict[str, Any]
) -> None:
    repo, _, (c1, _) = _repo(tmp_path)
    _write_object(repo, c1, envelope.KIND_CHUNK, CHUNK, codecs.Encoded(2, params, (b"x" * 64,)))
    assert _peak(lambda: repo.objects.read(c1)) < 1 << 20
    assert _peak.error.object_id == c1  # type: ignore[attr-defined]
    repo.close()


def test_huge_parameter_length_is_refused(tmp_path: Path) -> None:
    repo, _, (c1, _) = _repo(tmp_path)
    path = object_path(repo, c1)
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, 16, 0xFFFFFFF0)
    path.write_bytes(bytes(data))
    for read in (repo.objects.read, repo.objects.header):
        with pytest.raises(CorruptObjectError) as e:
            read(c1)
        assert e.value.object_id == c1
    repo.close()


def test_deeply_nested_codec_parameters(tmp_path: Path) -> None:
    repo, _, (c1, _) = _repo(tmp_path)
    params = b"[" * 50000 + b"]" * 50000
    head = struct.pack("<4sBBBBQI", b"TVCO", 1, 1, 0, 0, CHUNK, len(params))
    object_path(repo, c1).write_bytes(head + params + bytes(CHUNK))
    with pytest.raises(CorruptObjectError, match="parameters") as e:
        repo.objects.read(c1)
    assert e.value.object_id == c1
    repo.close()


# -- reflogs ---------------------------------------------------------------------------------
def _two_commits(tmp_path: Path) -> tv.Repo:
    repo = tv.Repo.init(tmp_path)
    repo.commit({"x": 1}, "one")
    repo.commit({"x": 2}, "two")
    return repo


def test_torn_reflog_tail_is_skipped_and_cut(tmp_path: Path) -> None:
    repo = _two_commits(tmp_path)
    log = repo.path / "logs" / "HEAD"
    good = log.read_bytes()
    log.write_bytes(good + good.splitlines(keepends=True)[-1][:37])  # a crash mid-append
    assert len(repo.refs.reflog("HEAD")) == 2
    repo.commit({"x": 3}, "three")  # the append cuts the torn tail first
    entries = repo.refs.reflog("HEAD")
    assert [e.message.split(": ")[-1] for e in entries] == ["one", "two", "three"]
    assert log.read_bytes().startswith(good) and log.read_bytes().endswith(b"\n")
    repo.close()


@pytest.mark.parametrize(
    ("damage", "line"),
    [
        (lambda b: b[:10] + b"\xff" + b[11:], 1),  # a flipped byte: not UTF-8
        (lambda b: b.replace(b'"msg"', b'"m\x00g"', 1), 1),
        (lambda b: b"{not json}\n" + b, 1),
        (lambda b: b + b"[1, 2]\n", 3),
        (lambda b: b.replace(b'"old":null', b'"old":"nope"', 1), 1),
    ],
)
def test_corrupt_reflog_line(tmp_path: Path, damage: Callable[[bytes], bytes], line: int) -> None:
    repo = _two_commits(tmp_path)
    log = repo.path / "logs" / "HEAD"
    log.write_bytes(damage(log.read_bytes()))
    with pytest.raises(CorruptObjectError, match=f"reflog logs/HEAD line {line} is corrupt"):
        repo.refs.reflog("HEAD")
    repo.close()
    err = _one_line_error(_run_cli("--repo", repo.root, "reflog"), 5)
    assert "logs/HEAD" in err and f"line {line}" in err


def test_short_writes_do_not_tear_the_reflog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = _two_commits(tmp_path)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:3]))
    repo.commit({"x": 3}, "three")
    monkeypatch.undo()
    assert len(repo.refs.reflog("HEAD")) == 3

    log = repo.path / "logs" / "HEAD"
    before = log.read_bytes()
    calls = []

    def failing(fd: int, data: Any) -> int:
        calls.append(1)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, bytes(data)[:5])

    monkeypatch.setattr(os, "write", failing)
    with pytest.raises(OSError):
        repo.refs.log("HEAD", None, None, "me", "half")
    monkeypatch.undo()
    assert log.read_bytes() == before  # undone: no torn line left behind
    repo.close()


# -- remotes.json ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        b"\xff\xfe{garbage",
        b"{not json",
        b"[1, 2]",
        b'{"origin": 5}',
        b'{"o": {"url": 1}}',
        b"[" * 50000,
    ],
)
def test_corrupt_remotes_json(tmp_path: Path, content: bytes) -> None:
    repo = tv.Repo.init(tmp_path)
    (repo.path / "remotes.json").write_bytes(content)
    with pytest.raises(CorruptObjectError, match=r"remotes\.json is corrupt"):
        tv.remotes(repo)
    repo.close()
    err = _one_line_error(_run_cli("--repo", tmp_path, "remote", "list"), 5)
    assert "remotes.json" in err


# -- safetensors headers ---------------------------------------------------------------------
def _safetensors(path: Path, header: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_deeply_nested_safetensors_header(tmp_path: Path) -> None:
    deep = b'{"t":{"dtype":"F32","shape":' + b"[" * 100000 + b"]" * 100000 + b"}}"
    bad = _safetensors(tmp_path / "deep.safetensors", deep)
    with pytest.raises(InputFileError, match="nests too deeply") as e:
        stf.read_layout(bad)
    assert str(bad) in str(e.value)

    tv.Repo.init(tmp_path)
    err = _one_line_error(_run_cli("--repo", tmp_path, "commit", bad, "-m", "deep"), 11)
    assert "deep.safetensors" in err and "nests too deeply" in err

    # the same header stored in a repository: corruption, naming the file entry
    with pytest.raises(CorruptObjectError, match="nests too deeply") as e2:
        stf.header_order(struct.pack("<Q", len(deep)) + deep, "model.safetensors")
    assert "model.safetensors" in str(e2.value)


@pytest.mark.parametrize(
    "header",
    [
        struct.pack("<Q", 1 << 40),  # a header length of 1 TB
        struct.pack("<Q", 5) + b"[1,2]",
        struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc",
        struct.pack("<Q", 30) + b'{"t":{"dtype":"F32","shape":5}',
    ],
)
def test_malformed_stored_safetensors_header(header: bytes) -> None:
    with pytest.raises(CorruptObjectError, match=r"x\.safetensors"):
        stf.header_order(header + b" " * 8, "x.safetensors")


def test_enormous_safetensors_header_length(tmp_path: Path) -> None:
    bad = tmp_path / "huge.safetensors"
    bad.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    with pytest.raises(InputFileError, match="header length") as e:
        stf.read_layout(bad)
    assert str(bad) in str(e.value)
    shape = [0, 1 << 63]
    header = json.dumps({"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}})
    with pytest.raises(InputFileError, match="bad shape"):
        stf.read_layout(_safetensors(tmp_path / "dims.safetensors", header.encode()))


# -- value-tree depth and the config ---------------------------------------------------------
def _nested(n: int) -> Any:
    v: Any = []
    for _ in range(n - 1):
        v = [v]
    return v


def test_value_tree_depth_limit(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path)
    with pytest.raises(tv.UnsupportedValueError, match="nest more than"):
        repo.commit({"x": _nested(values.MAX_DEPTH)}, "too deep")  # the list under "x": 1
    ok = _nested(values.MAX_DEPTH - 1)
    c = repo.commit({"x": ok}, "as deep as allowed")
    assert repo.checkout(c.id)["x"] == ok
    deep = Manifest(["dict", [["x", _encoded_lists(values.MAX_DEPTH + 1)]]], [])
    mid = _put(repo, envelope.KIND_MANIFEST, deep.to_bytes())
    with pytest.raises(CorruptObjectError, match="nested more than") as e:
        Manifest.from_bytes(repo.objects.read_bytes(mid), mid)
    assert e.value.object_id == mid and e.value.key_path is not None
    assert e.value.key_path.startswith("x/0/0")
    repo.close()


def _encoded_lists(n: int) -> Any:
    node: Any = ["list", []]
    for _ in range(n - 1):
        node = ["list", [node]]
    return node


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("chunk_size", 1 << 31, "chunk_size"),
        ("chunk_size", True, "chunk_size"),
        ("required_features", "abc", "required_features"),
        ("optional_features", [1], "optional_features"),
        ("settings", [], "settings"),
        ("settings", {"delta_max_depth": "ten"}, "delta_max_depth"),
        ("settings", {"delta_max_depth": 10**6}, "delta_max_depth"),
        ("settings", {"delta_cache_bytes": -1}, "delta_cache_bytes"),
        ("settings", {"verify_reads": "never"}, "verify_reads must be one of 'checksum', 'hash'"),
    ],
)
def test_corrupt_config(tmp_path: Path, field: str, value: Any, match: str) -> None:
    tv.Repo.init(tmp_path).close()
    path = tmp_path / ".tvcs" / "config.json"
    doc = json.loads(path.read_bytes())
    doc[field] = value
    path.write_text(json.dumps(doc))
    with pytest.raises(tv.FormatVersionError, match=match) as e:
        tv.Repo.open(tmp_path)
    assert "config.json" in str(e.value)


def test_a_valid_manifest_of_a_tensor_too_large_to_allocate(tmp_path: Path) -> None:
    """A manifest can describe a tensor larger than this machine can allocate (1 PiB in 1 GiB
    chunks): checkout refuses with a project error naming the key path, not torch's
    RuntimeError."""
    repo = tv.Repo.init(tmp_path)
    n = 1 << 50
    chunk = "ab" * 32
    entry = TensorEntry("uint8", [n], n, chunks=[(chunk, 1 << 30)] * (1 << 20))
    manifest = Manifest(["dict", [["huge", ["tensor", 0]]]], [entry])
    mid = _put(repo, envelope.KIND_MANIFEST, manifest.to_bytes())
    _commit_to(repo, mid, "huge")
    with pytest.raises(tv.TensorVCSError, match="key path 'huge'"):
        repo.checkout("huge")
    repo.close()
