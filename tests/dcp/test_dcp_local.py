"""tensorvcs.dcp in one process (no process group): format, dedup, ranged reads, reports,
conversions. The multi-process tests are in test_dcp_dist.py."""

from __future__ import annotations

import io
import json
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.metadata import MetadataIndex
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

import tensorvcs as tv
from tensorvcs.format import jsonenc, values
from tensorvcs.repo import GC_LOCK

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def tbytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert (a.dtype, tuple(a.shape)) == (b.dtype, tuple(b.shape)), where
        assert tbytes(a) == tbytes(b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), (where, list(a), list(b))
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}/{i}")
    else:
        assert a == b, where


def strkeys(x: Any) -> Any:
    """DCP's flattening turns dict keys into strings (optimizer state's 0 -> "0")."""
    if isinstance(x, dict):
        return {str(k): strkeys(v) for k, v in x.items()}
    return x


def save(state: dict[str, Any], repo: tv.Repo, **kw: Any) -> tv.dcp.StorageWriter:
    w = tv.dcp.StorageWriter(repo, **kw)
    dcp.save(state, storage_writer=w, no_dist=True)
    return w


def sample_state(seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "model": OrderedDict(
            w=torch.randn(96, 64, generator=g),  # 24 KiB: 6 chunks of 4 KiB
            b=torch.randn(64, generator=g).to(torch.bfloat16),
            idx=torch.arange(10, dtype=torch.int64),
            mask=torch.tensor([True, False, True]),
            c=torch.randn(3, generator=g, dtype=torch.complex64),
            scalar=torch.tensor(2.5),
            empty=torch.empty(0, 4),
        ),
        "optim": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]},
        "epoch": 4,
        "name": "run ü",
    }


@pytest.fixture
def repo(tmp_path: Path) -> Any:
    r = tv.Repo.init(tmp_path / "repo", chunk_size=4096, pack_threshold=1024)
    yield r
    r.close()


def test_roundtrip_and_pickle_free_manifest(repo: tv.Repo) -> None:
    state = sample_state()
    w = save(state, repo, message="first", step=7, metrics={"loss": 0.5})
    c = repo.show()
    assert c.id == w.last_commit.id and c.step == 7 and c.metrics == {"loss": 0.5}
    # a fresh state of the same structure is filled bitwise
    target = sample_state(seed=1)
    target["epoch"], target["name"] = 0, ""
    dcp.load(target, storage_reader=tv.dcp.StorageReader(repo), no_dist=True)
    assert_same(state, target)
    # the manifest is canonical JSON with a dcp section; nothing in it is a pickle
    mid = c.manifest
    doc = jsonenc.loads(repo.objects.read_bytes(mid))
    sec = doc["dcp"]
    assert sec["version"] == 1
    kinds = {it["fqn"]: it["kind"] for it in sec["items"]}
    assert kinds["model.w"] == "tensor" and kinds["epoch"] == "bytes"
    w_item = next(it for it in sec["items"] if it["fqn"] == "model.w")
    assert w_item["dtype"] == "float32" and w_item["size"] == [96, 64]
    assert w_item["chunks"] == [{"offsets": [0, 0], "sizes": [96, 64], "tensor": 0}]
    planner = values.decode(sec["planner_data"], values.Hooks())
    assert planner["model.w"] == ("model", "w") and planner["optim.state.0.step"][2] == "0"
    assert "pickle" not in json.dumps(doc["tree"])
    # checkout sees the flat DCP keys; a whole tensor is a tensor, bytes items are uint8
    flat = repo.checkout()
    assert_same(flat["model.w"], state["model"]["w"])
    assert flat["epoch"].dtype == torch.uint8
    assert tv.fsck(repo).ok


