"""A stateful model of what a repository must keep (hypothesis RuleBasedStateMachine).

A real repository is driven through random sequences of commit, branch (create, move, delete),
tag (create, delete), switch (to a branch, detached), drop, a CheckpointManager with KeepLast
retention (committing in the caller's thread, or in a background thread with its delta
re-encodings deferred to ``compact``, a rule of its own), gc (git's defaults, ``--prune=now``,
and reflogs expired now), checkout and fsck.
The model keeps, for each commit ever made, the state it holds, and knows which commits the
user asked to go (retention dropped them, or every reflog was expired). The invariant after
every step: every commit reachable from a ref, or named by a reflog entry still in force,
checks out bit for bit, with its whole history, and fsck finds no problem.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import torch
from helpers import assert_same_value
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import tensorvcs as tv
from tensorvcs.refs import HEADS

BRANCHES = ["main", "dev", "exp"]
TAGS = ["t1", "t2", "t3"]
REPO = {"chunk_size": 4096, "pack_threshold": 1024}


def state_of(seed: int) -> dict[str, Any]:
    """States that differ a little between seeds (so chunks delta-encode), in several chunks."""
    base = torch.randn(3000, generator=torch.Generator().manual_seed(7))
    drift = torch.randn(3000, generator=torch.Generator().manual_seed(seed))
    return {
        "model": OrderedDict(w=base + 1e-3 * seed * drift, b=torch.full((10,), float(seed))),
        "seed": seed,
    }


class RepositoryModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.repo: tv.Repo | None = None
        self.content: dict[str, int] = {}  # every commit ever made or rewritten: its seed
        self.forgotten: set[str] = set()  # commits the user asked to go
        self.seeds = iter(range(1, 10_000))
        self.mgr: tv.CheckpointManager | None = None
        self.verified: set[str] = set()  # checked out bitwise since the last gc
        self.saved_seeds: list[int] = []  # the manager's saves, in order
        self.background = False

    @initialize(tmp=st.just(None), background=st.booleans())
    def setup(self, tmp: None, background: bool) -> None:
        import tempfile

        self.background = background  # the manager commits in a thread, deltas deferred
        self.tmp = tempfile.TemporaryDirectory(prefix="tvcs-model-")
        self.repo = tv.Repo.init(Path(self.tmp.name) / "r", **REPO)

    def teardown(self) -> None:
        if self.mgr is not None:
            self.mgr.close()
        if self.repo is not None:
            self.repo.close()
        self.tmp.cleanup()

    # -- helpers ---------------------------------------------------------------------------
    @property
    def r(self) -> tv.Repo:
        assert self.repo is not None
        return self.repo

    def _learn(self, cid: str, seed: int) -> None:
        self.content.setdefault(cid, seed)

    def _refs(self) -> set[str]:
        out = set(self.r.branches().values()) | set(self.r.tags().values())
        head = self.r.refs.read("HEAD")
        if head:
            out.add(head)
        return out

    def _closure(self, tips: set[str]) -> set[str]:
        out: set[str] = set()
        stack = list(tips)
        while stack:
            c = stack.pop()
            if c not in out:
                out.add(c)
                stack.extend(self.r.get_commit(c).parents)
        return out

    def _alive(self) -> list[str]:
        """Commits that exist and must stay, in the order they were made (deterministic)."""
        keep = self.must_keep()
        return [c for c in self.content if c in keep]

    def must_keep(self) -> set[str]:
        return self._closure(self._refs() | (set(self.content) - self.forgotten))

    # -- rules -----------------------------------------------------------------------------
    @rule(branch=st.sampled_from([None, *BRANCHES]))
    def commit(self, branch: str | None) -> None:
        seed = next(self.seeds)
        c = self.r.commit(state_of(seed), f"seed {seed}", step=seed, branch=branch)
        self._learn(c.id, seed)

    @precondition(lambda self: bool(self.content) and bool(self._alive()))
    @rule(name=st.sampled_from(BRANCHES[1:]), data=st.data(), force=st.booleans())
    def branch(self, name: str, data: st.DataObject, force: bool) -> None:
        target = data.draw(st.sampled_from(self._alive()))
        if not force and name in self.r.branches():
            return
        if self.r.head()[0] == name:
            return  # moving the checked-out branch is what commit and drop do
        self.r.branch(name, target, force=force)

    @rule(name=st.sampled_from(BRANCHES[1:]))
    def delete_branch(self, name: str) -> None:
        if name in self.r.branches() and self.r.head()[0] != name:
            self.r.delete_branch(name)

    @precondition(lambda self: bool(self.content) and bool(self._alive()))
    @rule(name=st.sampled_from(TAGS), data=st.data())
    def tag(self, name: str, data: st.DataObject) -> None:
        target = data.draw(st.sampled_from(self._alive()))
        self.r.tag(name, target, force=True)

    @rule(name=st.sampled_from(TAGS))
    def delete_tag(self, name: str) -> None:
        if name in self.r.tags():
            self.r.delete_tag(name)

    @rule(name=st.sampled_from(BRANCHES))
    def switch(self, name: str) -> None:
        if name in self.r.branches():
            self.r.switch(name)

    @precondition(lambda self: bool(self.content) and bool(self._alive()))
    @rule(data=st.data())
    def detach(self, data: st.DataObject) -> None:
        self.r.switch(data.draw(st.sampled_from(self._alive())), detach=True)

    @precondition(lambda self: bool(self.content) and bool(self._alive()))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        head = self.r.refs.read("HEAD")
        if head is None:
            return
        chain = [head]
        while self.r.get_commit(chain[-1]).parents:
            chain.append(self.r.get_commit(chain[-1]).parents[0])
        victim = data.draw(st.sampled_from(chain))
        if len(chain) == 1:
            return  # nothing would be left on the branch
        mapping = tv.drop(self.r, [victim])
        for old, new in mapping.items():
            if new is not None:
                self._learn(new, self.content[old])

    @rule()
    def manager_save(self) -> None:
        """A CheckpointManager run on its own branch keeps the last 2 checkpoints and gcs
        after each drop: what it drops (and the old versions of what it rewrites) is asked
        to go."""
        if self.mgr is None:
            self.mgr = tv.CheckpointManager(
                self.r, keep=[tv.KeepLast(2)], branch="ckpt", async_commit=self.background,
                every_n_steps=1,
            )  # fmt: skip
        before = self._chain("ckpt")
        seed = next(self.seeds)
        self.mgr.save({"model": state_of(seed)["model"], "seed": seed}, step=seed)
        self.mgr.wait()  # the background commit and its retention pass are done
        after = self._chain("ckpt")
        self.saved_seeds.append(seed)
        # KeepLast(2): the last two saves stay, and others only while a user's tag names them
        have = {c.step for c in self.mgr.checkpoints()}  # the manager's own, not a base
        tagged = {self.r.get_commit(c).step for c in self.r.tags().values()}
        assert set(self.saved_seeds[-2:]) <= have, (self.saved_seeds, have)
        assert have - set(self.saved_seeds[-2:]) <= tagged, (self.saved_seeds, have, tagged)
        self.forgotten |= set(before) - set(after)
        for cid in after:
            if cid not in self.content:
                self._learn(cid, self.r.get_commit(cid).step or 0)

    @precondition(lambda self: self.mgr is not None)
    @rule()
    def compact(self) -> None:
        """The work background commits deferred (re-encoding older checkpoints as deltas):
        nothing may check out differently after it."""
        assert self.mgr is not None
        self.mgr.compact()
        self.verified.clear()

    def _chain(self, branch: str) -> list[str]:
        tip = self.r.branches().get(branch)
        out = []
        while tip:
            out.append(tip)
            parents = self.r.get_commit(tip).parents
            tip = parents[0] if parents else None
        return out

    @rule(mode=st.sampled_from(["default", "prune-now", "expire-all"]))
    def gc(self, mode: str) -> None:
        self.verified.clear()  # only gc deletes: everything is checked again after it
        if mode == "default":
            tv.gc(self.r)
        elif mode == "prune-now":
            tv.gc(self.r, prune="now")
        else:
            tv.gc(self.r, prune="now", reflog_expire="now")
            self.forgotten |= set(self.content)

    # -- invariants ------------------------------------------------------------------------
    @invariant()
    def everything_kept_checks_out(self) -> None:
        if self.repo is None:
            return
        for cid in sorted(self.must_keep() - self.verified):
            self.verified.add(cid)
            got = self.r.checkout(cid)
            got.pop("_tvcs", None)  # a manager checkpoint's own bookkeeping
            assert_same_value(got, state_of(self.content[cid]), f"commit {cid[:12]}")

    @invariant()
    def fsck_is_clean(self) -> None:
        if self.repo is None:
            return
        report = tv.fsck(self.r)
        assert report.ok, [str(p) for p in report.problems]

    @invariant()
    def refs_name_existing_commits(self) -> None:
        if self.repo is None:
            return
        for oid in self._refs():
            assert self.r.objects.has(oid)
        assert HEADS + "ckpt" not in [self.r.refs.head_target()]


RepositoryModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("TVCS_MODEL_EXAMPLES", "20")),
    stateful_step_count=int(os.environ.get("TVCS_MODEL_STEPS", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestRepositoryModel = RepositoryModel.TestCase
