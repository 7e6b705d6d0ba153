"""The scale workload (issue 11): time and peak memory of tensorvcs at real model sizes.

For each state size S (GB, 10^9 bytes) and dtype (fp32, bf16) a synthetic state of many 64 MiB
matrices (randn·0.02, each scaled differently so no two chunks are equal) plus a few small
tensors (biases, norm scales, a step counter) is measured, each operation in a fresh
subprocess:

- ``tvcs-commit1``: ``Repo.init`` + the first ``repo.commit(state)``.
- ``tvcs-commit2``: the same process commits the state, applies a small update in place (about
  1 % of the large tensors changed slightly, as one fine-tune step changes them: fp32 ×(1+1e-3),
  bf16 ×1.01, i.e. about one bf16 ulp; plus the step counter; ``--update all`` changes every
  large tensor), then the second ``repo.commit`` is measured — the delta path: the changed
  chunks are stored whole and their parents re-encoded as deltas against them.
- ``tvcs-checkout``: a fresh process opens that repository and checks out HEAD (verified
  bitwise against the expected state afterwards).
- ``torch-save`` / ``torch-load``: ``torch.save`` + fsync of the file and its folder;
  ``torch.load(weights_only=True)``.
- ``st-save`` / ``st-load``: safetensors ``save_file`` + fsync; ``load_file`` (it maps the
  file; one element of every page is read, so the bytes are really loaded).
- ``dcp-save`` / ``dcp-load``: ``torch.distributed.checkpoint.save`` in one process with
  ``FileSystemWriter``'s defaults, + fsync of its files and folder; ``dcp.load`` into tensors
  allocated from the checkpoint's metadata (DCP loads in place), bitwise checked afterwards.
- with ``--cli``: ``cli-commit1`` / ``cli-commit2``: ``tvcs commit model.pt`` of a torch.save
  file of the state, then of the updated state written over it; the figure is the process's
  peak RSS (``ru_maxrss``) minus that of ``tvcs --version``. ``cli-checkout``: then ``tvcs
  checkout HEAD model.pt -o out.pt``, against ``py-checkout-save``: a Python process that
  opens the repository, ``repo.checkout()`` and ``torch.save`` (goal 3: at most 1.2x); both
  times include the interpreter's start.

Memory is the *extra peak RSS* of the call: the process's peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs`` right before the call) minus its resident set right before
the call, with the state already built. For loads and checkout the returned state itself (S)
is subtracted as well ("beyond the state"). For the second commit the figure is taken from
before the *first* commit (with the state built), so whatever the first commit left resident
(a delta-base cache) counts too. Goal 1 of issue 11: extra ≤ 512 MiB + 0.1 × S for the
tensorvcs rows.

    .venv/bin/python bench/scale.py                  # S = 0.1, 1, 4 GB; fp32 and bf16
    .venv/bin/python bench/scale.py --sizes 0.1,1,4,8
    .venv/bin/python bench/scale.py --smoke          # S = 0.05 GB, 1 repetition (CI)
    .venv/bin/python bench/scale.py --sizes 0.1,1 --cli   # also `tvcs commit FILE`
    .venv/bin/python bench/scale.py --sizes 1 --dtypes bf16 --ops tvcs-commit1,tvcs-commit2

The operations run in groups that share files (tensorvcs, torch, safetensors, DCP, the CLI):
the group that goes first moves on by one with every repetition, over all rows, and each
group's files are removed once it is done, so no writer finds the page cache full of another's
files (``GROUPS``; each result records its ``position`` in its repetition).

Writes <out>/scale.json (scale-smoke.json with --smoke) and prints a Markdown table. Times
are medians of ``--reps`` repetitions (default 3 below 4 GB, 1 at 4 GB and above).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import common as c  # noqa: E402

GB = 10**9
TENSOR_MIB = 64
COLS = 4096
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
OPS = [
    "tvcs-commit1", "tvcs-commit2", "tvcs-checkout",
    "torch-save", "torch-load", "st-save", "st-load", "dcp-save", "dcp-load",
    "cli-commit1", "cli-commit2", "cli-checkout", "py-checkout-save",
]
# only with --cli
CLI_OPS = ("cli-commit1", "cli-commit2", "cli-checkout", "py-checkout-save")
TVCS_OPS = ("tvcs-commit1", "tvcs-commit2", "tvcs-checkout", "cli-commit1", "cli-commit2",
            "cli-checkout")
LOADS = ("tvcs-checkout", "torch-load", "st-load", "dcp-load")  # figures exclude the state
LABELS = {
    "tvcs-commit1": "tensorvcs first commit",
    "tvcs-commit2": "tensorvcs second commit",
    "tvcs-checkout": "tensorvcs checkout",
    "torch-save": "torch.save + fsync",
    "torch-load": "torch.load(weights_only)",
    "st-save": "safetensors save + fsync",
    "st-load": "safetensors load_file (mmap; every page read)",
    "dcp-save": "DCP save (FileSystemWriter) + fsync",
    "dcp-load": "DCP load (FileSystemReader)",
    "cli-commit1": "tvcs commit model.pt (first)",
    "cli-commit2": "tvcs commit model.pt (second)",
    "cli-checkout": "tvcs checkout HEAD model.pt -o out.pt",
    "py-checkout-save": "python: repo.checkout() + torch.save",
}
FIXED_ALLOWANCE = 512 << 20


def limit_bytes(size_gb: float) -> int:
    """Goal 1 of issue 11: 512 MiB + 0.1 × S."""
    return int(FIXED_ALLOWANCE + 0.1 * size_gb * GB)


# -- the state ---------------------------------------------------------------------------------
def build_state(size_gb: float, dtype: str) -> dict[str, torch.Tensor]:
    """About ``size_gb`` GB of ``dtype`` tensors, deterministic: n ≥ 2 matrices of ≤ 64 MiB
    (4096 columns) and a few small tensors."""
    dt = DTYPES[dtype]
    el = torch.tensor([], dtype=dt).element_size()
    total = int(size_gb * GB)
    n_big = max(2, round(total / (TENSOR_MIB << 20)))
    rows = max(1, total // n_big // (COLS * el))
    g = torch.Generator().manual_seed(1234)
    base = torch.randn(rows, COLS, generator=g)
    state: dict[str, torch.Tensor] = {}
    for i in range(n_big):
        scaled = base * (0.02 * (1.0 + i / n_big))
        state[f"layers.{i}.weight"] = scaled if dt == torch.float32 else scaled.to(dt)
        del scaled
    del base
    for i in range(3):
        state[f"norm.{i}.weight"] = (1 + 0.02 * torch.randn(COLS, generator=g)).to(dt)
        state[f"norm.{i}.bias"] = (0.01 * torch.randn(COLS, generator=g)).to(dt)
    state["step"] = torch.tensor([1], dtype=torch.int64)
    return state


def big_keys(state: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in state if k.startswith("layers.")]


def update(state: dict[str, torch.Tensor], how: str) -> list[str]:
    """Apply the small update (in place, as a training step does); returns the changed keys."""
    keys = big_keys(state)
    if how == "all":
        chosen = keys
    else:
        k = max(1, round(0.01 * len(keys)))
        chosen = [keys[(j * len(keys)) // k] for j in range(k)]
    with torch.no_grad():
        for key in chosen:
            t = state[key]
            t.mul_(1 + 1e-3 if t.dtype == torch.float32 else 1.01)
        state["step"].add_(1)
    return chosen


def logical(state: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


# -- memory of this process ----------------------------------------------------------------------
def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss() -> int:
    return _status("VmRSS")


def reset_peak() -> None:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to clear_refs)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(fn: Any) -> tuple[Any, dict[str, float]]:
    gc.collect()
    reset_peak()
    r0 = rss()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    peak = _status("VmHWM")
    return out, {"seconds": dt, "rss_before": r0, "peak_rss": peak,
                 "extra_peak": peak - r0, "retained": rss() - r0}


# -- the child: one operation, one process --------------------------------------------------------
def child(a: argparse.Namespace) -> dict[str, Any]:
    import safetensors.torch

    import tensorvcs as tv

    torch.set_num_threads(max(1, c.cores()))
    d = Path(a.dir)
    repo_dir = d / "repo"
    out: dict[str, Any] = {"op": a.child}

    if a.child == "tvcs-commit1":
        repo_dir = d / "repo-first"  # removed when done; tvcs-commit2 makes the one kept

    def open_repo(init: bool) -> tv.Repo:
        r = tv.Repo.init(repo_dir) if init else tv.Repo.open(repo_dir)
        if a.cache_bytes is not None:
            r.base_cache.budget = a.cache_bytes
        return r

    if a.child.startswith("dcp-"):  # its import is not part of a save or load
        importlib.import_module("torch.distributed.checkpoint")

    if a.child in ("tvcs-commit1", "tvcs-commit2"):
        state = build_state(a.size, a.dtype)
        out["logical_bytes"] = logical(state)
        repo = open_repo(init=True)
        gc.collect()
        r_state = rss()
        _, m = measure(lambda: repo.commit(state, "first", step=1, owned=a.owned))
        out["first"] = m
        out["first"]["stored_bytes"] = repo.last_write_stats.new_stored_bytes
        if a.child == "tvcs-commit2":
            if a.owned:  # a new snapshot each commit (what CheckpointManager hands over)
                state = {k: v.clone() for k, v in state.items()}
                gc.collect()  # the caller's previous snapshot is gone (unless pinned)
            out["changed"] = update(state, a.update)
            objects_before = c.dir_bytes(repo_dir / ".tvcs" / "objects")
            _, m2 = measure(lambda: repo.commit(state, "second", step=2, owned=a.owned))
            # owned: the caller holds one snapshot at a time, as when r_state was taken, so a
            # previous snapshot the cache still pins counts as tensorvcs's
            m2["extra_since_state"] = m2["peak_rss"] - r_state
            st = repo.last_write_stats
            m2["stored_bytes"] = c.dir_bytes(repo_dir / ".tvcs" / "objects") - objects_before
            m2["rewritten_objects"] = st.rewritten_objects
            m2["new_objects"] = st.new_objects
            out["second"] = m2
        repo.close()
        if a.child == "tvcs-commit1":
            shutil.rmtree(repo_dir, ignore_errors=True)
    elif a.child == "tvcs-checkout":
        repo = open_repo(init=False)
        got, m = measure(lambda: repo.checkout())
        out["checkout"] = m
        out["logical_bytes"] = logical(got)
        repo.close()
        if a.verify:
            want = build_state(a.size, a.dtype)
            update(want, a.update)
            out["bitwise_equal"] = c.states_equal(got, want)
    elif a.child in ("torch-save", "st-save"):
        state = build_state(a.size, a.dtype)
        out["logical_bytes"] = logical(state)
        path = d / ("state.pt" if a.child == "torch-save" else "state.safetensors")
        if a.child == "torch-save":
            _, m = measure(lambda: c.torch_save_fsync(state, path))
        else:
            _, m = measure(lambda: c.safetensors_save_fsync(state, path))
        out["save"] = m
        out["file_bytes"] = path.stat().st_size
    elif a.child == "cli-prep":  # the files the CLI commits: model.pt, then model2.pt
        state = build_state(a.size, a.dtype)
        (d / "cli").mkdir(exist_ok=True)
        torch.save(state, d / "cli" / "model.pt")
        update(state, a.update)
        torch.save(state, d / "model2.pt")
        out["logical_bytes"] = logical(state)
    elif a.child == "dcp-save":
        state = build_state(a.size, a.dtype)
        out["logical_bytes"] = logical(state)
        _, m = measure(lambda: dcp_save_fsync(state, d / "dcp"))
        out["save"] = m
        out["file_bytes"] = c.dir_bytes(d / "dcp")
    elif a.child == "dcp-load":
        got, m = measure(lambda: dcp_load(d / "dcp"))
        out["load"] = m
        out["logical_bytes"] = logical(got)
        if a.verify:
            out["bitwise_equal"] = c.states_equal(got, build_state(a.size, a.dtype))
    elif a.child in ("torch-load", "st-load"):
        if a.child == "torch-load":
            got, m = measure(lambda: torch.load(d / "state.pt", weights_only=True))
        else:
            got, m = measure(lambda: _touched(safetensors.torch.load_file(d / "state.safetensors")))
        out["load"] = m
        out["logical_bytes"] = logical(got)
    else:
        raise SystemExit(f"unknown op {a.child}")
    return out


def dcp_save_fsync(state: dict[str, torch.Tensor], path: Path) -> None:
    """torch.distributed.checkpoint.save in one process (no process group; DCP warns and
    assumes that) with FileSystemWriter's defaults, then fsync of every file and the folder
    (as for torch.save): the reference a DCP user has for a save."""
    import torch.distributed.checkpoint as dcp

    with c.quiet_warnings():
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(path)))
    c.fsync_tree(path)


def dcp_load(path: Path) -> dict[str, torch.Tensor]:
    """DCP's load of a whole state: read the metadata, allocate every tensor it lists (DCP
    loads in place, into tensors the caller allocates), load into them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    reader = dcp.FileSystemReader(str(path))
    meta = reader.read_metadata().state_dict_metadata
    state = {k: torch.empty(v.size, dtype=v.properties.dtype) for k, v in meta.items()
             if isinstance(v, TensorStorageMetadata)}
    with c.quiet_warnings():
        dcp.load(state, storage_reader=reader)
    return state


