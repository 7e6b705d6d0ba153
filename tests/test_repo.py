"""Repository lifecycle, commits and their fields, history, revisions, branches, tags, refs."""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tensorvcs as tv
from tensorvcs.refs import ANY

STATE = {"w": torch.arange(4.0)}


def make_commits(repo: tv.Repo, n: int, prefix: str = "c") -> list[tv.Commit]:
    return [
        repo.commit({"w": torch.full((4,), float(i))}, f"{prefix}{i}", step=i) for i in range(n)
    ]


def edit_config(repo: tv.Repo, **changes: Any) -> None:
    path = repo.path / "config.json"
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


# -- init / open / discover -------------------------------------------------------------------


def test_init_creates_layout_and_unborn_main(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path)
    assert repo.root == tmp_path.resolve()
    assert repo.path == tmp_path.resolve() / ".tvcs"
    assert (repo.path / "config.json").is_file()
    assert (repo.path / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert repo.head() == ("main", None)
    assert repo.branches() == {} and repo.tags() == {} and repo.log() == []
    with pytest.raises(tv.RevisionNotFoundError, match="unborn"):
        repo.resolve("HEAD")


def test_init_options_are_kept(tmp_path: Path) -> None:
    tv.Repo.init(tmp_path, chunk_size=8192, pack_threshold=100, branch="trunk")
    repo = tv.Repo.open(tmp_path)
    assert (repo.config.chunk_size, repo.config.pack_threshold) == (8192, 100)
    assert repo.head() == ("trunk", None)
    c = repo.commit(STATE)
    assert repo.branches() == {"trunk": c.id}


@pytest.mark.parametrize(
    "kw", [{"chunk_size": 1000}, {"chunk_size": 4097}, {"pack_threshold": -1}, {"branch": "a..b"}]
)
def test_init_refuses_bad_options(tmp_path: Path, kw: dict[str, Any]) -> None:
    with pytest.raises(tv.UsageError):
        tv.Repo.init(tmp_path, **kw)
    assert not (tmp_path / ".tvcs" / "config.json").exists()


def test_init_twice_is_refused(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path)
    c = repo.commit(STATE)
    with pytest.raises(tv.UsageError, match="already exists"):
        tv.Repo.init(tmp_path)
    assert tv.Repo.open(tmp_path).resolve("main") == c.id


def test_open_repo_root_or_its_tvcs_folder(tmp_path: Path) -> None:
    c = tv.Repo.init(tmp_path).commit(STATE)
    assert tv.Repo.open(tmp_path).resolve() == c.id
    assert tv.Repo.open(tmp_path / ".tvcs").resolve() == c.id
    assert tv.Repo.open(tmp_path / ".tvcs").root == tmp_path.resolve()


def test_open_outside_a_repo(tmp_path: Path) -> None:
    with pytest.raises(tv.RepoNotFoundError):
        tv.Repo.open(tmp_path)
    (tmp_path / ".tvcs").mkdir()  # a folder without config.json is not a repository
    with pytest.raises(tv.RepoNotFoundError):
        tv.Repo.open(tmp_path)


def test_discover_walks_up(tmp_path: Path) -> None:
    root = tmp_path / "project"
    tv.Repo.init(root)
    deep = root / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert tv.Repo.discover(deep).root == root.resolve()
    assert tv.Repo.discover(root).root == root.resolve()
    assert tv.Repo.discover(root / ".tvcs").root == root.resolve()


def test_discover_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tv.Repo.init(tmp_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    assert tv.Repo.discover().root == tmp_path.resolve()


def test_discover_outside_a_repo(tmp_path: Path) -> None:
    tv.Repo.init(tmp_path / "repo")
    outside = tmp_path / "elsewhere" / "x"
    outside.mkdir(parents=True)
    with pytest.raises(tv.RepoNotFoundError, match="not inside"):
        tv.Repo.discover(outside)


# -- the format-version gate --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"format_version": 99}, "99"),
        ({"format_version": 0}, "0"),
        ({"format_version": "1"}, "format version"),
        ({"required_features": ["x"]}, "x"),
        ({"required_features": ["zz-new", "aa-new"]}, "aa-new, zz-new"),
        ({"format": "other"}, "not a tensorvcs config"),
        ({"chunk_size": 100}, "chunk_size"),
    ],
)
def test_config_gate(repo: tv.Repo, changes: dict[str, Any], words: str) -> None:
    edit_config(repo, **changes)
    with pytest.raises(tv.FormatVersionError) as ei:
        tv.Repo.open(repo.root)
    assert words in str(ei.value)
    with pytest.raises(tv.FormatVersionError):
        tv.Repo.discover(repo.root)


