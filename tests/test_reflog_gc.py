"""gc keeps what reflogs reach, as git does (docs/format.md §9), and says what it leaves.

- a commit left behind (detached HEAD, a branch moved by ``branch -f`` or ``drop``, a deleted
  branch or tag) survives gc while its reflog entry lives: 90 days, or 30 once its ref no
  longer reaches it; ``--reflog-expire=now --prune=now`` reclaims at once;
- unreachable objects younger than two weeks are kept with everything they need;
- ``switch`` away from a detached HEAD names the commits it leaves behind; fsck names
  dangling commits; HEAD itself is checked;
- ``drop`` moves the branch, its tags and other refs in one transaction: a SIGKILL in the
  middle is completed by the next ref update, never left half done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_same_value, start_worker

import tensorvcs as tv
from tensorvcs.maintenance import DAY, parse_age
from tensorvcs.refs import HEADS, JOURNAL, TAGS
from tensorvcs.remote import open_remote_repo, push, transfer

REPO = {"chunk_size": 4096, "pack_threshold": 1024}


def st(i: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(i)
    return {"w": torch.randn(3000, generator=g), "i": i}


@pytest.fixture
def tvcs_cli() -> Any:
    """Run the real ``tvcs`` script (a subprocess) on the repository at a folder."""
    script = Path(sys.executable).parent / "tvcs"

    def run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "TVCS_REPO"}
        return subprocess.run(
            [str(script), "--repo", str(repo), *args],
            capture_output=True, text=True, timeout=120, env=env,
        )  # fmt: skip

    return run


@pytest.fixture
def r(tmp_path: Path) -> Any:
    repo = tv.Repo.init(tmp_path / "r", **REPO)
    yield repo
    repo.close()


def _age_objects(repo: tv.Repo, seconds: float) -> None:
    """Make every object look ``seconds`` older (as if written then)."""
    for p in (repo.path / "objects").rglob("*"):
        if p.is_file():
            st_ = p.stat()
            os.utime(p, (st_.st_atime - seconds, st_.st_mtime - seconds))


def test_detached_commit_survives_gc_until_its_reflog_entry_expires(r: tv.Repo) -> None:
    base = r.commit(st(1), "one")
    r.switch(base.id, detach=True)
    lost = r.commit(st(2), "on a detached HEAD")
    r.switch("main")
    _age_objects(r, 20 * DAY)  # older than the prune age: only the reflog protects it

    rep = tv.gc(r)  # git's defaults
    assert rep.deleted_objects == 0 and rep.deleted_commits == []
    assert_same_value(r.checkout(lost.id), st(2))
    assert lost.id in {e.new for e in r.refs.reflog("HEAD")}

    # 31 days on: HEAD (main) does not reach it, so its entry expires (reflogExpireUnreachable)
    rep = tv.gc(r, now=time.time() + 31 * DAY)
    assert lost.id in rep.deleted_commits and rep.expired_reflog_entries >= 1
    assert not r.objects.has(lost.id)
    assert_same_value(r.checkout(base.id), st(1))
    assert tv.fsck(r).ok


def test_reachable_reflog_entries_live_90_days(r: tv.Repo) -> None:
    a = r.commit(st(1), "one")
    r.commit(st(2), "two")
    _age_objects(r, 100 * DAY)
    rep = tv.gc(r, now=time.time() + 60 * DAY)  # entries reachable from main: kept
    assert rep.expired_reflog_entries == 0
    rep = tv.gc(r, now=time.time() + 91 * DAY)
    assert rep.expired_reflog_entries >= 2 and rep.deleted_objects == 0  # main still has them
    assert_same_value(r.checkout(a.id), st(1))


def test_branch_moved_with_force_keeps_its_old_tip(r: tv.Repo) -> None:
    r.commit(st(1), "one")
    r.commit(st(2), "two", branch="exp")
    old_tip = r.branches()["exp"]
    r.branch("exp", "main", force=True)
    _age_objects(r, 20 * DAY)
    assert tv.gc(r).deleted_objects == 0
    assert_same_value(r.checkout(old_tip), st(2))


def test_deleted_branch_and_tag_survive_default_gc(r: tv.Repo) -> None:
    r.commit(st(1), "one")
    side = r.commit(st(2), "side", branch="side")
    r.tag("keep-me", side.id)
    r.delete_tag("keep-me")
    r.delete_branch("side")
    _age_objects(r, 20 * DAY)
    assert tv.gc(r).deleted_objects == 0
    assert_same_value(r.checkout(side.id), st(2))
    assert side.id in tv.fsck(r).dangling_commits or tv.fsck(r).dangling == 0


def test_drop_then_default_gc_keeps_the_dropped_commit(r: tv.Repo) -> None:
    cs = [r.commit(st(i), f"c{i}") for i in range(4)]
    tv.drop(r, [cs[1].id])
    _age_objects(r, 20 * DAY)
    assert tv.gc(r).deleted_commits == []
    for i, c in enumerate(cs):
        assert_same_value(r.checkout(c.id), st(i))  # the old ids too, via the reflog
    rep = tv.gc(r, prune="now", reflog_expire="now")
    assert cs[1].id in rep.deleted_commits
    assert_same_value(r.checkout("HEAD~1"), st(2))


def test_young_unreachable_objects_are_kept_with_all_they_need(r: tv.Repo) -> None:
    r.commit(st(1), "one")
    side = r.commit(st(2), "side", branch="side")
    r.delete_branch("side")
    rep = tv.gc(r, reflog_expire="now")  # no reflog protects it; it is minutes old
    assert rep.deleted_objects == 0 and rep.young_objects_kept >= 3
    assert_same_value(r.checkout(side.id), st(2))
    _age_objects(r, 15 * DAY)
    rep = tv.gc(r)
    assert rep.deleted_commits == [side.id]
    assert tv.fsck(r).ok and tv.fsck(r).dangling == 0


def test_prune_never_keeps_everything(r: tv.Repo) -> None:
    r.commit(st(1), "one")
    r.commit(st(2), "side", branch="side")
    r.delete_branch("side")
    assert tv.gc(r, prune="never", reflog_expire="now").deleted_objects == 0


def test_gc_settings_from_the_config(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path / "r", **REPO)
    repo.commit(st(1), "one")
    side = repo.commit(st(2), "side", branch="side")
    repo.delete_branch("side")
    repo.close()
    cfg = tmp_path / "r" / ".tvcs" / "config.json"
    doc = json.loads(cfg.read_text())
    doc["settings"].update({"gc.reflog_expire": "now", "gc.prune_expire": "now"})
    cfg.write_text(json.dumps(doc))
    with tv.Repo.open(tmp_path / "r") as repo:
        assert side.id in tv.gc(repo).deleted_commits
    doc["settings"]["gc.prune_expire"] = "soon"
    cfg.write_text(json.dumps(doc))
    with tv.Repo.open(tmp_path / "r") as repo, pytest.raises(tv.UsageError, match="soon"):
        tv.gc(repo)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("now", 0.0),
        ("never", float("inf")),
        ("2.weeks.ago", 14 * DAY),
        ("90.days", 90 * DAY),
        ("90d", 90 * DAY),
        ("1.5h", 5400.0),
        ("3600", 3600.0),
        (30, 30.0),
        ("30 minutes ago", 1800.0),
    ],
)
def test_parse_age(text: Any, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("bad", ["soon", "-3", "2.fortnights", "", True, -1, float("nan")])
def test_parse_age_refuses(bad: Any) -> None:
    with pytest.raises(tv.UsageError, match="invalid"):
        parse_age(bad)


def test_fsck_names_dangling_commits(r: tv.Repo) -> None:
    r.commit(st(1), "one")
    a = r.commit(st(2), "a", branch="side")
    b = r.commit(st(3), "b", branch="side")
    r.delete_branch("side")
    # reflogs reach them: not dangling
    assert tv.fsck(r).dangling_commits == []
    tv.gc(r, prune="never", reflog_expire="now")
    rep = tv.fsck(r)
    assert rep.ok and rep.dangling_commits == [b.id]  # a is b's parent: not dangling itself
    assert a.id != b.id


def test_fsck_checks_head(r: tv.Repo) -> None:
    r.commit(st(1), "one")
    head = r.path / "HEAD"
    head.write_text("ref: refs/heads/mian\n")
    probs = [str(p) for p in tv.fsck(r).problems]
    assert probs == ["bad-ref: HEAD points at branch 'mian', which does not exist (branches: main)"]
    head.write_bytes(b"\xff\xfe garbage\n")
    assert "not text" in str(tv.fsck(r).problems[0])
    head.write_text("nonsense\n")
    assert "HEAD holds 'nonsense'" in str(tv.fsck(r).problems[0])
    head.unlink()
    assert [str(p) for p in tv.fsck(r).problems] == ["bad-ref: HEAD is missing"]


def test_fsck_accepts_an_unborn_head_beside_other_branches(r: tv.Repo) -> None:
    r.commit(st(1), "one", branch="ckpt")  # HEAD stays on the unborn main
    assert tv.fsck(r).ok


# -- the CLI -------------------------------------------------------------------------------
def test_switch_names_the_commits_it_leaves_behind(tmp_path: Path, tvcs_cli: Any) -> None:
    repo = tv.Repo.init(tmp_path / "w", **REPO)
    base = repo.commit(st(1), "one")
    repo.switch(base.id, detach=True)
    c1 = repo.commit(st(2), "experiment 1")
    c2 = repo.commit(st(3), "experiment 2")
    repo.close()
    res = tvcs_cli(tmp_path / "w", "switch", "main")
    assert res.returncode == 0, res.stderr
    assert "leaving 2 commit(s) behind" in res.stderr
    assert c1.id[:10] in res.stderr and c2.id[:10] in res.stderr
    assert "experiment 2" in res.stderr and "tvcs branch <name>" in res.stderr
    out = tvcs_cli(tmp_path / "w", "reflog", "--json")
    entries = json.loads(out.stdout)["entries"]
    assert [e["id"] for e in entries[:3]] == [base.id, c2.id, c1.id]
    assert entries[1]["selector"] == "HEAD@{1}"
    text = tvcs_cli(tmp_path / "w", "reflog").stdout.splitlines()
    assert text[1].startswith(c2.id[:10]) and "HEAD@{1}" in text[1]
    fsck = tvcs_cli(tmp_path / "w", "fsck")
    assert fsck.returncode == 0 and "dangling commit" not in fsck.stdout
    # switching between branches says nothing
    res = tvcs_cli(tmp_path / "w", "switch", "main")
    assert res.returncode == 0 and "behind" not in res.stderr


def test_cli_gc_options_and_settings(tmp_path: Path, tvcs_cli: Any) -> None:
    repo = tv.Repo.init(tmp_path / "w", **REPO)
    repo.commit(st(1), "one")
    side = repo.commit(st(2), "side", branch="side")
    repo.delete_branch("side")
    repo.close()
    w = tmp_path / "w"
    res = tvcs_cli(w, "config", "settings.gc.prune_expire", "soon")
    assert res.returncode == 2 and "invalid setting gc.prune_expire 'soon'" in res.stderr
    assert tvcs_cli(w, "config", "settings.gc.reflog_expire", "now").returncode == 0
    out = json.loads(tvcs_cli(w, "gc", "--json").stdout)  # reflog gone; prune age keeps it
    assert out["deleted_objects"] == 0 and out["young_objects_kept"] >= 3
    res = tvcs_cli(w, "gc", "--prune", "later")
    assert res.returncode == 2 and "invalid --prune 'later'" in res.stderr
    out = json.loads(tvcs_cli(w, "gc", "--prune=now", "--json").stdout)
    assert out["deleted_commits"] == [side.id]


def test_cli_reflog_of_unknown_ref(tmp_path: Path, tvcs_cli: Any) -> None:
    tv.Repo.init(tmp_path / "w").close()
    res = tvcs_cli(tmp_path / "w", "reflog", "nope")
    assert res.returncode == 4 and "no reflog for 'nope'" in res.stderr
    assert "Traceback" not in res.stderr


# -- drop is one transaction -------------------------------------------------------------
def _tags_on_branch(repo: tv.Repo) -> None:
    chain = {c.id for c in repo.log("main")}
    for name, oid in repo.tags().items():
        assert oid in chain, f"tag {name} names {oid[:12]}, not on main"


@pytest.mark.parametrize("point", ["journal", "branch", "first-tag"])
def test_drop_killed_midway_is_completed_by_the_next_ref_update(
    tmp_path: Path, point: str
) -> None:
    path = tmp_path / "r"
    with tv.Repo.init(path, **REPO) as repo:
        for i in range(5):
            c = repo.commit(st(i), f"c{i}", step=i)
            repo.tag(f"step-{i}", c.id)
    proc = start_worker("drop-crash", path, point)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -9, (proc.returncode, out, err)
    assert (path / ".tvcs" / JOURNAL).is_file()
    with tv.Repo.open(path) as repo:  # opening completes it, before anything is read
        assert not repo.store.exists(JOURNAL)
        repo.tag("after", "HEAD")
        _tags_on_branch(repo)
        assert sorted(repo.tags()) == ["after", "step-0", "step-2", "step-3", "step-4"]
        assert [c.step for c in repo.log("main")] == [4, 3, 2, 0]
        for i in (0, 2, 3, 4):
            assert_same_value(repo.checkout(f"step-{i}"), st(i))
        assert tv.fsck(repo).ok


def test_a_pending_journal_is_completed_by_any_ref_update(r: tv.Repo) -> None:
    a = r.commit(st(1), "one")
    doc = {"message": "drop", "who": "x", "changes": [[TAGS + "t", None, a.id]]}
    r.store.put(JOURNAL, [json.dumps(doc).encode()])  # a process died after writing it
    assert any("refs-txn" in str(p) for p in tv.fsck(r).problems)  # fsck names it
    r.branch("b", "HEAD")
    assert r.tags() == {"t": a.id} and not r.store.exists(JOURNAL)
    assert [e.message for e in r.refs.reflog(TAGS + "t")] == ["drop"]


def test_corrupt_journal_is_reported_and_blocks_ref_updates(r: tv.Repo) -> None:
    r.commit(st(1), "one")
    r.store.put(JOURNAL, [b"{not json"])
    with pytest.raises(tv.CorruptObjectError, match="refs-txn"):
        r.tag("x", "HEAD")
    assert any("refs-txn" in str(p) for p in tv.fsck(r).problems)


def test_transaction_is_compare_and_swap(r: tv.Repo) -> None:
    from tensorvcs.refs import RefChange

    a = r.commit(st(1), "one")
    b = r.commit(st(2), "two")
    with pytest.raises(tv.RefConflictError, match="refs/heads/main moved"):
        r.refs.transaction(
            [RefChange(TAGS + "t", None, a.id), RefChange(HEADS + "main", a.id, b.id)], "x"
        )
    assert "t" not in r.tags() and not r.store.exists(JOURNAL)


# -- transfers verify what they skip ------------------------------------------------------
def test_push_sends_what_a_damaged_remote_lacks_behind_a_present_commit(
    tmp_path: Path,
) -> None:
    """A remote that has a commit but lost some of its objects (an interrupted gc of an older
    tensorvcs): push does not take the commit's presence as proof; it sends what is missing."""
    remote = tmp_path / "remote"
    tv.Repo.init(remote, **REPO).close()
    with tv.Repo.init(tmp_path / "l", **REPO) as local:
        c = local.commit(st(5), "five")
        dst = open_remote_repo(str(remote))
        transfer(local, dst, [c.id])  # objects and commit sent, ref not moved
        chunk = local.tensors(c.id)[0].objects[0]
        dst.objects.delete(chunk)  # what a killed gc of old deleted
        assert dst.objects.has(c.id) and not dst.objects.has(chunk)
        dst.close()
        res = push(local, str(remote))
        assert res.objects_sent == 1
    with tv.Repo.open(remote) as dst:
        assert_same_value(dst.checkout("main"), st(5))
        assert tv.fsck(dst).ok


def test_enospc_on_the_reflog_leaves_the_branch_where_it_was(
    r: tv.Repo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reflog line is appended before the ref moves (git's order): when the append fails
    (a full disk, injected here at the store's append), the commit raises and the branch has
    not moved, so the error tells the truth; with space again, the next commit works."""
    import errno

    from tensorvcs.store.local import LocalStore

    c1 = r.commit(st(1), "one")
    real = LocalStore.append

    def full(self: LocalStore, name: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(LocalStore, "append", full)
    with pytest.raises(OSError, match="No space left"):
        r.commit(st(2), "two")
    assert r.head() == ("main", c1.id)
    with pytest.raises(OSError):
        r.branch("b", "HEAD")
    assert "b" not in r.branches()
    monkeypatch.setattr(LocalStore, "append", real)
    c3 = r.commit(st(3), "three")
    assert c3.parents == [c1.id] and [e.new for e in r.refs.reflog(HEADS + "main")] == [
        c1.id,
        c3.id,
    ]
    assert tv.fsck(r).ok
