"""``tvcs``: the git-like command line of tensorvcs.

One module per verb group (setup, commit, checkout, history, diff, refs, maintenance); this
module holds the group, its global options and the error handling every verb shares:

- a deliberate error (``TensorVCSError``) prints ``tvcs: error: <message>`` and exits with its
  ``exit_code`` (docs/cli.md has the table); click usage errors exit 2;
- a full disk (ENOSPC/EDQUOT, also when torch or safetensors wrap it) exits 13; another
  operating-system error prints its message and exits 1;
- torch.distributed.checkpoint's ``CheckpointException`` (a BaseException that wraps each
  rank's failure) is reported as the first failure it wraps;
- anything else is a bug: one line, ``(run with --debug for the traceback)``, exit 1;
- ``--debug`` (or ``TVCS_DEBUG=1``) prints the traceback as well.
"""

from __future__ import annotations

import errno
import os
import re
import sys
import traceback
from typing import Any

import click

from .. import __version__
from ..errors import TensorVCSError
from ._util import ENV_REPO, State, start_pager

EXIT_BUG = 1
EXIT_NO_SPACE = 13
EXIT_INTERRUPTED = 130
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
# how safetensors (Rust) reports errno 28 / 122 in its message
_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")


def _error(message: str) -> None:

    lines = str(message).strip().splitlines()
    click.echo(f"tvcs: error: {lines[0] if lines else 'error'}", err=True)


def _unwrap(e: BaseException) -> BaseException:
    """The first (lowest rank's) failure a torch.distributed.checkpoint CheckpointException
    wraps, recursively; ``e`` itself otherwise."""
    for _ in range(8):
        if type(e).__name__ != "CheckpointException":
            break
        failures = getattr(e, "failures", None)
        if not isinstance(failures, dict) or not failures:
            break
        first = failures[min(failures)]
        inner = first[0] if isinstance(first, tuple) and first else first
        if not isinstance(inner, BaseException):
            break
        e = inner
    return e


