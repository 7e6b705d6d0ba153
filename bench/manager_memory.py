"""Memory and time of CheckpointManager saves of a 1 GiB fp32 state (8 tensors of 128 MiB)
whose every element changes a little between saves: the extra peak RSS of each save (from
``save()`` to the end of its background job) over the RSS before it, against the snapshot a
save takes by design; when the checkpoint is durable (the save's future) and when the job
ends (``wait(compaction=True)``); the repository's bytes after ``close()``.

    .venv/bin/python bench/manager_memory.py bounded      # the defaults (compact_in_background)
    .venv/bin/python bench/manager_memory.py untilclose   # compact_in_background=False
    .venv/bin/python bench/manager_memory.py nodefer      # defer_deltas=False

Linux only (/proc/self/status, clear_refs). TVCS_BENCH_TMP: where the repository goes.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import tensorvcs as tv  # noqa: E402

CONFIGS = {
    "bounded": {},
    "untilclose": {"compact_in_background": False},
    "nodefer": {"defer_deltas": False},
}
MIB = 1 << 20


def status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmRSS:, VmHWM:)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def main(mode: str) -> int:
    torch.manual_seed(0)
    state = {f"l{i}": torch.randn(32 << 20) * 0.02 for i in range(8)}
    size = sum(t.numel() * t.element_size() for t in state.values())
    work = tempfile.mkdtemp(dir=os.environ.get("TVCS_BENCH_TMP"))
    repo = tv.Repo.init(work)
    mgr = tv.CheckpointManager(repo, save_rng=False, **CONFIGS[mode])  # type: ignore[arg-type]
    out = []
    for k in range(3):
        if k:
            for t in state.values():
                t.add_(torch.randn_like(t) * 1e-5)
        base = status("VmRSS:")
        reset_peak()
        t0 = time.perf_counter()
        mgr.save(state, step=k + 1).result()
        t1 = time.perf_counter()
        mgr.wait(compaction=True)
        t2 = time.perf_counter()
        extra = (status("VmHWM:") - base) / MIB
        out.append(
            f"save {k + 1}: extra peak {extra:.0f} MiB (the snapshot: {size / MIB:.0f} MiB), "
            f"durable {t1 - t0:.2f} s, job {t2 - t0:.2f} s"
        )
    mgr.close()
    repo.close()
    stored = sum(f.stat().st_size for f in Path(work).rglob("*") if f.is_file())
    shutil.rmtree(work)
    print(f"{mode}: " + "; ".join(out) + f"; repository {stored / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "bounded"))
