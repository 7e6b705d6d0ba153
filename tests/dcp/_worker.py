"""One rank of a multi-process DCP scenario (run by tests/dcp/test_dcp_dist.py).

    python _worker.py SCENARIO --rank R --world N --init file:///... --repo PATH --out DIR

Every scenario is deterministic (seeded); rank 0 writes reference states (full tensors,
gathered) as .pt files and every rank a JSON report to DIR, which the test checks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch import nn  # noqa: E402

import tensorvcs as tv  # noqa: E402

ROWS = 40  # embedding rows: 20/20 on 2 ranks, 14/14/12 on 3 (FSDP2 splits like torch.chunk)


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Embedding(ROWS, 32), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 6))


def fsdp_model(seed: int) -> nn.Module:
    from torch.distributed.fsdp import fully_shard

    m = make_model(seed)
    for layer in m:
        if any(True for _ in layer.parameters()):
            fully_shard(layer)
    fully_shard(m)
    return m


def train_step(m: nn.Module, opt: torch.optim.Optimizer, k: int) -> None:
    g = torch.Generator().manual_seed(100 + k)
    x = torch.randint(0, ROWS, (4, 3), generator=g)
    m(x).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()


def full_flat(state: dict[str, Any]) -> dict[str, Any]:
    """Flattened state with every DTensor gathered (collective: all ranks call it)."""
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


def same(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Keys whose values differ (tensors: dtype, shape and bytes)."""
    bad = sorted(set(a) ^ set(b))
    for k in set(a) & set(b):
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            ok = (
                isinstance(x, torch.Tensor)
                and isinstance(y, torch.Tensor)
                and x.dtype == y.dtype
                and x.shape == y.shape
                and x.contiguous().view(-1).view(torch.uint8).tolist()
                == y.contiguous().view(-1).view(torch.uint8).tolist()
            )
        else:
            ok = x == y
        if not ok:
            bad.append(k)
    return bad


def objects_bytes(repo: tv.Repo) -> int:
    return sum(f.stat().st_size for f in (repo.path / "objects").rglob("*") if f.is_file())


def fsdp_state(seed: int, step: bool) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    m = fsdp_model(seed)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    if step:
        train_step(m, opt, 0)
    msd, osd = get_state_dict(m, opt)
    return m, opt, {"model": msd, "optim": osd, "extra": {"epoch": 1 if step else 0}}


