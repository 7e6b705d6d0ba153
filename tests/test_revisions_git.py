"""Revisions as git has them: the same commit graph built in a tensorvcs repository and in a
real git repository (/usr/bin/git), then several hundred revision expressions resolved in
both. Commits are matched by message (ids differ: BLAKE3-256 here, SHA-1 there).

The graph: a root, a side branch merged back, an octopus merge of three parents, tags (one
named like a branch), a branch moved with force, a remote-tracking ref moved twice, commits
made on a detached HEAD and HEAD moved around, so that HEAD, the branches and the remote ref
have reflogs of several entries.

Expressions: every base (HEAD, @, branches, tags, heads/x, tags/x, refs/..., remote refs,
id prefixes of 4/7/12 digits in lower and upper case, full ids, ``<ref>@{N}``, ``@{N}``)
with each of ~20 suffix chains (``~N``, ``^N``, ``^0``, ``^{}``, ``^{commit}`` and
combinations), 200 seeded random chains, and invalid ones (whitespace, malformed suffixes,
bad ref names, ranges, reflog indexes past the end).

Last run (``test_revisions_agree_with_git`` prints the counts; run pytest with ``-s``):
2,781 expressions tried; 2,767 agree with git (1,607 of them resolve to a commit, the other
1,160 fail in both); 14 are deliberate differences: the 13 expressions of ``DELIBERATE``,
each with its reason, one of them also drawn by the random chains.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import tensorvcs as tv
from tensorvcs.format import envelope
from tensorvcs.format.commit import Commit
from tensorvcs.refs import HEAD

KIND = envelope.KIND_COMMIT
GIT = shutil.which("git") or "/usr/bin/git"
pytestmark = pytest.mark.skipif(not Path(GIT).exists(), reason="git is not installed")

# (operation, arguments): applied to both repositories in this order
OPS: list[tuple[str, ...]] = [
    ("commit", "c1"),
    ("commit", "c2"),
    ("branch", "side", "HEAD"),
    ("commit", "c3"),
    ("switch", "side"),
    ("commit", "s1"),
    ("commit", "s2"),
    ("switch", "main"),
    ("merge", "m1", "side"),
    ("tag", "v0", "main~2"),
    ("tag", "v1", "HEAD"),
    ("commit", "c4"),
    ("branch", "feat", "side~1"),
    ("switch", "feat"),
    ("commit", "f1"),
    ("commit", "f2"),
    ("switch", "main"),
    ("merge", "m2", "feat", "side"),  # octopus: c4, f2, s2
    ("detach", "HEAD~1"),
    ("commit", "d1"),
    ("commit", "d2"),
    ("detach", "v0"),
    ("switch", "main"),
    ("branch-force", "side", "feat"),
    ("tag", "side", "v0~1"),  # a tag named like a branch: the tag wins, as in git
    ("branch", "cafe", "v1"),  # a branch named like an id prefix: the ref wins
    ("remote", "origin/main", "main~1"),
    ("remote", "origin/main", "main"),
    ("commit", "c5"),
]
MESSAGES = [op[1] for op in OPS if op[0] in ("commit", "merge")]

# expression -> why tensorvcs answers differently from git (the test checks each one does)
DELIBERATE: dict[str, str] = {
    "@{-1}": "@{-N} (the N-th branch checked out before) is not supported",
    "@{-2}": "@{-N} (the N-th branch checked out before) is not supported",
    "v1@{0}": "tags have reflogs in tensorvcs (gc roots; 'tvcs reflog v1'); git logs no tags",
    "v0@{0}": "tags have reflogs in tensorvcs (gc roots; 'tvcs reflog v0'); git logs no tags",
    "tags/v1@{0}": "tags have reflogs in tensorvcs; git logs no tags",
    "side@{0}": "'side' is a tag and a branch: tensorvcs reads the reflog of the ref the name "
    "resolves to (the tag, which has one); git skips to the branch (tags have no reflog)",
    "side@{1}": "as side@{0}: the tag's reflog has one entry, git reads the branch's",
    "main@{+1}": "git reads the index with strtol (a sign, leading blanks); tensorvcs takes "
    "digits only",
    "main@{ 1}": "git reads the index with strtol (leading blanks); tensorvcs takes digits only",
    "main^{/c1}": "^{/regex} (search by message) is not supported",
    "HEAD^{/m1}": "^{/regex} (search by message) is not supported",
    # git: when the walk after X@{N} fails and the text ends in "}", git reads everything
    # after "@{" as a date ("0}~9^{") and answers the ref's commit at that time; the walk
    # fails in tensorvcs, as it should
    "HEAD@{0}~9^{}": "git re-reads a failed walk after @{N} as a reflog date",
    "HEAD@{1}~1^2~3^{}^0": "git re-reads a failed walk after @{N} as a reflog date",
}

SUFFIXES = [
    "",
    "~",
    "~0",
    "~1",
    "~2",
    "~3",
    "~5",
    "~9",
    "^",
    "^0",
    "^1",
    "^2",
    "^3",
    "^4",
    "^^",
    "^2~1",
    "~1^2",
    "^3^",
    "^{}",
    "^{commit}",
    "~1^{commit}~1",
    "^01",
]

INVALID = [
    "",
    " ",
    " main",
    "main ",
    "\tHEAD",
    "HEAD\n",
    "main~x",
    "main~-1",
    "main^-1",
    "~1",
    "^",
    "^main",
    "main~1x",
    "main..side",
    "main...side",
    "main^{tree}",
    "main^{blob}",
    "main@{x}",
    "main@{-1}",
    "main@{1}@{1}",
    "main@{",
    "main@}",
    "main/",
    "/main",
    "main.lock",
    "ma in",
    "main:x",
    "main?",
    "main*",
    "-main",
    "refs/heads",
    "refs",
    "heads",
    "nope",
    "refs/heads/nope",
    "tags/main",
    "heads/v1",
    "Main",
    "head",
    "abc",
    "ABC",
    "HEAD@{99}",
    "@{99}",
    "main@{99}",
    "origin/main@{9}",
    "nope@{0}",
]


@dataclass
class Side:
    """One of the two repositories: resolve(expr) -> commit message or None (fails)."""

    resolve: Callable[[list[str]], list[str | None]]
    ids: dict[str, str]  # message -> commit id


# -- git -----------------------------------------------------------------------------------
def _git(path: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(path),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    return subprocess.run(
        [GIT, "-C", str(path), *args], env=env, text=True, capture_output=True, check=check
    )


def build_git(path: Path) -> Side:
    path.mkdir()
    _git(path, "init", "-q", "-b", "main")
    _git(path, "config", "core.logAllRefUpdates", "true")
    for op, *args in OPS:
        if op == "commit":
            _git(path, "commit", "-q", "--allow-empty", "-m", args[0])
        elif op == "branch":
            _git(path, "branch", args[0], args[1])
        elif op == "branch-force":
            _git(path, "branch", "-f", args[0], args[1])
        elif op == "switch":
            _git(path, "checkout", "-q", args[0])
        elif op == "detach":
            _git(path, "checkout", "-q", "--detach", args[0])
        elif op == "tag":
            _git(path, "tag", args[0], args[1])
        elif op == "remote":
            sha = _git(path, "rev-parse", "--verify", args[1]).stdout.strip()
            _git(path, "update-ref", "-m", "fetch", "refs/remotes/" + args[0], sha)
        elif op == "merge":
            tree = _git(path, "rev-parse", "HEAD^{tree}").stdout.strip()
            parents = ["HEAD", *args[1:]]
            shas = [_git(path, "rev-parse", "--verify", p).stdout.strip() for p in parents]
            flags = [x for s in shas for x in ("-p", s)]
            sha = _git(path, "commit-tree", tree, *flags, "-m", args[0]).stdout.strip()
            _git(path, "update-ref", "-m", f"merge: {args[0]}", "HEAD", sha)
        else:
            raise AssertionError(op)
    log = _git(path, "log", "--all", "--reflog", "--format=%H %s").stdout.split("\n")
    ids = {line.split(" ", 1)[1]: line.split(" ", 1)[0] for line in log if line}
    by_id = {v: k for k, v in ids.items()}

    def one(expr: str) -> str | None:
        # ^{commit}: a commit-ish is wanted (short prefixes disambiguate to commits, as
        # tensorvcs's do). Not after @{...}: git reads "X@{0}~9^{commit}", whose walk fails,
        # again as X@{<date "0}~9^{commit">}, i.e. X now. A single 40-digit line is a
        # commit, anything else a failure.
        peel = "" if "@{" in expr else "^{commit}"
        res = _git(path, "rev-parse", "--verify", "-q", "--end-of-options", expr + peel,
                   check=False)  # fmt: skip
        out = res.stdout.strip()
        if res.returncode != 0 or not re.fullmatch(r"[0-9a-f]{40}", out):
            return None
        return by_id[out]

    def resolve(exprs: list[str]) -> list[str | None]:
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(one, exprs))

    return Side(resolve, ids)


# -- tensorvcs -----------------------------------------------------------------------------
def merge_commit(repo: tv.Repo, message: str, others: list[str]) -> Commit:
    """A merge commit of HEAD and ``others`` (same state as HEAD), recorded like a commit:
    the current branch (and HEAD's reflog) move."""
    head = repo.resolve(HEAD)
    c = Commit(
        manifest=repo.get_commit(head).manifest,
        parents=[head, *(repo.resolve(o) for o in others)],
        message=message,
        author="t",
    )
    c.id = repo.objects.put_bytes(envelope.KIND_COMMIT, c.to_bytes())
    repo.store.sync()
    ref = repo.commit_ref()
    with repo.refs.locked():
        if ref != HEAD:
            repo.refs.log(HEAD, head, c.id, "t", f"merge: {message}")
        repo.refs.update(ref, c.id, expected=head, message=f"merge: {message}")
    return c


def build_tvcs(path: Path) -> tuple[tv.Repo, Side]:
    repo = tv.Repo.init(path)
    for i, (op, *args) in enumerate(OPS):
        if op == "commit":
            repo.commit({"i": i}, args[0])
        elif op == "branch":
            repo.branch(args[0], args[1])
        elif op == "branch-force":
            repo.branch(args[0], args[1], force=True)
        elif op == "switch":
            repo.switch(args[0])
        elif op == "detach":
            repo.switch(args[0], detach=True)
        elif op == "tag":
            repo.tag(args[0], args[1])
        elif op == "remote":
            repo.refs.update("refs/remotes/" + args[0], repo.resolve(args[1]), message="fetch")
        elif op == "merge":
            merge_commit(repo, args[0], list(args[1:]))
        else:
            raise AssertionError(op)
    ids = {c.message: c.id for c in _all_commits(repo)}
    by_id = {v: k for k, v in ids.items()}

    def one(expr: str) -> str | None:
        try:
            return by_id[repo.resolve(expr)]
        except (tv.RevisionNotFoundError, tv.UsageError):
            return None

    return repo, Side(lambda exprs: [one(e) for e in exprs], ids)


def _all_commits(repo: tv.Repo) -> list[Commit]:
    return [repo.get_commit(o) for o in repo.objects.ids() if repo.objects.kind(o) == KIND]


# -- expressions ---------------------------------------------------------------------------
NAMED_BASES = [
    "HEAD",
    "@",
    "main",
    "feat",
    "cafe",
    "v0",
    "v1",
    "side",  # the tag
    "heads/side",  # the branch
    "refs/heads/side",
    "tags/side",
    "refs/tags/side",
    "heads/main",
    "tags/v1",
    "refs/heads/main",
    "refs/heads/feat",
    "refs/tags/v0",
    "origin/main",
    "remotes/origin/main",
    "refs/remotes/origin/main",
]


def reflog_bases(counts: dict[str, int]) -> list[str]:
    out = []
    for name, n in counts.items():
        out += [f"{name}@{{{k}}}" for k in range(n + 1)]  # one past the end: fails in both
    return out


def id_bases(ids: dict[str, str], full: int) -> dict[str, dict[int, str]]:
    """{message: {length: prefix}} for one side: 4, 7 and 12 digits and the full id (keyed
    0), only prefixes that are unique among that side's commits and are not also a ref's
    name (the branch ``cafe``: a name wins over an id prefix, in both tools, so a random id
    that begins with it resolves to the branch on that side only)."""
    names = {b.lower() for b in NAMED_BASES}
    out: dict[str, dict[int, str]] = {}
    for msg, oid in ids.items():
        forms = {}
        for n in (4, 7, 12, full):
            p = oid[:n]
            if p.lower() in names:
                continue
            if n == full or sum(o.startswith(p) for o in ids.values()) == 1:
                forms[0 if n == full else n] = p
        out[msg] = forms
    return out


def paired_ids(ours: dict[str, dict[int, str]], theirs: dict[str, dict[int, str]], msg: str
               ) -> list[tuple[str, str]]:
    """The prefixes of one commit of the same length on both sides, lower and upper case: a
    length whose prefix is ambiguous on one side only (the ids are random) is left out."""
    out = []
    for n, a in ours[msg].items():
        b = theirs[msg].get(n)
        if b is not None:
            out += [(a, b), (a.upper(), b.upper())]
    return out


def random_chains(rng: random.Random, n: int) -> list[str]:
    steps = ["~", "~1", "~2", "~3", "^", "^1", "^2", "^3", "^0", "^{}"]
    return ["".join(rng.choice(steps) for _ in range(rng.randint(1, 5))) for _ in range(n)]


@pytest.fixture(scope="module")
def sides(tmp_path_factory: pytest.TempPathFactory) -> tuple[tv.Repo, Side, Side]:
    base = tmp_path_factory.mktemp("revs")
    repo, ours = build_tvcs(base / "tvcs")
    theirs = build_git(base / "git")
    assert set(ours.ids) == set(theirs.ids) == set(MESSAGES)
    return repo, ours, theirs


def test_reflogs_have_the_same_lengths(sides: tuple[tv.Repo, Side, Side]) -> None:
    repo, _, _ = sides
    git_dir = repo.root.parent / "git" / ".git" / "logs"
    for ref in ("HEAD", "refs/heads/main", "refs/heads/side", "refs/heads/feat",
                "refs/remotes/origin/main"):  # fmt: skip
        ours = len(repo.refs.reflog(ref))
        theirs = len((git_dir / ref).read_text().splitlines())
        assert ours == theirs, ref


def test_revisions_agree_with_git(sides: tuple[tv.Repo, Side, Side]) -> None:
    repo, ours, theirs = sides
    counts = {
        "HEAD": len(repo.refs.reflog("HEAD")),
        "main": len(repo.refs.reflog("refs/heads/main")),
        "feat": len(repo.refs.reflog("refs/heads/feat")),
        "origin/main": len(repo.refs.reflog("refs/remotes/origin/main")),
        "": len(repo.refs.reflog("refs/heads/main")),  # @{N}: the current branch, main
        "@": len(repo.refs.reflog("HEAD")),
        "refs/heads/main": 2,
        "heads/feat": 2,
    }
    named = NAMED_BASES + reflog_bases(counts)
    exprs_ours: list[str] = []
    exprs_theirs: list[str] = []
    for b in named:
        for s in SUFFIXES:
            exprs_ours.append(b + s)
            exprs_theirs.append(b + s)
    rng = random.Random(12)
    for chain in random_chains(rng, 200):
        b = rng.choice(["HEAD", "main", "v1", "feat", "@", "HEAD@{1}", "main@{2}"])
        exprs_ours.append(b + chain)
        exprs_theirs.append(b + chain)
    for e in INVALID + list(DELIBERATE):
        exprs_ours.append(e)
        exprs_theirs.append(e)
    # id-based expressions differ in spelling (the ids differ) but not in meaning
    ours_ids, theirs_ids = id_bases(ours.ids, 64), id_bases(theirs.ids, 40)
    for msg in MESSAGES:
        for a, b in paired_ids(ours_ids, theirs_ids, msg):
            for s in ("", "~1", "^2", "^{commit}", "@{0}"):
                exprs_ours.append(a + s)
                exprs_theirs.append(b + s)
    got_ours = ours.resolve(exprs_ours)
    got_theirs = theirs.resolve(exprs_theirs)
    agree, deliberate, wrong = 0, 0, []
    for e, a, b in zip(exprs_ours, got_ours, got_theirs, strict=True):
        if e in DELIBERATE:
            assert a != b, f"{e!r}: expected a deliberate difference, both gave {a}"
            deliberate += 1
        elif a == b:
            agree += 1
        else:
            wrong.append(f"{e!r}: tensorvcs {a}, git {b}")
    assert not wrong, f"{len(wrong)} disagreement(s):\n" + "\n".join(wrong[:40])
    resolved = sum(a is not None for a in got_ours)
    print(
        f"\n{len(exprs_ours)} expressions tried; {agree} agree with git ({resolved} resolve "
        f"to a commit in tensorvcs); {deliberate} deliberate differences"
    )
    assert len(exprs_ours) == agree + deliberate
    assert {e for e in exprs_ours if e in DELIBERATE} == set(DELIBERATE)
    assert len(exprs_ours) >= 1000 and resolved >= 400  # a few hundred of each kind


# -- Commit objects and names ---------------------------------------------------------------
def test_commit_objects_are_revisions(tmp_path: Path) -> None:
    import torch

    repo = tv.Repo.init(tmp_path)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    first = repo.commit({"model": net.state_dict()}, "first")
    w1 = net.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1)
    second = repo.commit({"model": net.state_dict()}, "second")
    # the Commit objects commit() returns, and those show()/log() return, name their commit
    for c in (first, repo.show("HEAD~1"), repo.log()[1]):
        assert repo.resolve(c) == first.id
        got = repo.checkout(c)["model"]
        assert torch.equal(got["weight"], w1)
        other = torch.nn.Linear(3, 2)
        repo.load_into(other, c, key="model")
        assert torch.equal(other.weight, w1)
        assert repo.show(c).id == first.id
        assert [x.id for x in repo.log(c)] == [first.id]
        assert [t.key for t in repo.tensors(c)] == ["model/weight", "model/bias"]
    assert repo.branch("b", first) == first.id
    assert repo.tag("t", second) == second.id
    repo.switch(first)  # a Commit detaches HEAD at it
    assert repo.head() == (None, first.id)
    assert repo.refs.reflog("HEAD")[-1].message == f"detach at {first.id[:12]}"
    repo.switch("main")
    mapping = tv.drop(repo, [first])
    assert mapping[first.id] is None and set(mapping) == {first.id, second.id}
    with pytest.raises(tv.UsageError, match="never stored"):
        repo.resolve(Commit(manifest=first.manifest, parents=[]))
    elsewhere = tv.Repo.init(tmp_path / "other").commit({"x": 1}, "elsewhere")
    with pytest.raises(tv.RevisionNotFoundError, match=f"no object {elsewhere.id[:12]}"):
        repo.checkout(elsewhere)
    with pytest.raises(tv.UsageError, match="a revision is a string or a Commit, not int"):
        repo.resolve(3)  # type: ignore[arg-type]


