"""A structure-aware fuzzer of the readers of stored manifests and commits.

It takes the real manifests and commits of a small repository (nested state, chunked, packed,
empty and tied tensors, a parameter, numpy arrays and scalars, torch dtypes/devices/sizes,
every value-tree tag, file entries, metrics and metadata), mutates their JSON structurally
(deletes, replaces and retypes fields, changes lengths, nests deeply, plants huge numbers, bad
ids, bad dtypes and unsafe paths), stores the result as a new object under its correct id (so
the hash check passes and only the structure is wrong), points a branch at it, and runs the
readers: Manifest/Commit parsing, ``checkout``, ``log``, ``tensors`` and fsck.

Every exception must be a ``tv.TensorVCSError``; a mutation known to be malformed must be
refused by the parser; and fsck must report every manifest or commit the parser refuses.
"""

from __future__ import annotations

import copy
import json
import math
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from helpers import randn, random_bytes_tensor
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.format import codecs, envelope, jsonenc
from tensorvcs.format.commit import Commit
from tensorvcs.format.ids import is_object_id, object_id
from tensorvcs.format.manifest import FileEntry, Manifest, file_path_problem
from tensorvcs.maintenance import fsck
from tensorvcs.state.tensors import DTYPES
from tensorvcs.store.objects import object_name

BRANCH = "fuzz"
DEEP = "\x00DEEP\x00"  # replaced in the JSON text by arrays nested 50,000 deep
INF = "\x00INF\x00"  # replaced by the number token 1e999 (parses as an infinite float)
DEEP_TREE: Any = ["list", []]
for _ in range(150):  # a well-formed tree nested deeper than values.MAX_DEPTH
    DEEP_TREE = ["list", [DEEP_TREE]]

BAD_IDS = ["zz" * 32, "AB" * 32, "0" * 63, "0" * 65, "", "ab" * 32 + "\n"]
MISSING_ID = "ab" * 32  # well-formed, names no object
BAD_PATHS = ["../../pwned.txt", "/abs", "sub/../../x", ".tvcs/refs/heads/planted", "a//b", "a\\b"]
POOL: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    -0.0,
    2**63,
    -(2**63) - 1,
    10**30,
    10**400,
    2**1024 - 1,  # below 2**1024, yet float() of it overflows
    "",
    "x",
    "float32",
    "nope_dtype",
    MISSING_ID,
    [],
    {},
    [[]],
    ["bogus"],
    ["tensor", 999],
    ["tensor", -1],
    ["dict", [[1]]],
    ["ndarray", 0, "|O", [1]],
    ["device", "no-such-device:7"],
    ["dtype", "load"],
    ["float", "big"],
    ["bytes", "!!!"],
    {"a": 1},
    DEEP,
    INF,
    DEEP_TREE,
    *BAD_IDS,
    *BAD_PATHS,
]
NOT_A_NODE = ({}, [], [[]], ["bogus"], ["tensor", 999], ["tensor", -1], DEEP, INF, DEEP_TREE)


# -- the repository under test -----------------------------------------------------------------
@dataclass
class Base:
    repo: tv.Repo
    manifests: list[tuple[str, Any]]  # (id, JSON document)
    commits: list[tuple[str, Any]]
    objects: set[str]  # every object of the unmutated repository


