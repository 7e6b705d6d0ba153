"""``tvcs remote``, ``push``, ``fetch``, ``pull`` and ``clone`` (tensorvcs.remote;
docs/remotes.md)."""

from __future__ import annotations

from typing import Any

import click

from .. import remote as rm
from ._util import echo_json, human_size, repo, short


def _options(endpoint_url: str | None, anon: bool) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if endpoint_url:
        opts["client_kwargs"] = {"endpoint_url": endpoint_url}
    if anon:
        opts["anon"] = True
    return opts


_endpoint = click.option(
    "--endpoint-url",
    help="S3 endpoint (MinIO, a local test server...); default: AWS, or $AWS_ENDPOINT_URL.",
)
_anon = click.option("--anon", is_flag=True, help="S3: no credentials (a public bucket).")
_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
_threads = click.option(
    "-j",
    "--threads",
    type=click.IntRange(1, 256),
    default=rm.DEFAULT_TRANSFER_THREADS,
    show_default=True,
    help="Objects transferred at once.",
)


def _res_json(res: rm.RemoteResult) -> dict[str, Any]:
    """The result as --json prints it: each updated ref as {"name", "old", "new"}."""
    doc = res.to_json()
    doc["updated"] = [{"name": k, "old": o, "new": n} for k, (o, n) in res.updated.items()]
    return doc


def _report(verb: str, res: rm.RemoteResult, as_json: bool) -> None:
    if as_json:
        echo_json({"verb": verb, **_res_json(res)})
        return
    click.echo(
        f"{verb} {res.remote} ({res.url}): {res.objects_sent} object(s), "
        f"{human_size(res.bytes_sent)} transferred; {res.objects_skipped} already there"
    )
    for ref, (old, new) in res.updated.items():
        click.echo(f" {short(old) if old else '(new)'}..{short(new) if new else '-'}  {ref}")
    for ref in res.up_to_date:
        click.echo(f" up to date  {ref}")
    for ref in res.tags_kept:
        click.echo(f" ! kept      {ref} (differs from {res.remote}'s; made or moved here)")


@click.group(name="remote")
def remote() -> None:
    """Manage remotes: other stores (s3://, file://, a path) to push to and fetch from."""


@remote.command(name="add")
@click.argument("name")
@click.argument("url")
@_endpoint
@_anon
def remote_add(name: str, url: str, endpoint_url: str | None, anon: bool) -> None:
    """Add a remote NAME at URL (s3://bucket/prefix, file:///path, memory://x, or a path)."""
    rm.remote_add(repo(), name, url, **_options(endpoint_url, anon))


@remote.command(name="list")
@_json
def remote_list(as_json: bool) -> None:
    """List the remotes."""
    rs = rm.remotes(repo())
    if as_json:
        echo_json({"remotes": [{"name": n, "url": u} for n, u in rs.items()]})
        return
    for name, url in rs.items():
        click.echo(f"{name}\t{url}")


@remote.command(name="remove")
@click.argument("name")
def remote_remove(name: str) -> None:
    """Remove a remote and its remote-tracking refs (refs/remotes/NAME/...)."""
    rm.remote_remove(repo(), name)


@click.command(name="push")
@click.argument("name", default="origin")
@click.argument("refs", nargs=-1)
@click.option("--tags", is_flag=True, help="Also push every tag (and the objects it needs).")
@click.option("--all", "all_branches", is_flag=True, help="Also push every branch.")
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Replace a remote tag that names another commit, or a branch that is not an "
    "ancestor of what is pushed.",
)
@_threads
@_json
def push(
    name: str,
    refs: tuple[str, ...],
    tags: bool,
    all_branches: bool,
    force: bool,
    threads: int,
    as_json: bool,
) -> None:
    """Send branches or tags (default: the current branch) to remote NAME (default: origin).

    Only objects the remote lacks are sent; its refs move last, and only if nobody else moved
    them since (else: 'rejected: remote main moved; fetch first'). --tags sends every tag,
    --all every branch (both together: everything)."""
    res = rm.push(
        repo(),
        name,
        list(refs) or None,
        threads=threads,
        tags=tags,
        all_branches=all_branches,
        force=force,
    )
    _report("push", res, as_json)


@click.command(name="fetch")
@click.argument("name", default="origin")
@click.option(
    "--include",
    "includes",
    multiple=True,
    metavar="GLOB",
    help="Fetch only the objects of tensors whose key path matches GLOB (repeatable).",
)
@_threads
@_json
def fetch(name: str, includes: tuple[str, ...], threads: int, as_json: bool) -> None:
    """Get the branches and tags of remote NAME into refs/remotes/NAME/... (no local branch
    moves)."""
    res = rm.fetch(repo(), name, threads=threads, include=list(includes) or None)
    _report("fetch", res, as_json)


@click.command(name="pull")
@click.argument("name", default="origin")
@click.argument("branch", required=False)
@_threads
@_json
def pull(name: str, branch: str | None, threads: int, as_json: bool) -> None:
    """Fetch, then fast-forward BRANCH (default: the current one) to NAME's. A branch that
    diverged is refused (tensorvcs does not merge checkpoints)."""
    _report("pull", rm.pull(repo(), name, branch, threads=threads), as_json)


@click.command(name="clone")
@click.argument("url")
@click.argument("directory", required=False)
@click.option(
    "--filter",
    "filters",
    multiple=True,
    metavar="GLOB",
    help="Partial clone: fetch only the objects of tensors whose key path matches GLOB "
    "(repeatable; e.g. --filter 'adapter'). Later fetches keep the filter.",
)
@_endpoint
@_anon
@_threads
@_json
def clone(
    url: str,
    directory: str | None,
    filters: tuple[str, ...],
    endpoint_url: str | None,
    anon: bool,
    threads: int,
    as_json: bool,
) -> None:
    """Make DIRECTORY (default: the URL's last part) a repository with the history of URL,
    with URL as remote 'origin'."""
    target = directory or url.rstrip("/").rsplit("/", 1)[-1] or "clone"
    r, res = rm.clone(
        url, target, threads=threads, filter=list(filters) or None, **_options(endpoint_url, anon)
    )
    try:
        if as_json:
            echo_json({"verb": "clone", "path": str(r.root), **_res_json(res)})
            return
        click.echo(f"cloned {url} into {r.root}")
        _report("fetch", res, False)
    finally:
        r.close()


COMMANDS = [remote, push, fetch, pull, clone]
