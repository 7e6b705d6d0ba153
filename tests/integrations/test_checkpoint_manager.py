"""CheckpointManager: step counting by optimizer hooks, async saves, retention, bit-exact resume."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
import warnings
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
        self.dropout = torch.nn.Dropout(0.3)
        self.fc2 = torch.nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(torch.relu(self.fc1(x))))


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
    assert tv.fsck(kept).ok
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


# -- KeepLast(n) while fewer than n checkpoints exist ------------------------------------------
def keep_last_3_states() -> list[dict[str, Any]]:
    """Six states of a small model (the weights chunked: > 64 KiB) and a scalar."""
    out = []
    for step in range(1, 7):
        torch.manual_seed(step)
        model = torch.nn.Linear(160, 128)
        out.append({"model": model.state_dict(), "note": f"state {step}"})
    return out


def test_keep_last_3_of_6_saves_keeps_steps_4_5_6(repo: tv.Repo) -> None:
    states = keep_last_3_states()
    mgr = tv.CheckpointManager(repo, keep=[tv.KeepLast(3)])
    for step, state in enumerate(states, 1):
        mgr.save(state, step=step)
        if step == 2:  # fewer than 3 checkpoints: nothing may be dropped yet
            mgr.wait()
            assert [c.step for c in mgr.checkpoints()] == [1, 2]
    mgr.close()
    assert [c.step for c in mgr.checkpoints()] == [4, 5, 6]
    assert [c.step for c in repo.log()] == [6, 5, 4]
    assert set(repo.tags()) == {"step-4", "step-5", "step-6"}
    for step in (4, 5, 6):
        out = repo.checkout(f"step-{step}")
        assert out.pop(STATE_KEY)["step"] == step
        assert_state_bitwise_equal(out, states[step - 1])
    assert tv.fsck(repo).ok


# -- a manager without a watched optimizer -----------------------------------------------------
def test_without_watch_each_maybe_save_call_is_a_step(repo: tv.Repo) -> None:
    mgr = tv.CheckpointManager(repo, every_n_steps=2, async_commit=False)
    saved = [mgr.maybe_save({"x": torch.full((2,), float(i))}) for i in range(6)]
    assert saved == [False, True, False, True, False, True]
    assert mgr.step == 6
    assert [c.step for c in mgr.checkpoints()] == [2, 4, 6]
    assert set(repo.tags()) == {"step-2", "step-4", "step-6"}
    assert torch.equal(repo.checkout("step-4")["x"], torch.full((2,), 3.0))
    # a step given to the call is not counted again: step= here, or mgr.step = n before
    assert mgr.maybe_save({"x": torch.zeros(1)}, step=8)
    assert mgr.step == 8
    mgr.step = 9
    assert not mgr.maybe_save({"x": torch.zeros(1)})
    assert mgr.step == 9
    assert mgr.maybe_save({"x": torch.zeros(1)})  # this call is step 10
    assert mgr.step == 10
    assert [c.step for c in mgr.checkpoints()] == [2, 4, 6, 8, 10]
    mgr.close()

    # resumed: the first call after restore is the step after the restored one
    again = tv.CheckpointManager(repo, every_n_steps=2, async_commit=False)
    assert again.restore() is not None and again.step == 10
    assert not again.maybe_save({"x": torch.zeros(1)})
    assert again.step == 11
    assert again.maybe_save({"x": torch.zeros(1)})
    assert [c.step for c in again.checkpoints()][-2:] == [10, 12]
    again.close()


def test_maybe_save_that_can_never_save_raises(repo: tv.Repo) -> None:
    mgr = tv.CheckpointManager(repo, async_commit=False)  # neither every_n_steps nor seconds
    with pytest.raises(tv.UsageError, match=r"every_n_steps.*every_n_seconds.*save\(\)"):
        mgr.maybe_save({"x": torch.ones(1)})
    assert mgr.maybe_save({"x": torch.ones(1)}, force=True)
    assert len(mgr.checkpoints()) == 1
    mgr.close()


def test_watching_an_optimizer_that_never_steps_warns(repo: tv.Repo) -> None:
    model = Net()
    watched = torch.optim.SGD(model.parameters(), lr=0.1)
    mgr = tv.CheckpointManager(repo, every_n_steps=2, async_commit=False).watch(watched)
    from tensorvcs.manager import IDLE_CALLS_WARNING

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(IDLE_CALLS_WARNING - 1):
            mgr.maybe_save({"x": torch.ones(1)})
    with pytest.warns(UserWarning, match=r"no watched optimizer has taken a step"):
        mgr.maybe_save({"x": torch.ones(1)})
    assert mgr.step == 0 and mgr.checkpoints() == []
    mgr.close()


# -- resuming from the newest complete checkpoint ----------------------------------------------
def test_latest_waits_for_the_commit_in_flight(repo: tv.Repo) -> None:
    blocking = BlockingRepo(repo)
    mgr = tv.CheckpointManager(repo)
    assert mgr.latest() is None
    fut = mgr.save({"x": torch.ones(2)}, step=1)
    assert blocking.started.wait(10)
    threading.Timer(0.2, blocking.release.set).start()
    newest = mgr.latest()  # the save returned: latest() includes it
    assert newest is not None and newest.step == 1 and newest.commit == fut.result().id
    mgr.close()


def crash_state(step: int) -> dict[str, Any]:
    """The state the crash child saves at ``step`` (a chunked weight, a packed bias)."""
    torch.manual_seed(100 + step)
    return {"model": torch.nn.Linear(160, 128).state_dict(), "note": f"state {step}"}


CRASH_CHILD = """
import os, signal, sys, time
from typing import Any
import torch
import tensorvcs as tv
from tensorvcs.format import envelope
from tensorvcs.refs import RefStore
from tensorvcs.store.objects import ObjectStore

