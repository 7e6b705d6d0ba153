"""Shared helpers of the benchmark: timing, fsync, medians, sizes, the run context, tables.

Every writer timed by the benchmark makes its data durable before the clock stops: tensorvcs
fsyncs its objects, manifest, commit and ref itself; the peers are fsynced here (the file, or
every file of a checkpoint folder, then the folder). The page cache is never dropped, for
anyone: every measurement runs with whatever the cache holds, the same way for every peer.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MiB = 1 << 20
GiB = 1 << 30


# -- timing and statistics --------------------------------------------------------------------
def now() -> float:
    return time.perf_counter()


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn's result, wall seconds)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@contextmanager
def thread_cpu(targets: Sequence[tuple[Any, str, str]],
               totals: dict[str, float]) -> Iterator[dict[str, float]]:
    """Time ``owner.name`` for each ``(owner, name, label)`` by the CPU of the thread running it.

    Only the outermost call of a label in a thread counts, so a timed function calling
    another of the same label is not counted twice. Threads add into ``totals[label]``
    under a lock. The original functions are put back on exit.
    """
    import functools
    import threading

    depth = threading.local()
    lock = threading.Lock()

    def wrap(fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            held: dict[str, int] = depth.__dict__.setdefault("by_label", {})
            outer = held.get(label, 0) == 0
            held[label] = held.get(label, 0) + 1
            t0 = time.thread_time()
            try:
                return fn(*args, **kwargs)
            finally:
                held[label] -= 1
                if outer:
                    dt = time.thread_time() - t0
                    with lock:
                        totals[label] = totals.get(label, 0.0) + dt
        return wrapper

    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in targets]
    try:
        for (owner, name, fn), (_, _, label) in zip(originals, targets, strict=True):
            setattr(owner, name, wrap(fn, label))
        yield totals
    finally:
        for owner, name, fn in originals:
            setattr(owner, name, fn)


def median(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(statistics.median(xs)) if xs else float("nan")


def mean(xs: Iterable[float]) -> float:
    xs = list(xs)
    return float(statistics.fmean(xs)) if xs else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# -- durability and sizes ---------------------------------------------------------------------
def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync one file or folder."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file under ``root``, then every folder (deepest first), then ``root``."""
    dirs = []
    for d, _, files in os.walk(root):
        dirs.append(d)
        for f in files:
            fsync_path(os.path.join(d, f))
    for d in reversed(dirs):
        fsync_path(d)


def dir_bytes(root: str | os.PathLike[str]) -> int:
    """Sum of the sizes (st_size, not blocks) of the files under ``root`` (or of one file)."""
    root = Path(root)
    if root.is_file():
        return root.stat().st_size
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            total += os.stat(os.path.join(d, f)).st_size
    return total


def file_sizes(root: str | os.PathLike[str]) -> dict[str, int]:
    """relative path -> size, for every file under ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = os.stat(p).st_size
    return out


def tensors_of(state: Any) -> Iterator[torch.Tensor]:
    """Every tensor leaf of a nested state (dicts, lists, tuples)."""
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for v in state.values():
            yield from tensors_of(v)
    elif isinstance(state, (list, tuple)):
        for v in state:
            yield from tensors_of(v)


def logical_bytes(state: Any) -> int:
    """numel × element size summed over the tensors of ``state`` (the raw bytes)."""
    return sum(t.numel() * t.element_size() for t in tensors_of(state))


def clone_state(state: Any) -> Any:
    """A deep copy whose tensors own their memory (a snapshot of a live training state;
    ``optimizer.state_dict()`` returns the live tensors)."""
    with torch.no_grad():
        return copy.deepcopy(state)


def flatten(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Tensor leaves keyed by their '/'-joined key path (tensorvcs's glob form)."""
    out: dict[str, torch.Tensor] = {}
    if isinstance(state, torch.Tensor):
        out[prefix] = state
    elif isinstance(state, dict):
        for k, v in state.items():
            out.update(flatten(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            out.update(flatten(v, f"{prefix}/{i}" if prefix else str(i)))
    return out


def states_equal(a: Any, b: Any) -> bool:
    """Bitwise equality of the tensor leaves of two states (same keys, dtypes, shapes, bytes)."""
    fa, fb = flatten(a), flatten(b)
    if fa.keys() != fb.keys():
        return False
    for k, x in fa.items():
        y = fb[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            return False
        xb = x.detach().contiguous().reshape(-1).view(torch.uint8)
        yb = y.detach().contiguous().reshape(-1).view(torch.uint8)
        if not torch.equal(xb, yb):
            return False
    return True


# -- peers' writers (each durable when it returns) --------------------------------------------
def torch_save_fsync(state: Any, path: str | os.PathLike[str]) -> None:
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_path(os.path.dirname(os.path.abspath(path)))


def safetensors_save_fsync(state: dict[str, torch.Tensor], path: str | os.PathLike[str]) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path))
    fsync_path(path)
    fsync_path(os.path.dirname(os.path.abspath(path)))


# -- the run context --------------------------------------------------------------------------
@dataclass
class Context:
    quick: bool
    reps: int
    workdir: Path
    out: Path
    log: Callable[[str], None] = print
    shared: dict[str, Any] = field(default_factory=dict)
    _counter: int = 0

    def fresh_dir(self, name: str) -> Path:
        self._counter += 1
        d = self.workdir / f"{self._counter:04d}-{name}"
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        return d


def make_workdir(base: str | None) -> Path:
    return Path(tempfile.mkdtemp(prefix="tvcs-bench-", dir=base))


def remove(path: str | os.PathLike[str]) -> None:
    """Remove a folder and what it holds, or a file; nothing if it is not there."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)


@contextmanager
def quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- the machine ------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0


def git_info() -> dict[str, Any]:
    """The commit the measured tensorvcs comes from, and whether tensorvcs/ has local edits."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=root, capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD") or None,
        "tensorvcs_dirty": bool(git("status", "--porcelain", "--", "tensorvcs")),
    }


def machine_info(workdir: Path) -> dict[str, Any]:
    import numpy
    import safetensors
    import zstandard

    import tensorvcs

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    return {
        "cpu_model": _cpu_model(),
        "cores": cores,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "mem_total_bytes": _mem_total(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "zstandard": zstandard.__version__,
        "tensorvcs": tensorvcs.__version__,
        "git": git_info(),
        "workdir": str(workdir),
        "loadavg_start": list(os.getloadavg()),
        "page_cache": "warm (never dropped; the same for every peer)",
    }


# -- formatting -------------------------------------------------------------------------------
def fmt_bytes(n: float) -> str:
    if n != n:  # NaN
        return "-"
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def fmt_s(s: float) -> str:
    if s != s:
        return "-"
    if s < 0.01:
        return f"{s * 1000:.2f} ms"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.2f} s"


def fmt_x(r: float, digits: int = 3) -> str:
    return "-" if r != r else f"{r:.{digits}f}×"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
        for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def dump_json(obj: Any, path: Path) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, Path):
            return str(o)
        if isinstance(o, torch.dtype):
            return str(o)
        raise TypeError(f"not JSON serializable: {type(o).__name__}")

    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=default, allow_nan=True) + "\n")
    os.replace(tmp, path)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
