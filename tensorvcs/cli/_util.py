"""Shared helpers of the CLI: the repository in use, output (sizes, tables, bars, JSON), the
pager, and argument parsing (progress bars: cli/progress.py).

Nothing here imports torch (or the repository module) at import time: ``tvcs --help`` and
``tvcs --version`` load only click and this package's errors."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import UsageError

if TYPE_CHECKING:
    from ..repo import Repo

ENV_REPO = "TVCS_REPO"
ENV_PAGER = "TVCS_PAGER"


@dataclass
class State:
    """The CLI's per-invocation state (``ctx.obj``)."""

    repo_path: str | None = None
    debug: bool = False
    _repo: Repo | None = field(default=None, repr=False)

    def repo(self) -> Repo:
        if self._repo is None:
            from ..repo import Repo

            r = Repo.open(self.repo_path) if self.repo_path else Repo.discover()
            # A CLI process makes one commit: the delta-base cache (which keeps a copy of every
            # chunk for the *next* commit of the same process) would only cost memory.
            cache = getattr(r, "base_cache", None)
            if cache is not None and hasattr(cache, "budget"):
                cache.budget = 0
            self._repo = r
        return self._repo

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None


def state() -> State:
    ctx = click.get_current_context()
    obj = ctx.find_object(State)
    if obj is None:
        obj = ctx.ensure_object(State)
    return obj


def repo() -> Repo:
    return state().repo()


# -- formatting ------------------------------------------------------------------------------
# Sizes are printed in IEC binary multiples (KiB = 1024 B ...) everywhere; parse_size takes both
# conventions, spelled as they are defined: SI (kB or KB = 1000 B, MB, GB, TB, PB) and IEC
# (KiB = 1024 B, MiB, GiB, TiB, PiB). A bare prefix (4M, 64k) means 10^6 to some tools and 2^20
# to others, so it is refused with the two spellings, never guessed.
IEC_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
SIZE_UNITS: dict[str, int] = {"": 1, "B": 1, "kB": 10**3, "KB": 10**3}
for _i, _p in enumerate("KMGTP", 1):
    SIZE_UNITS[f"{_p}iB"] = 1 << (10 * _i)
    SIZE_UNITS[f"{_p}i"] = 1 << (10 * _i)
    if _p != "K":
        SIZE_UNITS[f"{_p}B"] = 10 ** (3 * _i)


def human_size(n: float | int | None) -> str:
    """``n`` bytes in IEC units: '512 B', '1.5 KiB', '3.0 GiB' (one decimal)."""
    if n is None:
        return "-"
    n = float(n)
    for unit in IEC_UNITS:
        if abs(n) < 1024 or unit == IEC_UNITS[-1]:
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def ratio(a: float, b: float) -> str:
    if b <= 0:
        return "-"
    return f"{a / b:.2f}x"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*$")


def _spellings(num: str, prefix: str) -> str:
    p = prefix.upper()
    si, iec = ("kB" if p == "K" else f"{p}B"), f"{p}iB"
    value = float(num)
    a, b = value * SIZE_UNITS[si], value * SIZE_UNITS[iec]
    return f"{num}{si} ({a:,.0f} bytes) or {num}{iec} ({b:,.0f} bytes)"


