"""Training while an async commit runs (issue 11, goal 4): the per-step wall time of the
demo's MiniLM fine-tune loop (examples/demo.py's ``Trainer``: batch 8, AdamW, one torch
intra-op thread) with a ``CheckpointManager`` saving the full training state (model, AdamW,
scheduler, epoch, data position, RNG) every ``--every`` steps in the background.

Each step's train time (forward, backward, optimizer and scheduler step) is classified by
the background jobs' intervals (from ``save()`` returning, the snapshot taken, to the end of
the background job: the commit, retention and gc, and the delta re-encodings after it with
``compact_in_background``): *busy* when a commit runs for the
whole step, *idle* when none runs at any time of it, *partial* otherwise. The figure is
median(busy) / median(idle) of the same run; goal 4 asks for at most 1.25. The time the
loop spends in ``save()`` itself (the host snapshot, plus any wait for a commit still in
flight) is reported apart.

Configurations are measured in the same process, interleaved round by round (config A's
round 1, B's round 1, A's round 2, ...) so that the load of other processes on the machine
falls on all of them alike; each has its own repository (its first commit is a warm-up, not
measured). The load average is recorded at every round.

    .venv/bin/python bench/async_step.py                      # before vs after, 3 rounds
    .venv/bin/python bench/async_step.py --rounds 2 --steps 30 --configs default,bounded

Configurations (``--configs``): ``default`` is ``CheckpointManager``'s behaviour before the
knobs existed (the repository's pool: ``default_workers()`` threads at normal priority, the
parent chunks re-encoded as deltas during the commit); ``bounded`` the documented defaults
now (see docs/integrations.md, "Background work"); the others vary one knob.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

import tensorvcs as tv  # noqa: E402

TARGET = 1.25
PAIRED_IDLE = 4  # idle steps before a commit its busy steps are compared with

# manager keyword arguments of each configuration
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {"background_threads": None, "background_nice": 0, "defer_deltas": False},
    "bounded": {},  # the manager's defaults
    "nodefer": {"background_threads": 1, "background_nice": 10, "defer_deltas": False},
    "threads1": {"background_threads": 1, "background_nice": 0, "defer_deltas": False},
    "nice": {"background_threads": None, "background_nice": 10, "defer_deltas": False},
    "defer": {"background_threads": None, "background_nice": 0, "defer_deltas": True},
    # the defaults before compact_in_background: every re-encoding waits for close()
    "untilclose": {"compact_in_background": False},
}


def tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())


def load_demo() -> Any:
    spec = importlib.util.spec_from_file_location("tvcs_demo", ROOT / "examples" / "demo.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tvcs_demo"] = mod
    spec.loader.exec_module(mod)
    return mod


def make_trainer(demo: Any) -> Any:
    import transformers
    from transformers import AutoModel, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(demo.TORCH_THREADS)
    torch.manual_seed(demo.SEED)
    mdir = demo.model_dir()
    tokenizer = AutoTokenizer.from_pretrained(mdir)
    model = AutoModel.from_pretrained(mdir)
    enc = dict(padding=True, truncation=True, max_length=32, return_tensors="pt")
    queries = tokenizer([q for q, _ in demo.PAIRS], **enc)
    passages = tokenizer([p for _, p in demo.PAIRS], **enc)
    trainer = demo.Trainer(model, queries, passages)
    # the LR schedule decays over TOTAL_STEPS; the bench runs longer, so make it constant
    trainer.sched = torch.optim.lr_scheduler.LinearLR(trainer.opt, 1.0, 1.0, total_iters=1)
    return trainer


def state_of(trainer: Any) -> dict[str, Any]:
    return {
        "model": trainer.model,
        "optimizer": trainer.opt,
        "scheduler": trainer.sched,
        "epoch": trainer.epoch,
        "data": {"perm": trainer.perm, "pos": trainer.pos},
    }


class Run:
    """One configuration: its repository, its manager, and the steps measured so far."""

    def __init__(self, name: str, kwargs: dict[str, Any], workdir: Path, every: int) -> None:
        self.name = name
        self.kwargs = kwargs
        self.repo = tv.Repo.init(workdir / name)
        self.mgr = tv.CheckpointManager(self.repo, every_n_steps=every, **kwargs)
        self.every = every
        self.steps: list[tuple[float, float]] = []  # train intervals
        self.saves: list[float] = []  # seconds in save()
        # [start, end] of each background job: the commit, retention, and the re-encodings
        # after it (compact_in_background); and of the commit alone (its future)
        self.commits: list[list[float]] = []
        self.commit_only: list[list[float]] = []
        self.loads: list[float] = []
        self.round_s: list[tuple[float, int]] = []  # (wall seconds, steps) of each round
        self.stored_during_run = 0  # the repository's bytes after the last round, before close
        self.stored_after_close = 0
        self.deferred_at_end = 0  # re-encodings still waiting then (for close's compact)

    def save(self, trainer: Any) -> None:
        t0 = time.perf_counter()
        fut = self.mgr.save(state_of(trainer), step=trainer.step)
        t1 = time.perf_counter()
        self.saves.append(t1 - t0)
        span, alone = [t1, float("inf")], [t1, float("inf")]
        self.commits.append(span)
        self.commit_only.append(alone)
        fut.add_done_callback(lambda _f: alone.__setitem__(1, time.perf_counter()))
        job = self.mgr._committer._future or fut  # the whole job, its second part included
        job.add_done_callback(lambda _f: span.__setitem__(1, time.perf_counter()))

    def round(self, trainer: Any, steps: int) -> None:
        self.loads.append(os.getloadavg()[0])
        t_round = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step()
            self.steps.append((t0, time.perf_counter()))
            if trainer.step % self.every == 0:
                self.save(trainer)
        self.round_s.append((time.perf_counter() - t_round, steps))  # saves' waits included
        self.mgr.wait()  # the next config's round starts with nothing in flight

    def result(self) -> dict[str, Any]:
        busy, idle, partial = [], [], []
        for a, b in self.steps:
            covered = any(s <= a and b <= e for s, e in self.commits)
            touched = any(s < b and a < e for s, e in self.commits)
            (busy if covered else partial if touched else idle).append(b - a)
        med = statistics.median
        # paired: each commit's busy steps against the idle steps just before it (same load)
        pairs = []
        for s, e in self.commits:
            during = [b - a for a, b in self.steps if s <= a and b <= e]
            before = [
                b - a
                for a, b in self.steps
                if b <= s and not any(s2 < b and a < e2 for s2, e2 in self.commits)
            ][-PAIRED_IDLE:]
            if during and before:
                pairs.append(med(during) / med(before))
        loop = sum(w for w, _ in self.round_s) / max(1, sum(n for _, n in self.round_s))
        r: dict[str, Any] = {
            "kwargs": {k: v for k, v in self.kwargs.items()},
            "manager": {
                "background_threads": self.mgr.background_threads,
                "background_nice": self.mgr.background_nice,
                "defer_deltas": self.mgr.defer_deltas,
                "compact_in_background": self.mgr.compact_in_background,
            },
            "steps_idle": len(idle),
            "steps_busy": len(busy),
            "steps_partial": len(partial),
            "idle_s": med(idle) if idle else None,
            "busy_s": med(busy) if busy else None,
            "partial_s": med(partial) if partial else None,
            "save_call_s": med(self.saves) if self.saves else None,
            "commit_s": med([e - s for s, e in self.commit_only]) if self.commits else None,
            "job_s": med([e - s for s, e in self.commits]) if self.commits else None,
            "stored_during_run": self.stored_during_run,
            "stored_after_close": self.stored_after_close,
            "deferred_at_end": self.deferred_at_end,
            "load_average": self.loads,
        }
        r["slowdown"] = r["busy_s"] / r["idle_s"] if idle and busy else None
        r["paired_slowdowns"] = pairs
        r["paired_slowdown"] = med(pairs) if pairs else None
        # the loop's mean wall time per step (train steps, snapshots, waits for a commit still
        # in flight) over the idle step: the whole cost of checkpointing, amortized
        r["loop_step_s"] = loop
        r["loop_over_idle"] = loop / r["idle_s"] if idle else None
        return r


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="default,bounded")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=24, help="train steps per round and config")
    ap.add_argument("--every", type=int, default=6, help="save every this many steps")
    ap.add_argument("--out", default=None, help="JSON output (default: bench-out/async_step.json)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args(argv)
    names = [n for n in args.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            ap.error(f"unknown config {n!r} (choose from {', '.join(CONFIGS)})")
    demo = load_demo()
    trainer = make_trainer(demo)
    workdir = Path(tempfile.mkdtemp(prefix="tvcs-async-", dir=args.workdir))
    t_start = time.time()
    try:
        runs = [Run(n, CONFIGS[n], workdir, args.every) for n in names]
        for _ in range(2):  # warm up the model's allocator and kernels
            trainer.train_step()
        for r in runs:  # each repository's first commit: not measured
            r.save(trainer)
            r.mgr.wait()
        for i in range(args.rounds):
            for r in runs:
                r.round(trainer, args.steps)
                print(f"  round {i + 1} {r.name}: load {r.loads[-1]:.2f}", flush=True)
        for r in runs:
            r.stored_during_run = tree_bytes(r.repo.root)
            r.deferred_at_end = r.mgr.deferred
            r.mgr.close()
            r.stored_after_close = tree_bytes(r.repo.root)
            r.repo.close()
        results = {r.name: r.result() for r in runs}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    out = {
        "bench": "async_step",
        "target_slowdown": TARGET,
        "every": args.every,
        "steps_per_round": args.steps,
        "rounds": args.rounds,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "wall_s": time.time() - t_start,
        "load_average_end": os.getloadavg(),
        "configs": results,
    }
    print(
        "| config | threads | nice | deferred deltas | train step, no commit | "
        "train step, commit running | slowdown | paired slowdown | loop per step / idle step | "
        "save() call | commit | background job | stored during the run / after close | "
        "steps idle/busy/partial |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")

    def secs(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f} s"

    def times(x: float | None, judge: bool = False) -> str:
        if x is None:
            return "-"
        return f"{x:.2f}x" + ((" ok" if x <= TARGET else " MISS") if judge else "")

    for n, r in results.items():
        m = r["manager"]
        print(
            f"| {n} | {m['background_threads'] or 'pool'} | {m['background_nice']} | "
            f"{m['defer_deltas']} | {secs(r['idle_s'])} | {secs(r['busy_s'])} | "
            f"{times(r['slowdown'])} | {times(r['paired_slowdown'], True)} | "
            f"{times(r['loop_over_idle'])} | {secs(r['save_call_s'])} | {secs(r['commit_s'])} | "
            f"{secs(r['job_s'])} | {r['stored_during_run'] / 1e6:.0f} / "
            f"{r['stored_after_close'] / 1e6:.0f} MB | "
            f"{r['steps_idle']}/{r['steps_busy']}/{r['steps_partial']} |"
        )
    loads = [x for r in results.values() for x in r["load_average"]]
    print(
        f"load average during the rounds: {min(loads):.2f}-{max(loads):.2f}, {os.cpu_count()} CPUs"
    )
    path = Path(args.out) if args.out else ROOT / "bench-out" / "async_step.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