def _no_space(e: BaseException) -> OSError | None:
    """The ENOSPC/EDQUOT OSError behind ``e`` (itself, its cause or context, or the errno in a
    safetensors message), if any."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in _NO_SPACE:
            return x
        m = _OS_ERROR_TEXT.search(str(x)) if not isinstance(x, TensorVCSError) else None
        if m and int(m.group(1)) in _NO_SPACE:
            return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
        x = x.__cause__ or x.__context__
    return None


def _report(e: BaseException) -> int:
    """Print the one-line error for ``e`` (any exception but the ones main handles itself);
    returns the exit code."""
    inner = _unwrap(e)
    full = _no_space(inner)
    if full is not None:
        where = f"{full.filename}: " if getattr(full, "filename", None) else ""
        _error(f"{where}{full.strerror or 'No space left on device'} (the disk is full)")
        return EXIT_NO_SPACE
    if isinstance(inner, TensorVCSError):
        _error(str(inner))
        return inner.exit_code
    if isinstance(inner, click.ClickException):
        _error(inner.format_message())
        return inner.exit_code
    if isinstance(inner, KeyboardInterrupt):
        click.echo("tvcs: interrupted", err=True)
        return EXIT_INTERRUPTED
    if isinstance(inner, OSError):
        where = f"{inner.filename}: " if getattr(inner, "filename", None) else ""
        _error(f"{where}{inner.strerror or inner}")
        return EXIT_BUG
    text = str(inner).strip().splitlines()
    via = f"{type(e).__name__}: " if inner is not e else ""
    _error(
        f"internal error: {via}{type(inner).__name__}: {text[0] if text else ''} "
        "(run with --debug for the traceback)"
    )
    return EXIT_BUG


# -- the verbs, loaded on first use ---------------------------------------------------------
# Each verb's module is imported only when that verb runs (or its help is asked): `tvcs
# --help`, `tvcs --version` and `tvcs log` never import torch. The one-line summaries of
# `tvcs --help` are kept here, so listing the verbs imports none of them.
# tests/cli/test_startup.py checks that this table and the modules' COMMANDS agree.
#   section title -> {verb: (module in tensorvcs.cli, summary)}
SECTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "Record and restore checkpoints": {
        "init": ("setup", "Create a repository (a .tvcs folder)."),
        "status": ("status", "Which checkpoint files are new, modified or deleted."),
        "commit": ("commit", "Commit checkpoint files or folders as one commit."),
        "checkout": ("checkout", "Write back the files a commit recorded."),
        "restore": ("restore", "Write checkpoint files back as a commit holds them."),
    },
    "Look at history": {
        "log": ("history", "Show the commits reachable from a revision."),
        "show": ("history", "Show one commit: message, metrics, files, tensors."),
        "ls": ("history", "List the tensors and files of a commit."),
        "diff": ("diff", "Compare two commits, key by key and tensor by tensor."),
        "report": ("report", "Write an HTML report of a run: metrics, layers, storage."),
        "reflog": ("maintenance", "Show where a ref has pointed, newest first."),
    },
    "Branches and tags": {
        "branch": ("refs", "List, create or delete branches."),
        "tag": ("refs", "List, create or delete tags."),
        "switch": ("refs", "Point HEAD at a branch (or at a commit)."),
    },
    "Remotes": {
        "remote": ("remote", "Add, list or remove remotes."),
        "clone": ("remote", "Make a new repository from a remote's history."),
        "fetch": ("remote", "Get a remote's branches and tags."),
        "pull": ("remote", "Fetch, then fast-forward a branch."),
        "push": ("remote", "Send branches or tags to a remote."),
    },
    "Distributed checkpoints (torch.distributed.checkpoint)": {
        "import": ("dcp", "Commit a DCP checkpoint directory, keeping its shards."),
        "export": ("dcp", "Write a commit as a DCP directory or one .pt/.safetensors."),
    },
    "Maintenance": {
        "du": ("maintenance", "Disk usage of a history, commit by commit."),
        "gc": ("maintenance", "Delete the objects nothing keeps."),
        "compact": ("maintenance", "Re-encode as deltas the older chunks left whole."),
        "fsck": ("maintenance", "Verify every object, ref and reflog."),
        "config": ("setup", "Show or change the repository config."),
    },
}
VERBS: dict[str, tuple[str, str]] = {v: e for sec in SECTIONS.values() for v, e in sec.items()}
# every module that defines verbs (its COMMANDS list); a verb missing from SECTIONS is still
# found (all of them are imported then), but `tvcs --help` does not list it
MODULES = (
    "setup", "commit", "checkout", "history", "diff", "refs", "maintenance", "dcp", "remote",
    "report", "status", "restore",
)
# verbs whose output goes through a pager when stdout is a terminal (as git's log, diff, show)
PAGED = frozenset({"log", "show", "ls", "diff", "reflog"})


def _import(module: str) -> Any:
    import importlib

    return importlib.import_module(f"{__name__}.{module}")


class TvcsGroup(click.Group):
    """The ``tvcs`` group: verbs imported on first use, help listed from ``SECTIONS``, and a
    ``main`` that turns every exception into one line and an exit code."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(VERBS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands:
            if cmd_name in VERBS:
                self._add_module(VERBS[cmd_name][0])
            if cmd_name not in self.commands:  # not in the table: look in every module
                for module in MODULES:
                    self._add_module(module)
        return self.commands.get(cmd_name)

    def _add_module(self, module: str) -> None:
        for cmd in _import(module).COMMANDS:
            if cmd.name not in self.commands:
                self.add_command(cmd)

    def load_all(self) -> None:
        """Import every verb (tests, and the shell completion of verb names)."""
        for module in MODULES:
            self._add_module(module)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        import textwrap

        width = max(len(v) for v in VERBS)
        limit = max(formatter.width - 6 - width, 20)
        for title, verbs in SECTIONS.items():
            rows = [  # one column width for all sections
                (v.ljust(width), textwrap.shorten(summary, limit, placeholder="..."))
                for v, (_, summary) in verbs.items()
            ]

            with formatter.section(title):
                formatter.write_dl(rows)
        formatter.write_paragraph()
        formatter.write_text("See 'tvcs VERB --help' for the options of a verb.")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args and not ctx.resilient_parsing:  # bare `tvcs`: the list of verbs, exit 0
            click.echo(ctx.get_help(), color=ctx.color)
            ctx.exit(0)
        return super().parse_args(ctx, args)

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        debug = "--debug" in argv or os.environ.get("TVCS_DEBUG", "") not in ("", "0")
        code = 0
        try:
            rv = super().main(
                argv,
                prog_name=prog_name or "tvcs",
                complete_var=complete_var,
                standalone_mode=False,
                **extra,
            )
            code = rv if isinstance(rv, int) else 0
        except click.exceptions.Exit as e:
            code = e.exit_code
        except click.exceptions.Abort:
            click.echo("tvcs: aborted", err=True)
            code = EXIT_INTERRUPTED
        except click.ClickException as e:
            if debug:
                traceback.print_exc()
            hint = ""
            ctx = getattr(e, "ctx", None)
            if isinstance(e, click.UsageError) and ctx is not None:
                hint = f" (see '{ctx.command_path} --help')"
            _error(e.format_message() + hint)
            code = e.exit_code
        except KeyboardInterrupt:
            click.echo("tvcs: interrupted", err=True)
            code = EXIT_INTERRUPTED
        except (SystemExit, GeneratorExit):
            raise
        except BaseException as e:  # CheckpointException is a BaseException, not an Exception
            if debug:
                traceback.print_exc()
            code = _report(e)
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(name="tvcs", cls=TvcsGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--repo",
    "repo_path",
    envvar=ENV_REPO,
    type=click.Path(file_okay=False),
    help="The repository (its folder or its .tvcs); default: $TVCS_REPO, else the first .tvcs "
    "found from the current directory upwards.",
)
@click.option("--debug", is_flag=True, help="Print tracebacks of errors.")
@click.option(
    "--no-pager",
    is_flag=True,
    help="Do not page long output (log, show, ls, diff, reflog). The pager is $TVCS_PAGER, "
    "else $PAGER, else 'less -FRX'; only used when stdout is a terminal.",
)
@click.version_option(__version__, "--version", prog_name="tvcs", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, repo_path: str | None, debug: bool, no_pager: bool) -> None:
    """tvcs: a content-addressed, git-like version store for PyTorch checkpoints.

    Commit checkpoint files (.pt, .ckpt, .safetensors, Hugging Face folders) and get them back
    bit-exactly; only tensors that changed take new space.
    """
    st = ctx.ensure_object(State)
    st.repo_path = repo_path
    st.debug = debug
    ctx.call_on_close(st.close)
    if not no_pager and ctx.invoked_subcommand in PAGED and not ctx.resilient_parsing:
        stop = start_pager()
        if stop is not None:
            ctx.color = True  # styles go through to the pager (less -R), as git's colors do
            ctx.call_on_close(stop)



def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``tvcs`` script."""
    return cli.main(argv, prog_name="tvcs")


__all__ = ["cli", "main"]
