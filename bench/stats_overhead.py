"""What recording tensor statistics (issue 13 item 1) costs a commit: side by side, on and off.

    python bench/stats_overhead.py [--mib 512] [--reps 5] [--dtype fp32|bf16|fp16]
    python bench/stats_overhead.py --minilm 6 [--reps 3]   # a real MiniLM fine-tune series
    python bench/stats_overhead.py --parts                 # CPU per 4 MiB chunk, per dtype
    python bench/stats_overhead.py --attribute [--mib 1024] [--dtype bf16]
                                               # CPU inside the statistics, share of a commit's

A synthetic state of ``--mib`` MiB (one large tensor per 16 MiB plus many small ones, as a
model and its optimizer moments would be) is committed into a fresh repository (the first
commit), then changed everywhere a little, as a training step does, and committed again
(the second commit: every chunk changes, so the delta path and the change norm both run).
The two modes (TensorWriter.record_stats on and off) alternate within each repetition, so
whatever else the machine does affects both alike; the medians (wall time, and the CPU time
of the process's threads, which other load disturbs less), the overhead and the 1-minute
load average seen before and after each repetition are printed and written to
<out>/stats_overhead[_<dtype>_<mib>|_minilm].json.

The side-by-side figures carry the noise of the disk and of other processes (on a 2-core
machine, +-10-20% between repetitions), often more than the statistics cost. ``--attribute``
measures the cost directly instead: every entry point the writer calls into the statistics
(state/stats.py: ChunkHook.values/base_seen/finish, TensorHook.result, StatsRecorder.tensor/
small) is timed by the CPU time of the thread that runs it (outermost call only, so reading
a parent chunk back for its change counts as statistics), summed over the commit's threads,
and set against the CPU time of the whole process during the same commit.

With ``--minilm N``, the state is instead N snapshots of a full MiniLM fine-tune (model,
AdamW moments, step, RNG; bench/minilm.py): "first" is the first commit, "second" the other
N-1 commits together (each against its parent).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tensorvcs as tv  # noqa: E402
from bench import common as c  # noqa: E402
from tensorvcs.state.writer import TensorWriter  # noqa: E402

TMP = os.environ.get("TVCS_BENCH_TMP")  # where the repositories go (default: the temp folder)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_state(mib: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    item = torch.empty(0, dtype=dtype).element_size()
    state: dict[str, torch.Tensor] = {}
    big = 16 * c.MiB // item
    for i in range(max(1, mib // 16)):
        state[f"model/layer{i}/weight"] = torch.randn(big, generator=g).to(dtype)
        for j in range(4):  # biases, norms: packed
            state[f"model/layer{i}/small{j}"] = torch.randn(1024, generator=g).to(dtype)
    return state


def step(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {k: v + (1e-3 * torch.randn(v.shape, generator=g)).to(v.dtype) for k, v in state.items()}


def one(mode: bool, states: list[Any]) -> tuple[float, float, float, float]:
    """(wall seconds of the first commit, of all the others, then the CPU seconds of this
    process's threads for each) with statistics on or off."""
    TensorWriter.record_stats = mode
    with tempfile.TemporaryDirectory(prefix="tvcs-stats-", dir=TMP) as d:
        repo = tv.Repo.init(d)
        t0, p0 = time.perf_counter(), time.process_time()
        repo.commit(states[0], message="first")
        t1, p1 = time.perf_counter(), time.process_time()
        for s in states[1:]:
            repo.commit(s, message="next")
        t2, p2 = time.perf_counter(), time.process_time()
        repo.close()
    return t1 - t0, t2 - t1, p1 - p0, p2 - p1


def parts(reps: int = 20) -> None:
    """CPU milliseconds (one thread) of the statistics of one 4 MiB chunk: its values, its
    change against the parent's chunk (a small update), and both in the one pass a chunk
    with a parent gets, per dtype."""
    from tensorvcs.state import stats as st

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    for name, dt in DTYPES.items():
        n = 4 * c.MiB // torch.empty(0, dtype=dt).element_size()
        a = torch.randn(n, generator=g).to(dt)
        b = (a.float() + 1e-3 * torch.randn(n, generator=g)).to(dt)
        ua, ub = a.view(torch.uint8), b.view(torch.uint8)
        jobs = (
            ("values", lambda ua=ua, dt=dt: st._part(ua, dt)),
            ("change", lambda ua=ua, ub=ub, dt=dt: st._delta_sumsq(ub, ua, dt)),
            (
                "values and change (one pass, as a commit with a parent does)",
                lambda ua=ua, ub=ub, dt=dt, n=n: st.StatsAccumulator(dt, n).add_with_delta(ub, ua),
            ),
        )
        for what, fn in jobs:
            fn()
            t0 = time.thread_time()
            for _ in range(reps):
                fn()
            ms = (time.thread_time() - t0) / reps * 1000
            print(f"{name} 4 MiB chunk, {what}: {ms:.2f} ms CPU")


def attribute(states: list[Any], reps: int) -> dict[str, Any]:
    """CPU seconds inside the statistics and of the whole process, per commit kind."""
    from tensorvcs.state import stats as st

    entry_points = {st.ChunkHook: ("values", "base_seen", "finish"), st.TensorHook: ("result",),
                    st.StatsRecorder: ("__init__", "tensor", "small")}
    targets = [(cls, n, "statistics") for cls, names in entry_points.items() for n in names]
    spent: dict[str, float] = {}
    rows: dict[str, list[tuple[float, float]]] = {"first": [], "second": []}
    with c.thread_cpu(targets, spent):
        TensorWriter.record_stats = True
        for r in range(reps + 1):
            with tempfile.TemporaryDirectory(prefix="tvcs-stats-", dir=TMP) as d:
                repo = tv.Repo.init(d)
                for i, s in enumerate(states):
                    spent.clear()
                    p0 = time.process_time()
                    repo.commit(s, message=f"commit {i}")
                    row = (spent.get("statistics", 0.0), time.process_time() - p0)
                    if r:  # repetition 0 warms up
                        rows["first" if i == 0 else "second"].append(row)
                repo.close()
    out: dict[str, Any] = {}
    for kind, got in rows.items():
        stats_cpu = c.median([a for a, _ in got])
        total = c.median([b for _, b in got])
        share = c.median([a / b for a, b in got])
        out[kind] = {"stats_cpu_s": stats_cpu, "commit_cpu_s": total, "share": share}
        what = "first commit" if kind == "first" else "later commits"
        print(f"{what}: statistics {stats_cpu:.3f} CPU s of the commit's {total:.3f} CPU s "
              f"(median of {len(got)}): {100 * share:.1f}% of the commit's CPU")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--minilm", type=int, default=0, help="N MiniLM fine-tune snapshots")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--parts", action="store_true", help="CPU cost per 4 MiB chunk only")
    ap.add_argument("--attribute", action="store_true",
                    help="CPU inside the statistics, as a share of the commit's CPU")
    a = ap.parse_args()
    if a.parts:
        parts()
        return
    if a.minilm:
        from bench import minilm

        states: list[Any] = minilm.finetune_series(a.minilm)[0].states
        label = f"MiniLM fine-tune ({a.minilm} snapshots)"
    else:
        s0 = make_state(a.mib, DTYPES[a.dtype])
        states = [s0, step(s0)]
        label = f"{a.mib} MiB {a.dtype}"
    if a.attribute:
        from tensorvcs import accel

        res = attribute(states, a.reps)
        res.update(state=label, reps=a.reps, native=accel.describe())
        Path(a.out).mkdir(parents=True, exist_ok=True)
        tag = "minilm" if a.minilm else f"{a.dtype}_{a.mib}"
        name = f"stats_attribute_{tag}.json"
        (Path(a.out) / name).write_text(json.dumps(res, indent=1) + "\n")
        return
    kinds = ("first", "second", "first_cpu", "second_cpu")
    times: dict[str, dict[str, list[float]]] = {m: {k: [] for k in kinds} for m in ("on", "off")}
    load = [os.getloadavg()[0]]
    for r in range(a.reps + 1):  # repetition 0 warms up and is not counted
        order = (True, False) if r % 2 else (False, True)
        for mode in order:
            got = one(mode, states)
            if r:
                for k, v in zip(kinds, got, strict=True):
                    times["on" if mode else "off"][k].append(v)
        load.append(os.getloadavg()[0])
    TensorWriter.record_stats = True
    out: dict[str, Any] = {"state": label, "reps": a.reps, "times": times, "loadavg": load}
    for kind in kinds:
        on, off = c.median(times["on"][kind]), c.median(times["off"][kind])
        out[f"{kind}_overhead"] = on / off - 1
        what = "first commit" if kind.startswith("first") else "later commits"
        unit = "CPU s" if kind.endswith("cpu") else "s wall"
        print(f"{what}, {label}: stats on {on:.3f} {unit}, off {off:.3f} {unit} "
              f"(median of {a.reps}): overhead {100 * (on / off - 1):+.1f}%")
    print(f"load average (1 min) during the run: {min(load):.2f}-{max(load):.2f}")
    Path(a.out).mkdir(parents=True, exist_ok=True)
    name = "stats_overhead_minilm.json" if a.minilm else f"stats_overhead_{a.dtype}_{a.mib}.json"
    (Path(a.out) / name).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