def test_config_that_is_not_json(repo: tv.Repo) -> None:
    (repo.path / "config.json").write_text("format_version = 1\n")
    with pytest.raises(tv.FormatVersionError, match="not a tensorvcs config"):
        tv.Repo.open(repo.root)


def test_unknown_optional_features_are_fine(repo: tv.Repo) -> None:
    edit_config(repo, optional_features=["future-thing"], settings={"x": 1})
    opened = tv.Repo.open(repo.root)
    assert opened.config.optional_features == ["future-thing"]
    assert opened.config.settings == {"x": 1}


# -- commits ----------------------------------------------------------------------------------


TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def test_commit_fields(repo: tv.Repo) -> None:
    c1 = repo.commit(STATE, "first\n\nbody", author="Ada <ada@example.org>")
    c2 = repo.commit(
        STATE,
        "second",
        step=1200,
        metrics={
            "loss": torch.tensor(0.25),
            "acc": float("nan"),
            "lr": np.float32(0.5),
            "tokens": 10**12,
            "done": False,
            "none": None,
            "inf": float("-inf"),
        },
        metadata={"run": "r1", "cfg": {"lr": [1e-3, 1e-4], "seed": 7}, "tags": ("a", "b")},
    )
    fresh = tv.Repo.open(repo.root)
    s1, s2 = fresh.show(c1.id), fresh.show("HEAD")
    assert (s1.id, s2.id) == (c1.id, c2.id)
    assert s1.parents == [] and s2.parents == [c1.id]
    assert s1.message == "first\n\nbody" and s2.message == "second"
    assert s1.author == "Ada <ada@example.org>"
    assert re.fullmatch(r".+@.+", s2.author)  # default author: user@host
    assert s1.step is None and s2.step == 1200
    assert s1.manifest == s2.manifest  # same state, same manifest
    for c in (s1, s2):
        assert TIMESTAMP.match(c.timestamp)
        assert c.datetime.tzinfo == dt.timezone.utc
        assert abs(dt.datetime.now(dt.timezone.utc) - c.datetime) < dt.timedelta(hours=1)
    m = s2.metrics
    assert m["loss"] == 0.25 and type(m["loss"]) is float
    assert math.isnan(m["acc"])
    assert m["lr"] == 0.5 and type(m["lr"]) is float
    assert m["tokens"] == 10**12 and type(m["tokens"]) is int
    assert m["done"] is False and m["none"] is None and m["inf"] == -math.inf
    assert s2.metadata == {"run": "r1", "cfg": {"lr": [1e-3, 1e-4], "seed": 7}, "tags": ("a", "b")}
    assert s1.metrics == {} and s1.metadata == {}


@pytest.mark.parametrize(
    ("kw", "error"),
    [
        ({"step": 1.5}, tv.UsageError),
        ({"step": True}, tv.UsageError),
        ({"step": "3"}, tv.UsageError),
        ({"metrics": {"loss": torch.ones(3)}}, tv.UnsupportedValueError),
        ({"metrics": {"loss": "low"}}, tv.UnsupportedValueError),
        ({"metadata": {"obj": object()}}, tv.UnsupportedValueError),
    ],
)
def test_commit_refuses_bad_fields(repo: tv.Repo, kw: dict[str, Any], error: type) -> None:
    with pytest.raises(error):
        repo.commit(STATE, **kw)
    assert repo.log() == []


def test_metadata_error_names_the_key_path(repo: tv.Repo) -> None:
    with pytest.raises(tv.UnsupportedValueError) as ei:
        repo.commit(STATE, metadata={"cfg": {"fn": object()}})
    assert ei.value.key_path == "<metadata>/cfg/fn"


def test_commit_ids_are_content_addresses(repo: tv.Repo) -> None:
    c = repo.commit(STATE, "m")
    data = repo.objects.read_bytes(c.id)
    assert tv.Commit.from_bytes(data, c.id).manifest == c.manifest
    assert (repo.path / "objects" / c.id[:2] / c.id[2:]).is_file()


# -- history ----------------------------------------------------------------------------------


