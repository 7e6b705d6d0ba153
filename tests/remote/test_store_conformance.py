"""One conformance suite for every Store backend: LocalStore and FsspecStore over memory://,
file:// and s3:// (a loopback moto server)."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tensorvcs.errors import LockTimeoutError, RefConflictError, UsageError
from tensorvcs.refs import RefStore
from tensorvcs.store.base import Store
from tensorvcs.store.fsspec_store import FsspecStore
from tensorvcs.store.local import LocalStore

BACKENDS = ["local", "memory", "file", "s3"]


@pytest.fixture(params=BACKENDS)
def store(request: Any, tmp_path: Path) -> Store:
    kind = request.param
    if kind == "local":
        return LocalStore(tmp_path / "st")
    if kind == "memory":
        return FsspecStore(f"memory://tvcs-{secrets.token_hex(4)}/st", lock_ttl=2.0)
    if kind == "file":
        return FsspecStore(f"file://{tmp_path}/st", lock_ttl=2.0)
    url = request.getfixturevalue("s3_url")
    return FsspecStore(url, lock_ttl=2.0, **request.getfixturevalue("s3_options"))


def test_put_get_roundtrip(store: Store) -> None:
    store.put("a/b/c", [b"hello ", memoryview(b"world")])
    assert store.get("a/b/c") == b"hello world"
    assert store.get_head("a/b/c", 5) == b"hello"
    assert store.get_head("a/b/c", 0) == b""
    assert store.get_head("a/b/c", 100) == b"hello world"
    assert store.size("a/b/c") == 11
    assert store.exists("a/b/c")
    store.put("a/b/c", [b"new"])
    assert store.get("a/b/c") == b"new"


def test_missing(store: Store) -> None:
    with pytest.raises(FileNotFoundError):
        store.get("nope")
    with pytest.raises(FileNotFoundError):
        store.get_head("nope", 0)
    with pytest.raises(FileNotFoundError):
        store.get_head("nope", 4)
    assert not store.exists("nope")
    store.put("dir/f", [b"x"])
    with pytest.raises(FileNotFoundError):
        store.get("dir")
    store.delete("nope")  # absent: not an error


def test_put_if_absent(store: Store) -> None:
    assert store.put_if_absent("objects/ab/cd", [b"one"])
    assert not store.put_if_absent("objects/ab/cd", [b"two"])
    assert store.get("objects/ab/cd") == b"one"


def test_put_if_absent_race(store: Store) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        barrier.wait()
        if store.put_if_absent("race", [str(i).encode()]):
            wins.append(i)

    ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(wins) == 1
    assert store.get("race") == str(wins[0]).encode()


def test_list_delete_append(store: Store) -> None:
    for n in ("refs/heads/main", "refs/heads/a/b", "refs/tags/v1", "HEAD"):
        store.put(n, [b"x"])
    assert sorted(store.list("refs/heads")) == ["refs/heads/a/b", "refs/heads/main"]
    assert "HEAD" in set(store.list())
    assert list(store.list("nothing")) == []
    store.delete("refs/heads/main")
    assert sorted(store.list("refs")) == ["refs/heads/a/b", "refs/tags/v1"]
    store.append("logs/HEAD", b"1\n")
    store.append("logs/HEAD", b"2\n")
    assert store.get("logs/HEAD") == b"1\n2\n"
    store.sync()


def test_bad_names(store: Store) -> None:
    for bad in ("/abs", "a/../b", "a//b", ""):
        with pytest.raises(UsageError):
            store.get(bad)


def test_lock_excludes(store: Store) -> None:
    inside = 0
    most = 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        with store.lock("refs", timeout=30):
            with guard:
                inside += 1
                most = max(most, inside)
            time.sleep(0.02)
            with guard:
                inside -= 1

    ts = [threading.Thread(target=work) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert most == 1


def test_lock_timeout(store: Store) -> None:
    if isinstance(store, LocalStore):
        pytest.skip("flock is per open file: one process can hold it twice via two fds")
    with store.lock("gc"), pytest.raises(LockTimeoutError), store.lock("gc", timeout=0.2):
        pass
    with store.lock("gc", timeout=1):  # released
        pass


def test_stale_lock_expires(store: Store) -> None:
    if not isinstance(store, FsspecStore):
        pytest.skip("flock locks die with their process")
    # a holder that died: its lock object stays, with an expiry in the past
    store.put("locks/refs", [b'{"owner": "dead", "expires": 0}'])
    with store.lock("refs", timeout=5):
        assert "dead" not in store.get("locks/refs").decode()
    assert not store.exists("locks/refs")


def test_refs_cas(store: Store) -> None:
    refs = RefStore(store)
    a, b, c = "a" * 64, "b" * 64, "c" * 64
    refs.update("refs/heads/main", a, expected=None)
    with pytest.raises(RefConflictError):
        refs.update("refs/heads/main", b, expected=None)
    refs.update("refs/heads/main", b, expected=a)
    with pytest.raises(RefConflictError):
        refs.update("refs/heads/main", c, expected=a)
    assert refs.read("refs/heads/main") == b
    assert [e.new for e in refs.reflog("refs/heads/main")] == [a, b]


def test_refs_cas_concurrent(store: Store) -> None:
    """Eight writers race to move one ref from the same old value: exactly one wins."""
    refs = RefStore(store)
    base = "0" * 64
    refs.update("refs/heads/main", base, expected=None)
    won: list[str] = []
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        mine = RefStore(store)  # one RefStore per "machine"
        new = f"{i:x}" * 64
        barrier.wait()
        try:
            mine.update("refs/heads/main", new, expected=base)
            won.append(new)
        except RefConflictError:
            pass

    ts = [threading.Thread(target=go, args=(i + 1,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(won) == 1
    assert refs.read("refs/heads/main") == won[0]
