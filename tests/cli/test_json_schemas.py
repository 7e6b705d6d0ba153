"""Every command's ``--json`` output against its documented schema (tensorvcs/cli/schemas.py),
through the real CLI on a small real history: two branches, tags, a file:// remote (push, fetch,
pull, clone) and a DCP export and import. The commands come from the click group, so a new
``--json`` flag without a schema (or without a run here) fails."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs.cli import cli
from tensorvcs.cli.schemas import SCHEMAS

from .clihelp import Tvcs

TVCS = Path(sys.executable).parent / "tvcs"


def json_commands() -> set[str]:
    """The path ("log", "remote list") of every command that takes --json."""
    cli.load_all()
    out: set[str] = set()

    def walk(group: click.Group, prefix: tuple[str, ...]) -> None:
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                walk(cmd, (*prefix, name))
            elif any(p.name == "as_json" for p in cmd.params):
                out.add(" ".join((*prefix, name)))

    walk(cli, ())
    return out


def finite(v: Any) -> Iterator[float]:
    """Every float in a JSON document (none may be NaN or infinite)."""
    if isinstance(v, float):
        yield v
    elif isinstance(v, dict):
        for x in v.values():
            yield from finite(x)
    elif isinstance(v, list):
        for x in v:
            yield from finite(x)


def save(path: Path, scale: float, nan: bool = False) -> None:
    b = torch.tensor([float("nan") if nan else 1.0, 2.0])
    torch.save({"w": torch.arange(64, dtype=torch.float32) * scale, "b": b}, path)


def closed(schema: Any) -> Any:
    """``schema`` with every object that lists its properties closed to others: the published
    schemas allow fields added later, the test fails on a field no schema documents."""
    if isinstance(schema, list):
        return [closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def test_closed_schemas_refuse_an_undocumented_field() -> None:
    doc = {"schema": 1, "deleted": "dev", "id": "0" * 64}
    jsonschema.validate(doc, closed(SCHEMAS["branch"]))
    with pytest.raises(
        jsonschema.ValidationError, match="not valid under any of the given schemas"
    ):
        jsonschema.validate({**doc, "extra": 1}, closed(SCHEMAS["branch"]))
    jsonschema.validate({**doc, "extra": 1}, SCHEMAS["branch"])  # the published one: open


def test_every_json_command_has_a_valid_schema() -> None:
    cmds = json_commands()
    assert {"log", "show", "status", "remote list", "push", "import"} <= cmds
    missing = sorted(cmds - set(SCHEMAS))
    assert missing == [], f"--json without a schema in tensorvcs/cli/schemas.py: {missing}"
    assert sorted(set(SCHEMAS) - cmds) == []
    for name, schema in SCHEMAS.items():
        jsonschema.Draft202012Validator.check_schema(schema)
        assert name


def test_every_json_output_matches_its_schema(work: Path, tvcs: Tvcs) -> None:
    seen: dict[str, list[dict[str, Any]]] = {}

    def run(*args: Any, cmd: str | None = None) -> dict[str, Any]:
        name = cmd or str(args[0])
        doc = tvcs.json(*args)
        assert isinstance(doc, dict) and doc["schema"] == 1, (args, doc)
        jsonschema.validate(doc, SCHEMAS[name])
        jsonschema.validate(doc, closed(SCHEMAS[name]))
        assert not [x for x in finite(doc) if not math.isfinite(x)]
        seen.setdefault(name, []).append(doc)
        return doc

    save(work / "m.pt", 1.0)
    c1 = run("commit", "m.pt", "-m", "one", "--step", "1", "--metric", "loss=0.5", "--tag", "v1")
    assert c1["metrics"] == {"loss": 0.5} and c1["tag"] == "v1" and c1["step"] == 1
    assert run("branch", "dev")["id"] == c1["id"]
    save(work / "m.pt", 2.0, nan=True)
    c2 = run("commit", "m.pt", "-m", "two", "--step", "2")
    assert c2["parents"] == [c1["id"]]
    assert run("tag", "v2")["id"] == c2["id"]

    log = run("log")["commits"]
    assert [c["id"] for c in log] == [c2["id"], c1["id"]]
    assert log[0]["refs"] == [
        {"name": "main", "kind": "branch", "head": True},
        {"name": "v2", "kind": "tag", "head": False},
    ]
    assert log[1]["refs"] == [
        {"name": "dev", "kind": "branch", "head": False},
        {"name": "v1", "kind": "tag", "head": False},
    ]
    assert log[1]["metrics"] == {"loss": 0.5}
    assert run("show", "v1")["tensors"] == 2
    assert [t["key"] for t in run("ls")["tensors"]] == ["m.pt/w", "m.pt/b"]
    branches = run("branch")
    assert branches["current"] == "main"
    assert sorted(branches["branches"], key=lambda b: b["name"]) == [
        {"name": "dev", "id": c1["id"], "head": False},
        {"name": "main", "id": c2["id"], "head": True},
    ]
    assert run("tag")["tags"] == [{"name": "v1", "id": c1["id"]}, {"name": "v2", "id": c2["id"]}]
    assert run("status")["head"] == c2["id"]
    d = run("diff", "--stats", "v1", "v2")
    assert sorted(x["key"] for x in d["changed"]) == ["m.pt/b", "m.pt/w"]
    assert run("diff", "v1")["b"] == c2["id"]
    assert run("checkout", "v1", "-o", "out")["id"] == c1["id"]
    restored = run("restore", "m.pt", "--source", "v1")
    assert restored["id"] == c1["id"] and restored["files"][0]["path"] == "m.pt"
    assert [c["id"] for c in run("du")["commits"]] == [c1["id"], c2["id"]]
    assert run("fsck")["ok"] is True
    assert run("reflog")["entries"][0]["id"] == c2["id"]
    assert run("report", "-o", "r.html")["commits"] == 2
    assert run("config")["config"]["chunk_size"] == 65536
    assert run("config", "settings.author", "me")["config"]["settings.author"] == "me"
    assert run("export", "v1", "exp")["id"] == c1["id"]
    imp = run("import", "exp", "-b", "dcp")
    assert imp["branch"] == "dcp" and imp["items"] == 2

    remote = work.parent / "remote"
    tvcs("remote", "add", "origin", f"file://{remote}")
    assert run("remote", "list", cmd="remote list")["remotes"] == [
        {"name": "origin", "url": f"file://{remote}"}
    ]
    push = run("push")
    assert {"name": "refs/heads/main", "old": None, "new": c2["id"]} in push["updated"]
    assert run("fetch")["objects_sent"] == 0
    assert run("pull")["commits"] == 0
    assert run("clone", f"file://{remote}", str(work.parent / "copy"))["commits"] >= 2
    assert run("branch", "-d", "dev") == {"schema": 1, "deleted": "dev", "id": c1["id"]}
    assert run("tag", "-d", "v1") == {"schema": 1, "deleted": "v1", "id": c1["id"]}
    assert run("gc")["deleted_objects"] >= 0
    assert run("compact")["commits"] >= 2
    run("init", str(work.parent / "fresh"))

    assert sorted(json_commands() - set(seen)) == [], "commands with --json not run here"


def test_nan_in_a_diff_prints_null(work: Path, tvcs: Tvcs) -> None:
    save(work / "m.pt", 1.0)
    tvcs("commit", "m.pt", "-m", "one")
    save(work / "m.pt", 1.0, nan=True)
    tvcs("commit", "m.pt", "-m", "two")
    d = tvcs.json("diff", "--stats", "HEAD~1")
    jsonschema.validate(d, SCHEMAS["diff"])
    (b,) = [x for x in d["changed"] if x["key"] == "m.pt/b"]
    nulls = [k for k, v in b.items() if v is None]
    assert nulls, b  # the NaN's change is not a number: null, not "nan"
    assert "NaN" not in json.dumps(d)


def test_subprocess_log_json_validates(work: Path, tvcs: Tvcs) -> None:
    save(work / "m.pt", 1.0)
    tvcs("commit", "m.pt", "-m", "one", "--tag", "v1")
    p = subprocess.run(
        [str(TVCS), "log", "--json"], cwd=work, capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    jsonschema.validate(doc, SCHEMAS["log"])
    assert doc["schema"] == 1 and len(doc["commits"]) == 1
    assert {"name": "v1", "kind": "tag", "head": False} in doc["commits"][0]["refs"]


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_rejects_a_list_document(name: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], SCHEMAS[name])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"schema": 2}, SCHEMAS[name])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    metrics=st.dictionaries(
        st.text("abcxyz_", min_size=1, max_size=6),
        st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**40), 2**40),
        max_size=4,
    )
)
def test_log_and_show_print_any_metric_as_a_number_or_null(
    work: Path, tvcs: Tvcs, metrics: dict[str, float]
) -> None:
    """Metrics recorded through the Python API (which allows NaN/Inf) come back from log and
    show --json as the same numbers, non-finite ones as null; the documents stay valid JSON."""
    with tv.Repo.open(work) as r:
        cid = r.commit({"x": torch.zeros(2)}, "m", metrics=metrics).id
    log = tvcs("log", "-n", "1", "--json").stdout
    doc = json.loads(log, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    jsonschema.validate(doc, SCHEMAS["log"])
    want = {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}
    assert doc["commits"][0]["id"] == cid and doc["commits"][0]["metrics"] == want
    show = tvcs.json("show", cid)
    jsonschema.validate(show, SCHEMAS["show"])
    assert show["metrics"] == want
