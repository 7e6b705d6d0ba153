"""Opaque pickles: refused unless opted into, and never unpickled without opt-in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import tensorvcs as tv
from tensorvcs.format import envelope

CALLS: list[str] = []


def _record(tag: str) -> str:
    CALLS.append(tag)
    return tag


def _touch(path: str) -> str:
    Path(path).write_text("pwned")
    return path


class Scheduler:
    """A user object with state, as found in training checkpoints."""

    def __init__(self, step: int, gamma: float) -> None:
        self.step = step
        self.gamma = gamma

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scheduler) and vars(self) == vars(other)

    __hash__ = None  # type: ignore[assignment]


class Payload:
    """Unpickling this runs ``_record`` (stands in for arbitrary code in a checkpoint)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __reduce__(self) -> tuple[Any, ...]:
        return (_record, (self.tag,))


class FilePayload:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_touch, (str(self.path),))


@pytest.fixture(autouse=True)
def _clear_calls() -> None:
    CALLS.clear()


def state_with(obj: Any) -> dict[str, Any]:
    return {"model": {"w": torch.arange(3.0)}, "opt": {"sched": [obj]}, "step": 1}


def blob_ids(repo: tv.Repo) -> list[str]:
    return [o for o in repo.objects.ids() if repo.objects.kind(o) == envelope.KIND_BLOB]


def test_arbitrary_object_is_refused_with_its_key_path(repo: tv.Repo) -> None:
    with pytest.raises(tv.UnsupportedValueError) as ei:
        repo.commit(state_with(Scheduler(3, 0.5)), "refused")
    assert ei.value.key_path == "opt/sched/0"
    msg = str(ei.value)
    assert "'opt/sched/0'" in msg and "Scheduler" in msg and "allow_pickle" in msg
    assert repo.log() == []
    assert blob_ids(repo) == []


def test_opt_in_stores_and_restores(repo: tv.Repo) -> None:
    sched = Scheduler(3, 0.5)
    c = repo.commit(state_with(sched), "pickled", allow_pickle=True)
    assert len(blob_ids(repo)) == 1
    out = tv.Repo.open(repo.root).checkout(allow_pickle=True)
    assert out["opt"]["sched"][0] == sched
    assert type(out["opt"]["sched"][0]) is Scheduler
    assert out["opt"]["sched"][0] is not sched
    assert out["step"] == 1 and torch.equal(out["model"]["w"], torch.arange(3.0))
    assert repo.show().id == c.id


def test_checkout_without_opt_in_refuses_naming_the_key_path(repo: tv.Repo) -> None:
    repo.commit(state_with(Scheduler(3, 0.5)), "pickled", allow_pickle=True)
    with pytest.raises(tv.UnsupportedValueError) as ei:
        tv.Repo.open(repo.root).checkout()
    assert ei.value.key_path == "opt/sched/0"
    msg = str(ei.value)
    assert "'opt/sched/0'" in msg and "Scheduler" in msg and "allow_pickle" in msg


def test_partial_checkout_around_a_pickle_needs_no_opt_in(repo: tv.Repo) -> None:
    repo.commit(state_with(Payload("partial")), "pickled", allow_pickle=True)
    fresh = tv.Repo.open(repo.root)
    out = fresh.checkout(exclude="opt/*")
    assert list(out) == ["model", "step"]
    out = fresh.checkout(include="model/*")
    assert torch.equal(out["model"]["w"], torch.arange(3.0))
    assert CALLS == []


def test_nothing_is_unpickled_without_opt_in(repo: tv.Repo, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = {"a": Payload("ran"), "b": FilePayload(marker)}

    with pytest.raises(tv.UnsupportedValueError):
        repo.commit({"x": evil}, "refused")
    assert CALLS == [] and not marker.exists()

    repo.commit({"x": evil}, "stored", allow_pickle=True)
    assert CALLS == [] and not marker.exists()  # pickling does not run the payload

    fresh = tv.Repo.open(repo.root)
    with pytest.raises(tv.UnsupportedValueError) as ei:
        fresh.checkout()
    assert ei.value.key_path in ("x/a", "x/b")
    for key in ("x/a", "x/b"):
        with pytest.raises(tv.UnsupportedValueError) as ei:
            fresh.checkout(include=key)
        assert ei.value.key_path == key
    assert fresh.tensors() == []
    fresh.show()
    fresh.log()
    tv.fsck(fresh)
    assert CALLS == [] and not marker.exists()

    out = fresh.checkout(allow_pickle=True)  # the explicit opt-in runs it
    assert CALLS == ["ran"] and marker.read_text() == "pwned"
    assert out == {"x": {"a": "ran", "b": str(marker)}}


def test_load_into_never_unpickles(repo: tv.Repo) -> None:
    net = torch.nn.Linear(2, 2)
    sd: dict[str, Any] = dict(net.state_dict())
    sd["hook"] = Payload("load_into")
    repo.commit({"model": sd}, allow_pickle=True)
    with pytest.raises(tv.UnsupportedValueError) as ei:
        repo.load_into(torch.nn.Linear(2, 2), key="model", strict=False)
    assert ei.value.key_path == "model/hook"
    assert CALLS == []


def test_object_arrays_need_the_opt_in(repo: tv.Repo) -> None:
    arr = np.array([Scheduler(1, 0.1), None], dtype=object)
    with pytest.raises(tv.UnsupportedValueError) as ei:
        repo.commit({"arr": arr})
    assert ei.value.key_path == "arr"
    repo.commit({"arr": arr}, allow_pickle=True)
    out = repo.checkout(allow_pickle=True)["arr"]
    assert out.dtype == object and list(out) == list(arr)


def test_unpicklable_object_names_its_key_path(repo: tv.Repo) -> None:
    with pytest.raises(tv.UnsupportedValueError) as ei:
        repo.commit({"cfg": {"fn": lambda x: x}}, allow_pickle=True)
    assert ei.value.key_path == "cfg/fn"
    assert "'cfg/fn'" in str(ei.value)
    assert repo.log() == []


def test_metadata_never_pickles(repo: tv.Repo) -> None:
    with pytest.raises(tv.UnsupportedValueError) as ei:
        repo.commit({"w": torch.ones(1)}, metadata={"obj": Scheduler(1, 1.0)}, allow_pickle=True)
    assert ei.value.key_path == "<metadata>/obj"
