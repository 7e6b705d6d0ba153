"""How far below today's W4 steady commit the per-object layout lets a commit go.

Commits the W4 series (bf16 copies of MiniLM's AdamW-updated weights, one commit per step)
into a fresh repository once per mode, each commit followed by torch.save+fsync of the same
state twice: into a new file per commit, all kept until the mode ends (the folder of
checkpoints tensorvcs replaces), and over one file. It prints the steady medians (commits
2..N) and the ratios to both. They differ on this VM: a file written over another reuses the
page-cache pages the old one freed, where a kept checkpoint (or a new object) takes pages the
guest has not touched for a while, which cost several times as much to write into once a few
hundred MB have been written (docs/performance.md, "W3/W4 steady commits against kept
checkpoints"). The modes:

- ``normal``: what tensorvcs does;
- ``defer``: no re-encoding of the parent chunks (``defer_deltas``, as an async commit does;
  the parents stay whole, so the repository grows by a whole state per commit);
- ``raw``: every new chunk stored raw (no planes, no zstd), re-encodings as usual;
- ``rawdefer``: neither encoding: each changed chunk hashed, its statistics taken and written
  raw as one file, fsynced and named as a commit does. That is the floor of one object per
  chunk, without any of the work that makes W4 store 0.03x raw per commit;
- ``onefile``: ``rawdefer`` with every changed chunk appended to one file per commit (one
  fsync for all of them) instead of a file each: the floor of a layout that packs a commit's
  chunks together, with the encodings left to a background step. Its repository cannot be
  checked out (the chunks are in no object file); it measures the commit's cost only.

``raw``, ``rawdefer`` and ``onefile`` patch the codec (and ``onefile`` the object store) in
this process only: they are experiments, not modes of tensorvcs.

    .venv/bin/python bench/steady_floor.py [--commits 12] [--modes MODE,...]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import threading
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
from tensorvcs.format import codecs, envelope  # noqa: E402
from tensorvcs.state import writer as state_writer  # noqa: E402
from tensorvcs.store import objects as store_objects  # noqa: E402

MODES = ("normal", "defer", "raw", "rawdefer", "onefile")


def _raw(data: Any, width: int, *, reuse: bool = False) -> codecs.Encoded:
    return codecs.Encoded(codecs.CODEC_RAW, {}, (codecs._as_u8(data).data,))


def _set(stack: contextlib.ExitStack, owner: Any, name: str, value: Any) -> Any:
    """Replace ``owner.name`` with ``value`` until ``stack`` closes; returns the original."""
    old = getattr(owner, name)
    setattr(owner, name, value)
    stack.callback(setattr, owner, name, old)
    return old


class _OneFile:
    """The ``onefile`` mode: chunks appended to one file per TensorWriter.write, fsynced with
    its folder after the writer's own sync; the other objects go to the store as usual."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: set[str] = set()
        self.fd, self.pos, self.n = -1, 0, 0

    def patch(self, stack: contextlib.ExitStack) -> None:
        one = self

        def write(objs: Any, oid: str, kind: int, length: int, enc: Any, *,
                  defer: bool = False) -> int:
            if kind != envelope.KIND_CHUNK:
                return put(objs, oid, kind, length, enc, defer=defer)
            pieces = envelope.pack(kind, length, enc)
            size = sum(len(memoryview(b)) for b in pieces)
            with one.lock:
                at, one.pos = one.pos, one.pos + size
                one.ids.add(oid)
            os.pwritev(one.fd, pieces, at)
            return size

        def writer_write(w: Any, pending: Any) -> Any:
            folder = w.objects.store.root / "objects"
            path = folder / f"onefile-{one.n}"
            one.n += 1
            one.fd, one.pos = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 0
            try:
                out = wrote(w, pending)
                os.fsync(one.fd)
            finally:
                os.close(one.fd)
            c.fsync_path(folder)
            return out

        put = _set(stack, store_objects.ObjectStore, "write", write)
        has = store_objects.ObjectStore.has
        _set(stack, store_objects.ObjectStore, "has", lambda objs, oid: oid in one.ids
             or has(objs, oid))
        wrote = _set(stack, state_writer.TensorWriter, "write", writer_write)
        # no parent chunk is in the store: no version to read, no re-encoding to defer
        _set(stack, state_writer.TensorWriter, "_version", lambda w, parent: (1, None))


def run_mode(mode: str, states: list[Any], work: Path) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        if mode in ("raw", "rawdefer", "onefile"):
            _set(stack, codecs, "encode_elements", _raw)
        if mode in ("defer", "rawdefer"):
            write = state_writer.TensorWriter.write

            def deferring(self: state_writer.TensorWriter, pending: Any) -> Any:
                self.defer_deltas = True
                return write(self, pending)

            _set(stack, state_writer.TensorWriter, "write", deferring)
        if mode == "onefile":
            _OneFile().patch(stack)
        return _series(mode, states, work)


def _series(mode: str, states: list[Any], work: Path) -> dict[str, float]:
    root = work / mode
    repo = tv.Repo.init(root)
    tvcs, kept, same = [], [], []
    try:
        for i, s in enumerate(states):
            t0 = time.perf_counter()
            repo.commit(s, f"step {i}", step=i)
            tvcs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c.torch_save_fsync(s, work / f"ckpt-{i:04d}.pt")
            kept.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            c.torch_save_fsync(s, work / "same.pt")
            same.append(time.perf_counter() - t0)
        size = c.dir_bytes(root / ".tvcs")
    finally:
        repo.close()
        shutil.rmtree(root, ignore_errors=True)
        for f in work.glob("*.pt"):
            f.unlink()
    a, b, o = (statistics.median(x[1:]) for x in (tvcs, kept, same))
    return {"tvcs": a, "torch_save": b, "ratio": a / b, "torch_save_same": o,
            "ratio_same": a / o, "repo_bytes": size}


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
                f"{m:9s} steady commit {r['tvcs'] * 1e3:6.1f} ms  torch.save+fsync: new file "
                f"{r['torch_save'] * 1e3:5.1f} ms ({r['ratio']:.2f}x), over one file "
                f"{r['torch_save_same'] * 1e3:5.1f} ms ({r['ratio_same']:.2f}x)  "
                f"repository {c.fmt_bytes(int(r['repo_bytes']))}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
