"""Lightning: TVCSCheckpointIO under ModelCheckpoint, TVCSCheckpoint under manual optimization,
weights-only resume, and adapter fine-tunes that store only the adapter per commit."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import tensorvcs as tv

L = pytest.importorskip("lightning.pytorch")
from tensorvcs.integrations.lightning import TVCSCheckpoint, TVCSCheckpointIO  # noqa: E402

FLAVOURS = ["lightning"]
if importlib.util.find_spec("pytorch_lightning") is not None:
    FLAVOURS.append("pytorch_lightning")


def flavour(name: str) -> tuple[Any, Any, Any]:
    """(package, ModelCheckpoint, integration module) of ``lightning`` or ``pytorch_lightning``."""
    if name == "lightning":
        import lightning.pytorch as pl
        from lightning.pytorch.callbacks import ModelCheckpoint

        import tensorvcs.integrations.lightning as integ
    else:
        import pytorch_lightning as pl
        from pytorch_lightning.callbacks import ModelCheckpoint

        import tensorvcs.integrations.pytorch_lightning as integ
    return pl, ModelCheckpoint, integ


def loader(n: int = 32, batch: int = 4) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 8, generator=g)
    y = torch.randn(n, 1, generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


def trainer_kwargs(root: Path, **kw: Any) -> dict[str, Any]:
    base = dict(
        default_root_dir=str(root),
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    base.update(kw)
    if not any(type(c).__name__ == "ModelCheckpoint" for c in base.get("callbacks", [])):
        base["enable_checkpointing"] = False  # no default ModelCheckpoint saving on its own
    return base


def module_classes(pl: Any) -> tuple[type, type]:
    class Auto(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
            )

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    class Manual(Auto):
        """Manual optimization, stepping in on_train_batch_end (outside training_step)."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.net(x), y)
            self.manual_backward(loss)
            self.log("train_loss", loss)
            return loss.detach()

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            opt.step()
            opt.zero_grad()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.05)

    return Auto, Manual


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# -- issue 4: manual optimization -----------------------------------------------------------------
@pytest.mark.parametrize("name", FLAVOURS)
def test_manual_optimization_steps_are_counted(tmp_path: Path, name: str) -> None:
    pl, ModelCheckpoint, integ = flavour(name)
    _, Manual = module_classes(pl)
    pl.seed_everything(0)
    repo = tv.Repo.init(tmp_path / "run")
    stock = ModelCheckpoint(dirpath=tmp_path / "stock", every_n_train_steps=2, save_top_k=-1)
    ours = integ.TVCSCheckpoint(repo, every_n_steps=2)
    model = Manual()
    trainer = pl.Trainer(
        **trainer_kwargs(tmp_path, max_epochs=1, limit_train_batches=8, callbacks=[stock, ours])
    )
    trainer.fit(model, loader())
    # the seed failure: Lightning counts no step taken outside training_step, so
    # ModelCheckpoint(every_n_train_steps=2) never fires
    assert trainer.global_step == 0
    assert not (tmp_path / "stock").exists() or not any((tmp_path / "stock").iterdir())
    # counting real optimizer steps: a commit every 2 of the 8 steps
    assert [c.step for c in repo.log()] == [8, 6, 4, 2]
    assert set(repo.tags()) == {"step-2", "step-4", "step-6", "step-8"}
    last = repo.checkout("step-8")
    assert same({k[4:]: v for k, v in last["state_dict"].items()}, weights(model.net))
    assert "optimizer_states" in last and "loops" in last

    # resuming from step-4 continues the real step count on a branch forked there
    cb2 = integ.TVCSCheckpoint(repo, every_n_steps=2, branch="resumed")
    t2 = pl.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_epochs=1,
            limit_train_batches=8,
            plugins=[integ.TVCSCheckpointIO(repo)],
            callbacks=[cb2],
        )
    )
    t2.fit(Manual(), loader(), ckpt_path="step-4")
    assert cb2.manager.step == 8
    assert t2.fit_loop.epoch_loop.batch_progress.total.completed == 8
    log = repo.log("resumed")
    assert [c.step for c in log] == [8, 6, 4, 2] and log[2].id == repo.resolve("step-4")
    tags = repo.tags()  # the resumed run's tags are its own; the first run's stay put
    assert tags["resumed/step-8"] == log[0].id and tags["step-8"] == repo.resolve("main")