# -- scenarios ---------------------------------------------------------------------------------
def save2(a: argparse.Namespace, repo: tv.Repo, out: Path, report: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_model_state_dict

    m, opt, state = fsdp_state(0, step=True)
    w = tv.dcp.StorageWriter(repo, branch="main", message="two ranks", step=1)
    dcp.save(state, storage_writer=w)
    ref = full_flat(state)
    if a.rank == 0:
        torch.save(ref, out / "ref_two.pt")
        repo.tag("two", w.last_commit.id)
        report["first"] = vars(w.last_stats) | {"commit": w.last_commit.id}
    report["rank_first_new_bytes"] = w.last_stats.new_stored_bytes if a.rank else None

    # the same state again: nothing new but the manifest and the commit
    dist.barrier()
    before = objects_bytes(repo)
    dist.barrier()
    w.message, w.step = "unchanged", 2
    dcp.save(state, storage_writer=w)
    dist.barrier()
    if a.rank == 0:
        report["unchanged"] = vars(w.last_stats) | {
            "commit": w.last_commit.id,
            "objects_growth": objects_bytes(repo) - before,
        }

    # one more training step, saved with dcp.async_save
    train_step(m, opt, 1)
    msd, osd = get_state_dict(m, opt)
    state2 = {"model": msd, "optim": osd, "extra": {"epoch": 2}}
    w2 = tv.dcp.StorageWriter(repo, branch="main", message="async after one step", step=3)
    dist.barrier()
    before = objects_bytes(repo)
    res = dcp.async_save(state2, storage_writer=w2)
    fut = getattr(res, "upload_completion", res)
    fut.result()
    dist.barrier()
    ref2 = full_flat(state2)
    if a.rank == 0:
        torch.save(ref2, out / "ref_step2.pt")
        repo.tag("two-step2", w2.last_commit.id)
        report["async"] = vars(w2.last_stats) | {
            "commit": w2.last_commit.id,
            "objects_growth": objects_bytes(repo) - before,
        }

    # filtered load (model keys only) into a differently initialised model
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    m3 = fsdp_model(7)
    sd = {"model": get_model_state_dict(m3)}
    rep = tv.dcp.load(sd, repo, "two", include="model.*")
    set_model_state_dict(m3, sd["model"])
    got = full_flat({"model": get_model_state_dict(m3)})
    ref_model = {k: v for k, v in ref.items() if k.startswith("model.")}
    report["filtered_load_bad"] = same(got, ref_model)
    report["filtered_loaded"] = len(rep.loaded)
    # allow_partial_load: a key the checkpoint lacks is left alone
    m4 = fsdp_model(8)
    sd4 = {"model": get_model_state_dict(m4), "not_saved": torch.full((3,), 5.0)}
    dcp.load(
        sd4,
        storage_reader=tv.dcp.StorageReader(repo, "two"),
        planner=DefaultLoadPlanner(allow_partial_load=True),
    )
    set_model_state_dict(m4, sd4["model"])
    got4 = full_flat({"model": get_model_state_dict(m4)})
    report["partial_load_bad"] = same(got4, ref_model)
    report["partial_untouched"] = sd4["not_saved"].tolist()


def load3(a: argparse.Namespace, repo: tv.Repo, out: Path, report: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_state_dict

    m, opt, state = fsdp_state(5, step=False)
    reader = tv.dcp.StorageReader(repo, "two")
    dcp.load(state, storage_reader=reader)
    set_state_dict(m, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    got = full_flat(state)
    ref = torch.load(out / "ref_two.pt", weights_only=True)
    report["bad_vs_two"] = same(got, ref)
    report["bytes_read"] = reader.bytes_read
    ids = {o for t in repo.tensors("two") for o in t.objects}
    total = sum(repo.objects.stored_size(o) for o in ids)
    report["checkpoint_stored_bytes"] = total
    w = tv.dcp.StorageWriter(repo, branch="three", message="three ranks", step=1)
    dcp.save(state, storage_writer=w)
    if a.rank == 0:
        repo.tag("three", w.last_commit.id)
        torch.save(got, out / "ref_three.pt")


def kill(a: argparse.Namespace, repo: tv.Repo, out: Path, report: dict[str, Any]) -> None:
    # first: the 3-rank checkpoint loads on 2 ranks
    m, opt, state = fsdp_state(9, step=False)
    dcp.load(state, storage_reader=tv.dcp.StorageReader(repo, "three"))
    ref = torch.load(out / "ref_two.pt", weights_only=True)
    report["bad_3_to_2"] = same(full_flat(state), ref)
    report["heads_before"] = repo.branches()
    # then a save where rank 1 dies (SIGKILL) after writing its first chunk
    train_step(m, opt, 3)
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(m, opt)
    if a.rank == 1:
        from tensorvcs.state.writer import TensorWriter

        orig = TensorWriter._write_chunk

        def die(self: Any, *args: Any, **kw: Any) -> Any:
            r = orig(self, *args, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
            return r

        TensorWriter._write_chunk = die  # type: ignore[method-assign]
    dist.barrier()
    w = tv.dcp.StorageWriter(repo, branch="killed", message="never lands")
    try:
        dcp.save({"model": msd, "optim": osd}, storage_writer=w)
        report["raised"] = False
    except Exception as e:  # rank 0: the collective fails when rank 1 is gone
        report["raised"] = True
        report["error"] = f"{type(e).__name__}: {str(e)[:300]}"


def concurrent(a: argparse.Namespace, repo: tv.Repo, out: Path, report: dict[str, Any]) -> None:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import Shard, distribute_tensor

    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
    job = a.rank // 2
    pg = groups[job]
    mesh = DeviceMesh.from_group(pg, "cpu")
    commits = []
    for rnd in range(3):
        g = torch.Generator().manual_seed(1000 * job + rnd)
        full = {
            "w": torch.randn(64, 16, generator=g),
            "b": torch.randn(16, generator=g),
        }
        state = {
            "w": distribute_tensor(full["w"], mesh, [Shard(0)]),
            "b": full["b"],
            "round": rnd,
        }
        w = tv.dcp.StorageWriter(repo, branch=f"job-{job}", message=f"job {job} round {rnd}")
        dcp.save(state, storage_writer=w, process_group=pg)
        if w.last_commit is not None:
            commits.append(w.last_commit.id)
    report["job"] = job
    report["commits"] = commits


SCENARIOS = {"save2": save2, "load3": load3, "kill": kill, "concurrent": concurrent}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("scenario")
    p.add_argument("--rank", type=int, default=0)
    p.add_argument("--world", type=int, default=1)
    p.add_argument("--init", default="")
    p.add_argument("--repo", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    out = Path(a.out)
    torch.set_num_threads(1)
    report: dict[str, Any] = {"rank": a.rank}
    if a.scenario == "killfinish":  # one process, no process group: die inside finish
        import tensorvcs.dcp.writer as wmod

        repo = tv.Repo.open(a.repo)

        def die(*args: Any, **kw: Any) -> None:
            (out / "killfinish-reached").write_text("1")
            os.kill(os.getpid(), signal.SIGKILL)

        wmod.record_commit = die  # type: ignore[assignment]
        state = {"w": torch.arange(5000, dtype=torch.float32), "step": 1}
        w = tv.dcp.StorageWriter(repo, branch="killfinish")
        dcp.save(state, storage_writer=w, no_dist=True)
        return 1  # not reached
    dist.init_process_group(
        "gloo", init_method=a.init, rank=a.rank, world_size=a.world, timeout=timedelta(seconds=60)
    )
    repo = tv.Repo.open(a.repo)
    try:
        SCENARIOS[a.scenario](a, repo, out, report)
        (out / f"{a.scenario}-rank{a.rank}.json").write_text(json.dumps(report, default=str))
    finally:
        repo.close()
    if a.scenario == "kill":  # the group is broken: leave without collective teardown
        sys.stdout.flush()
        os._exit(0)
    else:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
