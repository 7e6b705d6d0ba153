"""How far below today's W4 steady commit the per-object layout lets a commit go.

Commits the W4 series (bf16 copies of MiniLM's AdamW-updated weights, one commit per step)
into a fresh repository once per mode, each commit followed by torch.save+fsync of the same
state, and prints the steady medians (commits 2..N) and their ratio:

- ``normal``: what tensorvcs does;
- ``defer``: no re-encoding of the parent chunks (``defer_deltas``, as an async commit does;
  the parents stay whole, so the repository grows by a whole state per commit);
- ``raw``: every new chunk stored raw (no planes, no zstd), re-encodings as usual;
- ``rawdefer``: neither encoding: each changed chunk hashed, its statistics taken and written
  raw as one file, fsynced and named as a commit does. That is the floor of one object per
  chunk, without any of the work that makes W4 store 0.03x raw per commit.

``raw`` and ``rawdefer`` patch the codec in this process only: they are experiments, not modes
of tensorvcs.

    .venv/bin/python bench/steady_floor.py [--commits 12] [--modes normal,defer,raw,rawdefer]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import tensorvcs as tv  # noqa: E402
from bench import common as c  # noqa: E402
from bench import minilm  # noqa: E402
from tensorvcs.format import codecs  # noqa: E402
from tensorvcs.state import writer as state_writer  # noqa: E402

MODES = ("normal", "defer", "raw", "rawdefer")


def _raw(data: Any, width: int, *, reuse: bool = False) -> codecs.Encoded:
    return codecs.Encoded(codecs.CODEC_RAW, {}, (codecs._as_u8(data).data,))


def run_mode(mode: str, states: list[Any], work: Path) -> dict[str, float]:
    encode, write = codecs.encode_elements, state_writer.TensorWriter.write

    def deferring(self: state_writer.TensorWriter, pending: Any) -> Any:
        self.defer_deltas = True
        return write(self, pending)

    if mode in ("raw", "rawdefer"):
        codecs.encode_elements = _raw  # type: ignore[assignment]
    if mode in ("defer", "rawdefer"):
        state_writer.TensorWriter.write = deferring  # type: ignore[method-assign]
    root = work / mode
    repo = tv.Repo.init(root)
    tvcs, ref = [], []
    try:
        for i, s in enumerate(states):
            t0 = time.perf_counter()
            repo.commit(s, f"step {i}", step=i)
            tvcs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c.torch_save_fsync(s, work / "ref.pt")
            ref.append(time.perf_counter() - t0)
        size = c.dir_bytes(root / ".tvcs")
    finally:
        repo.close()
        codecs.encode_elements = encode  # type: ignore[assignment]
        state_writer.TensorWriter.write = write  # type: ignore[method-assign]
        shutil.rmtree(root, ignore_errors=True)
    a, b = statistics.median(tvcs[1:]), statistics.median(ref[1:])
    return {"tvcs": a, "torch_save": b, "ratio": a / b, "repo_bytes": size}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--commits", type=int, default=12)
    ap.add_argument("--modes", default=",".join(MODES))
    a = ap.parse_args()
    modes = a.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        ap.error(f"unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}")
    _, half = minilm.finetune_series(1, 2, a.commits)
    with tempfile.TemporaryDirectory(prefix="tvcs-floor-") as d:
        for m in modes:
            r = run_mode(m, half.states, Path(d))
            print(
                f"{m:9s} steady commit {r['tvcs'] * 1e3:6.1f} ms  torch.save+fsync "
                f"{r['torch_save'] * 1e3:5.1f} ms  ratio {r['ratio']:.2f}  "
                f"repository {c.fmt_bytes(int(r['repo_bytes']))}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
