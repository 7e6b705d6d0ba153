"""``tvcs``: the git-like command line of tensorvcs.

One module per verb group (setup, commit, checkout, history, diff, refs, maintenance); this
module holds the group, its global options and the error handling every verb shares:

- a deliberate error (``TensorVCSError``) prints ``tvcs: error: <message>`` and exits with its
  ``exit_code`` (docs/cli.md has the table); click usage errors exit 2;
- anything else is a bug: one line, ``(run with --debug for the traceback)``, exit 1;
- ``--debug`` (or ``TVCS_DEBUG=1``) prints the traceback as well.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import click

from .. import __version__
from ..errors import TensorVCSError
from ._util import ENV_REPO, State

EXIT_BUG = 1
EXIT_INTERRUPTED = 130


def _error(message: str) -> None:
    lines = str(message).strip().splitlines()
    click.echo(f"tvcs: error: {lines[0] if lines else 'error'}", err=True)


class TvcsGroup(click.Group):
    """A click group whose ``main`` turns every exception into one line and an exit code."""

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
        except TensorVCSError as e:
            if debug:
                traceback.print_exc()
            _error(str(e))
            code = e.exit_code
        except KeyboardInterrupt:
            click.echo("tvcs: interrupted", err=True)
            code = EXIT_INTERRUPTED
        except OSError as e:
            if debug:
                traceback.print_exc()
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            _error(f"{where}{e.strerror or e}")
            code = EXIT_BUG
        except Exception as e:
            if debug:
                traceback.print_exc()
            _error(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
            code = EXIT_BUG
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
@click.version_option(__version__, "--version", prog_name="tvcs", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, repo_path: str | None, debug: bool) -> None:
    """tvcs: a content-addressed, git-like version store for PyTorch checkpoints.

    Commit checkpoint files (.pt, .ckpt, .safetensors, Hugging Face folders) and get them back
    bit-exactly; only tensors that changed take new space.
    """
    st = ctx.ensure_object(State)
    st.repo_path = repo_path
    st.debug = debug
    ctx.call_on_close(st.close)


def _register() -> None:
    from . import checkout, commit, dcp, diff, history, maintenance, refs, remote, setup

    for mod in (setup, commit, checkout, history, diff, refs, maintenance, dcp, remote):
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


_register()


def main(argv: list[str] | None = None) -> Any:
    """Entry point of the ``tvcs`` script."""
    return cli.main(argv, prog_name="tvcs")


__all__ = ["cli", "main"]