def _touched(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` after reading one element of every page of each tensor: safetensors'
    load_file maps the file, so its tensors are only read when used."""
    for t in state.values():
        flat = t.reshape(-1)
        step = max(1, 4096 // t.element_size())
        flat[::step].float().sum()
    return state


def figure(res: dict[str, Any]) -> dict[str, float]:
    """The measured call of one child's result: seconds and extra peak RSS (goal-1 sense)."""
    op = res["op"]
    m = {"tvcs-commit1": "first", "tvcs-commit2": "second", "tvcs-checkout": "checkout",
         "torch-save": "save", "st-save": "save", "torch-load": "load", "st-load": "load",
         "dcp-save": "save", "dcp-load": "load",
         "cli-commit1": "cli", "cli-commit2": "cli", "cli-checkout": "cli",
         "py-checkout-save": "cli"}[op]
    x = res[m]
    extra = x["extra_since_state"] if op == "tvcs-commit2" else x["extra_peak"]
    if op in LOADS:
        extra -= res["logical_bytes"]
    return {"seconds": x["seconds"], "extra": extra, "peak_rss": x["peak_rss"],
            "stored_bytes": x.get("stored_bytes", res.get("file_bytes", float("nan")))}


# -- the parent ----------------------------------------------------------------------------------
def run_child(op: str, size: float, dtype: str, d: Path, a: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", op, "--size", str(size),
           "--dtype", dtype, "--dir", str(d), "--update", a.update]
    if a.cache_bytes is not None:
        cmd += ["--cache-bytes", str(a.cache_bytes)]
    if a.owned:
        cmd.append("--owned")
    if not a.verify:
        cmd.append("--no-verify")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.child_timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{op} S={size} {dtype} failed ({p.returncode}):\n"
                           f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _peak_of(cmd: list[str], cwd: Path, timeout: float) -> tuple[float, int]:
    """(seconds, peak RSS in bytes) of one child process (ru_maxrss from wait4)."""
    t0 = time.perf_counter()
    # the tensorvcs of this tree, not whatever `import tensorvcs` finds from cwd
    path = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)
    p = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=path))
    try:
        _, status, usage = os.wait4(p.pid, 0)
    except BaseException:
        p.kill()
        raise
    dt = time.perf_counter() - t0
    err = p.stderr.read().decode() if p.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return dt, usage.ru_maxrss * 1024  # Linux: KiB


PY_CHECKOUT_SAVE = """
import torch, tensorvcs as tv
with tv.Repo.open(".") as r:
    torch.save(r.checkout()["model.pt"], "py.pt")
"""


def run_cli(op: str, size: float, dtype: str, d: Path, a: argparse.Namespace) -> dict[str, Any]:
    """The CLI as a user runs it, in a fresh process: ``tvcs commit model.pt`` (first, second),
    ``tvcs checkout HEAD model.pt -o out.pt`` and, as its reference, a Python process doing
    ``repo.checkout()`` + ``torch.save``. Figures: the time including the interpreter's start,
    and the peak RSS beyond that of ``tvcs --version``."""
    tvcs = [sys.executable, "-m", "tensorvcs.cli"]
    cli = d / "cli"
    out: dict[str, Any] = {"op": op}
    if op in ("cli-checkout", "py-checkout-save"):
        start, base = _peak_of([*tvcs, "--version"], cli, a.child_timeout)
        dest = cli / ("out.pt" if op == "cli-checkout" else "py.pt")
        cmd = ([*tvcs, "checkout", "HEAD", "model.pt", "-o", dest.name] if op == "cli-checkout"
               else [sys.executable, "-c", PY_CHECKOUT_SAVE])
        secs, peak = _peak_of(cmd, cli, a.child_timeout)
        out["cli"] = {"seconds": secs, "peak_rss": peak, "baseline_rss": base,
                      "extra_peak": peak - base, "startup_seconds": start}
        out["file_bytes"] = dest.stat().st_size
        dest.unlink()
        return out
    if op == "cli-commit1":
        prep = run_child("cli-prep", size, dtype, d, a)
        out["logical_bytes"] = prep["logical_bytes"]
        _peak_of([*tvcs, "init"], cli, a.child_timeout)
    else:
        os.replace(d / "model2.pt", cli / "model.pt")  # the main loop sets logical_bytes
    start, base = _peak_of([*tvcs, "--version"], cli, a.child_timeout)
    secs, peak = _peak_of([*tvcs, "commit", "model.pt", "-m", op], cli, a.child_timeout)
    out["cli"] = {"seconds": secs, "peak_rss": peak, "baseline_rss": base,
                  "extra_peak": peak - base, "startup_seconds": start}
    out["file_bytes"] = (cli / "model.pt").stat().st_size
    return out


# Operations that share files, in the order they run; each group's files are removed when it
# is done. What a page-cache writer pays on this VM moves by up to 5x between runs minutes
# apart (4 GiB written + fsync: 12.9 s, then 2.6 s; fresh memory alone up to 25x; see
# docs/performance.md, "Caveats"), and a writer that runs after others finds the page cache
# full of their files. So the groups take turns going first (``rotated``), and none writes
# beside an earlier group's files.
GROUPS: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("tvcs-commit1", "tvcs-commit2", "tvcs-checkout"), ("repo",)),
    (("torch-save", "torch-load"), ("state.pt",)),
    (("st-save", "st-load"), ("state.safetensors",)),
    (("dcp-save", "dcp-load"), ("dcp",)),
    (CLI_OPS, ("cli", "model2.pt")),
]
assert sorted(op for names, _ in GROUPS for op in names) == sorted(OPS)


def rotated(ops: list[str], turn: int, d: Path) -> Iterator[str | None]:
    """``ops`` by group, the groups present starting with the ``turn``-th (mod their count);
    after each group its files in ``d`` are removed and None is yielded."""
    present = [(mine, files) for names, files in GROUPS
               if (mine := tuple(op for op in ops if op in names))]
    k = turn % len(present) if present else 0
    for names, files in present[k:] + present[:k]:
        yield from names
        for f in files:
            c.remove(d / f)
        yield None


def reps_for(size: float, a: argparse.Namespace) -> int:
    if a.reps is not None:
        return a.reps
    return 1 if size >= 4 else 3


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    figs = [figure(r) for r in runs]
    med = {k: c.median(f[k] for f in figs) for k in figs[0]}
    out: dict[str, Any] = {"median": med, "reps": runs}
    eq = [r["bitwise_equal"] for r in runs if "bitwise_equal" in r]
    if eq:
        out["bitwise_equal"] = all(eq)
    return out


# issue 11's time goals, as (goal, op, reference op, at most this ratio of its median time)
TIME_GOALS = (
    ("goal 2", "tvcs-commit1", "torch-save", 1.0),  # first commit vs torch.save + fsync
    ("goal 2", "tvcs-commit1", "st-save", 1.3),  # ... and vs safetensors save_file + fsync
    ("goal 3", "tvcs-checkout", "torch-load", 1.0),  # full checkout vs torch.load
    ("goal 3", "cli-checkout", "py-checkout-save", 1.2),  # tvcs checkout -o vs checkout + save
)


def verdicts(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Goals 1-3 of issue 11 over the medians in ``results``: for each goal, whether every
    figure it covers is within its limit, the figures checked, and those over."""
    out: dict[str, dict[str, Any]] = {}
    g1_missed, g1_checked = [], 0
    for key, per_op in results["results"].items():
        lim = limit_bytes(float(key.split("/")[0]))
        for op in TVCS_OPS:
            if op in per_op:
                g1_checked += 1
                if per_op[op]["median"]["extra"] > lim:
                    g1_missed.append(f"{key} {op}")
    out["goal1"] = {"met": not g1_missed, "checked": g1_checked, "missed": g1_missed,
                    "limit": "512 MiB + 0.1 S"}
    for goal, op, ref, limit in TIME_GOALS:
        v = out.setdefault(goal.replace(" ", ""), {"met": True, "checked": 0, "missed": [],
                                                   "ratios": {}})
        for key, per_op in results["results"].items():
            if op not in per_op or ref not in per_op:
                continue
            r = c.ratio(per_op[op]["median"]["seconds"], per_op[ref]["median"]["seconds"])
            v["checked"] += 1
            v["ratios"][f"{key} {op} / {ref}"] = r
            if not r <= limit:
                v["missed"].append(f"{key} {op} {r:.2f}x {ref} (limit {limit:g}x)")
        v["met"] = not v["missed"]
    return out


def render(results: dict[str, Any]) -> str:
    rows = []
    for key, per_op in results["results"].items():
        size, dtype = key.split("/")
        s = float(size)
        lim = limit_bytes(s)
        med = {op: v["median"] for op, v in per_op.items()}

        def t(op: str, med: dict[str, dict[str, float]] = med) -> float:
            return med[op]["seconds"] if op in med else float("nan")

        ref = {"tvcs-commit1": ("torch-save", "st-save", "dcp-save"),
               "tvcs-commit2": ("torch-save", "st-save", "dcp-save"),
               "tvcs-checkout": ("torch-load", "st-load", "dcp-load"),
               "cli-commit1": ("torch-save", "st-save", "dcp-save"),
               "cli-commit2": ("torch-save", "st-save", "dcp-save"),
               "cli-checkout": ("py-checkout-save", "", "")}
        for op in OPS:
            if op not in med:
                continue
            f = med[op]
            vs_torch = vs_st = vs_dcp = goal = ""
            if op in ref:
                a, b, d = ref[op]
                vs_torch = c.fmt_x(c.ratio(f["seconds"], t(a)), 2)
                vs_st = c.fmt_x(c.ratio(f["seconds"], t(b)), 2) if b else "-"
                vs_dcp = c.fmt_x(c.ratio(f["seconds"], t(d)), 2) if d else "-"
                goal = "met" if f["extra"] <= lim else "**missed**"
            gbps = per_op[op]["reps"][0]["logical_bytes"] / f["seconds"] / GB
            rows.append([
                f"{size} GB {dtype}" if op == next(iter(med)) else "",
                LABELS[op], c.fmt_s(f["seconds"]), f"{gbps:.2f}", c.fmt_bytes(f["extra"]),
                vs_torch, vs_st, vs_dcp, c.fmt_bytes(lim) if op in TVCS_OPS else "", goal,
            ])
    header = ["state", "operation", "time", "GB/s", "extra peak RSS", "vs torch", "vs safetensors",
              "vs DCP", "goal-1 limit", "goal 1"]
    m = results["machine"]
    head = (f"machine: {m['cores']} cores, {m['mem_total_bytes'] / c.GiB:.0f} GiB RAM, "
            f"torch {m['torch']}, safetensors {m['safetensors']}, tensorvcs git "
            f"{(m['git'].get('commit') or '?')[:10]}"
            f"{' + local edits' if m['git'].get('tensorvcs_dirty') else ''}; load average "
            f"{m['loadavg_start'][0]:.2f} → {m.get('loadavg_end', [float('nan')])[0]:.2f}; "
            f"update {results['update']}; cache budget "
            f"{'default' if results['cache_bytes'] is None else results['cache_bytes']}"
            f"{'; owned=True' if results['owned'] else ''}")
    notes = ("extra peak RSS: peak minus RSS right before the call (state built); checkout and "
             "loads: minus the returned state too; second commit: from before the first commit; "
             "tvcs commit: the process's peak minus that of `tvcs --version`; its time includes "
             "the interpreter's start (that of `tvcs --version` is in the JSON). "
             "vs torch: against torch.save+fsync (commits), torch.load (checkout) or the Python "
             "process's checkout + torch.save (tvcs checkout -o); "
             "vs safetensors: save_file+fsync or load_file; vs DCP: DCP save+fsync or load "
             "(one process, FileSystemWriter/Reader defaults; load allocates the state from "
             "the metadata).")
    what = {"goal1": "goal 1 (extra RSS ≤ 512 MiB + 0.1 S for commits and checkout)",
            "goal2": "goal 2 (first commit ≤ 1.0x torch.save+fsync and ≤ 1.3x safetensors+fsync)",
            "goal3": "goal 3 (checkout ≤ 1.0x torch.load; tvcs checkout -o ≤ 1.2x checkout + "
                     "torch.save)"}
    lines = []
    for g, label in what.items():
        v = results.get(g)
        if v is None or not v["checked"]:
            continue
        lines.append(f"{label}: {'met' if v['met'] else 'MISSED'} ({v['checked']} figures, "
                     f"{len(v['missed'])} over: {', '.join(v['missed']) or 'none'})")
    tail = "\n".join(lines)
    bits = results.get("bitwise_equal")
    if bits is not None:
        tail += f"; checkout bitwise equal: {bits}"
    return "\n\n".join([head, c.md_table(header, rows), notes, tail])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="0.1,1,4", help="state sizes in GB (default 0.1,1,4)")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--ops", default=",".join(op for op in OPS if op not in CLI_OPS))
    ap.add_argument("--cli", action="store_true",
                    help="also `tvcs commit model.pt`, first and second (peak RSS of the process)")
    ap.add_argument("--reps", type=int, default=None,
                    help="repetitions (default 3 below 4 GB, 1 at 4 GB and above)")
    ap.add_argument("--smoke", action="store_true", help="S = 0.05 GB, 1 repetition")
    ap.add_argument("--update", choices=["small", "all"], default="small",
                    help="second commit: ~1%% of the large tensors changed, or all of them")
    ap.add_argument("--cache-bytes", type=int, default=None,
                    help="set repo.base_cache.budget (default: the repository's default)")
    ap.add_argument("--owned", action="store_true", help="commit with owned=True (snapshots)")
    ap.add_argument("--no-verify", dest="verify", action="store_false",
                    help="skip the bitwise check of the checkout")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--child-timeout", type=float, default=900)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--size", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(child(a)), flush=True)
        return 0
    sizes = [0.05] if a.smoke else [float(s) for s in a.sizes.split(",") if s.strip()]
    if a.smoke and a.reps is None:
        a.reps = 1
    dtypes = [s.strip() for s in a.dtypes.split(",") if s.strip()]
    ops = [s.strip() for s in a.ops.split(",") if s.strip()]
    if a.cli:
        ops += [op for op in CLI_OPS if op not in ops]
    for op in ops:
        if op not in OPS:
            ap.error(f"unknown op {op}; have {', '.join(OPS)}")
    if "cli-checkout" in ops and "py-checkout-save" not in ops:
        ops.append("py-checkout-save")  # its reference
    if {"cli-commit2", "cli-checkout", "py-checkout-save"} & set(ops) and "cli-commit1" not in ops:
        ops.append("cli-commit1")
    if "tvcs-checkout" in ops and "tvcs-commit2" not in ops:
        ops.insert(ops.index("tvcs-checkout"), "tvcs-commit2")  # it makes the repository
    for need, op in (("torch-save", "torch-load"), ("st-save", "st-load"),
                     ("dcp-save", "dcp-load")):
        if op in ops and need not in ops:
            ops.insert(ops.index(op), need)
    ops = [op for op in OPS if op in ops]
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = c.make_workdir(a.workdir)
    t_start = time.perf_counter()
    results: dict[str, Any] = {
        "schema": 1,
        "command": "python bench/scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "smoke": a.smoke, "sizes_gb": sizes, "dtypes": dtypes, "ops": ops,
        "update": a.update, "cache_bytes": a.cache_bytes, "owned": a.owned,
        "machine": c.machine_info(work), "results": {},
    }
    turn = 0  # repetitions begun, over all rows: which group goes first (rotated)
    try:
        for size in sizes:
            for dtype in dtypes:
                key = f"{size:g}/{dtype}"
                runs: dict[str, list[dict[str, Any]]] = {op: [] for op in ops}
                for rep in range(reps_for(size, a)):
                    d = work / f"{size:g}-{dtype}-{rep}"
                    d.mkdir(parents=True)
                    try:
                        turn += 1
                        # None: a group is done and its files are gone (see rotated)
                        order = (op for op in rotated(ops, turn - 1, d) if op is not None)
                        for position, op in enumerate(order):
                            if op in CLI_OPS:
                                r = run_cli(op, size, dtype, d, a)
                                if op != "cli-commit1":
                                    r["logical_bytes"] = runs["cli-commit1"][-1]["logical_bytes"]
                            else:
                                r = run_child(op, size, dtype, d, a)
                            r["position"] = position  # in this repetition's order, from 0
                            runs[op].append(r)
                            f = figure(r)
                            print(f"{key} rep {rep + 1} {op}: {c.fmt_s(f['seconds'])}, extra "
                                  f"{c.fmt_bytes(f['extra'])}", flush=True)
                    finally:
                        shutil.rmtree(d, ignore_errors=True)
                results["results"][key] = {op: aggregate(rs) for op, rs in runs.items()}
    finally:
        c.remove(work)
    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["seconds"] = time.perf_counter() - t_start
    results.update(verdicts(results))
    eq = [v[op]["bitwise_equal"] for v in results["results"].values()
          for op in ("tvcs-checkout", "dcp-load") if "bitwise_equal" in v.get(op, {})]
    results["bitwise_equal"] = all(eq) if eq else None
    name = "scale-smoke.json" if a.smoke else "scale.json"
    c.dump_json(results, out_dir / name)
    text = render(results)
    print(text)
    print(f"wall time {c.fmt_s(results['seconds'])}; wrote {out_dir / name}")
    return 0 if results["bitwise_equal"] is not False else 1


if __name__ == "__main__":
    sys.exit(main())