def _state(k: int) -> dict[str, Any]:
    w = randn(k, 40, 30)  # 4800 bytes: two chunks
    model: OrderedDict[str, Any] = OrderedDict(
        w=w,
        big=random_bytes_tensor(k, 2048),  # 8 KiB, incompressible: two chunks
        b=torch.arange(4.0) + k,  # packed
        e=torch.empty(0, 3),  # empty: no objects
        p=torch.nn.Parameter(torch.ones(3) * k),
        i=torch.arange(6, dtype=torch.int16).reshape(2, 3),
    )
    model._metadata = OrderedDict({"": {"version": 1}})  # type: ignore[attr-defined]
    return {
        "model": model,
        "tied": w,  # the same view again: one shared entry
        "optim": {
            "state": {0: {"step": torch.tensor(float(k)), "exp_avg": torch.zeros(5)}},
            "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0]}],
        },
        "np": np.arange(12, dtype=np.float32).reshape(3, 4) * k,
        "npi": np.int64(7),
        "misc": {
            "dt": torch.float16,
            "dev": torch.device("cpu"),
            "size": torch.Size([2, 3]),
            b"k": b"bytes",
            (1, "t"): complex(1, 2),
            "nan": float("nan"),
            "inf": -math.inf,
            "s": {1, 2},
            "fs": frozenset({"a"}),
            3: None,
            "": [True, False, k],
        },
        "ckpt.pt": {"t": torch.ones(2) * k},
    }


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Any:
    root = tmp_path_factory.mktemp("fuzz")
    repo = tv.Repo.init(root, chunk_size=4096, pack_threshold=1024)
    data = b"some file bytes\n" * 20
    blob = repo.objects.put_bytes(envelope.KIND_BLOB, data)
    files = [
        FileEntry("ckpt.pt", "state", "pt", 1234, [], {"blake3": "cd" * 32}),
        FileEntry("data/ok.bin", "blob", "raw", len(data), [(blob, len(data))], {"x": [1]}),
    ]
    for k in (1, 2):
        repo.commit(
            _state(k),
            f"commit {k}",
            step=10 * k,
            metrics={"loss": 0.5 / k, "acc": float("nan")},
            metadata={"cfg": {"lr": 0.1, "layers": [1, 2]}, "k": k},
            files=files,
        )
    commits = [(c.id, jsonenc.loads(repo.objects.read_bytes(c.id))) for c in repo.log()]
    manifests = []
    for _, doc in commits:
        mid = doc["manifest"]
        manifests.append((mid, jsonenc.loads(repo.objects.read_bytes(mid))))
    assert fsck(repo).ok
    yield Base(repo, manifests, commits, set(repo.objects.ids()))
    repo.close()


# -- structure-aware mutation ----------------------------------------------------------------
Path_ = tuple[Any, ...]


def _node_roles(node: Any, path: Path_, out: dict[Path_, str]) -> None:
    """Mark the positions of a value tree: "node" (a value node), "tag" (a node's tag)."""
    stack = [(node, path)]
    while stack:
        n, p = stack.pop()
        out[p] = "node"
        if not (isinstance(n, list) and n and isinstance(n[0], str)):
            continue
        out[(*p, 0)] = "tag"
        items = n[1] if len(n) >= 2 and isinstance(n[1], list) else []
        if n[0] in ("dict", "odict"):
            for j, pair in enumerate(items):
                if isinstance(pair, list) and len(pair) == 2:
                    stack.append((pair[1], (*p, 1, j, 1)))
            if len(n) == 3:
                stack.append((n[2], (*p, 2)))
        elif n[0] in ("list", "tuple", "set", "frozenset"):
            stack.extend((v, (*p, 1, j)) for j, v in enumerate(items))