def test_manager_restore_takes_a_commit(tmp_path: Path) -> None:
    import torch

    repo = tv.Repo.init(tmp_path)
    net = torch.nn.Linear(2, 2)
    mgr = tv.CheckpointManager(repo, async_commit=False, gc_every=None)
    c = mgr.save({"model": net}, step=3).result()
    mgr.save({"model": torch.nn.Linear(2, 2)}, step=4).result()
    other = torch.nn.Linear(2, 2)
    mgr.restore(other, ref=c)
    assert torch.equal(other.weight, net.weight) and mgr.step == 3
    mgr.close()


@pytest.mark.parametrize(
    ("what", "name", "words"),
    [
        ("branch", "HEAD", "invalid branch name 'HEAD' (HEAD names the current commit)"),
        ("branch", "a" * 64, "64 hex digits always name the object id"),
        ("branch", "A1" * 32, "64 hex digits always name the object id"),
        ("tag", "f" * 64, "invalid tag name"),
        ("branch", " x", "invalid branch name"),
        ("tag", "x@{1}", "invalid tag name"),
    ],
)
def test_names_git_refuses_are_refused(tmp_path: Path, what: str, name: str, words: str) -> None:
    repo = tv.Repo.init(tmp_path)
    repo.commit({"x": 1}, "one")
    make = repo.branch if what == "branch" else repo.tag
    with pytest.raises(tv.UsageError) as e:
        make(name)
    assert words in str(e.value)
    assert repo.branches() == {"main": repo.resolve("HEAD")} and repo.tags() == {}


