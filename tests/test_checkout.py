"""Checkout: partial selections read only what they select; corruption names its key path."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import assert_bitwise_equal, random_tensor

import tensorvcs as tv
from tensorvcs.store.objects import object_name


def big_and_small_state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "big": torch.randn(512, 512, generator=g),  # 1 MiB: 16 chunks of 64 KiB
            "layer0.lora_A": torch.randn(8, 160, generator=g),  # 5 KiB, its own chunk
            "layer0.lora_B": torch.randn(160, 8, generator=g),  # 5 KiB, its own chunk
            "ln.weight": torch.randn(32, generator=g),  # small: packed
            "ln.bias": torch.randn(32, generator=g),
        },
        "optim": {
            "state": {0: {"exp_avg": torch.randn(16, generator=g), "step": 3}},
            "param_groups": [{"lr": 0.1, "params": [0], "betas": (0.9, 0.999)}],
        },
        "step": 7,
        "note": "hello",
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], tv.Commit]:
    root = tmp_path_factory.mktemp("template")
    repo = tv.Repo.init(root, chunk_size=64 << 10, pack_threshold=256)
    state = big_and_small_state()
    c = repo.commit(state, "one")
    repo.close()
    return root, state, c


@pytest.fixture
def loaded(
    template: tuple[Path, dict[str, Any], tv.Commit], tmp_path: Path
) -> tuple[tv.Repo, dict[str, Any], tv.Commit]:
    """A private copy of the template repository (tests may corrupt it)."""
    root, state, c = template
    shutil.copytree(root / ".tvcs", tmp_path / ".tvcs")
    return tv.Repo.open(tmp_path), state, c


def fresh(repo: tv.Repo) -> tv.Repo:
    """The same repository opened anew: no cached commits or manifests, counters at zero."""
    return tv.Repo.open(repo.root)


def assert_same_tree(a: Any, b: Any) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, torch.Tensor):
        assert_bitwise_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same_tree(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tree(x, y)
    else:
        assert a == b


def test_full_checkout(loaded: tuple[tv.Repo, dict[str, Any], tv.Commit]) -> None:
    repo, state, _ = loaded
    assert_same_tree(repo.checkout(), state)


def test_include_glob_returns_only_matching_leaves(
    loaded: tuple[tv.Repo, dict[str, Any], tv.Commit],
) -> None:
    repo, state, _ = loaded
    out = repo.checkout(include=["model/*lora*"])
    assert list(out) == ["model"]
    assert list(out["model"]) == ["layer0.lora_A", "layer0.lora_B"]
    for k in out["model"]:
        assert_bitwise_equal(out["model"][k], state["model"][k])
    assert repo.checkout(include="model/*lora*").keys() == out.keys()


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        (["step"], None, {"step": 7}),
        (["step", "note"], None, {"step": 7, "note": "hello"}),
        (None, ["model/*", "optim/*"], {"step": 7, "note": "hello"}),
        (
            ["optim/*"],
            ["optim/state/*"],
            {"optim": {"param_groups": [{"lr": 0.1, "params": [0], "betas": (0.9, 0.999)}]}},
        ),
        (["optim/param_groups/0/lr"], None, {"optim": {"param_groups": [{"lr": 0.1}]}}),
        (
            ["optim/param_groups/0/betas/1"],
            None,
            {"optim": {"param_groups": [{"betas": (0.999,)}]}},
        ),
        (["optim/state/0/step"], None, {"optim": {"state": {0: {"step": 3}}}}),
        (["*"], ["*"], {}),
    ],
)
def test_include_exclude_on_plain_values(
    loaded: tuple[tv.Repo, dict[str, Any], tv.Commit],
    include: list[str] | None,
    exclude: list[str] | None,
    expected: dict[str, Any],
) -> None:
    repo, _, _ = loaded
    out = repo.checkout(include=include, exclude=exclude)
    assert_same_tree(out, expected)


@pytest.mark.parametrize("include", [["nothing*"], []])
def test_include_that_selects_nothing_is_an_error(
    loaded: tuple[tv.Repo, dict[str, Any], tv.Commit], include: list[str]
) -> None:
    repo, _, c = loaded
    with pytest.raises(tv.SelectionError, match=c.id[:12]):
        repo.checkout(include=include)


def test_exclude_glob(loaded: tuple[tv.Repo, dict[str, Any], tv.Commit]) -> None:
    repo, state, _ = loaded
    out = repo.checkout(exclude="model/big")
    assert list(out) == ["model", "optim", "step", "note"]
    assert "big" not in out["model"]
    assert list(out["model"]) == [k for k in state["model"] if k != "big"]
    assert_bitwise_equal(out["optim"]["state"][0]["exp_avg"], state["optim"]["state"][0]["exp_avg"])


def _stored_sizes(repo: tv.Repo, ids: set[str]) -> int:
    return sum(repo.objects.stored_size(o) for o in ids)


def test_partial_checkout_reads_only_the_selected_objects(
    loaded: tuple[tv.Repo, dict[str, Any], tv.Commit],
) -> None:
    repo, _, c = loaded
    full = fresh(repo)
    full.checkout()
    full_bytes = full.objects.bytes_read

    part = fresh(repo)
    out = part.checkout(include=["model/*lora*"])
    assert list(out["model"]) == ["layer0.lora_A", "layer0.lora_B"]
    lora_ids = {o for t in repo.tensors() if "lora" in t.key for o in t.objects}
    expected = lora_ids | {c.id, c.manifest}
    assert part.objects.objects_read == len(expected)
    assert part.objects.bytes_read == _stored_sizes(repo, expected)

    logical = sum(t.nbytes for t in repo.tensors())
    lora_logical = sum(t.nbytes for t in repo.tensors() if "lora" in t.key)
    assert lora_logical < 0.011 * logical  # the subset is about 1% of the tensor bytes
    assert part.objects.bytes_read < 0.03 * full_bytes


def test_full_checkout_reads_every_object_once(
    loaded: tuple[tv.Repo, dict[str, Any], tv.Commit],
) -> None:
    repo, _, c = loaded
    r = fresh(repo)
    r.checkout()
    ids = {o for t in repo.tensors() for o in t.objects} | {c.id, c.manifest}
    assert len(ids) == 16 + 2 + 1 + 2  # big's chunks, lora chunks, one pack, commit, manifest
    assert r.objects.objects_read == len(ids)
    assert r.objects.bytes_read == _stored_sizes(repo, ids)


def test_scalar_only_checkout_reads_no_tensor_objects(
    loaded: tuple[tv.Repo, dict[str, Any], tv.Commit],
) -> None:
    repo, _, c = loaded
    r = fresh(repo)
    assert r.checkout(include=["step", "optim/param_groups/*"])["step"] == 7
    assert r.objects.bytes_read == _stored_sizes(repo, {c.id, c.manifest})


@pytest.mark.parametrize("where", ["cpu", torch.device("cpu")])
def test_map_location(loaded: tuple[tv.Repo, dict[str, Any], tv.Commit], where: Any) -> None:
    repo, state, _ = loaded
    out = repo.checkout(map_location=where, include="model/*")
    for k, t in out["model"].items():
        assert t.device == torch.device("cpu")
        assert_bitwise_equal(t, state["model"][k])


def test_checkout_of_an_older_revision(tmp_path: Path) -> None:
    repo = tv.Repo.init(tmp_path, chunk_size=4096, pack_threshold=1024)
    states = [{"w": random_tensor(torch.float32, (64, 64), seed=i), "i": i} for i in range(3)]
    commits = [repo.commit(s, f"c{i}") for i, s in enumerate(states)]
    for rev, s in [("HEAD~2", states[0]), ("HEAD^", states[1]), (commits[2].id, states[2])]:
        assert_same_tree(fresh(repo).checkout(rev), s)
    with pytest.raises(tv.RevisionNotFoundError):
        repo.checkout("HEAD~3")


def test_checkout_on_an_unborn_branch(repo: tv.Repo) -> None:
    with pytest.raises(tv.RevisionNotFoundError):
        repo.checkout()


def test_tensors_listing(loaded: tuple[tv.Repo, dict[str, Any], tv.Commit]) -> None:
    repo, _, _ = loaded
    info = {t.key: t for t in repo.tensors()}
    assert list(info) == [
        "model/big",
        "model/layer0.lora_A",
        "model/layer0.lora_B",
        "model/ln.weight",
        "model/ln.bias",
        "optim/state/0/exp_avg",
    ]
    assert info["model/big"].dtype == "float32" and info["model/big"].shape == [512, 512]
    assert info["model/big"].nbytes == 1 << 20 and len(info["model/big"].objects) == 16
    assert info["optim/state/0/exp_avg"].path == ("optim", "state", 0, "exp_avg")
    assert info["model/ln.weight"].objects == info["model/ln.bias"].objects  # one pack


# -- corruption and missing objects -----------------------------------------------------------


def _object_file(repo: tv.Repo, oid: str) -> Path:
    return repo.path / object_name(oid)


def _flip(path: Path, pos: int) -> None:
    data = bytearray(path.read_bytes())
    data[pos] ^= 0x5A
    path.chmod(0o644)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["middle", "last"])
def test_flipped_byte_in_a_chunk_names_key_path_and_object(
    loaded: tuple[tv.Repo, dict[str, Any], tv.Commit], where: str
) -> None:
    repo, state, _ = loaded
    big = next(t for t in repo.tensors() if t.key == "model/big")
    oid = big.objects[5]
    path = _object_file(repo, oid)
    size = path.stat().st_size
    _flip(path, size // 2 if where == "middle" else size - 1)
    with pytest.raises(tv.CorruptObjectError) as ei:
        fresh(repo).checkout()
    msg = str(ei.value)
    assert "'model/big'" in msg and oid in msg
    assert ei.value.object_id == oid
    assert ei.value.key_path == "model/big"
    # what the corruption does not touch is still readable
    out = fresh(repo).checkout(exclude="model/big")
    assert_bitwise_equal(out["model"]["layer0.lora_A"], state["model"]["layer0.lora_A"])


def test_flipped_byte_in_a_pack_names_a_key_path_in_it(
    loaded: tuple[tv.Repo, dict[str, Any], tv.Commit],
) -> None:
    repo, _, _ = loaded
    ln = next(t for t in repo.tensors() if t.key == "model/ln.weight")
    (pack,) = ln.objects
    members = {t.key for t in repo.tensors() if t.objects == [pack]}
    path = _object_file(repo, pack)
    _flip(path, path.stat().st_size - 3)
    with pytest.raises(tv.CorruptObjectError) as ei:
        fresh(repo).checkout(include="model/ln.*")
    assert ei.value.object_id == pack and pack in str(ei.value)
    assert ei.value.key_path in members
    assert repr(ei.value.key_path) in str(ei.value)


def test_truncated_chunk_is_corrupt(loaded: tuple[tv.Repo, dict[str, Any], tv.Commit]) -> None:
    repo, _, _ = loaded
    lora = next(t for t in repo.tensors() if t.key == "model/layer0.lora_B")
    path = _object_file(repo, lora.objects[0])
    data = path.read_bytes()
    path.chmod(0o644)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(tv.CorruptObjectError) as ei:
        fresh(repo).checkout(include="model/*lora*")
    assert ei.value.key_path == "model/layer0.lora_B"
    assert lora.objects[0] in str(ei.value)


def test_deleted_object_names_key_path_and_object(
    loaded: tuple[tv.Repo, dict[str, Any], tv.Commit],
) -> None:
    repo, _, _ = loaded
    lora = next(t for t in repo.tensors() if t.key == "model/layer0.lora_A")
    (oid,) = lora.objects
    _object_file(repo, oid).unlink()
    with pytest.raises(tv.ObjectNotFoundError) as ei:
        fresh(repo).checkout()
    msg = str(ei.value)
    assert "'model/layer0.lora_A'" in msg and oid in msg and "missing" in msg
    assert ei.value.object_id == oid
    assert fresh(repo).checkout(include="step") == {"step": 7}


def test_deleted_manifest(loaded: tuple[tv.Repo, dict[str, Any], tv.Commit]) -> None:
    repo, _, c = loaded
    _object_file(repo, c.manifest).unlink()
    with pytest.raises(tv.ObjectNotFoundError) as ei:
        fresh(repo).checkout()
    assert ei.value.object_id == c.manifest


def test_a_glob_without_wildcards_names_its_whole_subtree(repo: tv.Repo) -> None:
    state = {"model": {"a": torch.ones(2), "b": {"c": torch.zeros(3)}}, "opt": {"lr": 0.1}}
    repo.commit(state, "s")
    part = repo.checkout(include="model")
    assert set(part) == {"model"} and set(part["model"]) == {"a", "b"}
    assert torch.equal(part["model"]["b"]["c"], torch.zeros(3))
    rest = repo.checkout(exclude="model/b")
    assert set(rest) == {"model", "opt"} and set(rest["model"]) == {"a"}
    assert rest["opt"] == {"lr": 0.1}
