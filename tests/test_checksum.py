"""The content checksum (docs/format.md section 4): every object this writer stores records
XXH3-128 of its content in its envelope; reads verify that in place of the id (BLAKE3), fsck
verifies both, and transfers drop it, so that what comes from elsewhere is verified against
its id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_same_value, flip_byte, object_path, randn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.format import codecs, envelope
from tensorvcs.format.ids import CHECK_KEY, content_check, is_content_check
from tensorvcs.store.objects import CorruptObjectError, object_name


def _rewrite_params(repo: tv.Repo, oid: str, change: Any) -> None:
    """Rewrite ``oid``'s file with ``change(params)`` as its codec parameters (payload kept)."""
    path = object_path(repo, oid)
    data = path.read_bytes()
    h = envelope.read_header(data, oid)
    params = change(dict(h.params))
    enc = codecs.Encoded(h.codec, params, (data[h.payload_offset :],))
    path.write_bytes(b"".join(envelope.pack(h.kind, h.length, enc)))


def _tensor_objects(repo: tv.Repo, rev: str) -> list[str]:
    m = repo.get_manifest(repo.get_commit(rev).manifest)
    return [o for e in m.tensors for o in e.object_ids()]


def _assert_every_object_checked(repo: tv.Repo) -> int:
    """Every stored object records the checksum of exactly what it decodes to."""
    n = 0
    for oid in repo.objects.ids():
        h, content = repo.objects.read(oid, full=True)
        assert h.params.get(CHECK_KEY) == content_check(content.data), oid
        n += 1
    return n


# -- what writers record ------------------------------------------------------------------
_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.uint8]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    shapes=st.lists(st.integers(1, 3000), min_size=1, max_size=4),
    dtypes=st.lists(st.sampled_from(_DTYPES), min_size=4, max_size=4),
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from(["nudge", "replace", "same"])),
        min_size=1,
        max_size=5,
    ),
    defer=st.booleans(),
)
def test_every_object_of_any_history_records_its_content_checksum(
    tmp_path_factory: pytest.TempPathFactory,
    shapes: list[int],
    dtypes: list[torch.dtype],
    steps: list[tuple[int, str]],
    defer: bool,
) -> None:
    """Chunks, packs, manifests and commits, first writes and the parents' chunks re-encoded
    as deltas (at the commit, or deferred and done by compact, and gc's re-encodings): each
    records the checksum of its content, and the default checkout (which verifies the
    checksums) returns every commit's state bitwise."""
    path = tmp_path_factory.mktemp("ck")
    repo = tv.Repo.init(path, chunk_size=4096, pack_threshold=512)
    g = torch.Generator().manual_seed(len(shapes) * 31 + len(steps))
    state = {
        f"t{i}": (torch.randn(n, generator=g) * 3).to(dtypes[i])
        for i, n in enumerate(shapes)
    }
    history = []
    for i, (which, how) in enumerate(steps):
        key = f"t{which % len(shapes)}"
        t = state[key]
        if how == "nudge":
            state[key] = (t.float() * 1.001 + 1e-3).to(t.dtype)
        elif how == "replace":
            state[key] = (torch.randn(t.shape, generator=g) * 3).to(t.dtype)
        c = repo.commit({k: v.clone() for k, v in state.items()}, f"s{i}", defer_deltas=defer)
        history.append((c.id, {k: v.clone() for k, v in state.items()}))
    if defer:
        tv.compact(repo)
    tv.gc(repo, prune="now", reflog_expire="now")
    assert _assert_every_object_checked(repo) > 0
    for cid, want in history:
        assert_same_value(repo.checkout(cid), want)
    assert tv.fsck(repo).ok
    repo.close()


