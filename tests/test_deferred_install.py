"""A commit's chunks and packs are written at once and named at the store's next sync
(LocalStore deferred installs, issue 11: one fsync per file right after writing it cost an
ext4 journal commit per file).

What must hold: a deferred file is invisible to every other store object (another process)
until sync, and visible to its own store object at once (exists, get, views, size); sync
fsyncs each file before it gives it its name, and fsyncs the folders after; a second write of
a pending name is refused as for a stored one; delete drops a pending file; and a commit
writes nothing that names an object (manifest, commit) while any object is still pending.
A deferred replacement (a parent chunk's re-encoding as a delta) is read as the old file by
everyone until the sync, which renames it into place only after the new files are named and
their folders fsynced (its delta base may be one of them).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_same_value, randn
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import tensorvcs as tv
from tensorvcs.store import local
from tensorvcs.store.local import TMP_DIR, LocalStore

NAME = "objects/ab/cdef"


def test_invisible_elsewhere_until_sync(tmp_path: Path) -> None:
    mine, other = LocalStore(tmp_path), LocalStore(tmp_path)
    data = os.urandom(300_000)  # above MAP_MIN: get_view maps it
    assert mine.put_if_absent(NAME, [data[:1000], data[1000:]], defer=True)
    assert not (tmp_path / NAME).exists() and not other.exists(NAME)
    assert mine.exists(NAME) and mine.get(NAME) == data and bytes(mine.get_view(NAME)) == data
    assert mine.size(NAME) == len(data) and mine.get_head(NAME, 10) == data[:10]
    assert not mine.put_if_absent(NAME, [b"other bytes"], defer=True)
    assert not mine.put_if_absent(NAME, [b"other bytes"])
    assert len(os.listdir(tmp_path / TMP_DIR)) == 1
    mine.sync()
    assert other.exists(NAME) and other.get(NAME) == data
    assert (tmp_path / NAME).read_bytes() == data
    assert os.listdir(tmp_path / TMP_DIR) == []
    assert not mine.put_if_absent(NAME, [b"other bytes"], defer=True)


def test_sync_fsyncs_each_file_before_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real fsync and link, watched: every name appears only after its inode was fsynced,
    and each folder that received a name is fsynced after that name appeared."""
    store = LocalStore(tmp_path)
    names = [f"objects/{i:02x}/{i:04x}" for i in range(20)]
    for n in names:
        assert store.put_if_absent(n, [os.urandom(5000)], defer=True)
    events: list[tuple[str, Any]] = []
    fsync, link = os.fsync, os.link

    def watched_fsync(fd: int) -> None:
        st_ = os.fstat(fd)
        fsync(fd)
        events.append(("fsync", (st_.st_ino, st_.st_mode)))

    def watched_link(src: Any, dst: Any) -> None:
        ino = os.stat(src).st_ino
        link(src, dst)
        events.append(("link", (ino, Path(dst).parent)))

    monkeypatch.setattr(local.os, "fsync", watched_fsync)
    monkeypatch.setattr(local.os, "link", watched_link)
    store.sync()
    fsynced_files: set[int] = set()
    linked_dirs: dict[Path, int] = {}
    for k, (what, arg) in enumerate(events):
        if what == "fsync" and not os.path.stat.S_ISDIR(arg[1]):
            fsynced_files.add(arg[0])
        elif what == "link":
            assert arg[0] in fsynced_files, "a name appeared before its bytes were fsynced"
            linked_dirs.setdefault(arg[1], k)
    dir_syncs = [
        k
        for k, (what, arg) in enumerate(events)
        if what == "fsync" and os.path.stat.S_ISDIR(arg[1])
    ]
    assert len([e for e in events if e[0] == "link"]) == len(names)
    assert len(dir_syncs) == len(linked_dirs) and min(dir_syncs) > max(linked_dirs.values())
    for n in names:
        assert (tmp_path / n).is_file()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_writeback_starts_at_once_on_linux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deferred file's writeback is begun when it is written (so a commit's files reach the
    disk while it encodes the next ones), through the real libc call."""
    assert local._sync_file_range is not None
    started: list[int] = []
    real = local._start_writeback

    def watched(fd: int) -> None:
        started.append(os.fstat(fd).st_size)
        real(fd)

    monkeypatch.setattr(local, "_start_writeback", watched)
    store = LocalStore(tmp_path)
    store.put_if_absent(NAME, [b"y" * 12345], defer=True)
    store.put_if_absent("objects/ab/other", [b"z" * 10])  # not deferred: fsynced at once
    assert started == [12345]


def test_sync_puts_replacements_in_place_after_the_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deferred replacement (a parent chunk re-encoded as a delta on a new chunk) is read
    as the old file by everyone until sync; sync fsyncs its file, and renames it into place
    only after every new file of the sync is named and every folder they went to is fsynced;
    its own folder is fsynced after the rename."""
    store, other = LocalStore(tmp_path), LocalStore(tmp_path)
    olds = [f"objects/{i:02x}/old" for i in range(6)]
    for n in olds:
        store.put(n, [b"old " + n.encode()])
    news = [f"objects/{i:02x}/new" for i in range(6, 12)]
    for i, (o, n) in enumerate(zip(olds, news, strict=True)):
        assert store.put_if_absent(n, [os.urandom(3000 + i)], defer=True)
        store.put(o, [b"re-encoded " + o.encode()], sync=False, defer=True)
    for o in olds:
        assert store.get(o) == other.get(o) == b"old " + o.encode()
    assert len(os.listdir(tmp_path / TMP_DIR)) == 12
    events: list[tuple[str, Any]] = []
    fsync, link, replace = os.fsync, os.link, os.replace

    def watched_fsync(fd: int) -> None:
        st_ = os.fstat(fd)
        fsync(fd)
        events.append(("fsync", (st_.st_ino, os.path.stat.S_ISDIR(st_.st_mode))))

    def watched_link(src: Any, dst: Any) -> None:
        ino = os.stat(src).st_ino
        link(src, dst)
        if Path(dst).parent.name == TMP_DIR:  # a second name keeping a replaced file alive
            events.append(("keep", (ino, Path(src))))
        else:
            events.append(("link", Path(dst).parent.stat().st_ino))

    def watched_replace(src: Any, dst: Any) -> None:
        ino, old = os.stat(src).st_ino, os.stat(dst).st_ino
        replace(src, dst)
        events.append(("rename", (ino, Path(dst).parent.stat().st_ino)))
        events.append(("replaced", old))

    monkeypatch.setattr(local.os, "fsync", watched_fsync)
    monkeypatch.setattr(local.os, "link", watched_link)
    monkeypatch.setattr(local.os, "replace", watched_replace)
    store.sync()
    renames = [k for k, (what, _) in enumerate(events) if what == "rename"]
    links = [k for k, (what, _) in enumerate(events) if what == "link"]
    assert len(renames) == 6 and len(links) == 6
    assert min(renames) > max(links)
    for k in renames:
        ino, _ = events[k][1]
        assert ("fsync", (ino, False)) in events[:k], "renamed before its bytes were fsynced"
    for k in links:  # each new name's folder fsynced before any replacement lands
        assert ("fsync", (events[k][1], True)) in events[max(links) : min(renames)]
    for k in renames:
        assert ("fsync", (events[k][1][1], True)) in events[k:]
    # each old file got a second name in tmp/ before the rename over it (so the rename frees
    # no blocks); the reaper unlinks those names after the sync
    keeps = [arg for what, arg in events if what == "keep"]
    assert len(keeps) == 6 and {p for _, p in keeps} == {tmp_path / o for o in olds}
    for k in renames:
        _, replaced = events[k + 1]  # the inode the rename took the name from
        assert any(what == "keep" and arg[0] == replaced for what, arg in events[:k]), (
            "renamed over a file with no second name"
        )
    for o in olds:
        assert other.get(o) == b"re-encoded " + o.encode()
    store.drain()
    assert os.listdir(tmp_path / TMP_DIR) == []


