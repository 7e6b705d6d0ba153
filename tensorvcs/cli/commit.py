"""``tvcs commit``."""

from __future__ import annotations

import math

import click

from ..errors import UsageError
from ..io.importer import collect, commit_files
from ..refs import TAGS, check_ref_name
from ._util import echo_json, human_size, note, repo, short
from .progress import Progress


def _metric(text: str) -> tuple[str, int | float]:
    if "=" not in text:
        raise click.BadParameter(f"expected KEY=VALUE, got {text!r}", param_hint="--metric")
    k, v = text.split("=", 1)
    k = k.strip()
    if not k:
        raise click.BadParameter(f"empty metric name in {text!r}", param_hint="--metric")
    try:
        return k, int(v)
    except ValueError:
        pass
    try:
        x = float(v)
    except ValueError:
        raise click.BadParameter(
            f"metric {k!r}: {v!r} is not a number", param_hint="--metric"
        ) from None
    if not math.isfinite(x):  # nan/inf would sort and compare as no metric can
        raise click.BadParameter(
            f"metric {k!r}: {v!r} is not a finite number", param_hint="--metric"
        )
    return k, x


@click.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path())
@click.option("-m", "--message", required=True, help="The commit message.")
@click.option("--step", type=int, help="The training step this checkpoint was taken at.")
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    metavar="KEY=VALUE",
    help="A number to record with the commit (repeatable): --metric loss=0.31 --metric acc=0.9.",
)
@click.option("--tag", "tag", help="Tag the new commit.")
@click.option(
    "-b",
    "--branch",
    help="Commit to this branch (created from HEAD if new); default: the branch HEAD is on.",
)
@click.option("--author", help="Author (default: settings.author, else user@host).")
@click.option(
    "--unsafe-pickle",
    is_flag=True,
    help="Load torch files with full pickle "
    "(weights_only=False) and store values that have no safe encoding as opaque "
    "pickles. Runs code from the files: only for files you trust.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def commit(
    paths: tuple[str, ...],
    message: str,
    step: int | None,
    metrics: tuple[str, ...],
    tag: str | None,
    branch: str | None,
    author: str | None,
    unsafe_pickle: bool,
    as_json: bool,
) -> None:
    """Commit checkpoint files (or every file in a folder) as one commit.

    .pt/.pth/.ckpt/.bin torch files and .safetensors files are stored tensor by tensor (an
    unchanged tensor costs nothing); any other file is stored as opaque bytes. Paths are
    recorded relative to the repository root.
    """
    r = repo()
    parsed = dict(_metric(m) for m in metrics)
    if tag is not None:
        check_ref_name(tag, "tag")
        if r.refs.exists(TAGS + tag):
            raise UsageError(f"tag {tag!r} already exists")
    if author is None:
        a = r.config.settings.get("author")
        author = str(a) if a else None
    inputs = collect(r.root, paths)
    progress = Progress(enabled=False if as_json else None)  # bars on a terminal only
    try:
        res = commit_files(
            r,
            inputs,
            message,
            step=step,
            metrics=parsed,
            branch=branch,
            author=author,
            unsafe_pickle=unsafe_pickle,
            progress=progress,
            note=None if as_json else note,
        )
    except KeyboardInterrupt:
        progress.finish()
        # objects written before the ref moved are referenced by nothing: say how to free them
        note(
            "commit interrupted: no commit was made; the objects it had written are "
            "unreferenced ('tvcs gc --prune=now' reclaims them, 'tvcs gc' once they are "
            "two weeks old)"
        )
        raise
    finally:
        progress.finish()  # an error or ^C while hashing: the terminal's cursor comes back
    c = res.commit
    if tag is not None:
        r.tag(tag, c)
    target, _ = r.head()
    where = branch or target or "detached HEAD"
    if as_json:
        echo_json(
            {
                "id": c.id,
                "branch": where if (branch or target) else None,
                "tag": tag,
                "parents": c.parents,
                "step": c.step,
                "metrics": c.metrics,
                "files": [
                    {"path": f.path, "kind": f.kind, "format": f.format, "size": f.size}
                    for f in res.files
                ],
                "logical_bytes": res.logical_bytes,
                "new_stored_bytes": res.new_stored_bytes,
                "notes": res.notes,
            }
        )
        return
    click.echo(f"[{where} {short(c.id)}] {c.message.splitlines()[0] if c.message else ''}")
    click.echo(
        f" {len(res.files)} file(s), {human_size(res.logical_bytes)}; "
        f"{human_size(res.new_stored_bytes)} new in the store" + (f"; tagged {tag}" if tag else "")
    )


COMMANDS = [commit]
