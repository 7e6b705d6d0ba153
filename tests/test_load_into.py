"""load_into: a checked-out state dict into a module, strictly or with a report."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import tensor_bytes

import tensorvcs as tv


class Net(torch.nn.Module):
    def __init__(self, hidden: int = 8, extra: bool = False) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(4, hidden)
        self.bn = torch.nn.BatchNorm1d(hidden)  # buffers, including an int64 counter
        self.fc2 = torch.nn.Linear(hidden, 2)
        if extra:
            self.extra = torch.nn.Linear(2, 2)


def make_net(seed: int, **kw: Any) -> Net:
    torch.manual_seed(seed)
    net = Net(**kw)
    with torch.no_grad():
        net.bn.running_mean.uniform_()
        net.bn.num_batches_tracked.fill_(seed + 10)
    return net


def snapshot(module: torch.nn.Module) -> dict[str, bytes]:
    return {k: tensor_bytes(v) for k, v in module.state_dict().items()}


@pytest.fixture
def saved(repo: tv.Repo) -> tuple[tv.Repo, Net]:
    net = make_net(0)
    repo.commit({"model": net.state_dict(), "step": 5}, "trained")
    return repo, net


def test_strict_load_is_bitwise(saved: tuple[tv.Repo, Net]) -> None:
    repo, net = saved
    target = make_net(1)
    assert snapshot(target) != snapshot(net)
    report = repo.load_into(target, key="model")
    assert isinstance(report, tv.LoadReport) and report.ok
    assert report.loaded == list(net.state_dict())
    assert report.missing == report.unexpected == report.mismatched == []
    assert snapshot(target) == snapshot(net)
    assert target.bn.num_batches_tracked.item() == 10


@pytest.mark.parametrize("key", ["model", ["model"], ("model",)])
def test_key_forms(saved: tuple[tv.Repo, Net], key: Any) -> None:
    repo, net = saved
    target = make_net(2)
    repo.load_into(target, key=key)
    assert snapshot(target) == snapshot(net)


def test_nested_key_and_no_key(repo: tv.Repo) -> None:
    net = make_net(0)
    repo.commit({"ckpt": {"ema": net.state_dict()}}, "nested")
    target = make_net(3)
    repo.load_into(target, key=["ckpt", "ema"])
    assert snapshot(target) == snapshot(net)

    repo.commit(net.state_dict(), "bare state dict")
    target = make_net(4)
    repo.load_into(target)
    assert snapshot(target) == snapshot(net)


def test_missing_key_path(saved: tuple[tv.Repo, Net]) -> None:
    repo, _ = saved
    target = make_net(1)
    before = snapshot(target)
    with pytest.raises(tv.NotFoundError, match="'ema'"):
        repo.load_into(target, key="ema")
    with pytest.raises(tv.UsageError, match="not a state dict"):
        repo.load_into(target, key="step")
    assert snapshot(target) == before


def test_load_from_an_older_revision(saved: tuple[tv.Repo, Net]) -> None:
    repo, net = saved
    repo.commit({"model": make_net(7).state_dict()}, "later")
    target = make_net(1)
    repo.load_into(target, "HEAD~1", key="model")
    assert snapshot(target) == snapshot(net)


def test_strict_failure_lists_keys_and_leaves_module_untouched(repo: tv.Repo) -> None:
    sd = make_net(0).state_dict()
    del sd["fc2.bias"]  # missing
    sd["stray.weight"] = torch.zeros(3)  # unexpected
    sd["fc1.weight"] = torch.zeros(5, 4)  # mismatched shape
    repo.commit({"model": sd})
    target = make_net(1)
    before = snapshot(target)
    with pytest.raises(tv.LoadError) as ei:
        repo.load_into(target, key="model")
    msg = str(ei.value)
    assert "1 missing key(s): fc2.bias" in msg
    assert "1 unexpected key(s): stray.weight" in msg
    assert "fc1.weight (checkpoint [5, 4] vs module [8, 4])" in msg
    assert "Net" in msg
    assert snapshot(target) == before


def test_strict_failure_for_a_module_with_more_parameters(saved: tuple[tv.Repo, Net]) -> None:
    repo, _ = saved
    target = make_net(1, extra=True)
    before = snapshot(target)
    with pytest.raises(tv.LoadError, match=r"2 missing key\(s\): extra.weight, extra.bias"):
        repo.load_into(target, key="model")
    assert snapshot(target) == before


def test_non_strict_returns_the_report_and_loads_what_fits(repo: tv.Repo) -> None:
    source = make_net(0)
    sd = source.state_dict()
    del sd["fc2.bias"]
    sd["stray"] = torch.ones(1)
    sd["fc1.weight"] = torch.zeros(5, 4)
    repo.commit({"model": sd})
    target = make_net(1)
    before = snapshot(target)
    report = repo.load_into(target, key="model", strict=False)
    assert not report.ok
    assert report.missing == ["fc2.bias"]
    assert report.unexpected == ["stray"]
    assert report.mismatched == [("fc1.weight", (5, 4), (8, 4))]
    assert "fc1.weight" not in report.loaded and "fc2.weight" in report.loaded
    after = snapshot(target)
    assert after["fc1.weight"] == before["fc1.weight"]
    assert after["fc2.bias"] == before["fc2.bias"]
    assert after["fc2.weight"] == tensor_bytes(source.fc2.weight)
    assert after["bn.running_mean"] == tensor_bytes(source.bn.running_mean)


def test_rename_strips_the_ddp_prefix(repo: tv.Repo) -> None:
    net = make_net(0)
    ddp = {f"module.{k}": v for k, v in net.state_dict().items()}
    repo.commit({"model": ddp})
    target = make_net(1)
    with pytest.raises(tv.LoadError, match="unexpected"):
        repo.load_into(target, key="model")
    report = repo.load_into(target, key="model", rename={"module.": ""})
    assert report.ok
    assert snapshot(target) == snapshot(net)


def test_required_glob_that_matches_nothing_is_an_error(saved: tuple[tv.Repo, Net]) -> None:
    """The silent non-strict load: nothing named like a LoRA weight loads, and no one notices."""
    repo, _ = saved
    target = make_net(1)
    before = snapshot(target)
    with pytest.raises(tv.LoadError) as ei:
        repo.load_into(target, key="model", strict=False, required=["*lora*"])
    assert "'*lora*'" in str(ei.value)
    assert snapshot(target) == before


def test_required_glob_must_match_a_loaded_key(repo: tv.Repo) -> None:
    """A key that is present but not loaded (wrong shape) does not satisfy ``required``."""
    sd = make_net(0).state_dict()
    sd["fc1.weight"] = torch.zeros(5, 4)
    repo.commit({"model": sd})
    with pytest.raises(tv.LoadError, match="fc1"):
        repo.load_into(make_net(1), key="model", strict=False, required=["fc1.weight"])
    report = repo.load_into(make_net(1), key="model", strict=False, required=["fc2.*", "bn.*"])
    assert report.mismatched == [("fc1.weight", (5, 4), (8, 4))]


def test_lora_adapter_into_a_model_with_adapters(repo: tv.Repo) -> None:
    class Lora(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = torch.nn.Linear(6, 6)
            self.lora_A = torch.nn.Parameter(torch.randn(2, 6))
            self.lora_B = torch.nn.Parameter(torch.zeros(6, 2))

    torch.manual_seed(0)
    trained = Lora()
    with torch.no_grad():
        trained.lora_B.normal_()
    adapters = {k: v for k, v in trained.state_dict().items() if "lora" in k}
    repo.commit({"adapter": adapters})
    target = Lora()
    base_before = tensor_bytes(target.base.weight)
    report = repo.load_into(target, key="adapter", strict=False, required=["*lora*"])
    assert sorted(report.loaded) == ["lora_A", "lora_B"]
    assert report.missing == ["base.weight", "base.bias"]
    assert tensor_bytes(target.lora_B) == tensor_bytes(trained.lora_B)
    assert tensor_bytes(target.base.weight) == base_before


def test_tied_weights_load(repo: tv.Repo) -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.embed.weight

    torch.manual_seed(0)
    source = Tied()
    repo.commit({"model": source.state_dict()})
    target = Tied()
    assert repo.load_into(target, key="model").ok
    assert target.head.weight is target.embed.weight
    assert tensor_bytes(target.embed.weight) == tensor_bytes(source.embed.weight)


def test_errors_name_the_full_key_path(saved: tuple[tv.Repo, Net]) -> None:
    repo, _ = saved
    (pack,) = next(t.objects for t in repo.tensors() if t.key == "model/fc1.weight")
    members = {t.key for t in repo.tensors() if t.objects == [pack]}
    path = repo.path / "objects" / pack[:2] / pack[2:]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    target = make_net(1)
    before = snapshot(target)
    with pytest.raises(tv.CorruptObjectError) as ei:
        tv.Repo.open(repo.root).load_into(target, key="model")
    assert ei.value.object_id == pack
    assert ei.value.key_path in members  # "model/...", not the key inside the state dict
    assert snapshot(target) == before