# -- TVCSCheckpointIO under ModelCheckpoint --------------------------------------------------------
@pytest.mark.parametrize("async_commit", [False, True])
def test_checkpoint_io_top_k_last_remove_and_resume(tmp_path: Path, async_commit: bool) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    Auto, _ = module_classes(L)
    L.seed_everything(0)
    repo = tv.Repo.init(tmp_path)
    io = TVCSCheckpointIO(repo, async_commit=async_commit)
    ckdir = tmp_path / "ckpts"
    mc = ModelCheckpoint(
        dirpath=ckdir,
        monitor="train_loss",
        save_top_k=2,
        every_n_train_steps=2,
        save_last=True,
        filename="{step}",
    )
    model = Auto()
    trainer = L.Trainer(**trainer_kwargs(tmp_path, max_steps=8, plugins=[io], callbacks=[mc]))
    trainer.fit(model, loader())
    files = sorted(p.name for p in ckdir.iterdir())
    assert "last.ckpt" in files and len(files) == 3  # top-2 plus last: pointer files
    tags = repo.tags()
    assert set(tags) == {f"ckpt/ckpts/{Path(f).stem}" for f in files}
    assert set(mc.best_k_models) == {str(ckdir / f) for f in files if f != "last.ckpt"}
    # removed checkpoints are gone from history too, and gc freed them
    steps = sorted(c.step for c in repo.log())
    # save_last saves the newest top-k state again: no second commit, its tag names the same
    assert tags["ckpt/ckpts/last"] == tags["ckpt/ckpts/step=8"]
    assert len(steps) == len(set(tags.values())) == 2, steps
    for c in repo.log():
        assert c.metrics.get("train_loss") is not None
    assert tv.fsck(repo).ok
    best = io.load_checkpoint(mc.best_model_path)
    assert best["global_step"] == int(Path(mc.best_model_path).stem.split("=")[1])
    assert best["callbacks"] and best["optimizer_states"]

    # resume from last.ckpt (a pointer file) and from a tag: both continue to max_steps
    for ckpt_path in (str(ckdir / "last.ckpt"), "ckpt/ckpts/last", "last"):
        m2 = Auto()
        mc2 = ModelCheckpoint(dirpath=ckdir, save_last=True, save_top_k=0)
        t2 = L.Trainer(
            **trainer_kwargs(
                tmp_path, max_steps=10, plugins=[TVCSCheckpointIO(repo)], callbacks=[mc2]
            )
        )
        t2.fit(m2, loader(), ckpt_path=ckpt_path)
        assert t2.global_step == 10


def test_checkpoint_io_reads_plain_torch_files_and_refuses_unknown_paths(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path)
    io = TVCSCheckpointIO(repo, async_commit=False)  # the tag exists when save returns
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "old.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "old.ckpt")["state_dict"]["w"], torch.ones(2))
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "nothing.ckpt")
    io.save_checkpoint({"global_step": 3, "state_dict": {"w": torch.zeros(2)}}, "/elsewhere/a.ckpt")
    assert repo.show("ckpt/a").step == 3  # outside the repository: the file name's stem
    io.remove_checkpoint("/elsewhere/a.ckpt")
    assert repo.tags() == {} and repo.log() == []