def parse_size(text: str) -> int:
    """A size in bytes: plain bytes ('4194304'), SI ('4MB' = 4,000,000; 'kB'/'KB' = 1000) or
    IEC ('4MiB' = 4,194,304; 'Mi' alone too). A fraction is rounded to the nearest byte
    ('1.5KiB' = 1536). Refused, with a one-line reason: a bare prefix ('4M', '64k': ambiguous),
    other spellings ('4mb', '4Kib', 'lots')."""
    m = _SIZE.match(text)
    if not m:
        raise click.BadParameter(f"not a size: {text!r} (e.g. 4194304, 4MiB, 4MB, 64KiB)")
    num, unit = m.group(1), m.group(2)
    if unit in SIZE_UNITS:
        value = Fraction(num) * SIZE_UNITS[unit]  # exact: 295149PB is 295149 * 10**15
        if SIZE_UNITS[unit] == 1 and value.denominator != 1:
            raise click.BadParameter(f"not a whole number of bytes: {text!r}")
        return round(value)
    if unit and unit.upper() in "KMGTP" and len(unit) == 1:
        raise click.BadParameter(
            f"ambiguous size {text.strip()!r}: write {_spellings(num, unit)}"
        )
    key = unit.lower()
    if len(key) in (2, 3) and key[0] in "kmgtp" and key[1:] in ("b", "ib", "i"):
        raise click.BadParameter(
            f"size {text.strip()!r}: unknown unit {unit!r}; write {_spellings(num, key[0])}"
        )
    raise click.BadParameter(f"not a size: {text!r} (units: B, kB, MB, GB, KiB, MiB, GiB, ...)")


BLOCKS = " ▏▎▍▌▋▊▉█"


def bar(fraction: float, width: int) -> str:
    """A bar of unicode block characters, ``fraction`` (0..1) of ``width`` cells, padded."""
    if not math.isfinite(fraction):
        fraction = 1.0 if fraction > 0 else 0.0
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    if fraction > 0 and eighths == 0:
        eighths = 1  # anything non-zero shows
    full, rest = divmod(eighths, 8)
    s = "█" * full + (BLOCKS[rest] if rest else "")
    return s.ljust(width)


def table(rows: Sequence[Sequence[str]], headers: Sequence[str], right: Sequence[int] = ()) -> str:
    """A plain text table; columns whose index is in ``right`` are right-aligned."""
    cols = len(headers)
    widths = [len(h) for h in headers]
    for r in rows:
        for i in range(cols):
            widths[i] = max(widths[i], len(r[i]))
    out = []
    for r in [headers, *rows]:
        cells = []
        for i in range(cols):
            cells.append(r[i].rjust(widths[i]) if i in right else r[i].ljust(widths[i]))
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


JSON_SCHEMA_VERSION = 1


def echo_json(obj: dict[str, Any]) -> None:
    """Print one ``--json`` document: an object that starts with ``"schema": 1`` (the versioned
    shape docs/cli.md describes; tensorvcs/cli/schemas.py has each command's schema). NaN and
    infinities print as null."""
    doc = {"schema": JSON_SCHEMA_VERSION, **_finite(obj)}
    click.echo(json.dumps(doc, indent=2, ensure_ascii=False, default=_json_default))


