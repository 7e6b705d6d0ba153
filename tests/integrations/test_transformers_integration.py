"""Hugging Face Trainer: every checkpoint folder committed, resume from a ref, PEFT adapters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import tensorvcs as tv

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from tensorvcs.integrations.transformers import (  # noqa: E402
    TVCSTrainerCallback,
    checkout_to_dir,
    commit_dir,
)


class TinyDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    def __init__(self, n: int = 24, seq: int = 8) -> None:
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


def tiny_bert() -> Any:
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.1,  # dropout in play: resume must restore the RNG states
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def make_trainer(out: Path, callbacks: list[Any], max_steps: int = 6, model: Any = None) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=max_steps,
        save_steps=2,
        logging_steps=1,
        learning_rate=1e-3,
        warmup_steps=2,
        seed=0,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return transformers.Trainer(
        model=model if model is not None else tiny_bert(),
        args=args,
        train_dataset=TinyDataset(),
        callbacks=callbacks,
    )


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def bitwise_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(
        a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8))
        for k in a
    )


def test_trainer_checkpoints_are_committed_and_resume_from_a_ref(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path / "run")
    cb = TVCSTrainerCallback(repo, keep=[tv.KeepLast(2)])
    trainer = make_trainer(tmp_path / "out", [cb])
    trainer.train()
    cb.close()
    straight = weights(trainer.model)

    # every save committed (with step and the logged metrics); retention kept the last 2
    assert [c.step for c in repo.log()] == [6, 4]
    assert set(repo.tags()) == {"step-4", "step-6"}
    c = repo.show("step-4")
    assert "loss" in c.metrics and "learning_rate" in c.metrics
    state = repo.checkout("step-4")
    files = state["files"]
    for name in (
        "model.safetensors",
        "optimizer.pt",
        "scheduler.pt",
        "rng_state.pth",
        "trainer_state.json",
        "config.json",
        "training_args.bin",
    ):
        assert name in files, name
    assert files["model.safetensors"]["format"] == "safetensors"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):  # weights_only loads
        assert files[name]["format"] == "torch", name
    assert files["trainer_state.json"]["format"] == "bytes"  # JSON kept byte for byte
    assert files["training_args.bin"]["format"] == "bytes"  # a pickle: never unpickled
    original = tmp_path / "out" / "checkpoint-4"
    assert files["trainer_state.json"]["data"] == (original / "trainer_state.json").read_bytes()
    assert json.loads(files["trainer_state.json"]["data"])["global_step"] == 4

    # a strict load of the model weights straight from a commit
    fresh = tiny_bert()
    report = repo.load_into(fresh, "step-6", key=["files", "model.safetensors", "tensors"])
    assert report.ok and bitwise_same(weights(fresh), straight)

    # resume from the ref: checked out to a folder, the Trainer continues bit for bit
    resume_dir = checkout_to_dir(repo, "step-4", tmp_path / "resume")
    for name in ("trainer_state.json", "config.json", "training_args.bin"):
        assert (Path(resume_dir) / name).read_bytes() == (original / name).read_bytes()
    resumed = make_trainer(tmp_path / "out2", [])
    resumed.train(resume_from_checkpoint=resume_dir)
    assert resumed.state.global_step == 6
    from_hf_dir = make_trainer(tmp_path / "out3", [])
    from_hf_dir.train(resume_from_checkpoint=str(original))
    assert bitwise_same(weights(resumed.model), weights(from_hf_dir.model))
    assert bitwise_same(weights(resumed.model), straight)


def test_peft_adapter_folder_commits_and_checks_out(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    repo = tv.Repo.init(tmp_path / "run")
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    model = peft.get_peft_model(tiny_bert(), config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.save_pretrained(tmp_path / "adapter")
    names = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert "adapter_model.safetensors" in names and "adapter_config.json" in names
    c = commit_dir(repo, tmp_path / "adapter", "adapter v1", tags=["adapter-v1"])
    assert repo.show("adapter-v1").id == c.id

    out = checkout_to_dir(repo, "adapter-v1", tmp_path / "checked-out")
    assert (Path(out) / "adapter_config.json").read_bytes() == (
        tmp_path / "adapter" / "adapter_config.json"
    ).read_bytes()
    loaded = peft.PeftModel.from_pretrained(tiny_bert(), out)
    mine = {k: v for k, v in weights(model).items() if "lora_" in k}
    theirs = {k: v for k, v in weights(loaded).items() if "lora_" in k}
    assert mine and bitwise_same(mine, theirs)

    # a second version of the adapter stores only what changed
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if "lora_B" in n).add_(1.0)
    model.save_pretrained(tmp_path / "adapter")
    commit_dir(repo, tmp_path / "adapter", "adapter v2", tags=["adapter-v2"])
    one_tensor = next(v for k, v in mine.items() if "lora_B" in k)
    assert repo.last_write_stats.new_stored_bytes <= 2 * one_tensor.numel() * 4 + 512


def test_trainer_with_peft_model_commits_adapter_checkpoints(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    repo = tv.Repo.init(tmp_path / "run")
    cb = TVCSTrainerCallback(repo)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"
    )
    model = peft.get_peft_model(tiny_bert(), config)
    trainer = make_trainer(tmp_path / "out", [cb], max_steps=4, model=model)
    trainer.train()
    cb.close()
    files = repo.checkout("step-4")["files"]
    assert "adapter_model.safetensors" in files and "adapter_config.json" in files
    resume = checkout_to_dir(repo, "step-2", tmp_path / "resume")
    assert (Path(resume) / "adapter_model.safetensors").is_file()
