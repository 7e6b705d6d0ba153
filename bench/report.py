"""How long ``tvcs report`` takes on a real run: 100 commits of a MiniLM fine-tune.

Builds (once; kept in ``--workdir``) a repository of a full fine-tune of the real
all-MiniLM-L6-v2 (bench/minilm.py: SimCSE loss, AdamW lr 1e-5, one optimizer step between
commits), each commit the whole training state (model, AdamW moments, step, RNG), with the
loss and lr as metrics, a tag every 25 commits, and the statistics the writer records. Then
times ``tvcs report HEAD -o run.html`` as a fresh process (the figure a user sees: Python and
tensorvcs start-up included) and the report built in-process, the median of ``--reps``.

With ``--no-stats N`` it also builds a second repository of the first N of those commits
written without statistics (as a version-1 manifest has none) and times its report, where
every tensor is read and measured.

    .venv/bin/python bench/report.py                       # 100 commits, 3 repetitions
    .venv/bin/python bench/report.py --commits 20 --no-stats 10
    .venv/bin/python bench/report.py --workdir /tmp/tvcs-report-bench   # reuse the run

Prints the figures and writes them to <workdir>/report-bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import tensorvcs as tv
from bench.minilm import Batches, load_model, simcse_loss


def build_run(path: Path, commits: int, record_stats: bool = True) -> float:
    """A repository of ``commits`` fine-tune commits at ``path`` (reused when complete);
    returns the seconds it took to build (0 when reused)."""
    if (path / ".tvcs").exists():
        r = tv.Repo.open(path)
        n = len(r.log())
        r.close()
        if n == commits:
            return 0.0
        raise SystemExit(f"{path} holds {n} commits, not {commits}: remove it first")
    from tensorvcs.state.writer import TensorWriter

    saved = getattr(TensorWriter, "record_stats", True)
    TensorWriter.record_stats = record_stats  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    try:
        torch.manual_seed(0)
        model = load_model()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=commits)
        data = Batches(seed=2)
        repo = tv.Repo.init(path)
        for step in range(1, commits + 1):
            loss = simcse_loss(model, *data.next())
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            lr = sched.get_last_lr()[0]
            sched.step()
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "rng": torch.get_rng_state(),
            }
            c = repo.commit(
                state, f"step {step}", step=step, metrics={"loss": loss.item(), "lr": lr}
            )
            if step % 25 == 0:
                repo.tag(f"step-{step}", c)
            if step % 10 == 0:
                print(f"  {path.name}: {step}/{commits} commits", flush=True)
        repo.close()
    finally:
        TensorWriter.record_stats = saved  # type: ignore[attr-defined]
    return time.perf_counter() - t0


def time_report(path: Path, reps: int) -> dict[str, Any]:
    from tensorvcs.report import build

    cli: list[float] = []
    out = path / "run.html"
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "tensorvcs.cli", "--repo", str(path), "report", "-o", str(out)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        cli.append(time.perf_counter() - t0)
    inproc: list[float] = []
    data = None
    for _ in range(reps):
        repo = tv.Repo.open(path)
        t0 = time.perf_counter()
        data, _page = build(repo)
        inproc.append(time.perf_counter() - t0)
        repo.close()
    assert data is not None
    return {
        "commits": len(data.commits),
        "layers": len(data.heat),
        "measured_commits": data.measured_commits,
        "measured_bytes": data.measured_bytes,
        "html_bytes": out.stat().st_size,
        "cli_seconds_median": statistics.median(cli),
        "cli_seconds": cli,
        "in_process_seconds_median": statistics.median(inproc),
        "in_process_seconds": inproc,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--commits", type=int, default=100)
    ap.add_argument("--no-stats", type=int, default=0, metavar="N")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workdir", default="/tmp/tvcs-report-bench")
    args = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"torch": torch.__version__, "cpus": os.cpu_count()}
    run = work / f"minilm-{args.commits}"
    result["build_seconds"] = build_run(run, args.commits)
    result["with_stats"] = time_report(run, args.reps)
    print(f"report of {args.commits} commits (statistics recorded):", result["with_stats"])
    if args.no_stats:
        old = work / f"minilm-{args.no_stats}-nostats"
        result["build_seconds_nostats"] = build_run(old, args.no_stats, record_stats=False)
        result["without_stats"] = time_report(old, 1)
        print(f"report of {args.no_stats} commits without statistics:", result["without_stats"])
    (work / "report-bench.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