def _all_paths(doc: Any) -> list[Path_]:
    out: list[Path_] = []
    stack: list[tuple[Any, Path_]] = [(doc, ())]
    while stack:
        v, p = stack.pop()
        if p:
            out.append(p)
        if isinstance(v, dict):
            stack.extend((x, (*p, k)) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((x, (*p, j)) for j, x in enumerate(v))
    return sorted(out, key=repr)


def _roles(doc: dict[str, Any], kind: str) -> dict[Path_, str]:
    roles: dict[Path_, str] = {}
    for name in ("tree",) if kind == "manifest" else ("metrics", "metadata"):
        if name in doc:
            _node_roles(doc[name], (name,), roles)
    return roles


def _get(doc: Any, path: Path_) -> Any:
    for k in path:
        doc = doc[k]
    return doc


def _retype(v: Any) -> Any:
    if isinstance(v, bool):
        return int(v) + 2
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return [v]
    if isinstance(v, str):
        return len(v) + 1000
    if isinstance(v, list):
        return {str(i): x for i, x in enumerate(v)}
    if isinstance(v, dict):
        return list(v.values())
    return "null"


REQUIRED = {
    "manifest": {("type",), ("version",), ("tree",), ("tensors",)},
    "commit": {
        (k,)
        for k in (
            "type",
            "version",
            "manifest",
            "parents",
            "message",
            "author",
            "timestamp",
            "step",
            "metrics",
            "metadata",
        )
    },
}
ENTRY_FIELDS = ("dtype", "shape", "nbytes", "chunks", "pack", "offset", "id")
FILE_FIELDS = ("path", "kind", "format", "size")


def _is_id(x: Any) -> bool:
    return isinstance(x, str) and is_object_id(x)


def _sizes_ok(shape: Any, dtype: str, nbytes: int) -> bool:
    if not (isinstance(shape, list) and all(type(x) is int and 0 <= x < 2**63 for x in shape)):
        return False
    return math.prod(shape) * DTYPES[dtype].itemsize == nbytes


def _must_fail(
    kind: str, doc: dict[str, Any], roles: dict[Path_, str], p: Path_, op: str, new: Any
) -> bool:
    """True when the mutation certainly makes the document malformed (docs/format.md); False
    when it may not (the readers must still raise nothing but project errors)."""
    try:
        return _certainly_malformed(kind, doc, roles, p, op, new)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        return False  # an earlier mutation left a shape these rules do not judge


def _certainly_malformed(
    kind: str, doc: dict[str, Any], roles: dict[Path_, str], p: Path_, op: str, new: Any
) -> bool:
    old = _get(doc, p)
    role = roles.get(p)
    entry = kind == "manifest" and len(p) >= 3 and p[0] == "tensors" and isinstance(p[1], int)
    file = kind == "manifest" and len(p) >= 3 and p[0] == "files" and isinstance(p[1], int)
    if op == "delete":
        if p in REQUIRED[kind] or role == "tag":
            return True
        if entry and len(p) == 3 and p[2] in ENTRY_FIELDS:
            return True
        return file and len(p) == 3 and p[2] in FILE_FIELDS
    if new == DEEP:
        return True  # unparseable: nests past any JSON parser's limit
    if new == old and type(new) is type(old):
        return False
    if role == "node" and any(new == x and type(new) is type(x) for x in NOT_A_NODE):
        return True
    if role == "tag" and op == "replace" and isinstance(new, str):
        return new not in ("dict", "odict", "list", "tuple", "set", "frozenset")
    if p in (("type",), ("version",)):
        return True
    if p in (("tensors",), ("files",)):
        return not isinstance(new, list)
    ids = kind == "commit" and (p == ("manifest",) or (len(p) == 2 and p[0] == "parents"))
    ids = ids or (entry and len(p) == 3 and p[2] in ("pack", "id"))
    ids = ids or ((entry or file) and len(p) == 5 and p[2] == "chunks" and p[4] == 0)
    if ids:
        return not _is_id(new)
    if entry and len(p) in (3, 4):
        e = doc["tensors"][p[1]]
        if p[2] == "dtype" and len(p) == 3:
            if not (isinstance(new, str) and new in DTYPES):
                return True
            return DTYPES[new].itemsize != DTYPES[e["dtype"]].itemsize and e["nbytes"] > 0
        if p[2] == "nbytes" and len(p) == 3:
            return True
        if p[2] == "shape":
            shape = (
                new if len(p) == 3 else [new if j == p[3] else x for j, x in enumerate(e["shape"])]
            )
            return not _sizes_ok(shape, e["dtype"], e["nbytes"])
    if file and len(p) == 3 and p[2] == "path":
        keys = [k for k, _ in doc["tree"][1]] if isinstance(doc.get("tree"), list) else []
        state = doc["files"][p[1]].get("kind") == "state"
        return file_path_problem(new) is not None or (state and new not in keys)
    if kind == "commit":
        if p in (("message",), ("author",)):
            return not isinstance(new, str)
        if p == ("timestamp",):
            return True
        if p == ("step",):
            return not (new is None or (type(new) is int and abs(new) < 2**63))
        if p in (("metrics",), ("metadata",)):
            return not (isinstance(new, list) and new[:1] in (["dict"], ["odict"]))
        if p == ("parents",):
            ok = isinstance(new, list) and all(_is_id(x) for x in new)
            return not ok or len(set(new)) != len(new)
    return False


def _encode(doc: Any) -> bytes:
    text = json.dumps(doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    text = text.replace(json.dumps(DEEP), "[" * 50000 + "]" * 50000)
    text = text.replace(json.dumps(INF), "1e999")
    return text.encode("utf-8", "surrogatepass")


@dataclass
class Mutation:
    data: bytes
    must_fail: bool
    what: str


@st.composite
def mutations(draw: Any, docs: list[tuple[str, Any]], kind: str) -> Mutation:
    """One or two structural mutations of one of ``docs``; ``must_fail`` judges the last."""
    _, original = draw(st.sampled_from(docs))
    doc = copy.deepcopy(original)
    must_fail = False
    what = []
    for _ in range(draw(st.integers(1, 2))):
        roles = _roles(doc, kind)
        paths = _all_paths(doc)
        p = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["delete", "replace", "replace", "retype", "length", "swap"]))
        parent, key = _get(doc, p[:-1]), p[-1]
        old = parent[key]
        new: Any = None
        if op == "replace":
            new = copy.deepcopy(draw(st.sampled_from(POOL)))  # later ops may edit inside it
        elif op == "retype":
            new = _retype(old)
        elif op == "length":
            if isinstance(old, list) and old:
                new = draw(st.sampled_from([old[:-1], [*old, old[-1]], [old]]))
            else:
                new = [old]
        elif op == "swap":  # another part of the document, put here
            new = copy.deepcopy(_get(doc, draw(st.sampled_from(paths))))
        must_fail = _must_fail(kind, doc, roles, p, op, new)
        if op == "delete":
            del parent[key]
        else:
            parent[key] = new
        what.append(f"{op} {p!r} -> {new!r:.60}")
    return Mutation(_encode(doc), must_fail, "; ".join(what))