def test_a_committed_file_records_checksums(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tvcs commit FILE` of a file that is not a checkpoint: its blob chunks too."""
    from click.testing import CliRunner

    from tensorvcs.cli import cli

    (tmp_path / "notes.bin").write_bytes(bytes(range(256)) * 100)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for args in (["init"], ["commit", "notes.bin", "-m", "file"]):
        res = runner.invoke(cli, args, catch_exceptions=False)
        assert res.exit_code == 0, res.output
    repo = tv.Repo.open(tmp_path)
    kinds = {repo.objects.kind(o) for o in repo.objects.ids()}
    assert envelope.KIND_BLOB in kinds
    assert _assert_every_object_checked(repo) == len(list(repo.objects.ids()))
    repo.close()


# -- what reads verify ----------------------------------------------------------------------
def _two_chunk_repo(tmp_path: Path) -> tuple[tv.Repo, dict[str, torch.Tensor], str, str]:
    repo = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    state = {"w": randn(1, 2048)}  # two chunks of 4096 bytes
    c = repo.commit(state, "one")
    first, second = _tensor_objects(repo, c.id)
    return repo, state, first, second


@pytest.mark.parametrize("checksums", [True, False])
@pytest.mark.parametrize("recorded", [True, False])
def test_a_corrupt_payload_is_refused_with_or_without_a_checksum(
    tmp_path: Path, checksums: bool, recorded: bool
) -> None:
    """A flipped payload byte is refused naming the object and key path whether the read
    verifies the checksum or the id, and whether the object records a checksum (objects of
    older writers, and those a transfer stored, do not)."""
    repo, state, first, _ = _two_chunk_repo(tmp_path)
    repo.objects.checksums = checksums
    if not recorded:
        _rewrite_params(repo, first, lambda p: {k: v for k, v in p.items() if k != CHECK_KEY})
        assert CHECK_KEY not in repo.objects.header(first).params
    assert_same_value(repo.checkout(), state)  # intact: reads fine
    flip_byte(object_path(repo, first), -100, 0x10)
    with pytest.raises(CorruptObjectError, match=f"{first}.*hashes differently") as e:
        repo.checkout()
    assert e.value.object_id == first
    assert "key path 'w'" in str(e.value)
    repo.close()


def test_the_checksum_covers_the_content_and_fsck_covers_the_id(tmp_path: Path) -> None:
    """What the checksum does not cover: an intact object of other content stored under an
    id (a writer's bug, or a hand-made file), its own checksum with it. A checkout that
    verifies checksums returns that content; with ``verify_reads: "hash"`` the read refuses
    it, and fsck always reports it, naming the object."""
    repo, state, first, second = _two_chunk_repo(tmp_path)
    object_path(repo, first).write_bytes(object_path(repo, second).read_bytes())
    got = repo.checkout()["w"]
    assert torch.equal(got[:1024], state["w"][1024:])  # the second chunk's content, twice
    repo.objects.checksums = False
    with pytest.raises(CorruptObjectError, match=f"{first}.*hashes differently"):
        repo.checkout()
    report = tv.fsck(repo)
    assert [(p.what, p.object_id) for p in report.problems] == [("corrupt", first)]
    repo.close()
    # the setting, as a repository's config names it
    cfg = tmp_path / ".tvcs" / "config.json"
    doc = json.loads(cfg.read_bytes())
    doc["settings"]["verify_reads"] = "hash"
    cfg.write_text(json.dumps(doc))
    again = tv.Repo.open(tmp_path)
    assert again.objects.checksums is False
    with pytest.raises(CorruptObjectError, match="key path 'w'"):
        again.checkout()
    again.close()


def test_a_wrong_or_malformed_checksum(tmp_path: Path) -> None:
    """A checksum that does not match intact content is corruption for the read and for fsck
    (which names it as the checksum's fault); a malformed one is not used by the read (the
    id is verified instead) and fsck reports it."""
    repo, state, first, _ = _two_chunk_repo(tmp_path)
    wrong = content_check(b"something else")
    _rewrite_params(repo, first, lambda p: {**p, CHECK_KEY: wrong})
    with pytest.raises(CorruptObjectError, match=f"{first}.*hashes differently"):
        repo.checkout()
    (p,) = tv.fsck(repo).problems
    assert (p.what, p.object_id) == ("corrupt", first)
    assert "hashes to its id but not to the xxh128 checksum" in p.where
    _rewrite_params(repo, first, lambda p: {**p, CHECK_KEY: 12345})
    assert not is_content_check(12345)
    assert_same_value(repo.checkout(), state)
    (p,) = tv.fsck(repo).problems
    assert (p.what, p.object_id) == ("corrupt", first)
    assert "checksum is malformed" in p.where
    repo.close()


# -- transfers -----------------------------------------------------------------------------
def test_transfers_store_objects_without_checksums(tmp_path: Path) -> None:
    """push and clone store what they receive without the sender's checksums (same ids, same
    payloads), so a substituted object on a remote is refused by the reader's id check, as
    it was before checksums existed."""
    a = tv.Repo.init(tmp_path / "a", chunk_size=4096, pack_threshold=1024)
    state = {"w": randn(2, 4096), "b": randn(3, 8)}
    c1 = a.commit(state, "one")
    state2 = {**state, "w": state["w"] * 1.001}
    a.commit(state2, "two")  # c1's chunks become deltas against c2's
    remote = str(tmp_path / "remote")
    tv.remote_add(a, "origin", remote)
    tv.push(a, "origin", ["main"])
    r = tv.Repo.open(f"file://{remote}")  # a bare repository
    ids = set(a.objects.ids())
    assert set(r.objects.ids()) == ids
    for oid in ids:
        mine, theirs = a.objects.header(oid), r.objects.header(oid)
        assert CHECK_KEY in mine.params and CHECK_KEY not in theirs.params
        assert {k: v for k, v in mine.params.items() if k != CHECK_KEY} == theirs.params
        assert (
            a.objects.raw(oid)[mine.payload_offset :] == r.objects.raw(oid)[theirs.payload_offset :]
        )
    b = tv.clone(remote, tmp_path / "b")
    assert_same_value(b.checkout(c1.id), state)
    assert_same_value(b.checkout(), state2)
    assert tv.fsck(b).ok
    b.close()
    # a hostile remote: one chunk replaced by another object's file, checksum and all
    first, second = _tensor_objects(a, c1.id)[:2]
    (Path(remote) / object_name(first)).write_bytes(object_path(a, second).read_bytes())
    r.close()
    c = tv.clone(remote, tmp_path / "c")
    with pytest.raises(CorruptObjectError, match="hashes differently") as e:
        c.checkout(c1.id)
    assert e.value.object_id == first
    c.close()
    a.close()
