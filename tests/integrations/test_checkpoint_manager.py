"""CheckpointManager: step counting by optimizer hooks, async saves, retention, bit-exact resume."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tensorvcs as tv
from tensorvcs.manager import STATE_KEY
from tensorvcs.retention import CheckpointInfo, select


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_state_bitwise_equal(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert tensor_bytes(a) == tensor_bytes(b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_state_bitwise_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_state_bitwise_equal(x, y)
    else:
        assert a == b


def stored_bytes(repo: tv.Repo) -> int:
    return sum(repo.objects.stored_size(o) for o in repo.objects.ids())


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 32)
        self.drop = torch.nn.Dropout(0.3)
        self.fc2 = torch.nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


def one_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> torch.Tensor:
    loss = model(torch.randn(4, 8)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


# -- step counting ------------------------------------------------------------------------------
def test_watch_counts_every_real_step_wherever_it_runs(repo: tv.Repo) -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mgr = tv.CheckpointManager(repo, every_n_steps=3, async_commit=False).watch(opt)

    def somewhere_else() -> None:  # a step outside any "training step" function
        opt.step()

    for _ in range(7):
        one_step(model, opt) if mgr.step % 2 else somewhere_else()
        mgr.maybe_save(lambda: {"model": model})
    assert mgr.step == 7
    assert [c.step for c in mgr.checkpoints()] == [3, 6]
    assert set(repo.tags()) == {"step-3", "step-6"}
    assert repo.show("step-6").metadata["tensorvcs.manager"]["tag"] == "step-6"
    mgr.close()
    opt.step()  # hooks are removed on close
    assert mgr.step == 7


def test_several_optimizers_count_once_per_round(repo: tv.Repo) -> None:
    g, d = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    og, od = torch.optim.SGD(g.parameters(), lr=0.1), torch.optim.SGD(d.parameters(), lr=0.1)
    mgr = tv.CheckpointManager(repo, every_n_steps=2, async_commit=False).watch(og, od)
    for _ in range(4):
        od.step()
        og.step()
    assert mgr.step == 4
    mgr.close()


def test_every_n_seconds(repo: tv.Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    import tensorvcs.manager as manager_module

    clock = [1000.0]

    class FakeTime:
        monotonic = staticmethod(lambda: clock[0])
        perf_counter = staticmethod(time.perf_counter)
        time = staticmethod(time.time)

    monkeypatch.setattr(manager_module, "time", FakeTime)
    mgr = tv.CheckpointManager(repo, every_n_seconds=60, async_commit=False)
    assert not mgr.maybe_save({"x": torch.ones(2)})
    clock[0] += 61
    assert mgr.maybe_save({"x": torch.ones(2)}, step=5)
    clock[0] += 30
    assert not mgr.maybe_save({"x": torch.ones(2)}, step=6)
    clock[0] += 31
    assert mgr.maybe_save({"x": torch.ones(2)}, step=7)
    assert [c.step for c in mgr.checkpoints()] == [5, 7]
    mgr.close()


# -- asynchronous commits -----------------------------------------------------------------------
class BlockingRepo:
    """Wraps repo.commit so a test controls when the background commit proceeds."""

    def __init__(self, repo: tv.Repo) -> None:
        self.repo = repo
        self.release = threading.Event()
        self.started = threading.Event()
        self.active = 0
        self.max_active = 0
        self._commit = repo.commit
        repo.commit = self.commit  # type: ignore[method-assign]

    def commit(self, *a: Any, **k: Any) -> Any:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started.set()
        assert self.release.wait(10)
        try:
            return self._commit(*a, **k)
        finally:
            self.active -= 1


def test_async_save_waits_only_for_a_snapshot(repo: tv.Repo) -> None:
    blocking = BlockingRepo(repo)
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mgr = tv.CheckpointManager(repo)
    fut = mgr.save({"model": model}, step=1)
    assert blocking.started.wait(10)
    assert not fut.done()  # save returned while the commit is still in flight
    with torch.no_grad():  # training goes on, in place, before the commit is written
        for p in model.parameters():
            p.add_(1.0)
    blocking.release.set()
    commit = fut.result(10)
    saved = repo.checkout(commit.id)
    assert_state_bitwise_equal(dict(saved["model"]), before)
    assert mgr.wait().id == commit.id
    mgr.close()


def test_at_most_one_commit_in_flight(repo: tv.Repo) -> None:
    blocking = BlockingRepo(repo)
    mgr = tv.CheckpointManager(repo)
    mgr.save({"x": torch.zeros(3)}, step=1)
    assert blocking.started.wait(10)
    second_returned = threading.Event()

    def second() -> None:
        mgr.save({"x": torch.ones(3)}, step=2)
        second_returned.set()

    t = threading.Thread(target=second)
    t.start()
    assert not second_returned.wait(0.3)  # waits for the first commit
    blocking.release.set()
    t.join(10)
    assert second_returned.is_set()
    mgr.close()
    assert blocking.max_active == 1
    assert [c.step for c in mgr.checkpoints()] == [1, 2]


def test_background_error_surfaces_on_next_call_and_close(repo: tv.Repo) -> None:
    mgr = tv.CheckpointManager(repo)
    fut = mgr.save({"bad": object()}, step=1)  # not storable without allow_pickle
    assert fut.exception(10) is not None  # failed in the background; nothing raised yet
    with pytest.raises(tv.UnsupportedValueError, match="bad"):
        mgr.maybe_save({"x": torch.ones(1)})
    mgr.save({"bad": object()}, step=2)
    with pytest.raises(tv.UnsupportedValueError):
        mgr.close()
    assert mgr.checkpoints() == []


def test_snapshot_keeps_tied_weights_tied(repo: tv.Repo) -> None:
    emb = torch.nn.Embedding(16, 4)
    head = torch.nn.Linear(4, 16, bias=False)
    head.weight = emb.weight
    model = torch.nn.ModuleDict({"emb": emb, "head": head})
    mgr = tv.CheckpointManager(repo)
    c = mgr.save({"model": model}, step=1).result()
    out = repo.checkout(c.id)["model"]
    assert out["emb.weight"].data_ptr() == out["head.weight"].data_ptr()
    mgr.close()


# -- retention ----------------------------------------------------------------------------------
def infos(steps: list[int], metric: list[float] | None = None) -> list[CheckpointInfo]:
    return [
        CheckpointInfo(f"c{s}", s, 1000.0 + s, {"loss": metric[i]} if metric else {})
        for i, s in enumerate(steps)
    ]


def test_policies_combine_as_any_of() -> None:
    cps = infos([100, 200, 300, 400, 500, 600], [5.0, 1.0, 4.0, 2.0, 3.0, 6.0])
    assert select(cps, [tv.KeepLast(2)], 0) == {"c500", "c600"}
    assert select(cps, [tv.KeepBest("loss", k=2)], 0) == {"c200", "c400", "c600"}
    assert select(cps, [tv.KeepBest("loss", k=1, mode="max")], 0) == {"c600"}
    assert select(cps, [tv.KeepEvery(300)], 0) == {"c100", "c300", "c600"}
    assert select(cps, [tv.KeepNewerThan(250)], 1600.0) == {"c400", "c500", "c600"}
    both = select(cps, [tv.KeepLast(1), tv.KeepBest("loss")], 0)
    assert both == {"c200", "c600"}
    assert select(cps, None, 0) == {c.commit for c in cps}
    assert select(cps, [tv.KeepSteps([300])], 0) == {"c300", "c600"}  # the newest always stays


def test_keep_best_ignores_missing_and_nan() -> None:
    cps = [
        CheckpointInfo("a", 1, 0.0, {}),
        CheckpointInfo("b", 2, 0.0, {"loss": float("nan")}),
        CheckpointInfo("c", 3, 0.0, {"loss": 2.0}),
        CheckpointInfo("d", 4, 0.0, {"loss": 3.0}),
    ]
    assert tv.KeepBest("loss").best(cps).commit == "c"  # type: ignore[union-attr]


def test_retention_drops_history_and_gc_reclaims_bytes(tmp_path: Path) -> None:
    def run(keep: list[Any] | None, where: Path) -> tuple[tv.Repo, tv.CheckpointManager]:
        repo = tv.Repo.init(where)
        torch.manual_seed(0)
        model = torch.nn.Linear(256, 256)  # 257 KiB: chunked; every save all new bytes
        mgr = tv.CheckpointManager(repo, keep=keep, async_commit=True)
        for step in range(1, 7):
            with torch.no_grad():
                model.weight.normal_()
            mgr.save({"model": model}, step=step, metrics={"loss": float(abs(step - 2))})
        mgr.close()
        return repo, mgr

    full, _ = run(None, tmp_path / "full")
    kept, mgr = run([tv.KeepLast(2), tv.KeepBest("loss")], tmp_path / "kept")
    assert [c.step for c in mgr.checkpoints()] == [2, 5, 6]
    assert [c.step for c in kept.log()] == [6, 5, 2]
    assert set(kept.tags()) == {"best", "step-2", "step-5", "step-6"}
    assert kept.show("best").step == 2
    assert kept.fsck().ok
    one = 256 * 256 * 4
    assert stored_bytes(full) > 5.5 * one * 0.9
    assert stored_bytes(kept) < 3.3 * one  # 3 checkpoints' weights, nothing else
    for rec in mgr.saved:  # ids follow the rewritten history
        assert rec.commit in {c.id for c in kept.log()} or rec.step not in (2, 5, 6)
    assert kept.checkout("step-5")["model"]["weight"].shape == (256, 256)


def test_retention_never_drops_a_commit_someone_tagged(repo: tv.Repo) -> None:
    mgr = tv.CheckpointManager(repo, keep=[tv.KeepLast(1)], async_commit=False)
    mgr.save({"x": torch.zeros(2)}, step=1)
    repo.tag("paper", "step-1")
    for s in (2, 3):
        mgr.save({"x": torch.full((2,), float(s))}, step=s)
    assert [c.step for c in mgr.checkpoints()] == [1, 3]
    assert set(repo.tags()) == {"paper", "step-1", "step-3"}
    mgr.close()


def test_retention_on_a_branch(repo: tv.Repo) -> None:
    repo.commit({"base": torch.ones(2)}, "base")
    mgr = tv.CheckpointManager(repo, branch="run1", keep=[tv.KeepLast(1)], async_commit=False)
    for s in (1, 2, 3):
        mgr.save({"x": torch.full((2,), float(s))}, step=s)
    assert [c.step for c in mgr.checkpoints()] == [3]
    assert [c.message for c in repo.log("run1")] == ["checkpoint at step 3", "base"]
    assert repo.log("main")[0].message == "base"
    assert set(repo.tags()) == {"run1/step-3"}
    rest = mgr.restore()
    assert rest is not None and torch.equal(rest["x"], torch.full((2,), 3.0))
    mgr.close()


# -- restore ------------------------------------------------------------------------------------
def test_restore_nothing_yet_returns_none(repo: tv.Repo) -> None:
    mgr = tv.CheckpointManager(repo)
    assert mgr.restore(model=Net()) is None
    assert mgr.step == 0


def test_restore_strict_and_weights_only(repo: tv.Repo) -> None:
    model = Net()
    mgr = tv.CheckpointManager(repo, async_commit=False)
    mgr.save({"model": model, "note": "weights only"}, step=10)
    other = torch.nn.Linear(8, 2)
    with pytest.raises(tv.LoadError, match=r"missing|unexpected"):
        tv.CheckpointManager(repo).restore(model=other)
    fresh = Net()
    opt = torch.optim.AdamW(fresh.parameters())
    before = opt.state_dict()
    mgr2 = tv.CheckpointManager(repo)
    with pytest.warns(UserWarning, match="optimizer"):
        rest = mgr2.restore(model=fresh, optimizer=opt)  # no KeyError: optimizer stays fresh
    assert rest == {"note": "weights only"}
    assert mgr2.step == 10
    assert opt.state_dict() == before
    assert_state_bitwise_equal(dict(fresh.state_dict()), dict(model.state_dict()))
    assert mgr2.load_reports["model"].ok
    mgr.close()


def test_restore_a_named_object_that_is_missing_raises(repo: tv.Repo) -> None:
    mgr = tv.CheckpointManager(repo, async_commit=False)
    mgr.save({"model": Net()}, step=1)
    with pytest.raises(tv.NotFoundError, match="data"):
        tv.CheckpointManager(repo).restore(model=Net(), data=torch.Generator())
    mgr.close()


def test_reserved_key_and_bad_state_are_refused(repo: tv.Repo) -> None:
    mgr = tv.CheckpointManager(repo)
    with pytest.raises(tv.UsageError):
        mgr.save({STATE_KEY: 1})
    with pytest.raises(tv.UsageError):
        mgr.save([torch.ones(1)])  # type: ignore[arg-type]
    with pytest.raises(tv.UsageError):
        tv.CheckpointManager(repo, keep=[3])  # type: ignore[list-item]
    mgr.close()


N_SAMPLES, BATCH, EPOCHS = 40, 4, 3  # 10 batches per epoch, 30 steps


def train(repo: tv.Repo, *, stop_at: int | None, resume: bool, seed: int) -> dict[str, Any]:
    """A loop with dropout, python/numpy/torch randomness and a shuffling DataLoader driven by
    a torch.Generator; checkpoints every 4 real optimizer steps."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    data = torch.randn(N_SAMPLES, 8, generator=torch.Generator().manual_seed(7))
    target = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(8))
    gen = torch.Generator().manual_seed(seed + 1)
    loader = DataLoader(TensorDataset(data, target), batch_size=BATCH, shuffle=True, generator=gen)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.7)
    mgr = tv.CheckpointManager(repo, every_n_steps=4, keep=[tv.KeepLast(2)]).watch(opt)
    start_epoch, skip, epoch_gen = 0, 0, None
    if resume:
        rest = mgr.restore(model=model, optimizer=opt, scheduler=sched)
        assert rest is not None
        start_epoch, skip, epoch_gen = rest["epoch"], rest["batch"], rest["epoch_gen"]
    for epoch in range(start_epoch, EPOCHS):
        if epoch_gen is not None and epoch == start_epoch:
            gen.set_state(epoch_gen)  # the data order of the interrupted epoch
        else:
            epoch_gen = gen.get_state()
        for i, (x, y) in enumerate(loader):
            if i < skip:
                continue
            noise = torch.from_numpy(np.random.normal(0, 0.01, size=(BATCH, 8)).astype("f4"))
            scale = 1.0 + random.random() * 0.01
            loss = torch.nn.functional.mse_loss(model(x * scale + noise), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            mgr.maybe_save(
                lambda e=epoch, b=i + 1, g=epoch_gen: {
                    "model": model,
                    "optimizer": opt,
                    "scheduler": sched,
                    "epoch": e,
                    "batch": b,
                    "epoch_gen": g,
                },
                metrics={"loss": loss},
            )
            if stop_at is not None and mgr.step == stop_at:
                mgr.close()
                return {}
        skip = 0
    mgr.close()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": mgr.step}


def test_resumed_run_is_bitwise_equal_to_an_uninterrupted_one(tmp_path: Path) -> None:
    straight = train(tv.Repo.init(tmp_path / "a"), stop_at=None, resume=False, seed=0)
    repo = tv.Repo.init(tmp_path / "b")
    train(repo, stop_at=14, resume=False, seed=0)  # "crash" at step 14: last save at 12
    assert [c.step for c in repo.log()] == [12, 8]
    resumed = train(repo, stop_at=None, resume=True, seed=123)  # other seeds: all restored
    assert resumed["step"] == straight["step"] == EPOCHS * N_SAMPLES // BATCH
    assert_state_bitwise_equal(dict(resumed["model"]), dict(straight["model"]))
    assert_state_bitwise_equal(resumed["optimizer"], straight["optimizer"])
    # without restoring the RNG states, the same resume diverges (the test is sensitive)
    repo2 = tv.Repo.init(tmp_path / "c")
    train(repo2, stop_at=14, resume=False, seed=0)
    real_restore = tv.CheckpointManager.restore

    def restore_without_rng(self: Any, *a: Any, **k: Any) -> Any:
        return real_restore(self, *a, rng=False, **k)

    tv.CheckpointManager.restore = restore_without_rng  # type: ignore[method-assign]
    try:
        diverged = train(repo2, stop_at=None, resume=True, seed=123)
    finally:
        tv.CheckpointManager.restore = real_restore  # type: ignore[method-assign]
    assert tensor_bytes(diverged["model"]["fc1.weight"]) != tensor_bytes(
        straight["model"]["fc1.weight"]
    )


def test_import_tensorvcs_imports_no_framework() -> None:
    code = (
        "import sys, tensorvcs;"
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'transformers', 'peft')"
        " if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