# -- running the readers ---------------------------------------------------------------------
def _store(repo: tv.Repo, kind: int, data: bytes) -> str:
    oid = object_id(data)
    repo.objects.write(oid, kind, len(data), codecs.encode_bytes(data))
    return oid


def _cleanup(b: Base) -> None:
    repo = b.repo
    for oid in set(repo.objects.ids()) - b.objects:
        repo.objects.delete(oid)
    for name in (f"refs/heads/{BRANCH}", f"logs/refs/heads/{BRANCH}"):
        (repo.path / name).unlink(missing_ok=True)
    repo._manifests.clear()
    repo._commits.clear()


def _readers(repo: tv.Repo) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("checkout", lambda: repo.checkout(BRANCH)),
        ("checkout --include", lambda: repo.checkout(BRANCH, include=["model/*", "np"])),
        ("log", lambda: repo.log(BRANCH)),
        ("tensors", lambda: repo.tensors(BRANCH)),
    ]


def _check(b: Base, m: Mutation, kind: str, in_hypothesis: bool = True) -> None:
    repo = b.repo
    _cleanup(b)
    try:
        if kind == "manifest":
            target = _store(repo, envelope.KIND_MANIFEST, m.data)
            parse: Callable[[], Any] = lambda: Manifest.from_bytes(m.data, target)  # noqa: E731
            parent = b.commits[0][0]
            c = Commit(manifest=target, parents=[parent], message="fuzz", author="fuzz")
            tip = _store(repo, envelope.KIND_COMMIT, c.to_bytes())
        else:
            target = tip = _store(repo, envelope.KIND_COMMIT, m.data)
            parse = lambda: Commit.from_bytes(m.data, target)  # noqa: E731
        repo.refs.update(f"refs/heads/{BRANCH}", tip)
        failures: list[str] = []
        refused = False
        report: Any = None
        for name, fn in [("parse", parse), *_readers(repo), ("fsck", lambda: fsck(repo))]:
            try:
                out = fn()
            except tv.TensorVCSError:
                refused = refused or name == "parse"
            except Exception as e:  # a non-project exception: the bug this test hunts
                failures.append(f"{name}: {type(e).__name__}: {e}")
            else:
                report = out if name == "fsck" else report
        if in_hypothesis:  # --hypothesis-show-statistics lists how many were refused
            verdict = "refused" if refused else "accepted"
            event(f"{kind}: {verdict}{' (must fail)' if m.must_fail else ''}")
        assert not failures, f"{m.what}: {failures}"
        assert refused or not m.must_fail, f"{m.what}: the parser accepted a malformed {kind}"
        if refused:  # fsck finds every manifest and commit the parser refuses
            assert report is not None, m.what
            assert any(p.object_id == target for p in report.problems), (m.what, report.problems)
    finally:
        _cleanup(b)