def test_second_save_writes_nothing_and_a_small_change_writes_a_delta(repo: tv.Repo) -> None:
    state = sample_state()
    w = save(state, repo)
    first = w.last_stats.new_stored_bytes
    assert first > 0
    before = sum(f.stat().st_size for f in (repo.path / "objects").rglob("*") if f.is_file())
    w2 = save(state, repo)
    after = sum(f.stat().st_size for f in (repo.path / "objects").rglob("*") if f.is_file())
    assert w2.last_stats.new_stored_bytes == 0 and w2.last_stats.new_objects == 0
    assert after - before < 1024  # one commit object (the manifest is the same object)
    # a small update of the big tensor: the new version is stored whole and the previous
    # commit's chunks are re-encoded as deltas against it (reverse deltas), so the net growth
    # is a fraction of the tensor
    old = [o for t in repo.tensors() if t.key == "model.w" for o in t.objects]
    state["model"]["w"] = state["model"]["w"] + 1e-4 * torch.randn(96, 64)
    w3 = save(state, repo)
    assert 0 < w3.last_stats.new_stored_bytes < 0.8 * 96 * 64 * 4
    new = {o for t in repo.tensors() if t.key == "model.w" for o in t.objects}
    assert all(repo.objects.delta_base(o) is None for o in new)
    assert any(repo.objects.delta_base(o) in new for o in old)  # delta objects
    assert tv.fsck(repo).ok


class _Grab:
    """A minimal LoadPlanner for read_data: boxes land in preallocated targets."""

    def __init__(self, targets: dict[str, torch.Tensor]) -> None:
        self.targets = targets

    def resolve_tensor(self, req: ReadItem) -> torch.Tensor:
        return self.targets[req.dest_index.fqn]

    def commit_tensor(self, req: ReadItem, t: torch.Tensor) -> None:
        pass

    def load_bytes(self, req: ReadItem, value: io.BytesIO) -> None:
        self.targets[req.dest_index.fqn] = value.read()


def test_read_data_decodes_only_the_chunks_a_box_needs(repo: tv.Repo) -> None:
    big = torch.arange(256 * 64, dtype=torch.float32).reshape(256, 64)  # 64 KiB: 16 chunks
    save({"big": big}, repo)
    reader = tv.dcp.StorageReader(repo)
    md = reader.read_metadata()
    reader.set_up_storage_reader(md, True)
    # rows 100..119: bytes 25600..30719 of the tensor: chunks 6 and 7 only
    out = torch.empty(20, 64)
    req = ReadItem(
        LoadItemType.TENSOR,
        MetadataIndex("big", [0, 0]),
        torch.Size([0, 0]),
        MetadataIndex("big", [0, 0]),
        torch.Size([100, 0]),
        torch.Size([20, 64]),
    )
    reader.read_data(LoadPlan([req]), _Grab({"big": out})).wait()  # type: ignore[arg-type]
    assert torch.equal(out, big[100:120])
    one_chunk = max(repo.objects.stored_size(o) for o in repo.tensors()[0].objects)
    assert 0 < reader.bytes_read <= 2 * one_chunk
    # a column box (strided in the stored bytes) is assembled right
    col = torch.empty(256, 3)
    req2 = ReadItem(
        LoadItemType.TENSOR,
        MetadataIndex("big", [0, 0]),
        torch.Size([0, 0]),
        MetadataIndex("big", [0, 0]),
        torch.Size([0, 10]),
        torch.Size([256, 3]),
    )
    reader.read_data(LoadPlan([req2]), _Grab({"big": col})).wait()  # type: ignore[arg-type]
    assert torch.equal(col, big[:, 10:13])