{source}

def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)

def patch(point):
    if point == "objects":  # step 4's tensor objects are written, its manifest is not
        put_bytes = ObjectStore.put_bytes
        def put_bytes_or_die(self, kind, content):
            if kind == envelope.KIND_MANIFEST:
                die()
            return put_bytes(self, kind, content)
        ObjectStore.put_bytes = put_bytes_or_die
    elif point == "ref":  # step 4's commit object is written, the branch does not name it
        update = RefStore.update
        def update_or_die(self, name, new, **kw):
            if name == "refs/heads/main":
                die()
            update(self, name, new, **kw)
        RefStore.update = update_or_die
    elif point == "tag":  # step 4 is committed on the branch, its tag is not written
        update = RefStore.update
        def update_or_die(self, name, new, **kw):
            if name == "refs/tags/step-4":
                die()
            update(self, name, new, **kw)
        RefStore.update = update_or_die
    elif point == "drop":  # retention after step 4: the ref transaction is cut short
        log = RefStore.log
        def log_or_die(self, name, old, new, who, message):
            log(self, name, old, new, who, message)
            if name.startswith("refs/tags/") and message.startswith("drop"):
                die()
        RefStore.log = log_or_die

repo = tv.Repo.open(sys.argv[1])
mgr = tv.CheckpointManager(repo, keep=[tv.KeepLast(3)])  # async commits
for step in (1, 2, 3):
    mgr.save(crash_state(step), step=step)
