"""``tvcs branch``, ``tvcs tag`` and ``tvcs switch``."""

from __future__ import annotations

import click

from .. import maintenance
from ..errors import UsageError
from ._util import complete_rev, echo_json, note, repo, short


@click.command()
@click.argument("name", required=False)
@click.argument("rev", default="HEAD", required=False, shell_complete=complete_rev)
@click.option("-d", "--delete", is_flag=True, help="Delete branch NAME.")
@click.option("-f", "--force", is_flag=True, help="Move NAME if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def branch(name: str | None, rev: str, delete: bool, force: bool, as_json: bool) -> None:
    """List branches, create branch NAME at REV (default HEAD), or delete it (-d)."""
    r = repo()
    if name is None:
        if delete:
            raise UsageError("branch -d: give the branch NAME")
        current, _ = r.head()
        items = r.branches()
        if as_json:
            branches = [{"name": b, "id": oid, "head": b == current} for b, oid in items.items()]
            echo_json({"current": current, "branches": branches})
            return
        if current is not None and current not in items:
            click.echo(f"* {current} (no commits yet)")
        for b, oid in items.items():
            mark = "*" if b == current else " "
            subject = r.get_commit(oid).message.splitlines()
            click.echo(f"{mark} {b}  {short(oid)}  {subject[0] if subject else ''}".rstrip())
        return
    if delete:
        oid = r.delete_branch(name)
        if as_json:
            echo_json({"deleted": name, "id": oid})
        else:
            click.echo(f"Deleted branch {name} (was {short(oid)})")
        return
    oid = r.branch(name, rev, force=force)
    if as_json:
        echo_json({"branch": name, "id": oid})
    else:
        click.echo(f"Branch {name} at {short(oid)}")


@click.command()
@click.argument("name", required=False)
@click.argument("rev", default="HEAD", required=False, shell_complete=complete_rev)
@click.option("-d", "--delete", is_flag=True, help="Delete tag NAME.")
@click.option("-f", "--force", is_flag=True, help="Move NAME if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def tag(name: str | None, rev: str, delete: bool, force: bool, as_json: bool) -> None:
    """List tags, tag REV (default HEAD) as NAME, or delete tag NAME (-d)."""
    r = repo()
    if name is None:
        if delete:
            raise UsageError("tag -d: give the tag NAME")
        items = r.tags()
        if as_json:
            echo_json({"tags": [{"name": t, "id": oid} for t, oid in items.items()]})
            return
        for t, oid in items.items():
            c = r.get_commit(oid)
            step = f"  step {c.step}" if c.step is not None else ""
            click.echo(f"{t}  {short(oid)}{step}")
        return
    if delete:
        oid = r.delete_tag(name)
        if as_json:
            echo_json({"deleted": name, "id": oid})
        else:
            click.echo(f"Deleted tag {name} (was {short(oid)})")
        return
    oid = r.tag(name, rev, force=force)
    if as_json:
        echo_json({"tag": name, "id": oid})
    else:
        click.echo(f"Tagged {short(oid)} as {name}")


@click.command()
@click.argument("target", shell_complete=complete_rev)
@click.option("--detach", is_flag=True, help="Point HEAD at the commit, not at a branch.")
def switch(target: str, detach: bool) -> None:
    """Point HEAD at branch TARGET (or, with --detach or for a non-branch, at a commit). Files
    are not touched: use `tvcs checkout` for that. New commits go where HEAD points."""
    r = repo()
    is_branch = target in r.branches()
    if not is_branch and not detach:
        r.resolve(target)  # an unknown name is an error, not a silent detach
    was_branch, was = r.head()
    r.switch(target, detach=detach)
    current, oid = r.head()
    if was_branch is None and was is not None and was != oid:
        behind = maintenance.left_behind(r, was)
        if behind:
            shown = "\n".join(
                f"  {short(c)} {(r.get_commit(c).message.splitlines() or [''])[0]}"
                for c in behind[:10]
            )
            more = f"\n  ... and {len(behind) - 10} more" if len(behind) > 10 else ""
            note(
                f"warning: you are leaving {len(behind)} commit(s) behind, not reachable from "
                f"any branch or tag:\n{shown}{more}\nThey stay in the reflog ('tvcs reflog', "
                f"HEAD@{{1}}) and gc keeps them 90 days; to keep them for good: "
                f"tvcs branch <name> {short(was)}"
            )
    if current is not None:
        click.echo(f"Switched to branch {current}")
    else:
        click.echo(f"HEAD is now at {short(oid)} (detached)")


COMMANDS = [branch, tag, switch]
