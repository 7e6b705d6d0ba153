"""`tvcs log --graph` and `--all` (issue 12 item 4).

The drawing is read back into edges (``read_graph``, written from the drawing's rules in
tensorvcs/cli/graph.py, not from its code): every commit's line must lead to exactly its
parents, and to the bottom of the drawing when a parent is not shown. The order is checked
against real git: the same commit graph (branches, merges of two and three parents, tags, a
detached HEAD) is built in a tensorvcs repository and in a git repository with the same commit
dates, and `tvcs log --graph --all` must list the commits in the order `git log --graph --all`
does (commits matched by message; ids differ); for simple shapes the drawing is git's, line for
line. A fixed graph, hypothesis-drawn ones through both tools, and random graphs drawn by the
renderer directly.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.cli.graph import Graph, topo_order
from tensorvcs.format import envelope
from tensorvcs.format.commit import Commit

from .clihelp import Tvcs

GIT = shutil.which("git") or "/usr/bin/git"
TVCS = Path(sys.executable).parent / "tvcs"
pytestmark = pytest.mark.skipif(not Path(GIT).exists(), reason="git is not installed")
EPOCH = 1_767_225_600  # 2026-01-01T00:00:00Z; commit k is dated EPOCH + 10 k seconds

# ops: ("commit", msg) | ("merge", msg, other...) | ("branch", name) (created at HEAD, and
# switched to) | ("switch", name) | ("detach", rev) | ("tag", name)
FIXED: list[tuple[str, ...]] = [
    ("commit", "c0"),
    ("commit", "c1"),
    ("branch", "side"),
    ("commit", "s1"),
    ("commit", "s2"),
    ("switch", "main"),
    ("commit", "c2"),
    ("tag", "v1"),
    ("branch", "feat"),
    ("commit", "f1"),
    ("switch", "side"),
    ("commit", "s3"),
    ("switch", "main"),
    ("merge", "m1", "side"),
    ("branch", "late"),
    ("commit", "l1"),
    ("switch", "feat"),
    ("commit", "f2"),
    ("switch", "main"),
    ("commit", "c3"),
    ("merge", "m2", "feat", "late"),  # three parents
    ("switch", "side"),
    ("commit", "s4"),
    ("tag", "rc"),
    ("detach", "main~1"),
    ("commit", "d1"),
]


@dataclass
class Twins:
    """The same graph in git (``git``) and in tensorvcs (``repo``)."""

    git: Path
    repo: tv.Repo
    ids: dict[str, str] = field(default_factory=dict)  # tensorvcs commit id -> message
    n: int = 0
    manifest: str = ""

    def run_git(self, *args: str, when: int | None = None) -> str:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        env.update(GIT_CONFIG_NOSYSTEM="1", HOME=str(self.git))
        if when is not None:
            env.update(GIT_AUTHOR_DATE=f"{when} +0000", GIT_COMMITTER_DATE=f"{when} +0000")
        for who in ("AUTHOR", "COMMITTER"):
            env[f"GIT_{who}_NAME"], env[f"GIT_{who}_EMAIL"] = "t", "t@example.com"
        res = subprocess.run(
            [GIT, "-C", str(self.git), "-c", "core.commitGraph=false", *args],
            env=env, text=True, capture_output=True, check=True,
        )  # fmt: skip
        return res.stdout.strip()

    def commit(self, msg: str, others: tuple[str, ...] = ()) -> None:
        """A commit on HEAD (the first one: a root) in both, merging ``others``."""
        when = EPOCH + 10 * self.n
        revs = (["HEAD"] if self.n else []) + list(others)
        self.n += 1
        flags = [x for rev in revs for x in ("-p", self.run_git("rev-parse", rev))]
        tree = self.run_git("hash-object", "-t", "tree", "/dev/null")
        self.run_git("update-ref", "HEAD", self.run_git("commit-tree", tree, *flags, "-m", msg,
                                                        when=when))  # fmt: skip
        r = self.repo
        stamp = dt.datetime.fromtimestamp(when, dt.timezone.utc)
        c = Commit(
            self.manifest,
            [r.resolve(rev) for rev in revs],
            msg,
            "t",
            timestamp=stamp.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        )
        c.id = r.objects.put_bytes(envelope.KIND_COMMIT, c.to_bytes())
        r.store.sync()
        with r.refs.locked():
            r.refs.update(r.commit_ref(), c.id, message=f"commit: {msg}")
        self.ids[c.id] = msg

    def apply(self, op: tuple[str, ...]) -> None:
        kind, name, *others = op
        if kind in ("commit", "merge"):
            self.commit(name, tuple(others))
        elif kind == "branch":
            self.run_git("branch", name)
            self.run_git("symbolic-ref", "HEAD", f"refs/heads/{name}")
            self.repo.branch(name)
            self.repo.switch(name)
        elif kind == "switch":
            self.run_git("symbolic-ref", "HEAD", f"refs/heads/{name}")
            self.repo.switch(name)
        elif kind == "detach":
            self.run_git("update-ref", "--no-deref", "HEAD", self.run_git("rev-parse", name))
            self.repo.switch(name, detach=True)
        elif kind == "tag":
            self.run_git("tag", name)
            self.repo.tag(name)
        else:
            raise AssertionError(kind)


def twins(root: Path, ops: list[tuple[str, ...]]) -> Twins:
    (root / "git").mkdir()
    (root / "tv").mkdir()
    repo = tv.Repo.init(root / "tv")
    # every commit shares one manifest: the graph is what is tested
    manifest = repo.commit({"x": 1}, "scratch").manifest
    t = Twins(root / "git", repo, manifest=manifest)
    t.run_git("init", "-q", "-b", "main")
    t.run_git("config", "log.showSignature", "false")
    # the first op makes a root: main starts over there (the scratch commit is left out)
    for op in ops:
        t.apply(op)
    return t


GRAPH_CHARS = re.compile(r"[*|/\\_.\- ]*")
Row = tuple[str, str]  # (graph part, the commit's name on its commit row, else "")


def read_graph(rows: list[Row]) -> tuple[dict[str, set[str]], set[str]]:
    """The edges a drawing shows: {commit: the commits its line leads to}, and the commits
    whose lines run off the bottom. Rules: lane i at column 2i; on a commit row, ``*`` ends
    the lanes arriving at its column and starts one at every place it covers (``*-.-.``),
    which the next row may leave unused (a commit without parents, or with fewer);
    on other rows ``|`` goes straight down, ``\\`` / ``/`` one place right / left, and a run
    of ``_`` after the slash carries it further. Every stroke must start on a lane, every
    lane must go on, and no character may be left unexplained."""
    edges: dict[str, set[str]] = {}
    active: dict[int, set[str]] = {}  # place -> the commits whose edges are there

    def take(i: int, x: int, line: str) -> set[str]:
        assert i in active, f"a stroke from no lane: column {x} of {line!r}"
        used.add(i)
        return active[i]

    born: set[int] = set()  # places a commit row started: the next row need not use them
    for line, name in rows:
        below: dict[int, set[str]] = {}
        optional, born = born, set()
        used: set[int] = set()
        explained = {x for x, ch in enumerate(line) if ch == " "}
        if name:
            star = line.index("*")
            assert line.count("*") == 1 and star % 2 == 0, line
            assert not set(line) & set("/\\_"), f"a stroke on a commit row: {line!r}"
            end = star + 1
            while end < len(line) and line[end] in "-.":
                end += 1
            assert (end - star) % 2 == 1 and line[star + 1 : end] == "-." * ((end - star) // 2)
            edges[name] = set()
            for origin in active.pop(star // 2, set()):
                edges[origin].add(name)
            for i in range(star // 2, (end - 1) // 2 + 1):
                below[i] = {name}
                born.add(i)
            explained.update(range(star, end))
        for x, ch in enumerate(line):  # the slashes first, with the runs they carry
            if ch not in "\\/":
                continue
            assert x % 2 == 1, f"{ch!r} on a lane: {line!r}"
            step = 2 if ch == "\\" else -2
            j = x + step
            while 0 <= j < len(line) and line[j] == "_" and line[j - step // 2] in "_|":
                explained.add(j)
                if line[j - step // 2] == "_":
                    explained.add(j - step // 2)
                j += step
            src = (x - 1) // 2 if ch == "\\" else (x + 1) // 2
            dst = (j - 1) // 2 if ch == "\\" else (j + 1) // 2
            below.setdefault(dst, set()).update(take(src, x, line))
            explained.add(x)
        for x, ch in enumerate(line):
            if x in explained:
                continue
            if ch != "|" or x % 2:
                raise AssertionError(f"unexplained {ch!r} at column {x} of {line!r}")
            below.setdefault(x // 2, set()).update(take(x // 2, x, line))
        left = set(active) - used - optional - ({line.index("*") // 2} if name else set())
        assert not left, f"lanes {sorted(left)} stop at {line!r}"
        active = below
    off = {origin for i, names in active.items() if i not in born for origin in names}
    return edges, off


def check_drawing(rows: list[Row], parents: dict[str, list[str]]) -> None:
    """``rows`` draw exactly the edges of ``parents`` (name -> parent names) among the names
    shown, and run off the bottom for a parent not shown (the last commit's aside: nothing is
    drawn below the last row)."""
    edges, off = read_graph(rows)
    assert set(edges) == set(parents)
    for name, ps in parents.items():
        assert edges[name] == {p for p in ps if p in parents}, name
        if name != rows[-1][1]:
            assert (name in off) == any(p not in parents for p in ps), name
    assert all(line == line.rstrip() for line, _ in rows)


def shape_git(t: Twins, *args: str) -> list[Row]:
    """[(graph part, commit message or "")] of git log --graph."""
    out = []
    for line in t.run_git("log", "--graph", "--format=%s", *args).splitlines():
        g = GRAPH_CHARS.match(line)
        assert g is not None
        out.append((g.group(0).rstrip(), line[g.end() :]))
    return out


def shape_tvcs(t: Twins, text: str) -> list[Row]:
    """[(graph part, commit message or "")] of tvcs log --graph --oneline."""
    by_short = {oid[:12]: msg for oid, msg in t.ids.items()}
    out = []
    for line in text.splitlines():
        g = GRAPH_CHARS.match(line)
        assert g is not None
        rest = line[g.end() :]
        out.append((g.group(0).rstrip(), by_short[rest[:12]] if rest else ""))
    return out


def names(rows: list[Row]) -> list[str]:
    return [m for _, m in rows if m]


def parents_by_name(t: Twins, shown: list[str]) -> dict[str, list[str]]:
    by_msg = {msg: oid for oid, msg in t.ids.items()}
    return {m: [t.ids[p] for p in t.repo.get_commit(by_msg[m]).parents] for m in shown}


def tvcs_log(t: Twins, *args: str) -> str:
    return Tvcs(CliRunner())("--repo", t.repo.root, "log", *args).stdout


def test_fixed_graph(tmp_path: Path) -> None:
    t = twins(tmp_path, FIXED)
    text = tvcs_log(t, "--graph", "--oneline", "--all")
    got = shape_tvcs(t, text)
    assert names(got) == names(shape_git(t, "--all"))  # git's order, every commit once
    assert sorted(names(got)) == sorted(t.ids.values())
    check_drawing(got, parents_by_name(t, names(got)))
    # what the drawing has to show here: a fan-out, a three-parent merge, joins, crossings
    graph = "\n".join(g for g, _ in got)
    assert "|\\" in graph and "|/" in graph and "*-." in graph and "_" in graph
    # from one revision only; and HEAD (detached) by default
    for args, rev in ((["side"], "side"), ([], "HEAD")):
        one = shape_tvcs(t, tvcs_log(t, "--graph", "--oneline", *args))
        assert names(one) == names(shape_git(t, rev))
        check_drawing(one, parents_by_name(t, names(one)))
    # decorations as log shows them, on the commit's line
    lines = text.splitlines()
    s4 = next(ln for ln in lines if ln.endswith("  s4"))
    assert re.fullmatch(r"\| \* [0-9a-f]{12} \(side, tag: rc\)  s4", s4), s4
    d1 = next(ln for ln in lines if ln.endswith("  d1"))
    assert re.fullmatch(r"\* [0-9a-f]{12} \(HEAD\)  d1", d1), d1
    m2 = next(ln for ln in lines if ln.endswith("  m2"))
    assert re.fullmatch(r"\| \| \*-\. +[0-9a-f]{12} \(main\)  m2", m2), m2
    # -n shows the first N commits; the lines to the parents not shown run off the bottom
    got = shape_tvcs(t, tvcs_log(t, "--graph", "--oneline", "--all", "-n", "5"))
    assert names(got) == names(shape_git(t, "--all", "-n", "5"))
    assert len(names(got)) == 5
    check_drawing(got, parents_by_name(t, names(got)))


SIMPLE: dict[str, list[tuple[str, ...]]] = {
    "linear": [("commit", "c0"), ("commit", "c1"), ("commit", "c2")],
    "merge": [("commit", "c0"), ("commit", "c1"), ("branch", "side"), ("commit", "s1"),
              ("switch", "main"), ("commit", "c2"), ("switch", "side"), ("commit", "s2"),
              ("switch", "main"), ("merge", "m", "side"), ("commit", "c3")],
    "tips": [("commit", "c0"), ("branch", "a"), ("commit", "a1"), ("switch", "main"),
             ("commit", "c1"), ("branch", "b"), ("commit", "b1"), ("switch", "main"),
             ("commit", "c2")],
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(SIMPLE))
def test_simple_shapes_are_drawn_as_git_draws_them(tmp_path: Path, shape: str) -> None:
    t = twins(tmp_path, SIMPLE[shape])
    assert shape_tvcs(t, tvcs_log(t, "--graph", "--oneline", "--all")) == shape_git(t, "--all")


def test_graph_in_full_format(tmp_path: Path) -> None:
    """Without --oneline, as git's default format: the graph goes on before every line of a
    commit (the fan-out of a merge beside its 'Merge:' line) and on the blank line between
    two; read back, it is the same graph."""
    t = twins(tmp_path, FIXED)
    text = tvcs_log(t, "--graph", "--all")
    rows: list[Row] = []
    words = []
    by_id = {oid: msg for oid, msg in t.ids.items()}
    for line in text.splitlines():
        g = GRAPH_CHARS.match(line)
        assert g is not None
        rest = line[g.end() :].split(" ")
        words.append((g.group(0).rstrip(), rest[0]))
        rows.append((g.group(0).rstrip(), by_id[rest[1]] if rest[0] == "commit" else ""))
    check_drawing(rows, parents_by_name(t, names(rows)))
    assert names(rows) == names(shape_git(t, "--all"))
    assert any(w == "Merge:" and g.endswith("\\") for g, w in words)
    # the header lines of one commit start in one column, whatever the graph beside them
    block: list[int] = []
    for line in text.splitlines():
        word = line.lstrip("*|/\\_.- ").split(" ")[0]
        if word == "commit":
            assert len(set(block)) <= 1, text
            block = []
        if word in ("commit", "Merge:", "Author:", "Date:"):
            block.append(line.index(word + " "))
    assert len(set(block)) == 1


def test_all_without_graph_and_json(tmp_path: Path) -> None:
    t = twins(tmp_path, FIXED)
    text = tvcs_log(t, "--oneline", "--all")
    msgs = [t.ids[next(o for o in t.ids if o.startswith(ln[:12]))] for ln in text.splitlines()]
    assert msgs == t.run_git("log", "--all", "--format=%s", "--date-order").splitlines()
    res = Tvcs(CliRunner())("--repo", t.repo.root, "log", "--all", "--json")
    got = json.loads(res.stdout)["commits"]
    assert [c["message"] for c in got] == msgs
    m2 = next(c for c in got if c["message"] == "m2")
    assert [t.ids[p] for p in m2["parents"]] == ["c3", "f2", "l1"]
    assert all(c["nonfinite"] == [] for c in got)
    err = Tvcs(CliRunner())("--repo", t.repo.root, "log", "--graph", "--json", code=2).stderr
    assert err == (
        "tvcs: error: --graph has no JSON form: use --json without --graph "
        "(each commit lists its parents)\n"
    )


def test_graph_through_the_tvcs_script(tmp_path: Path) -> None:
    t = twins(tmp_path, FIXED)
    env = {k: v for k, v in os.environ.items() if k not in ("TVCS_REPO", "TVCS_DEBUG")}
    cmd = [str(TVCS)] if TVCS.exists() else [sys.executable, "-m", "tensorvcs.cli"]
    res = subprocess.run(
        [*cmd, "--no-pager", "log", "--graph", "--oneline", "--all"],
        cwd=t.repo.root, env=env, text=True, capture_output=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert shape_tvcs(t, res.stdout) == shape_tvcs(t, tvcs_log(t, "--graph", "--oneline", "--all"))


OPS = st.lists(
    st.tuples(
        st.sampled_from(["commit", "commit", "commit", "branch", "switch", "merge", "tag"]),
        st.integers(0, 7),
        st.integers(1, 2),
    ),
    min_size=2,
    max_size=24,
)


def plan(draws: list[tuple[str, int, int]]) -> list[tuple[str, ...]]:
    """Turn drawn (kind, pick, count) into valid ops: a merge takes 1-2 other branches whose
    tips differ from HEAD and from each other."""
    ops: list[tuple[str, ...]] = [("commit", "c0")]
    branches, tips, cur = ["main"], {"main": 0}, "main"
    serial = 1
    for k, (kind, pick, count) in enumerate(draws):
        name = f"x{k}"
        if kind == "branch":
            ops.append(("branch", name))
            branches.append(name)
            tips[name] = tips[cur]
            cur = name
        elif kind == "switch":
            cur = branches[pick % len(branches)]
            ops.append(("switch", cur))
        elif kind == "tag":
            ops.append(("tag", name))
        else:
            others = []
            if kind == "merge":
                seen = {tips[cur]}
                for b in branches[pick % len(branches) :] + branches:
                    if tips[b] not in seen and len(others) < count:
                        others.append(b)
                        seen.add(tips[b])
            ops.append(("merge" if others else "commit", f"c{serial}", *others))
            tips[cur] = serial
            serial += 1
    return ops


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPS)
def test_drawn_graphs_through_tvcs_and_git(draws: list[tuple[str, int, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        t = twins(Path(d), plan(draws))
        try:
            got = shape_tvcs(t, tvcs_log(t, "--graph", "--oneline", "--all"))
            assert names(got) == names(shape_git(t, "--all"))
            check_drawing(got, parents_by_name(t, names(got)))
        finally:
            t.repo.close()


@st.composite
def dags(draw: st.DrawFn) -> dict[str, list[str]]:
    """A random commit graph, oldest first: each commit has 0-4 distinct older parents, most
    often the one just before it or a recent one (long lines of descent, merges across)."""
    n = draw(st.integers(1, 40))
    out: dict[str, list[str]] = {}
    for i in range(n):
        k = draw(st.sampled_from([0, 1, 1, 1, 1, 2, 2, 3, 4])) if i else 0
        picks = draw(st.lists(st.integers(1, max(i, 1)), min_size=k, max_size=k))
        out[f"c{i}"] = list(dict.fromkeys(f"c{i - p}" for p in picks if i - p >= 0))
    return out


@settings(max_examples=300, deadline=None)
@given(dags(), st.integers(1, 40))
def test_random_graphs_read_back_as_drawn(dag: dict[str, list[str]], limit: int) -> None:
    """The renderer alone, on graphs no repository builds quickly: roots, tips, octopus
    merges, parents far back; also cut after ``limit`` commits (``log -n``)."""
    order = topo_order(
        [c for c in dag if not any(c in ps for ps in dag.values())],
        lambda c: dag[c],
        lambda c: f"{int(c[1:]):04d}",
    )
    assert sorted(order) == sorted(dag)
    pos = {c: i for i, c in enumerate(order)}
    assert all(pos[p] > pos[c] for c, ps in dag.items() for p in ps)  # topological
    shown = order[:limit]
    g = Graph()
    rows: list[Row] = []
    for c in shown:
        for line in g.lines(c, dag[c], [c]):
            text = line.endswith(" " + c) or line == c
            graph_part = line[: -len(c)].rstrip() if text else line
            rows.append((graph_part, c if text else ""))
    check_drawing(rows, {c: dag[c] for c in shown})
    assert len(names(rows)) == len(shown)
