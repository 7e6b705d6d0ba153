"""Checkpoints the real frameworks wrote, through the real ``tvcs`` script: commit, check out
into a fresh folder, resume (issue 12, item 1).

- a Hugging Face ``Trainer`` ``checkpoint-N/`` folder (its ``rng_state.pth`` holds numpy RNG
  state, its ``training_args.bin`` a pickled ``TrainingArguments``): committed without
  ``--unsafe-pickle``; ``Trainer.train(resume_from_checkpoint=...)`` from the checked-out
  folder ends bitwise where the uninterrupted run ended, ``from_pretrained`` loads equal
  weights;
- a Lightning ``.ckpt`` file a real ``lightning.Trainer`` wrote: ``fit(ckpt_path=...)`` from
  the checked-out file ends bitwise where the uninterrupted run ended;
- a PEFT adapter folder: ``PeftModel.from_pretrained`` on the checked-out folder loads the
  adapter bitwise.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tensorvcs import Repo

TVCS = Path(sys.executable).parent / "tvcs"


def tvcs(cwd: Path, *args: str | Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    cmd = [str(TVCS)] if TVCS.exists() else [sys.executable, "-m", "tensorvcs.cli"]
    env = {k: v for k, v in os.environ.items() if k not in ("TVCS_REPO", "TVCS_DEBUG")}
    res = subprocess.run(
        [*cmd, *map(str, args)], cwd=cwd, env=env, text=True, capture_output=True, timeout=300
    )
    assert res.returncode == code, (args, res.returncode, res.stdout, res.stderr)
    return res


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bitwise_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype
        and a[k].shape == b[k].shape
        and torch.equal(a[k].reshape(-1).view(torch.uint8), b[k].reshape(-1).view(torch.uint8))
        for k in a
    )


# -- Hugging Face ------------------------------------------------------------------------------
class TinyDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int = 16, seq: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 64, (n, seq), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones_like(self.ids[i]),
            "labels": self.labels[i],
        }


def tiny_bert(transformers: Any) -> Any:
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.1,  # dropout in play: resume must restore the RNG states
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def hf_trainer(transformers: Any, out: Path, max_steps: int, callbacks: Any = ()) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        save_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        warmup_steps=1,
        seed=0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return transformers.Trainer(
        model=tiny_bert(transformers),
        args=args,
        train_dataset=TinyDataset(),
        callbacks=list(callbacks),
    )


def test_hf_trainer_folder_commits_checks_out_and_resumes_bitwise(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from tensorvcs.integrations.transformers import TVCSTrainerCallback

    cb = TVCSTrainerCallback(tmp_path / "run")  # the Python callback commits into run/
    straight = hf_trainer(transformers, tmp_path / "out", max_steps=4, callbacks=[cb])
    straight.train()  # writes out/checkpoint-2/ and out/checkpoint-4/
    cb.close()
    folder = tmp_path / "out" / "checkpoint-2"
    names = sorted(p.name for p in folder.iterdir())
    assert {"rng_state.pth", "training_args.bin", "model.safetensors", "optimizer.pt"} <= set(names)

    Repo.init(tmp_path).close()
    res = tvcs(tmp_path, "commit", "out/checkpoint-2/", "-m", "hf step 2", "--step", "2")
    assert res.stdout.splitlines()[1].startswith(f" {len(names)} file(s), ")
    assert res.stderr == (
        "tvcs: note: out/checkpoint-2/training_args.bin: a pickle of settings, not a "
        "checkpoint: stored as opaque bytes, never unpickled\n"
    )
    res = tvcs(tmp_path, "checkout", "HEAD", "-o", "fresh/")
    assert res.stdout.splitlines()[-1].startswith(f"checked out {len(names)} file(s) from ")
    back = tmp_path / "fresh" / "out" / "checkpoint-2"
    assert sorted(p.name for p in back.iterdir()) == names
    for name in names:  # JSON, safetensors and the settings pickle come back byte for byte
        if not name.endswith((".pt", ".pth")):
            assert (back / name).read_bytes() == (folder / name).read_bytes(), name

    resumed = hf_trainer(transformers, tmp_path / "out2", max_steps=4)
    resumed.train(resume_from_checkpoint=str(back))
    assert resumed.state.global_step == 4
    assert bitwise_same(weights(resumed.model), weights(straight.model))

    # item 2: a commit the callback made (no files recorded) checks out as the folder
    res = tvcs(tmp_path, "--repo", "run", "checkout", "step-2", "-o", "from-callback/")
    assert res.stdout.splitlines()[-1].startswith(f"checked out {len(names)} file(s) from ")
    from_cb = tmp_path / "from-callback"
    assert sorted(p.name for p in from_cb.iterdir()) == names
    for name in names:
        if not name.endswith((".pt", ".pth")):
            assert (from_cb / name).read_bytes() == (folder / name).read_bytes(), name
    again = hf_trainer(transformers, tmp_path / "out3", max_steps=4)
    again.train(resume_from_checkpoint=str(from_cb))
    assert bitwise_same(weights(again.model), weights(straight.model))

    cls = transformers.BertForSequenceClassification
    assert bitwise_same(
        weights(cls.from_pretrained(str(back))), weights(cls.from_pretrained(str(folder)))
    )


# -- Lightning ---------------------------------------------------------------------------------
def test_lightning_ckpt_commits_checks_out_and_resumes_bitwise(tmp_path: Path) -> None:
    L = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch.utils.data import DataLoader, TensorDataset

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)
            )

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return torch.nn.functional.mse_loss(self.net(x), y)

        def configure_optimizers(self) -> Any:
            opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
            return {"optimizer": opt, "lr_scheduler": sched}

    def loader() -> DataLoader:
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(8, 8, generator=g), torch.randn(8, 1)), 4)

    def trainer(**kw: Any) -> Any:
        return L.Trainer(
            default_root_dir=str(tmp_path),
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_epochs=3,
            **kw,
        )

    L.seed_everything(0)
    mc = ModelCheckpoint(dirpath=tmp_path / "ckpts", save_top_k=-1, every_n_epochs=1)
    straight = Net()
    trainer(callbacks=[mc]).fit(straight, loader())
    ckpt = "ckpts/epoch=0-step=2.ckpt"
    assert (tmp_path / ckpt).is_file()

    Repo.init(tmp_path).close()
    tvcs(tmp_path, "commit", ckpt, "-m", "epoch 0")
    tvcs(tmp_path, "checkout", "HEAD", "-o", "fresh/")
    back = tmp_path / "fresh" / ckpt
    original = torch.load(tmp_path / ckpt, weights_only=True)
    restored = torch.load(back, weights_only=True)
    assert sorted(restored) == sorted(original)
    assert bitwise_same(restored["state_dict"], original["state_dict"])
    assert restored["loops"] == original["loops"]

    L.seed_everything(0)
    resumed = Net()
    trainer(enable_checkpointing=False).fit(resumed, loader(), ckpt_path=str(back))
    assert bitwise_same(weights(resumed), weights(straight))


# -- PEFT --------------------------------------------------------------------------------------
def test_peft_adapter_folder_commits_and_loads_from_checkout(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    model = peft.get_peft_model(tiny_bert(transformers), config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.save_pretrained(tmp_path / "adapter")
    names = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names

    Repo.init(tmp_path).close()
    tvcs(tmp_path, "commit", "adapter/", "-m", "adapter v1")
    tvcs(tmp_path, "checkout", "HEAD", "-o", "fresh/")
    back = tmp_path / "fresh" / "adapter"
    for name in names:  # every file of the folder byte for byte
        assert (back / name).read_bytes() == (tmp_path / "adapter" / name).read_bytes(), name
    loaded = peft.PeftModel.from_pretrained(tiny_bert(transformers), str(back))
    mine = {k: v for k, v in weights(model).items() if "lora_" in k}
    theirs = {k: v for k, v in weights(loaded).items() if "lora_" in k}
    assert mine and bitwise_same(mine, theirs)