def test_log_order_and_limit(repo: tv.Repo) -> None:
    cs = make_commits(repo, 5)
    ids = [c.id for c in reversed(cs)]
    assert [c.id for c in repo.log()] == ids
    assert [c.id for c in repo.log(n=2)] == ids[:2]
    assert [c.id for c in repo.log(n=0)] == []
    assert [c.id for c in repo.log(n=99)] == ids
    assert [c.id for c in repo.log("HEAD~2")] == ids[2:]
    assert [c.message for c in tv.Repo.open(repo.root).log()] == ["c4", "c3", "c2", "c1", "c0"]


def test_log_of_unknown_revision(repo: tv.Repo) -> None:
    make_commits(repo, 1)
    with pytest.raises(tv.RevisionNotFoundError):
        repo.log("nope")


def test_show(repo: tv.Repo) -> None:
    cs = make_commits(repo, 3)
    assert repo.show().id == cs[2].id
    assert repo.show("HEAD~1").message == "c1"
    assert repo.show(cs[0].id[:10]).step == 0


# -- revisions --------------------------------------------------------------------------------


def test_resolve_revisions(repo: tv.Repo) -> None:
    cs = make_commits(repo, 5)
    ids = [c.id for c in cs]
    repo.tag("v0", ids[0])
    repo.branch("dev", "HEAD~1")
    cases = {
        "HEAD": 4,
        "@": 4,
        "main": 4,
        "refs/heads/main": 4,
        "HEAD~": 3,
        "HEAD~3": 1,
        "HEAD~4": 0,
        "@~2": 2,
        "main^": 3,
        "main^1": 3,
        "main^^": 2,
        "HEAD~1~1": 2,
        "HEAD^~2": 1,
        "main~0": 4,
        "main^0": 4,
        "dev": 3,
        "dev~1": 2,
        "v0": 0,
        "refs/tags/v0": 0,
        ids[2]: 2,
        ids[2][:4]: 2,
        ids[2][:12]: 2,
        f"{ids[3][:8]}~2": 1,
    }
    for rev, i in cases.items():
        assert repo.resolve(rev) == ids[i], rev


@pytest.mark.parametrize(
    ("rev", "words"),
    [
        ("HEAD~5", "no parent"),
        ("HEAD~50", "no parent"),
        ("main^2", "no parent 2"),
        ("nope", "unknown revision"),
        ("refs/heads/nope", "unknown revision"),
        ("abc", "unknown revision"),  # too short for an id prefix
        ("0000000000", "unknown revision"),
        ("0" * 64, "unknown revision"),
    ],
)
def test_unresolvable_revisions(repo: tv.Repo, rev: str, words: str) -> None:
    make_commits(repo, 5)
    with pytest.raises(tv.RevisionNotFoundError, match=words):
        repo.resolve(rev)


@pytest.mark.parametrize("rev", ["", "  ", "HEAD~x", "main^-1", "~1", "^", "HEAD~1x", "main~1/x"])
def test_malformed_revisions(repo: tv.Repo, rev: str) -> None:
    make_commits(repo, 2)
    with pytest.raises(tv.UsageError, match="malformed revision"):
        repo.resolve(rev)


@pytest.mark.parametrize("rev", ["HEAD@", "ABCDEF12", "main/x"])
def test_revisions_that_name_nothing(repo: tv.Repo, rev: str) -> None:
    make_commits(repo, 2)
    with pytest.raises(tv.RevisionNotFoundError):
        repo.resolve(rev)


def test_id_prefix_of_a_non_commit_object_is_not_a_revision(repo: tv.Repo) -> None:
    c = make_commits(repo, 1)[0]
    with pytest.raises(tv.RevisionNotFoundError):
        repo.resolve(c.manifest[:16])


def test_ambiguous_id_prefix(repo: tv.Repo) -> None:
    c = make_commits(repo, 1)[0]
    # a second commit object whose id shares the first 6 hex digits (a copied file: the prefix
    # lookup reads only names and envelope kinds, so this stands in for a real collision)
    folder = repo.path / "objects" / c.id[:2]
    twin = c.id[:6] + ("0" if c.id[6] != "0" else "1") + c.id[7:]
    shutil.copy(folder / c.id[2:], folder / twin[2:])
    with pytest.raises(tv.RevisionNotFoundError, match="ambiguous") as ei:
        repo.resolve(c.id[:6])
    assert c.id[:12] in str(ei.value) and twin[:12] in str(ei.value)
    assert repo.resolve(c.id[:7]) == c.id
    assert repo.resolve(c.id) == c.id


