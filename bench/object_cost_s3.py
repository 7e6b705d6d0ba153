"""Per-object cost on object storage (issue 11, goal 6): do 4 MiB objects cost more than
64 MiB ones when the bytes are the same?

Uploads ``--mib`` MiB of random bytes through tensorvcs's own object-storage store
(``FsspecStore.put_if_absent``: one create-only PUT per object, as a commit does) to the
loopback S3 server of bench/w8_dcp_s3.py (moto in this process, counting requests), as
4 MiB objects and as 64 MiB objects, 8 threads each (a commit's pool), medians of ``--reps``.
``--latency-ms`` makes the server wait that long before serving each request: a model of a
real store's round trip (AWS S3 from the same region: tens of ms to the first byte), which
the loopback does not have. Its bandwidth is not modelled: what moto in Python on these 2
cores moves, far below a real link's.

    .venv/bin/python bench/object_cost_s3.py [--mib 512] [--reps 3] [--latency-ms 0,20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.goal6 import verdict  # noqa: E402
from bench.w8_dcp_s3 import Counters, counters_of, diff, start_server  # noqa: E402

PIECE = 4 << 20
PACK = 64 << 20
THREADS = 8


def upload(store: Any, prefix: str, total: int, size: int, buf: bytes) -> float:
    n = total // size
    body = buf * (size // len(buf))

    def put(i: int) -> None:
        assert store.put_if_absent(f"{prefix}/{i:06d}", [body])

    t0 = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(put, range(n)))
    return time.perf_counter() - t0


def run_case(mib: int, reps: int, latency_ms: float) -> list[dict[str, Any]]:
    import s3fs

    from tensorvcs.store.fsspec_store import FsspecStore

    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                      AWS_DEFAULT_REGION="us-east-1")
    server, endpoint = start_server(Counters(), latency_ms / 1000)
    rows = []
    try:
        opts = {"client_kwargs": {"endpoint_url": endpoint}}
        bucket = f"objcost-{secrets.token_hex(4)}"
        s3fs.S3FileSystem(skip_instance_cache=True, **opts).mkdir(bucket)
        store = FsspecStore(f"s3://{bucket}/store", **opts)
        buf = os.urandom(PIECE)
        total = mib << 20
        for size, label in ((PIECE, "4 MiB objects"), (PACK, "64 MiB objects")):
            times, reqs = [], 0
            for rep in range(reps):
                before = counters_of(endpoint)
                times.append(upload(store, f"{size >> 20}-{rep}", total, size, buf))
                reqs = diff(before, counters_of(endpoint))["requests_total"]
                for name in list(store.list(f"{size >> 20}-{rep}")):  # moto keeps it in RAM
                    store.delete(name)
            t = statistics.median(times)
            rows.append({"latency_ms": latency_ms, "objects": label, "count": total // size,
                         "requests": reqs, "seconds": t, "mib_per_s": mib / t})
    finally:
        server.stop()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--latency-ms", default="0,20")
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    for lat in [float(x) for x in a.latency_ms.split(",") if x.strip()]:
        rows.extend(run_case(a.mib, a.reps, lat))
    print(f"{a.mib} MiB through FsspecStore.put_if_absent, {THREADS} threads, medians of "
          f"{a.reps}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'latency':>8} {'objects':>15} {'count':>6} {'requests':>9} {'seconds':>8} "
          f"{'MiB/s':>7}")
    for r in rows:
        print(f"{r['latency_ms']:>6g}ms {r['objects']:>15} {r['count']:>6} {r['requests']:>9} "
              f"{r['seconds']:>8.2f} {r['mib_per_s']:>7.0f}")
    by_latency: dict[float, dict[int, float]] = {}
    for r in rows:
        by_latency.setdefault(r["latency_ms"], {})[r["count"]] = r["seconds"]
    print(verdict([(f"{lat:g} ms latency", t[max(t)], t[min(t)])
                   for lat, t in by_latency.items()]))


if __name__ == "__main__":
    main()