def test_load_report_strict_and_partial(repo: tv.Repo) -> None:
    save({"model": {"a": torch.ones(4), "b": torch.zeros(2, 2)}, "step": 3}, repo)
    state = {"model": {"a": torch.empty(4), "b": torch.empty(3, 3), "new": torch.empty(1)}}
    with pytest.raises(tv.LoadError) as ei:
        tv.dcp.load(state, repo, no_dist=True)
    msg = str(ei.value)
    assert "missing" in msg and "model.new" in msg and "step" in msg and "model.b" in msg
    assert torch.equal(state["model"]["a"], state["model"]["a"])  # nothing was loaded
    rep = tv.dcp.load(state, repo, strict=False, no_dist=True)
    assert rep.loaded == ["model.a"] and rep.missing == ["model.new"]
    assert rep.unexpected == ["step"] and rep.mismatched == [("model.b", (2, 2), (3, 3))]
    assert torch.equal(state["model"]["a"], torch.ones(4))
    # include globs: only model.a is in scope; strict passes
    s2 = {"model": {"a": torch.empty(4)}, "other": torch.full((2,), 7.0)}
    rep2 = tv.dcp.load(s2, repo, include="model.a", no_dist=True)
    assert rep2.ok and rep2.loaded == ["model.a"]
    assert torch.equal(s2["other"], torch.full((2,), 7.0))
    with pytest.raises(tv.LoadError, match="required"):
        tv.dcp.load(s2, repo, include="model.a", required=["model.zz*"], no_dist=True)