def test_tag_shadows_branch_of_the_same_name(repo: tv.Repo) -> None:
    cs = make_commits(repo, 2)
    repo.branch("x", cs[1].id)
    repo.tag("x", cs[0].id)
    assert repo.resolve("x") == cs[0].id
    assert repo.resolve("refs/heads/x") == cs[1].id


# -- branches and tags ------------------------------------------------------------------------


def test_branches(repo: tv.Repo) -> None:
    cs = make_commits(repo, 3)
    assert repo.branch("dev") == cs[2].id
    assert repo.branch("feature/x", "HEAD~2") == cs[0].id
    assert repo.branches() == {"main": cs[2].id, "dev": cs[2].id, "feature/x": cs[0].id}
    with pytest.raises(tv.UsageError, match="already exists"):
        repo.branch("dev", "HEAD~1")
    assert repo.branches()["dev"] == cs[2].id
    assert repo.branch("dev", "HEAD~1", force=True) == cs[1].id
    assert repo.branches()["dev"] == cs[1].id
    assert repo.delete_branch("dev") == cs[1].id
    assert "dev" not in repo.branches()
    with pytest.raises(tv.NotFoundError):
        repo.delete_branch("dev")
    with pytest.raises(tv.UsageError, match="HEAD is on it"):
        repo.delete_branch("main")
    with pytest.raises(tv.RevisionNotFoundError):
        repo.branch("new", "nope")
    assert "new" not in repo.branches()


def test_branch_on_unborn_head_is_refused(repo: tv.Repo) -> None:
    with pytest.raises(tv.RevisionNotFoundError):
        repo.branch("dev")


def test_tags(repo: tv.Repo) -> None:
    cs = make_commits(repo, 3)
    assert repo.tag("v1") == cs[2].id
    assert repo.tag("v0", cs[0]) == cs[0].id
    assert repo.tag("rel/0.1", "HEAD~1") == cs[1].id
    assert repo.tags() == {"v1": cs[2].id, "v0": cs[0].id, "rel/0.1": cs[1].id}
    with pytest.raises(tv.UsageError, match="already exists"):
        repo.tag("v1", "HEAD~2")
    assert repo.tag("v1", "HEAD~2", force=True) == cs[0].id
    assert repo.delete_tag("v1") == cs[0].id
    assert "v1" not in repo.tags()
    with pytest.raises(tv.NotFoundError):
        repo.delete_tag("v1")
    assert repo.branches() == {"main": cs[2].id}