def test_checkpoint_io_commits_in_the_background_by_default_in_save_order(tmp_path: Path) -> None:
    """TVCSCheckpointIO's default is asynchronous, as TVCSCheckpoint's and the transformers
    callback's; writers on one repository wait for each other's commit in flight, so a small
    save made while a big one is still being written lands after it (without that, the small
    one became the big one's parent)."""
    import inspect

    from tensorvcs.integrations.transformers import TVCSTrainerCallback

    repo = tv.Repo.init(tmp_path)
    big_io, small_io = TVCSCheckpointIO(repo), TVCSCheckpointIO(repo)
    defaults = [
        inspect.signature(k.__init__).parameters["async_commit"].default
        for k in (TVCSCheckpointIO, TVCSCheckpoint, TVCSTrainerCallback, tv.CheckpointManager)
    ]
    assert defaults == [True, True, True, True]
    g = torch.Generator().manual_seed(0)
    big = {"global_step": 1, "state_dict": {"w": torch.randn(8 << 20, generator=g)}}
    big_io.save_checkpoint(big, tmp_path / "big.ckpt")  # returns after the CPU copy
    assert big_io._committer.busy
    small_io.save_checkpoint({"global_step": 2, "state_dict": {"w": torch.ones(2)}},
                             tmp_path / "small.ckpt")
    small_io.teardown()
    big_io.teardown()
    assert [c.step for c in repo.log()] == [2, 1]
    assert repo.show("ckpt/big").step == 1 and repo.show("ckpt/small").step == 2


# -- issue 3: weights-only checkpoints ------------------------------------------------------------
def test_weights_only_commit_and_resume_without_key_error(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    Auto, _ = module_classes(L)
    L.seed_everything(0)
    repo = tv.Repo.init(tmp_path)
    cb = TVCSCheckpoint(repo, every_n_steps=3, save_weights_only=True, async_commit=False)
    mc = ModelCheckpoint(dirpath=tmp_path / "mc", save_weights_only=True, every_n_train_steps=4)
    model = Auto()
    t = L.Trainer(
        **trainer_kwargs(
            tmp_path, max_steps=6, plugins=[TVCSCheckpointIO(repo)], callbacks=[cb, mc]
        )
    )
    t.fit(model, loader())
    ours = repo.checkout("step-6")
    assert "optimizer_states" not in ours and "lr_schedulers" not in ours
    theirs = repo.checkout("ckpt/mc/epoch=0-step=4")
    assert "optimizer_states" not in theirs

    # the seed failure: stock Lightning cannot resume a weights-only checkpoint
    t_stock = L.Trainer(**trainer_kwargs(tmp_path, max_steps=9, plugins=[TVCSCheckpointIO(repo)]))
    with pytest.raises(KeyError, match="optimizer"):
        t_stock.fit(Auto(), loader(), ckpt_path="step-6")

    # with TVCSCheckpoint: weights, epoch and step restored, optimizer/scheduler start fresh
    for i, ref in enumerate(("step-6", str(tmp_path / "mc" / "epoch=0-step=4.ckpt"))):
        resumed = Auto()
        cb2 = TVCSCheckpoint(
            repo,
            every_n_steps=3,
            save_weights_only=True,
            branch=f"resumed{i}",
            tag_format=f"r{i}-{{step}}",
        )
        t2 = L.Trainer(
            **trainer_kwargs(
                tmp_path, max_steps=9, plugins=[TVCSCheckpointIO(repo)], callbacks=[cb2]
            )
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            t2.fit(resumed, loader(), ckpt_path=ref)
        assert any("weights-only" in str(w.message) for w in caught)
        assert t2.global_step == 9
    # each resumed run's branch forks at the commit it resumed from
    assert [c.step for c in repo.log("resumed0")] == [9, 6, 4, 3]  # from 6: saved at 9
    assert [c.step for c in repo.log("resumed1")] == [9, 6, 4, 3]  # from 4: saved at 6, 9
    assert repo.log("resumed1")[2].id == repo.resolve("ckpt/mc/epoch=0-step=4")
    assert set(repo.tags()) >= {"r0-9", "r1-6", "r1-9"}


# -- issue 1: adapter fine-tunes ------------------------------------------------------------------
def adapter_model() -> torch.nn.Module:
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = torch.nn.Sequential(
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 256),
        torch.nn.ReLU(),
        torch.nn.Linear(256, 1),
    )
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["0", "2"], lora_dropout=0.0)
    return peft.get_peft_model(base, config)