def test_a_replaced_file_is_unlinked_after_the_sync_and_by_close(tmp_path: Path) -> None:
    """What the sync replaced is unlinked by the reaper thread, not in the sync: the old file's
    inode outlives its name until then, and Repo.close waits for it."""
    store = LocalStore(tmp_path)
    store.put(NAME, [b"old" * 1000])
    old_ino = (tmp_path / NAME).stat().st_ino
    store.put(NAME, [b"new" * 1000], sync=False, defer=True)
    store.sync()
    assert (tmp_path / NAME).read_bytes() == b"new" * 1000
    store.drain()
    assert os.listdir(tmp_path / TMP_DIR) == []
    assert all(p.stat().st_ino != old_ino for p in tmp_path.rglob("*") if p.is_file())

    r = tv.Repo.init(tmp_path / "repo", chunk_size=1 << 16, pack_threshold=1 << 12)
    w = randn(0, 256, 300)
    for i in range(3):
        w = w + 0.01 * randn(100 + i, 256, 300)  # every chunk changes: re-encodings
        r.commit({"w": w}, message=f"step {i}")
        assert r.last_write_stats.rewritten_objects == 0 or i > 0
    assert r.last_write_stats.rewritten_objects == -(-256 * 300 * 4 // (1 << 16))
    r.close()
    assert os.listdir(tmp_path / "repo" / ".tvcs" / TMP_DIR) == []
    assert_same_value(tv.Repo.open(tmp_path / "repo").checkout()["w"], w)


def test_a_file_system_without_hard_links_replaces_in_the_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where link(2) is refused (EPERM: some FUSE and network file systems), the rename frees
    the old file itself: the replacement still lands and nothing waits in tmp/."""
    import errno

    link = os.link

    def refused(src: Any, dst: Any) -> None:
        if Path(dst).parent.name == TMP_DIR:
            raise PermissionError(errno.EPERM, "Operation not permitted", str(dst))
        link(src, dst)

    monkeypatch.setattr(local.os, "link", refused)
    store = LocalStore(tmp_path)
    names = [f"objects/{i:02x}/n" for i in range(5)]
    for n in names:
        store.put(n, [b"old " + n.encode()])
        store.put(n, [b"new " + n.encode()], sync=False, defer=True)
    store.sync()
    assert os.listdir(tmp_path / TMP_DIR) == []
    assert all(LocalStore(tmp_path).get(n) == b"new " + n.encode() for n in names)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork(2) is POSIX")
def test_a_forked_child_syncs_with_threads_of_its_own(tmp_path: Path) -> None:
    """The sync threads and the reaper are the process's, started once: a child forked after
    the parent used them has none of them, and its syncs must not wait on them forever."""
    store = LocalStore(tmp_path)
    for i in range(4):  # the parent's sync threads and reaper are running now
        store.put(f"objects/{i:02x}/p", [b"old"])
        store.put(f"objects/{i:02x}/p", [b"new"], sync=False, defer=True)
        assert store.put_if_absent(f"objects/{i:02x}/q", [b"q"], defer=True)
    store.sync()
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if its syncs work
        code = 1
        try:
            child = LocalStore(tmp_path)
            for i in range(4):
                child.put(f"objects/{i:02x}/p", [b"child"], sync=False, defer=True)
                child.put_if_absent(f"objects/{i:02x}/c", [b"c"], defer=True)
            child.sync()
            child.drain()
            code = 0 if all(child.get(f"objects/{i:02x}/p") == b"child" for i in range(4)) else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's sync hung")
    assert os.waitstatus_to_exitcode(status) == 0
    store.drain()
    assert LocalStore(tmp_path).get("objects/00/c") == b"c"
    assert os.listdir(tmp_path / TMP_DIR) == []


def test_concurrent_syncs_install_everything_once(tmp_path: Path) -> None:
    """Syncs from several threads at once (a commit's workers syncing early, another commit
    on the same store object): each pending file is installed once, none is lost, no sync
    fails on a temp file another one already moved."""
    import threading

    store = LocalStore(tmp_path)
    names = [f"objects/{i % 16:02x}/{i:04x}" for i in range(200)]
    for n in names:
        assert store.put_if_absent(n, [n.encode() * 50], defer=True)
        store.put(n.replace("objects", "objects/r"), [b"r" + n.encode()], defer=True)
    assert store.deferred_replacement_bytes() == sum(len(b"r" + n.encode()) for n in names)
    errors: list[BaseException] = []

    def sync() -> None:
        try:
            store.sync()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=sync) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    other = LocalStore(tmp_path)
    for n in names:
        assert other.get(n) == n.encode() * 50
        assert other.get(n.replace("objects", "objects/r")) == b"r" + n.encode()
    assert store.deferred_replacement_bytes() == 0 and os.listdir(tmp_path / TMP_DIR) == []


@pytest.mark.parametrize("meanwhile", ["delete", "newer file", "vanished"])
def test_a_pending_file_changed_while_the_sync_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, meanwhile: str
) -> None:
    """Another thread deletes a pending file, or gives it a newer file, while a sync is about
    to fsync it: that sync skips it (the newer file waits for the next sync) and installs the
    rest. A temp file that vanished behind the store's back is an error, never a silently
    missing object."""
    store = LocalStore(tmp_path)
    names = [f"objects/{i:02x}/n" for i in range(4)]
    for n in names:
        assert store.put_if_absent(n, [n.encode()], defer=True)
    target = store._pending[names[0]]
    fsync_path = local._fsync_path

    def racing(path: Path, flags: int = 0) -> None:
        if path == target:
            if meanwhile == "delete":
                store.delete(names[0])
            elif meanwhile == "newer file":
                store.put(names[0], [b"newer"], defer=True)
            else:
                path.unlink()
        fsync_path(path, flags)

    monkeypatch.setattr(local, "_fsync_path", racing)
    if meanwhile == "vanished":
        with pytest.raises(FileNotFoundError):
            store.sync()
        return
    store.sync()
    other = LocalStore(tmp_path)
    assert all(other.get(n) == n.encode() for n in names[1:])
    assert not other.exists(names[0])
    if meanwhile == "newer file":
        assert store.get(names[0]) == b"newer"  # still pending, seen by its own store
        store.sync()
        assert other.get(names[0]) == b"newer"
    assert os.listdir(tmp_path / TMP_DIR) == []


def test_a_put_or_delete_drops_an_older_deferred_replacement(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put(NAME, [b"one"])
    store.put(NAME, [b"two"], defer=True)
    store.put(NAME, [b"three"])  # a write after the deferred one: it wins
    store.sync()
    assert store.get(NAME) == b"three" and os.listdir(tmp_path / TMP_DIR) == []
    store.put(NAME, [b"four"], defer=True)
    store.delete(NAME)
    store.sync()
    assert not store.exists(NAME) and os.listdir(tmp_path / TMP_DIR) == []


def test_delete_drops_a_pending_file(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    assert store.put_if_absent(NAME, [b"x" * 100], defer=True)
    store.delete(NAME)
    assert not store.exists(NAME) and os.listdir(tmp_path / TMP_DIR) == []
    store.sync()
    assert not (tmp_path / NAME).exists()


def test_direct_writes_are_not_deferred(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not local.O_DIRECT:
        pytest.skip("no O_DIRECT on this platform")
    monkeypatch.setenv("TVCS_DIRECT_IO", "1")
    store = LocalStore(tmp_path)
    assert store.put_if_absent(NAME, [os.urandom(local.DIRECT_MIN)], defer=True)
    assert (tmp_path / NAME).is_file() and LocalStore(tmp_path).exists(NAME)


def test_a_commit_names_no_pending_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every write that is not a deferred one (the manifest, the commit object, refs) happens
    with nothing pending: what it names is already fsynced and named."""
    seen: list[tuple[str, int]] = []
    put_if_absent, put = LocalStore.put_if_absent, LocalStore.put

    def watched_pia(self: LocalStore, name: str, data: Any, *, defer: bool = False) -> bool:
        if not defer:
            seen.append((name, len(self._pending)))
        return put_if_absent(self, name, data, defer=defer)

    def watched_put(self: LocalStore, name: str, data: Any, **kw: Any) -> None:
        if not kw.get("defer"):  # (a deferred re-encoding is put in place after the installs)
            seen.append((name, len(self._pending)))
        put(self, name, data, **kw)

    monkeypatch.setattr(LocalStore, "put_if_absent", watched_pia)
    monkeypatch.setattr(LocalStore, "put", watched_put)
    r = tv.Repo.init(tmp_path, chunk_size=1 << 16, pack_threshold=1 << 12)
    states = []
    for i in range(3):
        s = {"w": randn(i, 256, 300), "b": randn(10 + i, 50), "step": torch.tensor(i)}
        states.append(s)
        r.commit(s, message=f"step {i}")
    assert seen and all(n == 0 for _, n in seen), [x for x in seen if x[1]]
    r.store.drain()
    assert os.listdir(tmp_path / ".tvcs" / TMP_DIR) == []
    fresh = tv.Repo.open(tmp_path)  # another process's view
    for i, c in enumerate(reversed(fresh.log())):
        assert_same_value(fresh.checkout(c.id), states[i])
    assert tv.fsck(fresh).ok
    r.close()
    fresh.close()


def watch_names(
    named: Callable[[str], None], dir_synced: Callable[[str], None]
) -> tuple[Callable[..., None], Callable[..., None], Callable[[int], None]]:
    """Stand-ins for os.link, os.replace and os.fsync that make the real call, then report the
    folder a name went into, or the folder fsynced (real paths). A link into tmp/ is not a
    name anyone reads (a second name keeping a replaced file alive for the reaper): not
    reported."""
    link, replace, fsync = os.link, os.replace, os.fsync

    def watched_link(src: Any, dst: Any) -> None:
        link(src, dst)
        if Path(dst).parent.name != TMP_DIR:
            named(os.path.realpath(Path(dst).parent))

    def watched_replace(src: Any, dst: Any) -> None:
        replace(src, dst)
        named(os.path.realpath(Path(dst).parent))

    def watched_fsync(fd: int) -> None:
        fsync(fd)
        if os.path.stat.S_ISDIR(os.fstat(fd).st_mode):
            dir_synced(os.readlink(f"/proc/self/fd/{fd}"))

    return watched_link, watched_replace, watched_fsync


def test_a_commit_fsyncs_every_folder_it_named_into_before_its_ref_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit's re-encodings are renamed into place at the writer's sync with their folders
    left for the manifest's sync (defer_folders): still, every folder any object, manifest or
    commit was named into is fsynced after that name appeared and before the branch moves."""
    r = tv.Repo.init(tmp_path, chunk_size=1 << 16, pack_threshold=1 << 12)
    objects = os.path.realpath(tmp_path / ".tvcs" / "objects")
    heads = os.path.realpath(tmp_path / ".tvcs" / "refs" / "heads")
    events: list[tuple[str, str]] = []
    watched = watch_names(
        lambda d: events.append(("name", d)), lambda d: events.append(("dir fsync", d))
    )
    for fn, stand_in in zip(("link", "replace", "fsync"), watched, strict=True):
        monkeypatch.setattr(os, fn, stand_in)
    w = randn(0, 256, 300)
    rewritten = 0
    for i in range(4):
        w = w + 0.01 * randn(100 + i, 256, 300)  # every chunk changes: re-encodings
        events.clear()
        r.commit({"w": w, "step": torch.tensor(i)}, message=f"step {i}")
        rewritten += r.last_write_stats.rewritten_objects
        moved = max(k for k, (what, d) in enumerate(events) if what == "name" and d == heads)
        for k, (what, d) in enumerate(events[:moved]):
            if what == "name" and d.startswith(objects):
                assert ("dir fsync", d) in events[k + 1 : moved], f"commit {i}: {d} unsynced"
    assert rewritten >= 3 * (256 * 300 * 4 // (1 << 16))  # commits 1-3 re-encoded their parents
    assert_same_value(tv.Repo.open(tmp_path).checkout()["w"], w)
    r.close()


NAMES = st.sampled_from([f"objects/{a}/{b}" for a in "ab" for b in ("c1", "c2")])
DATA = st.binary(min_size=0, max_size=600)


class DeferredInstalls(RuleBasedStateMachine):
    """Random puts (deferred or not, new files and replacements), syncs and deletes on one
    store; a second store object on the same folder is another process. Model: what this
    store sees, what the disk has."""

    @initialize()
    def setup(self) -> None:
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="tvcs-deferred-"))
        self.mine, self.other = LocalStore(self.root), LocalStore(self.root)
        # folders that received a name (link or rename) and were not fsynced since: the real
        # calls, watched (restored in teardown)
        self.owed: set[str] = set()
        self.real = os.link, os.replace, os.fsync
        os.link, os.replace, os.fsync = watch_names(self.owed.add, self.owed.discard)
        self.disk: dict[str, bytes] = {}  # named on the disk
        self.pending: dict[str, bytes] = {}  # this store's deferred files
        self.replacing: dict[str, bytes] = {}  # this store's deferred replacements

    @rule(name=NAMES, data=DATA, defer=st.booleans())
    def put_if_absent(self, name: str, data: bytes, defer: bool) -> None:
        wrote = self.mine.put_if_absent(name, [data], defer=defer)
        assert wrote == (name not in self.disk and name not in self.pending)
        if wrote:
            (self.pending if defer else self.disk)[name] = data

    @rule(name=NAMES, data=DATA)
    def put(self, name: str, data: bytes) -> None:
        if name in self.pending:
            return  # (a put over a pending name is not something a commit does)
        self.mine.put(name, [data])  # a durable put syncs: the pending files are named too
        self.replacing.pop(name, None)  # (an older deferred replacement is dropped)
        self.disk[name] = data
        self._synced()
        assert not self.owed, self.owed  # and fsyncs every folder a name went into

    @rule(name=NAMES, data=DATA)
    def put_deferred(self, name: str, data: bytes) -> None:
        self.mine.put(name, [data], defer=True)
        (self.pending if name in self.pending else self.replacing)[name] = data

    def _synced(self) -> None:
        self.disk.update(self.pending)
        self.disk.update(self.replacing)
        self.pending.clear()
        self.replacing.clear()

    @rule(defer_folders=st.booleans())
    def sync(self, defer_folders: bool) -> None:
        replaced = {os.path.realpath((self.root / n).parent) for n in self.replacing}
        self.mine.sync(defer_folders=defer_folders)
        self._synced()
        # a full sync leaves no folder that received a name unsynced; with defer_folders
        # only the folders its replacements were renamed into wait (for the next sync)
        assert self.owed <= (replaced if defer_folders else set()), (self.owed, replaced)

    @rule(name=NAMES)
    def delete(self, name: str) -> None:
        self.mine.delete(name)
        self.disk.pop(name, None)
        self.pending.pop(name, None)
        self.replacing.pop(name, None)

    @invariant()
    def views(self) -> None:
        if not hasattr(self, "mine"):
            return
        for name in [f"objects/{a}/{b}" for a in "ab" for b in ("c1", "c2")]:
            here = self.pending.get(name, self.disk.get(name))
            assert self.mine.exists(name) == (here is not None)
            if here is not None:
                assert self.mine.get(name) == here and self.mine.size(name) == len(here)
            there = self.disk.get(name)
            assert self.other.exists(name) == (there is not None)
            if there is not None:
                assert self.other.get(name) == there
        waiting = len(self.pending) + len(self.replacing)
        tmp = self.root / TMP_DIR
        # besides the waiting files: replaced files the reaper has not unlinked yet
        files = [f for f in os.listdir(tmp) if not f.endswith(".old")] if tmp.is_dir() else []
        assert len(files) == waiting

    @rule()
    def drain(self) -> None:
        self.mine.drain()
        tmp = self.root / TMP_DIR
        assert not tmp.is_dir() or not [f for f in os.listdir(tmp) if f.endswith(".old")]

    def teardown(self) -> None:
        if hasattr(self, "real"):
            os.link, os.replace, os.fsync = self.real
        if hasattr(self, "root"):
            import shutil

            shutil.rmtree(self.root, ignore_errors=True)


DeferredInstalls.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_deferred_installs = DeferredInstalls.TestCase
