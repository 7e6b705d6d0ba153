"""``tvcs init`` and ``tvcs config``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from .. import maintenance
from ..errors import FormatVersionError, UsageError
from ..format.config import RepoConfig
from ..repo import CONFIG, Repo
from ._util import echo_json, human_size, note, parse_size, repo, state


@click.command()
@click.argument("path", required=False, type=click.Path(file_okay=False))
@click.option("--chunk-size", help="Bytes per chunk of a large tensor (default 4MiB).")
@click.option("--pack-threshold", help="Tensors up to this size are packed (default 64KiB).")
@click.option("-b", "--branch", default="main", show_default=True, help="Name of the first branch.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def init(
    path: str | None,
    chunk_size: str | None,
    pack_threshold: str | None,
    branch: str,
    as_json: bool,
) -> None:
    """Create a repository (a .tvcs folder) in PATH (default: --repo, else the current
    directory)."""
    target = path or state().repo_path or os.getcwd()
    cs = parse_size(chunk_size) if chunk_size else None
    pt = parse_size(pack_threshold) if pack_threshold else None
    check = RepoConfig()
    check.chunk_size = cs if cs is not None else check.chunk_size
    check.pack_threshold = pt if pt is not None else check.pack_threshold
    _validate(check)
    existing = Path(target) / ".tvcs" / "config.json"
    if existing.is_file():  # as git: a no-op on an existing repository, with a note
        r = Repo.open(target)
        try:
            for name, want in (("chunk_size", cs), ("pack_threshold", pt)):
                have = getattr(r.config, name)
                if want is not None and want != have:
                    raise UsageError(
                        f"a tensorvcs repository already exists at {r.path} with {name} "
                        f"{have}, not {want} (change it with 'tvcs config {name} {want}')"
                    )
            if as_json:
                doc = {"path": str(r.path), "branch": r.head()[0], "existed": True}
                echo_json({**doc, **_config_doc(r.config)})
            else:
                note(f"a tensorvcs repository already exists at {r.path}; nothing changed")
        finally:
            r.close()
        return
    r = Repo.init(target, chunk_size=cs, pack_threshold=pt, branch=branch)
    try:
        if as_json:
            doc = {"path": str(r.path), "branch": branch, "existed": False}
            echo_json({**doc, **_config_doc(r.config)})
        else:
            click.echo(f"Initialized empty tensorvcs repository in {r.path}")
    finally:
        r.close()


def _validate(c: RepoConfig) -> None:
    try:
        RepoConfig.from_bytes(c.to_bytes(), "config")
    except FormatVersionError as e:
        raise UsageError(str(e).removeprefix("config: ")) from None


def _config_doc(c: RepoConfig) -> dict[str, Any]:
    return {
        "format_version": c.format_version,
        "chunk_size": c.chunk_size,
        "pack_threshold": c.pack_threshold,
        "required_features": list(c.required_features),
        "optional_features": list(c.optional_features),
        "settings": dict(c.settings),
    }


def _flat(c: RepoConfig) -> dict[str, Any]:
    d = _config_doc(c)
    out = {k: v for k, v in d.items() if k != "settings"}
    for k, v in d["settings"].items():
        out[f"settings.{k}"] = v
    return out


WRITABLE = ("chunk_size", "pack_threshold")


@click.command()
@click.argument("key", required=False)
@click.argument("value", required=False)
@click.option("--unset", is_flag=True, help="Remove the setting KEY (settings.* only).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def config(key: str | None, value: str | None, unset: bool, as_json: bool) -> None:
    """Show or change the repository config.

    \b
    tvcs config                       list every key
    tvcs config chunk_size            print one key
    tvcs config chunk_size 8MiB       set it (affects new commits only)
    tvcs config settings.NAME VALUE   free-form tool settings (VALUE parsed as JSON if it is)
    tvcs config --unset settings.NAME
    """
    r = repo()
    flat = _flat(r.config)
    if key is None:
        if unset or value is not None:
            raise UsageError("config: give a KEY")
        if as_json:
            echo_json({"config": flat})
        else:
            for k, v in flat.items():
                click.echo(f"{k} = {_show(k, v)}")
        return
    if value is None and not unset:
        if key not in flat:
            raise UsageError(f"config: no key {key!r} (keys: {', '.join(flat)})")
        if as_json:
            echo_json({"config": {key: flat[key]}})
        else:
            click.echo(_show(key, flat[key]) if not isinstance(flat[key], str) else flat[key])
        return
    c = r.config
    if key.startswith("settings.") and len(key) > len("settings."):
        name = key[len("settings.") :]
        if unset:
            if name not in c.settings:
                raise UsageError(f"config: {key} is not set")
            del c.settings[name]
        else:
            assert value is not None
            try:
                c.settings[name] = json.loads(value)
            except ValueError:
                c.settings[name] = value
            if name in maintenance.SETTINGS:  # gc ages: refuse what gc could not read
                maintenance.parse_age(c.settings[name], f"setting {name}")
    elif key in WRITABLE and not unset:
        assert value is not None
        try:
            n = parse_size(value)
        except click.BadParameter as e:
            raise UsageError(f"config {key}: {e.message}") from None
        setattr(c, key, n)
    else:
        raise UsageError(
            f"config: {key!r} cannot be changed (writable: {', '.join(WRITABLE)}, settings.*)"
        )
    _validate(c)
    with r.refs.locked():
        r.store.put(CONFIG, [c.to_bytes()])
    if as_json:
        echo_json({"config": _flat(c)})


def _show(k: str, v: Any) -> str:
    if k in WRITABLE:
        return f"{v} ({human_size(v)})"
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


COMMANDS = [init, config]
