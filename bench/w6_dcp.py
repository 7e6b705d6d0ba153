"""W6: torch.distributed.checkpoint (DCP) with 2 ranks — tensorvcs's StorageWriter vs DCP's
own FileSystemWriter, in the same run.

    python bench/w6_dcp.py            # ~100 MB state (8 FSDP2-sharded 1024x1024 layers + Adam)
    python bench/w6_dcp.py --quick    # a small state, for a smoke run

Starts 2 ranks (gloo, CPU; this script again, as subprocesses), each holding half of every
layer (FSDP2 ``fully_shard``). Measured on rank 0 between barriers (so the figure covers both
ranks and the commit), medians of --reps (default 3):

- save of the state after one training step: FileSystemWriter (a fresh folder each time;
  its files fsynced, plus the folder) vs tv.dcp.StorageWriter (a fresh repository each time:
  every byte new);
- an unchanged re-save into the repository (all objects exist: only a commit is new);
- a save after one more training step (Adam, lr 1e-4): bytes newly stored (deltas against
  the previous commit's shards) vs the state's logical size and FileSystemWriter's folder;
- a load of the whole state by both readers.

Prints a table and writes bench/results/w6_dcp.json. Compare figures within one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")


def dir_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


# -- one rank ------------------------------------------------------------------------------------
def rank_main(a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard

    import tensorvcs as tv

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=a.init, rank=a.rank, world_size=2)
    work = Path(a.workdir)
    torch.manual_seed(0)
    layers = [torch.nn.Linear(a.width, a.width) for _ in range(a.layers)]
    model = torch.nn.Sequential(*layers)
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step(k: int) -> None:
        g = torch.Generator().manual_seed(k)
        x = torch.randn(8, a.width, generator=g)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    def state() -> dict[str, Any]:
        msd, osd = get_state_dict(model, opt)
        return {"model": msd, "optim": osd}

    def clock(fn: Any) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        dist.barrier()
        return time.perf_counter() - t0

    res: dict[str, Any] = {}
    train_step(0)
    s1 = state()

    # FileSystemWriter, fresh folder each time
    fs_times = []
    for rep in range(a.reps):
        d = work / f"fs{rep}"

        def fs_save(d: Path = d) -> None:
            dcp.save(s1, storage_writer=FileSystemWriter(str(d)))
            if a.rank == 0:
                fsync_dir(d)

        fs_times.append(clock(fs_save))
    res["fs_save_s"] = fs_times
    res["fs_bytes"] = dir_bytes(work / "fs0")

    # tensorvcs, fresh repository each time
    tv_times, tv_bytes, logical = [], [], 0
    for rep in range(a.reps):
        path = work / f"tv{rep}"
        if a.rank == 0:
            tv.Repo.init(path).close()
        dist.barrier()
        repo = tv.Repo.open(path)
        w = tv.dcp.StorageWriter(repo, message="first", step=1)
        tv_times.append(clock(lambda w=w: dcp.save(s1, storage_writer=w)))
        if a.rank == 0:
            tv_bytes.append(w.last_stats.new_stored_bytes)
            logical = w.last_stats.logical_bytes
        repo.close()
    res["tv_save_s"] = tv_times
    res["tv_first_stored_bytes"] = tv_bytes
    res["logical_bytes"] = logical

    # unchanged re-saves, then saves after one more training step each, into the last repo
    repo = tv.Repo.open(work / f"tv{a.reps - 1}")
    w = tv.dcp.StorageWriter(repo, message="unchanged")
    un_times, un_bytes = [], []
    for _ in range(a.reps):
        un_times.append(clock(lambda: dcp.save(s1, storage_writer=w)))
        if a.rank == 0:
            un_bytes.append(w.last_stats.new_stored_bytes)
    res["tv_unchanged_save_s"] = un_times
    res["tv_unchanged_new_bytes"] = un_bytes
    step_times, step_bytes = [], []
    for k in range(a.reps):
        train_step(1 + k)
        s = state()
        w = tv.dcp.StorageWriter(repo, message=f"step {2 + k}", step=2 + k)
        before = dir_bytes(repo.path / "objects") if a.rank == 0 else 0
        step_times.append(clock(lambda s=s, w=w: dcp.save(s, storage_writer=w)))
        if a.rank == 0:
            step_bytes.append(
                {"new_stored_bytes": w.last_stats.new_stored_bytes,
                 "objects_growth": dir_bytes(repo.path / "objects") - before}
            )
    res["tv_after_step_save_s"] = step_times
    res["tv_after_step_bytes"] = step_bytes
    # FileSystemWriter after the same step: a full copy again
    res["fs_after_step_bytes"] = res["fs_bytes"]

    # loads of the whole state (the last one) by both readers
    s_last = state()
    fs_last = work / "fs_last"
    dcp.save(s_last, storage_writer=FileSystemWriter(str(fs_last)))
    load_fs, load_tv = [], []
    for _ in range(a.reps):
        tgt = state()
        fs_reader = FileSystemReader(str(fs_last))
        load_fs.append(clock(lambda t=tgt, r=fs_reader: dcp.load(t, storage_reader=r)))
        tgt = state()
        tv_reader = tv.dcp.StorageReader(repo)
        load_tv.append(clock(lambda t=tgt, r=tv_reader: dcp.load(t, storage_reader=r)))
    res["fs_load_s"] = load_fs
    res["tv_load_s"] = load_tv
    if a.rank == 0:
        # the first after-step save, split: weights vs optimizer state (objects new in it)
        first_step = f"HEAD~{a.reps - 1}"
        old_ids = {o for t in repo.tensors(f"{first_step}~1") for o in t.objects}
        split: dict[str, dict[str, int]] = {}
        seen: set[str] = set()
        for t in repo.tensors(first_step):
            group = "model" if t.key.startswith("model.") else "optim"
            g = split.setdefault(group, {"logical_bytes": 0, "new_stored_bytes": 0})
            g["logical_bytes"] += t.nbytes
            for o in t.objects:
                if o not in old_ids and o not in seen:
                    seen.add(o)
                    g["new_stored_bytes"] += repo.objects.stored_size(o)
        res["tv_after_step_split"] = split
        fs = tv.fsck(repo)
        res["fsck_ok"] = fs.ok
        res["repo_objects_bytes"] = dir_bytes(repo.path / "objects")
        res["commits"] = len(repo.log())
        (work / "result.json").write_text(json.dumps(res))
    repo.close()
    dist.barrier()
    dist.destroy_process_group()


# -- the parent: start 2 ranks, print the table ----------------------------------------------------
def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fmt_mb(n: float) -> str:
    return f"{n / 1e6:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a small state, 1 repetition")
    p.add_argument("--reps", type=int, default=None, help="repetitions (default 3)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="output folder")
    p.add_argument("--workdir", default=None, help="scratch folder (default: a temp folder)")
    p.add_argument("--rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--init", default=None, help=argparse.SUPPRESS)
    p.add_argument("--layers", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--width", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.reps is None:
        a.reps = 1 if a.quick else 3
    if a.layers is None:
        a.layers = 2 if a.quick else 8
    if a.width is None:
        a.width = 256 if a.quick else 1024
    if a.rank is not None:
        rank_main(a)
        return 0

    work = Path(a.workdir or tempfile.mkdtemp(prefix="tvcs-w6-"))
    work.mkdir(parents=True, exist_ok=True)
    init = f"tcp://127.0.0.1:{free_port()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--init", init, "--workdir", str(work),
           "--reps", str(a.reps), "--layers", str(a.layers), "--width", str(a.width)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*cmd, "--rank", str(r)], env=env) for r in range(2)]
    codes = [q.wait() for q in procs]
    if codes != [0, 0]:
        print(f"w6_dcp: ranks exited with {codes}", file=sys.stderr)
        return 1
    res = json.loads((work / "result.json").read_text())
    import torch

    meta = {
        "workload": "W6 DCP, 2 ranks (gloo, CPU), FSDP2-sharded MLP + Adam",
        "layers": a.layers,
        "width": a.width,
        "reps": a.reps,
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "wall_s": time.perf_counter() - t0,
    }
    res = {"meta": meta, "raw": res}
    L = res["raw"]["logical_bytes"]
    after = res["raw"]["tv_after_step_bytes"][0]
    summary = {
        "logical_bytes": L,
        "fs_save_s_median": med(res["raw"]["fs_save_s"]),
        "tv_save_s_median": med(res["raw"]["tv_save_s"]),
        "tv_over_fs_save_time": med(res["raw"]["tv_save_s"]) / med(res["raw"]["fs_save_s"]),
        "fs_bytes": res["raw"]["fs_bytes"],
        "tv_first_stored_bytes": res["raw"]["tv_first_stored_bytes"][0],
        "tv_unchanged_save_s_median": med(res["raw"]["tv_unchanged_save_s"]),
        "tv_unchanged_new_bytes": max(res["raw"]["tv_unchanged_new_bytes"]),
        "tv_after_step_save_s_median": med(res["raw"]["tv_after_step_save_s"]),
        "tv_after_step_new_bytes": after["new_stored_bytes"],
        "tv_after_step_objects_growth": after["objects_growth"],
        "fs_after_step_bytes": res["raw"]["fs_after_step_bytes"],
        "tv_after_step_split": res["raw"]["tv_after_step_split"],
        "fs_load_s_median": med(res["raw"]["fs_load_s"]),
        "tv_load_s_median": med(res["raw"]["tv_load_s"]),
    }
    res["summary"] = summary
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "w6_dcp.json").write_text(json.dumps(res, indent=1) + "\n")
    s = summary
    rows = [
        ("save, all bytes new (s)", f"{s['fs_save_s_median']:.3f}",
         f"{s['tv_save_s_median']:.3f}"),
        ("  stored (MB)", fmt_mb(s["fs_bytes"]), fmt_mb(s["tv_first_stored_bytes"])),
        ("unchanged re-save (s)", "-", f"{s['tv_unchanged_save_s_median']:.3f}"),
        ("  new bytes", "-", str(s["tv_unchanged_new_bytes"])),
        ("save after 1 step (s)", "-", f"{s['tv_after_step_save_s_median']:.3f}"),
        ("  new bytes (MB)", fmt_mb(s["fs_after_step_bytes"]),
         fmt_mb(s["tv_after_step_new_bytes"])),
        ("load whole state (s)", f"{s['fs_load_s_median']:.3f}", f"{s['tv_load_s_median']:.3f}"),
    ]
    print(f"\nW6 DCP, 2 ranks: {a.layers} x Linear({a.width}, {a.width}) + Adam, logical "
          f"{fmt_mb(L)} MB, median of {a.reps}\n")
    print("| measure | FileSystemWriter | tv.dcp.StorageWriter |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    for group, g in s["tv_after_step_split"].items():
        print(f"after 1 step, {group}: {fmt_mb(g['new_stored_bytes'])} MB new of "
              f"{fmt_mb(g['logical_bytes'])} MB")
    print(f"\nwrote {out / 'w6_dcp.json'}")
    if not a.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