def test_plain_commit_loads_through_dcp(repo: tv.Repo) -> None:
    """A consolidated state committed with Repo.commit is served to dcp.load as is."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 5, generator=g)
    repo.commit(
        {
            "model": {"w": w, "tied": w},
            "arr": np.arange(6, dtype=np.int16).reshape(2, 3),
            "pair": (torch.ones(2), 5),
            "cfg": {"lr": 0.5, "names": ["x", "y"]},
        },
        "plain",
    )
    target = {
        "model": {"w": torch.empty(8, 5), "tied": torch.empty(8, 5)},
        "arr": None,
        "pair": None,
        "cfg": {"lr": 0.0, "names": []},
    }
    dcp.load(target, storage_reader=tv.dcp.StorageReader(repo), no_dist=True)
    assert torch.equal(target["model"]["w"], w) and torch.equal(target["model"]["tied"], w)
    assert np.array_equal(target["arr"], np.arange(6, dtype=np.int16).reshape(2, 3))
    assert torch.equal(target["pair"][0], torch.ones(2)) and target["pair"][1] == 5
    assert target["cfg"] == {"lr": 0.5, "names": ["x", "y"]}


def test_dcp_directory_import_export(repo: tv.Repo, tmp_path: Path) -> None:
    state = sample_state()
    src = tmp_path / "dcp_src"
    dcp.save(state, checkpoint_id=str(src), no_dist=True)  # FileSystemWriter
    c = tv.dcp.import_dcp(repo, src, message="imported", step=5)
    assert repo.show().id == c.id and c.step == 5
    got = tv.dcp.load_state(repo)
    assert_same(strkeys(state), got)
    # importing the same directory again stores nothing new
    tv.dcp.import_dcp(repo, src)
    assert repo.last_write_stats.new_stored_bytes == 0
    # export: plain DCP (FileSystemReader) loads it
    out = tmp_path / "dcp_out"
    tv.dcp.export_dcp(repo, "HEAD", out)
    target = sample_state(seed=9)
    dcp.load(target, checkpoint_id=str(out), no_dist=True)
    assert_same(state, target)
    assert tv.fsck(repo).ok


def test_consolidated_files_to_commit_to_dcp_and_back(repo: tv.Repo, tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(5)
    hub = {"emb.weight": torch.randn(50, 16, generator=g), "head.bias": torch.randn(4, generator=g)}
    st = tmp_path / "model.safetensors"
    save_file(hub, str(st))
    c = tv.dcp.import_torch_save(repo, st, key="model", message="from hub")
    # a "sharded run" loads the consolidated commit directly (here: one rank)
    target = {"model": {k: torch.empty_like(v) for k, v in hub.items()}}
    dcp.load(target, storage_reader=tv.dcp.StorageReader(repo, c.id), no_dist=True)
    assert_same(target["model"], hub)
    # ...or from a DCP directory exported from it (Lingua's init_ckpt_path)
    tv.dcp.export_dcp(repo, c.id, tmp_path / "init_dcp")
    t2 = {"model": {k: torch.empty_like(v) for k, v in hub.items()}}
    dcp.load(t2, checkpoint_id=str(tmp_path / "init_dcp"), no_dist=True)
    assert_same(t2["model"], hub)
    # a DCP commit back to one file: .pt and .safetensors
    save({"model": hub, "step": 11}, repo, branch="sharded")
    pt = tv.dcp.export_torch_save(repo, "sharded", tmp_path / "cons.pt")
    cons = torch.load(pt, weights_only=True)
    assert_same(cons, {"model": hub, "step": 11})
    save({"model": hub}, repo, branch="weights")
    sf = tv.dcp.export_torch_save(repo, "weights", tmp_path / "cons.safetensors")
    flat = {f"model.{k}": v for k, v in sorted(hub.items())}
    assert_same(dict(sorted(load_file(str(sf)).items())), flat)
    with pytest.raises(tv.UnsupportedValueError, match="non-tensor"):
        tv.dcp.export_torch_save(repo, "sharded", tmp_path / "bad.safetensors")


def test_coordinator_holds_gc_lock_until_finish_and_gc_keeps_everything(repo: tv.Repo) -> None:
    w = tv.dcp.StorageWriter(repo)
    w.set_up_storage_writer(True, rank=0)
    with pytest.raises(tv.LockTimeoutError), repo.store.lock(GC_LOCK, shared=False, timeout=0.2):
        pass
    w.close()
    with repo.store.lock(GC_LOCK, shared=False, timeout=0.2):
        pass
    state = sample_state()
    save(state, repo)
    save({**state, "epoch": 5}, repo)
    tv.gc(repo, prune="now", reflog_expire="now")
    assert tv.fsck(repo).ok
    assert_same(strkeys(state), tv.dcp.load_state(repo, "HEAD~1"))
    with repo.store.lock(GC_LOCK, shared=False, timeout=0.2):  # released after finish
        pass


def test_refusals(repo: tv.Repo) -> None:
    w = tv.dcp.StorageWriter(repo)
    with pytest.raises(tv.UsageError, match="use_collectives"):
        w.set_up_storage_writer(True, rank=0, use_collectives=False)
    save({"x": torch.ones(3)}, repo)
    r = tv.dcp.StorageReader(repo)
    md = r.read_metadata()
    r.set_up_storage_reader(md, True)
    with pytest.raises(tv.UsageError, match="moved"):
        r.read_data(LoadPlan([], storage_data="0" * 64), _Grab({}))  # type: ignore[arg-type]
    assert not tv.dcp.StorageWriter.validate_checkpoint_id("anything")


def test_lightning_fsdp_strategy_sharded_save_without_optimizer_states(
    repo: tv.Repo, tmp_path: Path
) -> None:
    """The FSDP (FSDP1) strategy's save path, in one process: FSDP1 itself needs a GPU, the
    save does not. A weights-only checkpoint (no "optimizer_states") is a plain case here."""
    pytest.importorskip("lightning")
    from tensorvcs.dcp.lightning import TVCSFSDPStrategy, read_dcp_pointer

    strategy = TVCSFSDPStrategy(repo, branch="lit")
    w = torch.arange(6.0).reshape(2, 3)
    ckpt = {"state_dict": {"layer.weight": w}, "epoch": 0, "global_step": 5,
            "loops": {"fit_loop": {"state": 1}}}
    strategy.save_checkpoint(ckpt, tmp_path / "ckpts" / "step=5.ckpt")
    ptr = read_dcp_pointer(tmp_path / "ckpts" / "step=5.ckpt")
    assert ptr is not None and ptr["commit"] == repo.resolve("lit") == strategy.last_commit
    c = repo.show("lit")
    assert c.step == 5 and "step=5.ckpt" in c.message
    state = tv.dcp.load_state(repo, "lit")
    assert torch.equal(state["model"]["layer.weight"], w)
    assert state["lightning"] == {"epoch": 0, "global_step": 5, "loops": {"fit_loop": {"state": 1}}}
    assert not any(k.startswith("optimizer_") for k in state)
    strategy.remove_checkpoint(tmp_path / "ckpts" / "step=5.ckpt")
    assert not (tmp_path / "ckpts" / "step=5.ckpt").exists() and repo.resolve("lit") == c.id


def _zip_records(data: bytes) -> list[tuple[str, int, bytes]]:
    import zipfile

    z = zipfile.ZipFile(io.BytesIO(data))
    assert z.testzip() is None  # every CRC-32 right
    return [(i.filename, i.header_offset, z.read(i)) for i in z.infolist()
            if not i.filename.endswith(".data/serialization_id")]


@pytest.mark.parametrize("kind", ["dcp", "plain"])
def test_write_torch_save_streams_what_torch_save_of_load_state_writes(
    repo: tv.Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """`tvcs export x.pt` / export_torch_save: a DCP commit's file is written one tensor at a
    time (each tensor assembled from its shards alone), record for record torch.save of
    load_state's whole state; a plain commit goes through checkout's writer."""
    from tensorvcs.io import torch_zip

    state = sample_state()
    state["model"]["big"] = torch.randn(70, 300)  # many chunks
    state["later"] = [1, "two", {"three": torch.ones(2)}]
    if kind == "dcp":
        save(state, repo)
    else:
        repo.commit(state, "plain")
    want = io.BytesIO()
    torch.save(tv.dcp.load_state(repo, "HEAD"), want)
    loads: list[list[str]] = []
    real = tv.dcp.convert.load_state

    def counted(*a: Any, **k: Any) -> Any:
        loads.append(sorted(k.get("keys") or []) or ["<all>"])
        return real(*a, **k)

    monkeypatch.setattr(tv.dcp.convert, "load_state", counted)
    replays: list[int] = []
    real_replay = torch_zip.replay
    monkeypatch.setattr(torch_zip, "replay", lambda *a: replays.append(1) or real_replay(*a))
    got = io.BytesIO()
    tv.dcp.write_torch_save(repo, "HEAD", got)
    assert _zip_records(got.getvalue()) == _zip_records(want.getvalue())
    assert_same(torch.load(io.BytesIO(got.getvalue()), weights_only=True),
                tv.dcp.load_state(repo, "HEAD"))
    if kind == "dcp":
        assert replays == [1] and loads == []  # streamed: never the whole state
    else:  # checkout's streamed writer (large states) or torch.save (small ones)
        assert loads == []
    out = tv.dcp.export_torch_save(repo, "HEAD", tmp_path / "cons.pt")
    assert _zip_records(out.read_bytes()) == _zip_records(want.getvalue())


def test_safetensors_export_of_a_dcp_commit_streams(
    repo: tv.Repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DCP commit to one .safetensors file: DCP's flattened keys, every tensor bitwise, one
    tensor assembled at a time (load_state is never called)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint._nested_dict import flatten_state_dict

    g = torch.Generator().manual_seed(3)
    state = {"model": {"w": torch.randn(70, 300, generator=g), "b": torch.zeros(0),
                       "h": torch.randn(5, generator=g).to(torch.bfloat16)},
             "ids": torch.arange(9)}
    save(state, repo)
    want, _ = flatten_state_dict(tv.dcp.load_state(repo, "HEAD"))
    monkeypatch.setattr(tv.dcp.convert, "load_state", lambda *a, **k: pytest.fail("whole"))
    out = tv.dcp.export_torch_save(repo, "HEAD", tmp_path / "m.safetensors")
    got = load_file(str(out))
    assert sorted(got) == sorted(want) == ["ids", "model.b", "model.h", "model.w"]
    for k, v in want.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    assert not list(tmp_path.glob(".m.safetensors.tmp-*"))
