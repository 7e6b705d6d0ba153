"""One rank of the multi-node DCP-on-S3 scenario (run by tests/dcp/test_dcp_s3.py).

    python _s3_worker.py --rank R --world 4 --init tcp://127.0.0.1:PORT

Ranks share no file system path: the repository is ``$TVCS_S3_URL`` on the S3 server at
``$AWS_ENDPOINT_URL``, the rendezvous is TCP, and each rank runs in its own private working
and temp folder. The 4 ranks save an FSDP2-sharded model + Adam state twice (the second time
with one small tensor changed); then ranks 0-2 load the newest commit resharded over 3 ranks
and compare it, gathered, with the state that was saved. Rank 0 prints one ``REPORT {json}``
line: the commits, the save statistics, SHA-256 digests of the saved states (for the test's
own 1-process load) and the keys that differed after the 3-rank load.
"""

from __future__ import annotations

import argparse
import faulthandler
import hashlib
import json
import os
import sys
import warnings
from datetime import timedelta
from typing import Any

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch import nn  # noqa: E402

import tensorvcs as tv  # noqa: E402

ROWS = 60  # embedding rows: 15 x 4 when saved, 20 x 3 when loaded


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(ROWS, 64), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 8))


def fsdp_model(seed: int, mesh: Any = None) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    m = make_model(seed)
    for layer in m:
        if any(True for _ in layer.parameters()):
            fully_shard(layer, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def train_step(m: nn.Module, opt: torch.optim.Optimizer) -> None:
    g = torch.Generator().manual_seed(100)
    x = torch.randint(0, ROWS, (4, 3), generator=g)
    m(x).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()


def full_flat(state: dict[str, Any]) -> dict[str, Any]:
    """Flattened state with every DTensor gathered (collective over the tensor's mesh)."""
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict
    from torch.distributed.tensor import DTensor

    flat, _ = flatten_state_dict(state)
    out = {}
    for k in sorted(flat):
        v = flat[k]
        if isinstance(v, DTensor):
            v = v.full_tensor()
        out[k] = v.detach().clone() if isinstance(v, torch.Tensor) else v
    return out


def digest(v: Any) -> str:
    """dtype, shape and SHA-256 of the bytes of a tensor; repr of anything else."""
    if isinstance(v, torch.Tensor):
        t = v.detach().contiguous().view(-1)
        h = hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()
        return f"{t.dtype}:{list(v.shape)}:{h}"
    return repr(v)


def digests(flat: dict[str, Any]) -> dict[str, str]:
    return {k: digest(v) for k, v in sorted(flat.items())}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--rank", type=int, required=True)
    p.add_argument("--world", type=int, required=True)
    p.add_argument("--init", required=True)
    a = p.parse_args()
    faulthandler.dump_traceback_later(150, exit=True)  # a hang: print where, then exit
    torch.set_num_threads(1)
    url = os.environ["TVCS_S3_URL"]
    options = {"client_kwargs": {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}}
    dist.init_process_group(
        "gloo", init_method=a.init, rank=a.rank, world_size=a.world, timeout=timedelta(seconds=90)
    )
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.device_mesh import DeviceMesh

    report: dict[str, Any] = {"rank": a.rank}
    repo = tv.Repo.open(url, **options)
    try:
        m = fsdp_model(0)
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        train_step(m, opt)
        msd, osd = get_state_dict(m, opt)
        state = {"model": msd, "optim": osd, "extra": {"epoch": 1}}
        w = tv.dcp.StorageWriter(repo, branch="main", message="4 ranks, step 1", step=1)
        dcp.save(state, storage_writer=w)
        ref1 = full_flat(state)
        first = w.last_commit

        # a small change: one bias moves; every other shard is as before
        with torch.no_grad():
            m[3].bias.add_(1.0)
        msd, osd = get_state_dict(m, opt)
        state = {"model": msd, "optim": osd, "extra": {"epoch": 2}}
        w.message, w.step = "4 ranks, one bias changed", 2
        dcp.save(state, storage_writer=w)
        ref2 = full_flat(state)
        if a.rank == 0:
            assert first is not None and w.last_commit is not None and w.last_stats is not None
            report["commits"] = [first.id, w.last_commit.id]
            report["second"] = {
                k: getattr(w.last_stats, k)
                for k in ("items", "logical_bytes", "new_objects", "new_stored_bytes")
            }
            report["ref1"] = digests(ref1)
            report["ref2"] = digests(ref2)

        # the newest commit, loaded resharded on 3 of the ranks
        pg3 = dist.new_group([0, 1, 2])
        if a.rank < 3:
            mesh3 = DeviceMesh.from_group(pg3, "cpu")
            m3 = fsdp_model(5, mesh3)
            opt3 = torch.optim.Adam(m3.parameters(), lr=1e-2)
            msd3, osd3 = get_state_dict(m3, opt3)
            state3 = {"model": msd3, "optim": osd3, "extra": {"epoch": 0}}
            reader = tv.dcp.StorageReader(tv.Repo.open(url, **options), "main")
            dcp.load(state3, storage_reader=reader, process_group=pg3)
            set_state_dict(
                m3, opt3, model_state_dict=state3["model"], optim_state_dict=state3["optim"]
            )
            got = full_flat({"model": msd3, "optim": osd3, "extra": state3["extra"]})
            if a.rank == 0:
                report["load3_keys"] = len(got)
                report["load3_bad"] = sorted(
                    k for k in set(got) | set(ref2) if digest(got.get(k)) != digest(ref2.get(k))
                )
                report["load3_shard_rows"] = list(msd3["0.weight"].to_local().shape)
        dist.barrier()
    finally:
        repo.close()
    if a.rank == 0:
        print("REPORT " + json.dumps(report), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