def _finite(v: Any, leaf: Callable[[Any], Any] = lambda x: x) -> Any:
    """``v`` with NaN/inf as None, dict keys as strings, tuples as lists; ``leaf`` maps every
    other value."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _finite(x, leaf) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x, leaf) for x in v]
    return leaf(v)


def ref_json(r: Any) -> dict[str, list[dict[str, Any]]]:
    """{commit id: [{"name": "main", "kind": "branch", "head": true}, ...]}: the refs that
    point at each commit as ``--json`` prints them (kind: branch, tag or head, the last for a
    detached HEAD)."""
    out: dict[str, list[dict[str, Any]]] = {}
    current, head = r.head()
    if head is not None and current is None:
        out.setdefault(head, []).append({"name": "HEAD", "kind": "head", "head": True})
    for name, oid in r.branches().items():
        out.setdefault(oid, []).append({"name": name, "kind": "branch", "head": name == current})
    for name, oid in r.tags().items():
        out.setdefault(oid, []).append({"name": name, "kind": "tag", "head": False})
    return out


def _json_default(o: Any) -> Any:
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, bytes):
        return o.hex()
    return repr(o)


def json_safe(v: Any) -> Any:
    """Metrics and metadata as JSON values (NaN/inf become null, anything else not JSON its
    repr)."""
    return _finite(v, _json_scalar)


def _json_scalar(x: Any) -> Any:
    return x if x is None or isinstance(x, (bool, int, float, str)) else repr(x)


# while progress bars show (cli/progress.py), notes are printed above them through this
NOTE_SINK: list[Callable[[str], None]] = []


def note(text: str) -> None:
    line = f"tvcs: note: {text}"
    if NOTE_SINK:
        NOTE_SINK[-1](line)
    else:
        click.echo(line, err=True)


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def fmt_metrics(m: dict[str, Any]) -> str:
    return " ".join(f"{k}={fmt_value(v)}" for k, v in m.items())


def short(oid: str | None, n: int = 12) -> str:
    return oid[:n] if oid else "-"


def rel_to_root(root: Path, p: str) -> str:
    """A path given on the command line as a '/'-separated path relative to the repo root."""
    ap = Path(os.path.abspath(p))
    try:
        return ap.relative_to(root.resolve()).as_posix()
    except ValueError:
        raise UsageError(f"{p}: outside the repository at {root}") from None


# -- pager -----------------------------------------------------------------------------------
DEFAULT_PAGER = "less"
DEFAULT_LESS = "FRX"  # quit if one screen (-F), pass colours (-R), keep the screen (-X)


def pager_command() -> str | None:
    """The pager to run (a shell command line), or None for none: ``$TVCS_PAGER``, else
    ``$PAGER``, else ``less`` (when installed). An empty value or ``cat`` means no pager."""
    for var in (ENV_PAGER, "PAGER"):
        if var in os.environ:
            cmd = os.environ[var].strip()
            return None if cmd in ("", "cat") else cmd
    return DEFAULT_PAGER if shutil.which(DEFAULT_PAGER) else None


def _stdout_isatty() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def start_pager() -> Callable[[], None] | None:
    """When stdout is a terminal and a pager is configured, send this process's stdout (file
    descriptor 1) through the pager, as git does; returns the function that ends it (flush,
    give stdout back, wait until the pager quits), or None when nothing was started.

    ``less`` gets ``LESS=FRX`` unless ``$LESS`` is set: output of one screen is printed as it
    is, without the pager taking the screen."""
    if not _stdout_isatty():
        return None
    cmd = pager_command()
    if cmd is None:
        return None
    env = dict(os.environ)
    env.setdefault("LESS", DEFAULT_LESS)
    env.setdefault("LV", "-c")
    try:
        argv = shlex.split(cmd)
    except ValueError:
        argv = []
    shell_syntax = any(c in cmd for c in "|&;<>()$`'\"\\")
    if not shell_syntax and (not argv or shutil.which(argv[0]) is None):
        return None  # a plain command that is not installed: print without a pager
    sys.stdout.flush()
    try:
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.PIPE, env=env)
    except OSError:
        return None
    assert proc.stdin is not None
    saved = os.dup(1)
    os.dup2(proc.stdin.fileno(), 1)
    proc.stdin.close()

    def stop() -> None:
        try:
            sys.stdout.flush()
        except OSError:  # the pager was quit before the end (q): drop what is left
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.close(null)
            with contextlib.suppress(OSError):
                sys.stdout.flush()
        os.dup2(saved, 1)  # the pager sees the end of its input

        os.close(saved)
        try:
            proc.wait()
        except KeyboardInterrupt:  # pragma: no cover - ^C while the pager shows
            proc.wait()

    return stop


# -- completion ------------------------------------------------------------------------------
def complete_rev(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion for revisions: HEAD, branches and tags."""
    try:
        from ..repo import Repo

        obj = ctx.find_root().params.get("repo_path") or os.environ.get(ENV_REPO)
        r = Repo.open(obj) if obj else Repo.discover()

        names = ["HEAD", *r.branches(), *r.tags()]
        r.close()
    except Exception:
        return []
    return [click.shell_completion.CompletionItem(n) for n in names if n.startswith(incomplete)]