def test_full_ids_prefixes_and_spellings(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path)
    one = repo.commit({"x": 1}, "one")
    two = repo.commit({"x": 2}, "two")
    repo.branch("a" * 63, one)  # 63 digits: a name (it could only be a prefix otherwise)
    repo.tag("v1", one)
    assert repo.resolve(two.id.upper()) == two.id
    assert repo.resolve(two.id[:9].upper()) == two.id
    assert repo.resolve("a" * 63) == one.id
    for spelling in ("heads/main", "refs/heads/main", "main", "@", "HEAD", "main@{0}", "@{0}"):
        assert repo.resolve(spelling) == two.id, spelling
    for spelling in ("tags/v1", "refs/tags/v1", "v1", "main@{1}", "HEAD@{1}", "@~1", "@{0}^"):
        assert repo.resolve(spelling) == one.id, spelling
    for bad in (" HEAD", "HEAD ", "\tmain", "main\n"):
        with pytest.raises(tv.UsageError, match="leading or trailing whitespace"):
            repo.resolve(bad)
    with pytest.raises(tv.RevisionNotFoundError, match=r"the reflog of main has only 2 entries"):
        repo.resolve("main@{2}")
    with pytest.raises(tv.RevisionNotFoundError) as e:
        repo.resolve("HEAD~5")
    assert str(e.value) == (
        "revision HEAD~5: only 2 commits in the first-parent history of HEAD (HEAD~1 has no parent)"
    )


def test_cli_takes_git_revisions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from tensorvcs.cli import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TVCS_REPO", raising=False)
    repo = tv.Repo.init(tmp_path)
    one = repo.commit({"x": 1}, "one")
    repo.commit({"x": 2}, "two")
    runner = CliRunner()
    res = runner.invoke(cli, ["log", "--oneline", "HEAD@{1}"])
    assert res.exit_code == 0 and res.stdout.splitlines() == [f"{one.id[:12]}  one"]
    res = runner.invoke(cli, ["branch", "HEAD"])
    assert res.exit_code == 2
    assert res.stderr == (
        "tvcs: error: invalid branch name 'HEAD' (HEAD names the current commit)\n"
    )
    res = runner.invoke(cli, ["show", " main"])
    assert res.exit_code == 2
    assert res.stderr == (
        "tvcs: error: malformed revision ' main': leading or trailing whitespace\n"
    )