def test_adapter_finetune_stores_only_adapter_bytes_and_resumes_strictly(tmp_path: Path) -> None:
    class LoRA(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = adapter_model()

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.model(x), y)

        def configure_optimizers(self) -> Any:
            params = [p for p in self.parameters() if p.requires_grad]
            return torch.optim.AdamW(params, lr=1e-2)

    g = torch.Generator().manual_seed(0)
    data = DataLoader(
        TensorDataset(torch.randn(24, 256, generator=g), torch.randn(24, 1, generator=g)),
        batch_size=4,
    )
    repo = tv.Repo.init(tmp_path)
    cb = TVCSCheckpoint(repo, every_n_steps=1, async_commit=False)
    model = LoRA()
    trainable = [p for p in model.parameters() if p.requires_grad]
    adapter_bytes = sum(p.numel() * p.element_size() for p in trainable)
    total_bytes = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    assert adapter_bytes < total_bytes / 20  # a frozen base, small LoRA layers
    optimizer_bytes = 2 * adapter_bytes + 4 * len(trainable)  # exp_avg, exp_avg_sq, step
    t = L.Trainer(**trainer_kwargs(tmp_path, max_steps=5, callbacks=[cb]))
    t.fit(model, data)
    saved = cb.manager.saved
    assert [s.step for s in saved] == [1, 2, 3, 4, 5]
    assert saved[0].new_stored_bytes > total_bytes * 0.8  # the first commit stores the base
    for s in saved[1:]:  # every later commit: only the adapter and its optimizer state
        assert s.new_stored_bytes <= 1.05 * (adapter_bytes + optimizer_bytes), s

    # strict resume: the full state dict goes back into a fresh model, no strict=False needed
    fresh = LoRA()
    assert fresh.strict_loading
    report = repo.load_into(fresh, "step-5", key="state_dict", strict=True)
    assert report.ok and same(weights(fresh), weights(model))
    t2 = L.Trainer(
        **trainer_kwargs(
            tmp_path,
            max_steps=7,
            plugins=[TVCSCheckpointIO(repo)],
            callbacks=[TVCSCheckpoint(repo, every_n_steps=1, async_commit=False)],
        )
    )
    t2.fit(LoRA(), data, ckpt_path="step-5")
    assert t2.global_step == 7


POINTER_CHILD = """
import os, signal, sys, torch
import tensorvcs as tv
from tensorvcs.integrations.lightning import TVCSCheckpointIO
from tensorvcs.refs import RefStore

repo = tv.Repo.open(sys.argv[1])
io = TVCSCheckpointIO(repo, async_commit=True)
path = os.path.join(sys.argv[1], "last.ckpt")
io.save_checkpoint({"global_step": 1, "w": torch.full((4,), 1.0)}, path)
io.teardown()
update = RefStore.update
def update_or_die(self, name, new, **kw):
    if name.startswith("refs/tags/") and "step=3" in name:  # step 3 committed, not tagged
        os.kill(os.getpid(), signal.SIGKILL)
    update(self, name, new, **kw)
RefStore.update = update_or_die
io.save_checkpoint({"global_step": 2, "w": torch.full((4,), 2.0)}, path)
io.teardown()
io.save_checkpoint({"global_step": 3}, os.path.join(sys.argv[1], "step=3.ckpt"))
io.teardown()
sys.exit(3)
"""


def test_checkpoint_io_pointer_names_a_complete_checkpoint_after_a_kill(tmp_path: Path) -> None:
    """An async save killed before its commit is tagged leaves no pointer file that names a
    missing checkpoint (the pointer is written after the commit and its tag); the pointers
    written before name complete checkpoints."""
    import signal
    import subprocess
    import sys

    tv.Repo.init(tmp_path).close()
    script = tmp_path / "child.py"
    script.write_text(POINTER_CHILD)
    child = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    with tv.Repo.open(tmp_path) as repo:
        io = TVCSCheckpointIO(repo)
        got = io.load_checkpoint(tmp_path / "last.ckpt")
        assert got["global_step"] == 2 and torch.equal(got["w"], torch.full((4,), 2.0))
        assert not (tmp_path / "step=3.ckpt").exists()
        assert tv.fsck(repo).ok