BAD_NAMES = [
    "",
    "a..b",
    "-x",
    ".x",
    "x.",
    "x/",
    "/x",
    "a//b",
    "x.lock",
    "a/b.lock/c",
    "a b",
    "a~1",
    "a^",
    "a:b",
    "a?",
    "a*",
    "a[b",
    "a\\b",
    "a@{1}",
    "@",
    "a\x00b",
    "a\tb",
    "a/.b",
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_invalid_ref_names(repo: tv.Repo, name: str) -> None:
    make_commits(repo, 1)
    with pytest.raises(tv.UsageError):
        repo.branch(name)
    with pytest.raises(tv.UsageError):
        repo.tag(name)
    with pytest.raises(tv.UsageError):
        repo.commit(STATE, branch=name)
    assert list(repo.branches()) == ["main"] and repo.tags() == {}


@pytest.mark.parametrize("name", ["dev", "feature/x-1", "v1.0", "a@b", "UPPER", "ünï"])
def test_valid_ref_names(repo: tv.Repo, name: str) -> None:
    c = make_commits(repo, 1)[0]
    assert repo.branch(name) == c.id
    assert repo.tag(name) == c.id
    assert repo.resolve(name) == c.id


def test_ref_names_that_clash_as_folders(repo: tv.Repo) -> None:
    """As in git, "a" and "a/b" cannot both be refs; a clash is a UsageError, not an OSError."""
    c = make_commits(repo, 1)[0]
    with pytest.raises(tv.UsageError, match="conflicts with the ref refs/heads/main"):
        repo.branch("main/x")
    with pytest.raises(tv.UsageError, match="conflicts"):
        repo.commit(STATE, branch="main/y")
    repo.branch("a/b")
    for make in (lambda: repo.branch("a"), lambda: repo.branch("a", force=True)):
        with pytest.raises(tv.UsageError, match="conflicts with the ref refs/heads/a/b"):
            make()
    with pytest.raises(tv.RevisionNotFoundError):
        repo.resolve("a")  # a folder of branches is not a branch
    with pytest.raises(tv.RevisionNotFoundError):
        repo.switch("a")
    assert repo.head() == ("main", c.id)
    with pytest.raises(tv.NotFoundError):
        repo.delete_branch("a")
    assert repo.tag("main/x") == c.id  # tags and branches are separate namespaces
    # reflogs outlive deleted refs (gc can keep what they name), so their names stay taken
    repo.delete_branch("a/b")
    with pytest.raises(tv.UsageError, match="reflog"):
        repo.branch("a")
    assert repo.branches() == {"main": c.id}
    assert repo.tags() == {"main/x": c.id}


# -- HEAD, switching, committing to other branches --------------------------------------------


def test_detached_head_commits_move_head_only(repo: tv.Repo) -> None:
    cs = make_commits(repo, 3)
    repo.switch(cs[0].id, detach=True)
    assert repo.head() == (None, cs[0].id)
    c = repo.commit(STATE, "detached")
    assert c.parents == [cs[0].id]
    assert repo.head() == (None, c.id)
    assert repo.branches() == {"main": cs[2].id}
    assert (repo.path / "HEAD").read_text().strip() == c.id
    repo.switch("main")
    assert repo.head() == ("main", cs[2].id)


def test_switch_detaches_on_a_revision(repo: tv.Repo) -> None:
    cs = make_commits(repo, 2)
    repo.switch("HEAD~1")
    assert repo.head() == (None, cs[0].id)
    repo.switch("main", detach=True)
    assert repo.head() == (None, cs[1].id)
    with pytest.raises(tv.RevisionNotFoundError):
        repo.switch("nope")
    assert repo.head() == (None, cs[1].id)


def test_switch_between_branches(repo: tv.Repo) -> None:
    cs = make_commits(repo, 2)
    repo.branch("dev", "HEAD~1")
    repo.switch("dev")
    assert repo.head() == ("dev", cs[0].id)
    c = repo.commit(STATE, "on dev")
    assert c.parents == [cs[0].id]
    assert repo.branches() == {"main": cs[1].id, "dev": c.id}
    assert repo.checkout()["w"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_commit_to_another_branch_leaves_head(repo: tv.Repo) -> None:
    cs = make_commits(repo, 2)
    x1 = repo.commit({"w": torch.zeros(2)}, "x1", branch="x")
    assert x1.parents == [cs[1].id]  # a new branch starts at HEAD
    assert repo.head() == ("main", cs[1].id)
    assert repo.branches() == {"main": cs[1].id, "x": x1.id}
    x2 = repo.commit({"w": torch.ones(2)}, "x2", branch="x")
    assert x2.parents == [x1.id]
    assert repo.head() == ("main", cs[1].id)
    assert repo.checkout("x")["w"].tolist() == [1.0, 1.0]
    assert repo.checkout()["w"].tolist() == [1.0, 1.0, 1.0, 1.0]
    m = repo.commit(STATE, "explicit main", branch="main")
    assert m.parents == [cs[1].id] and repo.head() == ("main", m.id)


def test_first_commit_to_a_branch_in_an_empty_repo(repo: tv.Repo) -> None:
    c = repo.commit(STATE, "x", branch="x")
    assert c.parents == []
    assert repo.branches() == {"x": c.id}
    assert repo.head() == ("main", None)


# -- reflogs and compare-and-swap -------------------------------------------------------------


def test_reflogs(repo: tv.Repo) -> None:
    c1 = repo.commit(STATE, "one\nmore lines")
    c2 = repo.commit(STATE, "two")
    log = repo.refs.reflog("refs/heads/main")
    assert [(e.old, e.new) for e in log] == [(None, c1.id), (c1.id, c2.id)]
    assert log[0].message == "commit (initial): one"
    assert log[1].message == "commit: two"
    assert all(TIMESTAMP.match(e.time) and e.who for e in log)
    head_log = repo.refs.reflog("HEAD")
    assert [(e.old, e.new) for e in head_log] == [(None, c1.id), (c1.id, c2.id)]

    repo.branch("dev", "HEAD~1")
    repo.tag("v1")
    assert [(e.old, e.new) for e in repo.refs.reflog("refs/heads/dev")] == [(None, c1.id)]
    assert [(e.old, e.new) for e in repo.refs.reflog("refs/tags/v1")] == [(None, c2.id)]
    repo.delete_branch("dev")
    assert [(e.old, e.new) for e in repo.refs.reflog("refs/heads/dev")][-1] == (c1.id, None)
    repo.switch(c1.id, detach=True)
    assert (repo.refs.reflog("HEAD")[-1].old, repo.refs.reflog("HEAD")[-1].new) == (c2.id, c1.id)
    assert repo.refs.reflog("refs/heads/nothing") == []


def test_reflog_skips_a_torn_last_line(repo: tv.Repo) -> None:
    c1 = repo.commit(STATE, "one")
    with open(repo.path / "logs" / "refs" / "heads" / "main", "ab") as f:
        f.write(b'{"old": null, "new": "ab')
    assert [e.new for e in repo.refs.reflog("refs/heads/main")] == [c1.id]


def test_ref_update_compare_and_swap(repo: tv.Repo) -> None:
    c1, c2, c3 = make_commits(repo, 3)
    refs = repo.refs
    with pytest.raises(tv.RefConflictError, match="moved"):
        refs.update("refs/heads/main", c1.id, expected=c2.id)
    with pytest.raises(tv.RefConflictError):
        refs.update("refs/heads/main", c1.id, expected=None)
    assert refs.read("refs/heads/main") == c3.id
    refs.update("refs/heads/main", c1.id, expected=c3.id, message="reset")
    assert refs.read("refs/heads/main") == c1.id
    assert refs.reflog("refs/heads/main")[-1].message == "reset"
    refs.update("refs/heads/new", c2.id, expected=None)
    with pytest.raises(tv.RefConflictError):
        refs.update("refs/heads/other", c2.id, expected=c1.id)
    assert refs.read("refs/heads/other") is None
    refs.update("refs/heads/new", c3.id, expected=ANY)
    assert repo.branches() == {"main": c1.id, "new": c3.id}
    with pytest.raises(tv.RefConflictError):
        refs.delete("refs/heads/new", expected=c1.id)
    assert refs.delete("refs/heads/new", expected=c3.id) == c3.id
    with pytest.raises(tv.UsageError):
        refs.update("refs/heads/main", "not-an-id")
    with pytest.raises(tv.UsageError, match="symbolic"):
        refs.update("HEAD", c2.id)


def test_commit_notices_a_moved_branch(repo: tv.Repo) -> None:
    """A commit's parent is the branch tip read under the refs lock, never a stale one."""
    c1, c2 = make_commits(repo, 2)
    other = tv.Repo.open(repo.root)
    other.refs.update("refs/heads/main", c1.id, expected=c2.id)
    c3 = repo.commit(STATE, "after reset")
    assert c3.parents == [c1.id]
    assert repo.resolve("main") == c3.id


def test_tensor_changes_live_in_the_commit_not_the_manifest(tmp_path: Path) -> None:
    from tensorvcs.errors import CorruptObjectError
    from tensorvcs.format.commit import Commit

    repo = tv.Repo.init(tmp_path)
    g = torch.Generator().manual_seed(3)
    a = {"w": torch.randn(300, 700, generator=g), "b": torch.randn(7, generator=g)}
    c1 = repo.commit(a, "one")
    b = {"w": a["w"].clone(), "b": a["b"] + 0.5}
    b["w"][5, :3] += 1.0
    c2 = repo.commit(b, "two")
    c3 = repo.commit(a, "three: the first state again")
    assert c1.changes == {}
    assert set(c2.changes) == {"w", "b"}
    want = float((b["w"].double() - a["w"].double()).norm())
    assert c2.changes["w"] == pytest.approx(want, rel=1e-6)  # float32 sums (docs/format.md)
    want_b = float((b["b"].double() - a["b"].double()).norm())
    assert c2.changes["b"] == pytest.approx(want_b, rel=1e-6)
    assert c3.manifest == c1.manifest  # same state, same manifest, whatever its parent
    stored = repo.get_commit(c2.id)
    assert stored.changes == c2.changes
    info = {t.key: t.stats for t in repo.tensors(c2.id)}
    assert info["w"] is not None and info["w"].delta_norm == c2.changes["w"]
    first = {t.key: t.stats for t in repo.tensors(c1.id)}
    assert first["w"] is not None and first["w"].delta_norm is None  # no parent
    again = repo.commit(a, "four: unchanged")
    assert again.changes == {}
    assert {t.key: t.stats.delta_norm for t in repo.tensors(again.id) if t.stats} == {
        "w": 0.0, "b": 0.0
    }
    doc = stored.to_bytes().replace(b'"changes":{', b'"changes":{"x":"big",')
    with pytest.raises(CorruptObjectError, match="bad 'changes' field"):
        Commit.from_bytes(doc, "0" * 64)
    repo.close()
