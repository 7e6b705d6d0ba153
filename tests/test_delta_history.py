"""Delta chains across commits, drop (history rewrite) and gc reclaiming dropped bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import tensorvcs as tv
from tensorvcs.format import codecs


def stored_bytes(repo: tv.Repo) -> int:
    return sum(f.stat().st_size for f in (repo.path / "objects").rglob("*") if f.is_file())


def codec_counts(repo: tv.Repo) -> dict[int, int]:
    out: dict[int, int] = {}
    for oid in repo.objects.ids():
        c = repo.objects.header(oid).codec
        out[c] = out.get(c, 0) + 1
    return out


def series(repo: tv.Repo, n: int, lr: float = 1e-4, seed: int = 0) -> list[tuple[str, Any]]:
    """n commits of a slowly drifting weight matrix; returns (commit id, weights) pairs."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(256, 64, generator=g)
    out = []
    for i in range(n):
        w = w + lr * torch.randn(w.shape, generator=g)
        c = repo.commit({"w": w, "step": i}, f"c{i}", step=i)
        repo.tag(f"step-{i}", c)
        out.append((c.id, w.clone()))
    return out


def test_small_updates_are_stored_as_deltas_and_round_trip(small_repo: tv.Repo) -> None:
    hist = series(small_repo, 5)
    counts = codec_counts(small_repo)
    assert counts.get(codecs.CODEC_DELTA, 0) >= 4 * 16  # 64 KiB tensor = 16 chunks per commit
    for cid, w in hist:
        assert torch.equal(small_repo.checkout(cid)["w"].view(torch.int32), w.view(torch.int32))
    assert tv.fsck(small_repo).ok


def chain_length(repo: tv.Repo, oid: str) -> int:
    n = 0
    base = repo.objects.delta_base(oid)
    while base is not None:
        n, base = n + 1, repo.objects.delta_base(base)
    return n


