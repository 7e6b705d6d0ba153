"""W8: multi-node DCP on object storage — 4 ranks that share no file system save one
checkpoint to S3: tensorvcs's StorageWriter (one repository at s3://bucket/repo) vs DCP's own
FsspecWriter (one folder per checkpoint, s3fs), to the same loopback S3 server, in one run.

    python bench/w8_dcp_s3.py              # ~150 MB state: 12 FSDP2-sharded 1024x1024 layers + Adam
    python bench/w8_dcp_s3.py --quick      # a small state, for a smoke run

A moto S3 server runs in this process on 127.0.0.1, behind a small WSGI layer that counts,
for every request, its method and the bytes it carried in (request body: what the ranks
*sent*) and out (response body). 4 ranks (gloo over TCP, CPU; this script again, as
subprocesses, each in its own empty temp folder, told only the endpoint and the URLs) hold a
quarter of every layer (FSDP2 ``fully_shard``) and its Adam state. Measured on rank 0 between
barriers (so a figure covers all 4 ranks and the commit), medians of --reps:

- first save (after one training step), into a fresh repository / a fresh folder;
- second save, small change: one of the layers (weight and bias) changed, the optimizer
  state not (a frozen-except-one fine-tune; a merged adapter);
- third save, after one more training step of every layer (Adam, lr 1e-4): everything moves a
  little (tensorvcs stores deltas against the second save's shards);
- a load of the newest checkpoint on the 4 ranks by both readers (bitwise checked);
- ``tv.compact`` of the repository afterwards, in one process: the re-encodings of older
  chunks as deltas that StorageWriter defers on object storage (``defer_deltas``, default
  on for ``s3://``). The same saves into a second repository with ``defer_deltas=False``
  (``tensorvcs, eager``: the re-encoding done in each save) show what deferral changes.

For each: wall time, requests (by method), bytes sent to the server and bytes received.
Prints a table and writes bench/results/w8_dcp_s3.json. The server is Python in this process
on the same 2 cores as the ranks: absolute speeds are far below a real S3's, so compare the
two writers within one run only; bytes and request counts do not depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")

COUNTERS_PATH = "/__w8_counters__"  # answered by the counting layer, never by moto
WORLD = 4
PHASES = ("save1", "save2_small", "save3_step", "load", "compact")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def med(xs: list[float]) -> float:
    return float(statistics.median(xs))


# -- the server: moto, behind a counting WSGI layer ----------------------------------------------
class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.bytes_in = 0
        self.bytes_out = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
            }


class _CountingInput:
    """The request body stream, counting the bytes the application reads from it."""

    def __init__(self, inner: Any, counters: Counters) -> None:
        self.inner, self.counters = inner, counters

    def _add(self, b: bytes) -> bytes:
        with self.counters.lock:
            self.counters.bytes_in += len(b)
        return b

    def read(self, *a: Any) -> bytes:
        return self._add(self.inner.read(*a))

    def readinto(self, buf: Any) -> int:
        n = int(self.inner.readinto(buf) or 0)
        with self.counters.lock:
            self.counters.bytes_in += n
        return n

    def readline(self, *a: Any) -> bytes:
        return self._add(self.inner.readline(*a))

    def __iter__(self) -> Any:
        for line in self.inner:
            yield self._add(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _kind(environ: dict[str, Any]) -> str:
    method = str(environ.get("REQUEST_METHOD", "?"))
    query = str(environ.get("QUERY_STRING", ""))
    if method == "GET" and ("list-type" in query or "prefix=" in query or "delimiter" in query):
        return "LIST"
    if method == "POST" and "delete" in query:
        return "DELETE"
    if method == "PUT" and "HTTP_IF_NONE_MATCH" in environ:
        return "PUT"  # conditional (create-if-absent): still one PUT
    return method


def counting_app(app: Any, counters: Counters, latency_s: float = 0.0) -> Any:
    """``app`` counting requests and body bytes; ``latency_s``: a wait before each request is
    served (a model of a real store's round trip; the loopback has next to none)."""
    cond_lock = threading.Lock()  # create-if-absent atomic, as on S3 (moto checks, then writes)

    def wrapped(environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") == COUNTERS_PATH:
            body = json.dumps(counters.snapshot()).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if latency_s:
            time.sleep(latency_s)
        kind = _kind(environ)
        with counters.lock:
            counters.requests[kind] = counters.requests.get(kind, 0) + 1
        environ["wsgi.input"] = _CountingInput(environ["wsgi.input"], counters)

        def run() -> list[bytes]:
            result = app(environ, start_response)
            try:
                chunks = [bytes(c) for c in result]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            with counters.lock:
                counters.bytes_out += sum(len(c) for c in chunks)
            return chunks

        if environ.get("REQUEST_METHOD") == "PUT" and "HTTP_IF_NONE_MATCH" in environ:
            with cond_lock:
                return run()
        return run()

    return wrapped


def start_server(counters: Counters, latency_s: float = 0.0) -> tuple[Any, str]:
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Server(ThreadedMotoServer):  # type: ignore[misc]
        def _server_entry(self) -> None:
            app = counting_app(DomainDispatcherApplication(create_backend_app), counters,
                               latency_s)
            self._server = make_server(
                self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
            )
            self._server_ready_event.set()
            self._server.serve_forever()

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = Server(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


def counters_of(endpoint: str) -> dict[str, Any]:
    with urllib.request.urlopen(endpoint + COUNTERS_PATH) as r:
        return dict(json.loads(r.read()))


def diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    reqs = {k: b["requests"].get(k, 0) - a["requests"].get(k, 0) for k in b["requests"]}
    reqs = {k: v for k, v in sorted(reqs.items()) if v}
    return {
        "requests": reqs,
        "requests_total": sum(reqs.values()),
        "bytes_sent": b["bytes_in"] - a["bytes_in"],
        "bytes_received": b["bytes_out"] - a["bytes_out"],
    }


# -- one rank ------------------------------------------------------------------------------------
def rank_main(a: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.fsdp import fully_shard

    import tensorvcs as tv

    torch.set_num_threads(1)
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    opts = {"client_kwargs": {"endpoint_url": endpoint}}
    dist.init_process_group("gloo", init_method=a.init, rank=a.rank, world_size=WORLD)
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

    def local_bytes(st: dict[str, Any]) -> dict[str, bytes]:
        from torch.distributed.checkpoint._nested_dict import flatten_state_dict
        from torch.distributed.tensor import DTensor

        flat, _ = flatten_state_dict(st)
        out = {}
        for k, v in flat.items():
            if isinstance(v, DTensor):
                v = v.to_local()
            if isinstance(v, torch.Tensor):
                out[k] = v.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        return out

    res: dict[str, Any] = {}

    def measure(key: str, fn: Any) -> None:
        dist.barrier()
        before = counters_of(endpoint) if a.rank == 0 else None
        t0 = time.perf_counter()
        fn()
        dist.barrier()
        dt = time.perf_counter() - t0
        if a.rank == 0:
            assert before is not None
            res.setdefault(key, []).append(diff(before, counters_of(endpoint)) | {"s": dt})

    for rep in range(a.reps):
        train_step(10 * rep)
        s1 = state()
        tv_url, fs_url = f"{a.tv_url}-{rep}", f"{a.fs_url}-{rep}"
        if a.rank == 0:
            tv.Repo.init(tv_url, **opts).close()
        dist.barrier()
        if a.rank == 0:
            tv.Repo.init(f"{tv_url}-eager", **opts).close()
        dist.barrier()
        repo = tv.Repo.open(tv_url, **opts)
        w = tv.dcp.StorageWriter(repo, branch="main", message="first", step=1)
        eager = tv.Repo.open(f"{tv_url}-eager", **opts)
        we = tv.dcp.StorageWriter(eager, branch="main", message="first", step=1,
                                  defer_deltas=False)
        measure("tv_save1", lambda w=w, s=s1: dcp.save(s, storage_writer=w))
        measure("tve_save1", lambda w=we, s=s1: dcp.save(s, storage_writer=w))
        measure("fs_save1", lambda s=s1, u=fs_url: dcp.save(
            s, storage_writer=FsspecWriter(f"{u}/step1", **opts)))

        with torch.no_grad():  # one layer changes; its optimizer state does not
            layers[a.layers // 2].weight.mul_(1.01)
            layers[a.layers // 2].bias.add_(0.01)
        s2 = state()
        w.message, w.step = we.message, we.step = "one layer changed", 2
        measure("tv_save2_small", lambda w=w, s=s2: dcp.save(s, storage_writer=w))
        measure("tve_save2_small", lambda w=we, s=s2: dcp.save(s, storage_writer=w))
        measure("fs_save2_small", lambda s=s2, u=fs_url: dcp.save(
            s, storage_writer=FsspecWriter(f"{u}/step2", **opts)))

        train_step(1)
        s3 = state()
        w.message, w.step = we.message, we.step = "after a training step", 3
        measure("tv_save3_step", lambda w=w, s=s3: dcp.save(s, storage_writer=w))
        measure("tve_save3_step", lambda w=we, s=s3: dcp.save(s, storage_writer=w))
        measure("fs_save3_step", lambda s=s3, u=fs_url: dcp.save(
            s, storage_writer=FsspecWriter(f"{u}/step3", **opts)))
        if a.rank == 0 and rep == 0:
            assert w.last_stats is not None
            res["logical_bytes"] = w.last_stats.logical_bytes
        want = local_bytes(s3)

        for name in ("tv", "fs"):
            with torch.no_grad():  # a target that differs from s3 everywhere
                for p in model.parameters():
                    p.zero_()
                for st in opt.state.values():
                    for v in st.values():
                        v.zero_()
            tgt = state()
            reader = (
                tv.dcp.StorageReader(tv.Repo.open(tv_url, **opts), "main")
                if name == "tv"
                else FsspecReader(f"{fs_url}/step3", **opts)
            )
            measure(f"{name}_load", lambda t=tgt, r=reader: dcp.load(t, storage_reader=r))
            got = local_bytes(tgt)
            bad = sorted(k for k in want if got.get(k) != want[k])
            assert not bad, f"{name} load differs on rank {a.rank}: {bad[:5]}"
        if a.rank == 0 and rep == 0:
            res["tv_commits"] = [c.message for c in tv.Repo.open(tv_url, **opts).log("main")]
        report: list[Any] = []
        measure("tv_compact", lambda out=report, r=repo: (  # rank 0 compacts, the others wait
            out.append(tv.compact(r)) if a.rank == 0 else None))
        if a.rank == 0:
            res.setdefault("compact_report", []).append(vars(report[0]))
            res.setdefault("stored_bytes", []).append({
                name: sum(r.objects.stored_size(o) for o in r.objects.ids())
                for name, r in (("tv", repo), ("tve", eager))
            })
        repo.close()
        eager.close()
    if a.rank == 0:
        print("RESULT " + json.dumps(res), flush=True)
    dist.barrier()
    dist.destroy_process_group()


# -- the driver ----------------------------------------------------------------------------------
def run(a: argparse.Namespace) -> dict[str, Any]:
    import s3fs

    os.environ.update(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    )
    counters = Counters()
    server, endpoint = start_server(counters)
    try:
        bucket = f"w8-{secrets.token_hex(4)}"
        s3fs.S3FileSystem(skip_instance_cache=True, client_kwargs={"endpoint_url": endpoint}).mkdir(
            bucket
        )
        init = f"tcp://127.0.0.1:{free_port()}"
        procs, homes = [], []
        for r in range(WORLD):
            home = Path(tempfile.mkdtemp(prefix=f"tvcs-w8-rank{r}-"))
            env = {k: v for k, v in os.environ.items() if not k.startswith("TVCS_")}
            env.update(
                HOME=str(home), TMPDIR=str(home), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
                AWS_ENDPOINT_URL=endpoint, PYTHONPATH=str(ROOT),
            )
            if Path("/sys/class/net/lo").exists():
                env["GLOO_SOCKET_IFNAME"] = "lo"
            cmd = [
                sys.executable, __file__, "--rank", str(r), "--init", init,
                "--width", str(a.width), "--layers", str(a.layers), "--reps", str(a.reps),
                "--tv-url", f"s3://{bucket}/repo", "--fs-url", f"s3://{bucket}/dcp",
            ]
            procs.append(subprocess.Popen(cmd, cwd=home, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
            homes.append(home)
        outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            for i, o in enumerate(outs):
                print(f"--- rank {i} (exit {procs[i].returncode})\n{o[-4000:]}")
            raise SystemExit("a rank failed")
        left = [str(f) for h in homes for f in h.rglob("*") if f.is_file()]
        lines = [ln for ln in outs[0].splitlines() if ln.startswith("RESULT ")]
        res: dict[str, Any] = json.loads(lines[0][len("RESULT "):])
        res["files_left_on_rank_disks"] = left
        return res
    finally:
        server.stop()


def table(res: dict[str, Any], a: argparse.Namespace) -> str:
    mib = 1 << 20
    rows = [
        f"{'4 ranks, s3://':34} {'writer':10} {'seconds':>8} {'MiB sent':>9} "
        f"{'MiB recv':>9} {'requests':>9}  by method"
    ]
    for phase, label in (
        ("save1", "first save"),
        ("save2_small", "second save, one layer changed"),
        ("save3_step", "third save, after a training step"),
        ("load", "load (4 ranks)"),
        ("compact", "tv.compact afterwards (1 process)"),
    ):
        for name, who in (("tv", "tensorvcs"), ("tve", "tvcs eager"), ("fs", "Fsspec")):
            runs = res.get(f"{name}_{phase}")
            if runs is None:
                continue
            r0 = runs[0]
            rows.append(
                f"{label:34} {who:10} {med([r['s'] for r in runs]):8.2f} "
                f"{r0['bytes_sent'] / mib:9.1f} {r0['bytes_received'] / mib:9.1f} "
                f"{r0['requests_total']:9d}  "
                + " ".join(f"{k} {v}" for k, v in r0["requests"].items())
            )
    st = res["stored_bytes"][0]
    rows.append(
        f"stored after 3 saves (+ compact): tensorvcs {st['tv'] / mib:.1f} MiB, "
        f"eager {st['tve'] / mib:.1f} MiB; compact re-encoded "
        f"{res['compact_report'][0]['rewritten']} of {res['compact_report'][0]['candidates']}"
    )
    rows.append(
        f"state: {a.layers} x Linear({a.width}, {a.width}) + Adam, "
        f"{res['logical_bytes'] / mib:.1f} MiB logical; medians of {a.reps} rep(s) for time"
    )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=None)
    ap.add_argument("--init", default="")
    ap.add_argument("--tv-url", default="")
    ap.add_argument("--fs-url", default="")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a small state (smoke run)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    a = ap.parse_args()
    if a.rank is not None:
        rank_main(a)
        return
    if a.quick:
        a.width, a.layers = 256, 4
    t0 = time.perf_counter()
    res = run(a)
    print(table(res, a))
    print(f"({time.perf_counter() - t0:.0f} s in all; load average {os.getloadavg()[0]:.1f}; "
          f"files left on the ranks' own disks: {len(res['files_left_on_rank_disks'])})")
    a.out.mkdir(parents=True, exist_ok=True)
    res["config"] = {"width": a.width, "layers": a.layers, "reps": a.reps, "world": WORLD}
    (a.out / "w8_dcp_s3.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