FUZZ = settings(
    max_examples=int(os.environ.get("TVCS_FUZZ_EXAMPLES", "150")),  # per test; more: longer runs
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.data())
def test_fuzz_manifests(base: Base, data: st.DataObject) -> None:
    _check(base, data.draw(mutations(base.manifests, "manifest")), "manifest")


@FUZZ
@given(data=st.data())
def test_fuzz_commits(base: Base, data: st.DataObject) -> None:
    _check(base, data.draw(mutations(base.commits, "commit")), "commit")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["tensors"][0].update(dtype="float99"),
        lambda d: d["tensors"][0].update(shape=[-1]),
        lambda d: d["tensors"][0].update(nbytes=1 << 70),
        lambda d: d["tensors"][0].pop("chunks", None) or d["tensors"][0].pop("pack", None),
        lambda d: d.update(tree=DEEP_TREE),
        lambda d: d["files"][1].update(path="../../pwned.txt"),
        lambda d: d.update(tensors=[]),
    ],
)
def test_targeted_manifest_mutations(base: Base, mutate: Callable[[Any], Any]) -> None:
    """A few malformations the fuzzer might draw rarely, always checked."""
    doc = copy.deepcopy(base.manifests[0][1])
    mutate(doc)
    _check(base, Mutation(_encode(doc), True, repr(mutate)), "manifest", in_hypothesis=False)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(changes={"model.w": 10**400}),
        lambda d: d.update(changes={"model.w": 2**1024 - 1}),
        lambda d: d.update(changes={"model.w": -1}),
        lambda d: d.update(changes={"model.w": True}),
        lambda d: d.update(changes={"model.w": "1.0"}),
        lambda d: d.update(changes=[["model.w", 1.0]]),
        lambda d: d.update(metrics=["dict", [["loss", ["complex", 2**1024 - 1, 0]]]]),
        lambda d: d.update(metrics=["dict", [["loss", ["complex", 0, 10**400]]]]),
    ],
)
def test_targeted_commit_mutations(base: Base, mutate: Callable[[Any], Any]) -> None:
    """Numbers no float holds, where a commit's floats are stored: refused, never an
    OverflowError (the fuzzer drew the first one only rarely)."""
    doc = copy.deepcopy(base.commits[0][1])
    mutate(doc)
    _check(base, Mutation(_encode(doc), True, repr(mutate)), "commit", in_hypothesis=False)


def test_the_base_repository_reads_back(base: Base) -> None:
    """The unmutated documents parse (the fuzzer's mutations are the only problems)."""
    for mid, doc in base.manifests:
        Manifest.from_bytes(jsonenc.dumps(doc), mid)
    for cid, doc in base.commits:
        Commit.from_bytes(jsonenc.dumps(doc), cid)
    assert (base.repo.path / object_name(base.commits[0][0])).exists()
    _cleanup(base)
    assert fsck(base.repo).ok