mgr.wait()
patch(sys.argv[2])
mgr.save(crash_state(4), step=4).result()  # SIGKILLed in the background thread
sys.exit(3)
"""


def first_parent_ids(repo: tv.Repo) -> list[str]:
    out, oid = [], repo.resolve("main")
    while oid:
        out.append(oid)
        parents = repo.get_commit(oid).parents
        oid = parents[0] if parents else None
    return out


@pytest.mark.parametrize(("point", "newest"), [("objects", 3), ("ref", 3), ("tag", 4), ("drop", 4)])
def test_restore_after_sigkill_mid_async_commit_finds_the_newest_complete_step(
    tmp_path: Path, point: str, newest: int
) -> None:
    import inspect
    import signal

    tv.Repo.init(tmp_path / "run").close()
    script = tmp_path / "child.py"
    script.write_text(CRASH_CHILD.format(source=inspect.getsource(crash_state)))
    child = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), point],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr

    # a fresh process: the newest complete checkpoint, whatever the tags say
    repo = tv.Repo.open(tmp_path / "run")
    chain = first_parent_ids(repo)
    # the branch's history: retention had dropped step 1 when the kill came at "drop"
    history = [4, 3, 2] if point == "drop" else list(range(newest, 0, -1))
    assert [repo.get_commit(o).step for o in chain] == history
    tags = repo.tags()
    if point == "drop":  # the drop's ref transaction was completed when the repo was opened
        assert all(oid in chain for oid in tags.values()), tags
        assert set(tags) == {"step-2", "step-3", "step-4"}
        by_tag = tv.CheckpointManager(repo)  # a tag left behind resumes the branch's copy
        assert by_tag.restore(ref="step-4", model=torch.nn.Linear(160, 128)) == {"note": "state 4"}
        assert by_tag.restored_from == chain[0]
    else:
        assert set(tags) == {"step-1", "step-2", "step-3"}  # never a tag of step 4

    mgr = tv.CheckpointManager(repo, keep=[tv.KeepLast(3)])
    assert mgr.latest() is not None and mgr.latest().commit == chain[0]  # type: ignore[union-attr]
    model = torch.nn.Linear(160, 128)
    rest = mgr.restore(model=model)
    assert rest == {"note": f"state {newest}"}
    assert mgr.step == newest and mgr.restored_from == chain[0]
    assert_state_bitwise_equal(dict(model.state_dict()), dict(crash_state(newest)["model"]))
    assert repo.tags()[f"step-{newest}"] == chain[0]  # a tag the crash lost is written again
    assert tv.fsck(repo).ok

    # the run goes on: retention and tags as if nothing had happened
    mgr.save(crash_state(newest + 1), step=newest + 1)
    mgr.close()
    steps = [newest - 1, newest, newest + 1]
    assert [c.step for c in mgr.checkpoints()] == steps
    chain = first_parent_ids(repo)
    assert repo.tags() == {f"step-{s}": chain[newest + 1 - s] for s in steps}
    for s in steps:
        out = repo.checkout(f"step-{s}")
        out.pop(STATE_KEY)
        assert_state_bitwise_equal(out, crash_state(s))
    assert tv.fsck(repo).ok
    repo.close()


# -- the same through Lightning's TVCSCheckpoint and the Hugging Face callback ------------------
def test_lightning_tvcs_checkpoint_keep_last_3_and_resume_from_latest(tmp_path: Path) -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from tensorvcs.integrations.lightning import TVCSCheckpoint, TVCSCheckpointIO

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Linear(8, 1)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    class Record(pl.Callback):
        def __init__(self) -> None:
            self.weights: dict[int, dict[str, torch.Tensor]] = {}

        def on_train_batch_end(self, trainer: Any, module: Any, *args: Any) -> None:
            sd = module.state_dict()
            self.weights[trainer.global_step] = {k: v.detach().clone() for k, v in sd.items()}

    g = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 8, generator=g), torch.randn(32, 1)), 4)
    kw: dict[str, Any] = dict(
        default_root_dir=str(tmp_path),
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    repo = tv.Repo.init(tmp_path / "run")
    record = Record()
    ckpt = TVCSCheckpoint(repo, every_n_steps=1, keep=[tv.KeepLast(3)])
    assert ckpt.latest_ckpt_path() is None
    pl.Trainer(max_steps=6, callbacks=[ckpt, record], **kw).fit(Module(), data)
    assert [c.step for c in repo.log()] == [6, 5, 4]
    assert set(repo.tags()) == {"step-4", "step-5", "step-6"}
    for step in (4, 5, 6):
        assert_state_bitwise_equal(
            repo.checkout(f"step-{step}")["state_dict"], record.weights[step]
        )

    # the documented resume: the newest complete checkpoint (None on a fresh start)
    again = TVCSCheckpoint(repo, every_n_steps=1, keep=[tv.KeepLast(3)])
    latest = again.latest_ckpt_path()
    assert latest == repo.resolve("step-6")
    trainer = pl.Trainer(max_steps=8, plugins=[TVCSCheckpointIO(repo)], callbacks=[again], **kw)
    trainer.fit(Module(), data, ckpt_path=latest)
    assert trainer.global_step == 8 and again.manager.step == 8
    assert [c.step for c in repo.log()] == [8, 7, 6]


def test_hf_trainer_callback_keep_last_3_and_checkout_latest(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from safetensors.torch import load_file

    from tensorvcs.integrations.transformers import TVCSTrainerCallback

    class Data(torch.utils.data.Dataset):  # type: ignore[type-arg]
        def __init__(self) -> None:
            g = torch.Generator().manual_seed(0)
            self.x, self.y = torch.randint(0, 32, (24, 6), generator=g), torch.randint(0, 2, (24,))

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.x[i], "labels": self.y[i]}

    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=8,
        num_labels=2,
    )
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=6,
        save_steps=1,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    repo = tv.Repo.init(tmp_path / "run")
    cb = TVCSTrainerCallback(repo, keep=[tv.KeepLast(3)])
    assert cb.checkout_latest(tmp_path / "nothing") is None
    transformers.Trainer(model=model, args=args, train_dataset=Data(), callbacks=[cb]).train()
    cb.close()
    assert [c.step for c in repo.log()] == [6, 5, 4]
    assert set(repo.tags()) == {"step-4", "step-5", "step-6"}
    for step in (4, 5, 6):
        folder = tmp_path / "out" / f"checkpoint-{step}"
        files = repo.checkout(f"step-{step}")["files"]
        on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert set(files) == on_disk
        weights = files["model.safetensors"]["tensors"]
        assert_state_bitwise_equal(weights, load_file(folder / "model.safetensors"))
        state = files["trainer_state.json"]["data"]
        assert state == (folder / "trainer_state.json").read_bytes()
    resume = cb.checkout_latest(tmp_path / "resume")
    assert resume == str(tmp_path / "resume")
    assert (tmp_path / "resume" / "trainer_state.json").read_bytes() == (
        tmp_path / "out" / "checkpoint-6" / "trainer_state.json"
    ).read_bytes()