def test_delta_chains_stop_at_max_depth(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    repo.delta_max_depth = 2
    hist = series(repo, 7)
    lengths = [max(chain_length(repo, o) for o in repo.tensors(cid)[0].objects) for cid, _ in hist]
    # versions 3 and 6 (seq 2, 5) are keyframes, the newest (7) is whole: 2,1,0,2,1,0,0
    assert lengths == [2, 1, 0, 2, 1, 0, 0]
    for cid, w in hist:
        assert torch.equal(repo.checkout(cid)["w"], w)


def test_fresh_process_repo_deltas_against_parent_read_from_disk(small_repo: tv.Repo) -> None:
    series(small_repo, 1)
    other = tv.Repo.open(small_repo.root)  # empty base cache: bases come from the store
    w = small_repo.checkout()["w"] + 1e-4
    other.commit({"w": w, "step": 1}, "from disk")
    new_deltas = [
        o for o in other.objects.ids() if other.objects.header(o).codec == codecs.CODEC_DELTA
    ]
    assert len(new_deltas) == 16
    assert torch.equal(other.checkout()["w"], w)


def test_corrupt_delta_base_is_named(small_repo: tv.Repo) -> None:
    hist = series(small_repo, 2)
    entry = small_repo.get_manifest(small_repo.get_commit(hist[0][0]).manifest).tensors[0]
    top = entry.chunks[0][0]
    base = small_repo.objects.delta_base(top)  # the newer commit's chunk
    assert base is not None
    path = small_repo.path / "objects" / base[:2] / base[2:]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(tv.CorruptObjectError) as err:
        small_repo.checkout(hist[0][0])
    assert base in str(err.value) and "w" in str(err.value)


def test_drop_rewrites_history_and_gc_reclaims_bytes(small_repo: tv.Repo) -> None:
    hist = series(small_repo, 8, lr=1e-3)
    before = stored_bytes(small_repo)
    mapping = tv.drop(small_repo, [f"step-{i}" for i in range(6)])
    assert sum(1 for v in mapping.values() if v is None) == 6
    assert [c.step for c in small_repo.log()] == [7, 6]
    assert sorted(small_repo.tags()) == ["step-6", "step-7"]
    report = tv.gc(small_repo, prune="now", reflog_expire="now")
    assert report.rewritten_objects == 0  # step-6's chunks are deltas on step-7's: kept
    after = stored_bytes(small_repo)
    assert after == report.kept_bytes
    assert after < before / 3
    for i in (6, 7):
        assert torch.equal(small_repo.checkout(f"step-{i}")["w"], hist[i][1])
    fsck = tv.fsck(small_repo)
    assert fsck.ok and fsck.commits == 2 and fsck.dangling == 0


def test_dropping_the_newest_commit_re_encodes_the_one_below(small_repo: tv.Repo) -> None:
    hist = series(small_repo, 3, lr=1e-3)
    tv.drop(small_repo, ["step-2"])
    report = tv.gc(small_repo, prune="now", reflog_expire="now")
    assert report.rewritten_objects == 16  # step-1's chunks were deltas on step-2's
    assert all(
        small_repo.objects.delta_base(o) is None for o in small_repo.tensors("step-1")[0].objects
    )
    for i in (0, 1):
        assert torch.equal(small_repo.checkout(f"step-{i}")["w"], hist[i][1])
    assert tv.fsck(small_repo).ok


def test_drop_keeps_commits_other_refs_need(small_repo: tv.Repo) -> None:
    hist = series(small_repo, 4)
    small_repo.branch("keep", "step-1")
    tv.drop(small_repo, ["step-1", "step-2"])
    tv.gc(small_repo, prune="now", reflog_expire="now")
    assert torch.equal(small_repo.checkout("keep")["w"], hist[1][1])
    assert torch.equal(small_repo.checkout("main")["w"], hist[3][1])
    assert [c.step for c in small_repo.log("main")] == [3, 0]
    assert tv.fsck(small_repo).ok


def test_drop_refuses_commits_outside_the_branch(small_repo: tv.Repo) -> None:
    series(small_repo, 2)
    small_repo.branch("side", "step-0")
    small_repo.switch("side")
    c = small_repo.commit({"w": torch.zeros(3)}, "side work")
    small_repo.switch("main")
    with pytest.raises(tv.UsageError, match="not in the first-parent history"):
        tv.drop(small_repo, [c.id])


def test_drop_everything_deletes_the_branch(small_repo: tv.Repo) -> None:
    series(small_repo, 2)
    small_repo.branch("other", "step-0")
    small_repo.switch("other")
    tv.drop(small_repo, ["step-0", "step-1"], branch="main")
    assert "main" not in small_repo.branches()
    assert small_repo.tags() == {}


def test_owned_state_is_cached_without_a_copy_and_still_deltas(small_repo: tv.Repo) -> None:
    w = torch.randn(256, 64)
    small_repo.commit({"w": w}, "first", owned=True)
    cached = list(small_repo.base_cache._current.values())
    assert len(cached) == 16 and all(a.base is not None for a in cached)  # views, no copies
    w2 = w + 1e-4
    small_repo.commit({"w": w2}, "second", owned=True)
    old = [small_repo.objects.header(e[0]).codec
           for e in small_repo.get_manifest(small_repo.show("HEAD~1").manifest).tensors[0].chunks]
    assert old == [codecs.CODEC_DELTA] * 16  # re-encoded from the cached (uncopied) bytes
    assert torch.equal(small_repo.checkout("HEAD~1")["w"], w)
    assert torch.equal(small_repo.checkout()["w"], w2)


def test_live_state_is_copied_into_the_cache(small_repo: tv.Repo) -> None:
    w = torch.randn(256, 64)
    small_repo.commit({"w": w}, "first")
    w.add_(1e-4)  # training modifies the tensor in place after the commit
    small_repo.commit({"w": w}, "second")
    assert torch.equal(small_repo.checkout()["w"], w)
    assert tv.fsck(small_repo).ok
