"""push / fetch / pull / clone against a loopback moto S3 server (and memory://)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_same_value

import tensorvcs as tv
from tensorvcs import remote as rm
from tensorvcs.store.fsspec_store import FsspecStore


def state(seed: int, n: int = 4) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": {f"w{i}": torch.randn(64, 128, generator=g) for i in range(n)},
        "bias": torch.randn(10, generator=g),
        "step": seed,
    }


def nudge(s: dict[str, Any], k: str = "w0") -> dict[str, Any]:
    out = {**s, "model": dict(s["model"])}
    out["model"][k] = s["model"][k] + 1e-3  # a delta against the parent's chunk
    out["step"] = s["step"] + 1
    return out


def make_repo(path: Path) -> tv.Repo:
    return tv.Repo.init(path, chunk_size=4096, pack_threshold=1024)


def remote_objects(url: str, opts: dict[str, Any]) -> set[str]:
    st = FsspecStore(url, **opts)
    return {n for n in st.list("objects")}


def test_push_clone_pull_roundtrip(tmp_path: Path, s3_url: str, s3_options: dict[str, Any]) -> None:
    a = make_repo(tmp_path / "a")
    s1 = state(1)
    a.commit(s1, message="one")
    s2 = nudge(s1)
    c2 = a.commit(s2, message="two")
    tv.remote_add(a, "origin", s3_url, **s3_options)
    res = tv.push(a, "origin")
    assert res.objects_sent > 0 and res.bytes_sent > 0
    assert res.updated == {"refs/heads/main": [None, c2.id]}
    assert a.refs.read("refs/remotes/origin/main") == c2.id
    local_objs = {f"objects/{o[:2]}/{o[2:]}" for o in a.objects.ids()}
    assert remote_objects(s3_url, s3_options) == local_objs  # everything reachable, no more
    again = tv.push(a, "origin")  # nothing new
    assert again.objects_sent == 0 and again.up_to_date == ["refs/heads/main"]

    b = tv.clone(s3_url, tmp_path / "b", **s3_options)
    assert b.refs.read("refs/heads/main") == c2.id
    assert b.head() == ("refs/heads/main", c2.id) or b.head()[1] == c2.id
    assert_same_value(b.checkout("main"), s2)
    assert_same_value(b.checkout("main~1"), s1)
    assert tv.fsck(b).ok

    s3 = nudge(s2, "w1")
    c3 = a.commit(s3, message="three")
    res = tv.push(a)
    # only the new commit's objects travel: one changed chunk run, manifest, commit
    assert 0 < res.objects_sent < len(local_objs)
    res = tv.pull(b, "origin")
    assert res.updated["refs/heads/main"] == [c2.id, c3.id]
    assert_same_value(b.checkout("main"), s3)
    assert tv.fsck(b).ok
    a.close()
    b.close()


def test_interrupted_push_resumes(
    tmp_path: Path, s3_url: str, s3_options: dict[str, Any], monkeypatch: Any
) -> None:
    a = make_repo(tmp_path / "a")
    s = state(2, n=6)
    a.commit(s)
    a.commit(nudge(s))
    total = len(list(a.objects.ids()))
    tv.remote_add(a, "origin", s3_url, **s3_options)

    k = 7
    sent = 0
    lock = threading.Lock()
    real = FsspecStore.put_if_absent

    def flaky(self: FsspecStore, name: str, data: Any) -> bool:
        nonlocal sent
        if name.startswith("objects/"):
            with lock:
                if sent >= k:
                    raise ConnectionError("network down")
                sent += 1
        return real(self, name, data)

    monkeypatch.setattr(FsspecStore, "put_if_absent", flaky)
    with pytest.raises(ConnectionError):
        rm.push(a, "origin", threads=1)
    monkeypatch.setattr(FsspecStore, "put_if_absent", real)
    assert len(remote_objects(s3_url, s3_options)) == k
    assert a.refs.read("refs/remotes/origin/main") is None  # no ref moved
    assert FsspecStore(s3_url, **s3_options).exists("refs/heads/main") is False

    res = tv.push(a, "origin")
    assert res.objects_sent == total - k  # only what was still missing
    assert len(remote_objects(s3_url, s3_options)) == total
    b = tv.clone(s3_url, tmp_path / "b", **s3_options)
    assert tv.fsck(b).ok
    a.close()
    b.close()


def test_two_pushers_one_refused(tmp_path: Path, s3_url: str, s3_options: dict[str, Any]) -> None:
    a = make_repo(tmp_path / "a")
    base = state(3)
    a.commit(base)
    tv.remote_add(a, "origin", s3_url, **s3_options)
    tv.push(a)
    b = tv.clone(s3_url, tmp_path / "b", **s3_options)
    a.commit(nudge(base, "w0"), message="from a")
    b.commit(nudge(base, "w1"), message="from b")
    tv.push(a)
    with pytest.raises(rm.PushRejectedError, match="rejected: remote main moved; fetch first"):
        tv.push(b)
    # b fetches: now it knows a's commit, and sees it diverged: pull refuses too
    with pytest.raises(rm.DivergedError, match="diverged"):
        tv.pull(b)
    with pytest.raises(rm.PushRejectedError, match="non-fast-forward"):
        tv.push(b)


def test_concurrent_pushers_race(tmp_path: Path, s3_url: str, s3_options: dict[str, Any]) -> None:
    """Two machines push at the same moment from the same base: exactly one wins."""
    a = make_repo(tmp_path / "a")
    base = state(4)
    a.commit(base)
    tv.remote_add(a, "origin", s3_url, **s3_options)
    tv.push(a)
    b = tv.clone(s3_url, tmp_path / "b", **s3_options)
    ca = a.commit(nudge(base, "w0"))
    cb = b.commit(nudge(base, "w1"))
    barrier = threading.Barrier(2)
    outcome: dict[str, Any] = {}

    def go(name: str, r: tv.Repo) -> None:
        barrier.wait()
        try:
            tv.push(r)
            outcome[name] = "ok"
        except rm.PushRejectedError as e:
            outcome[name] = e

    ts = [threading.Thread(target=go, args=x) for x in (("a", a), ("b", b))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    oks = [k for k, v in outcome.items() if v == "ok"]
    assert len(oks) == 1, outcome
    loser = "b" if oks == ["a"] else "a"
    assert "rejected: remote main moved; fetch first" in str(outcome[loser])
    remote_tip = FsspecStore(s3_url, **s3_options).get("refs/heads/main").decode().strip()
    assert remote_tip == (ca.id if oks == ["a"] else cb.id)


@pytest.mark.parametrize("kind", ["memory", "file", "path"])
def test_fetch_and_tags(tmp_path: Path, kind: str) -> None:
    url = {
        "memory": f"memory://tvcs-fetch-{tmp_path.name}/remote",
        "file": f"file://{tmp_path}/remote-file",
        "path": str(tmp_path / "remote-path"),  # a bare repository in a local folder
    }[kind]
    a = make_repo(tmp_path / "a")
    s = state(5)
    c1 = a.commit(s)
    a.tag("v1", c1)
    a.branch("dev")
    tv.remote_add(a, "origin", url)
    tv.push(a, "origin", ["main", "dev", "v1"])
    b = tv.clone(url, tmp_path / "b")
    assert b.tags() == {"v1": c1.id}
    assert b.refs.read("refs/remotes/origin/dev") == c1.id
    c2 = a.commit(nudge(s))
    tv.push(a)
    res = tv.fetch(b, "origin")
    assert res.updated == {"refs/remotes/origin/main": [c1.id, c2.id]}
    assert b.refs.read("refs/heads/main") == c1.id  # fetch moves no local branch
    # gc keeps what only a remote-tracking ref reaches
    tv.gc(b, prune="now", reflog_expire="now")
    assert tv.fsck(b).ok
    assert_same_value(b.checkout("refs/remotes/origin/main"), nudge(s))
    assert tv.remotes(b) == {"origin": url}
    tv.remote_remove(b, "origin")
    assert tv.remotes(b) == {}
    assert b.refs.read("refs/remotes/origin/main") is None
