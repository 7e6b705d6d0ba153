"""A CLI that answers at once (issue 12, item 7): ``tvcs --help``, ``--version``, ``log``,
``show`` and ``ls`` never import torch; bare ``tvcs`` lists the verbs; long output goes through
a pager only on a terminal. Everything runs the real ``tvcs`` script in subprocesses."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tensorvcs import Repo
from tensorvcs.cli import MODULES, SECTIONS, VERBS, cli

TVCS = Path(sys.executable).parent / "tvcs"
CMD = [str(TVCS)] if TVCS.exists() else [sys.executable, "-m", "tensorvcs.cli"]


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("startup")
    with Repo.init(d) as r:
        r.commit({"w": torch.arange(6, dtype=torch.float32)}, "first", step=1)
        r.commit({"w": torch.arange(6, dtype=torch.float32) * 2}, "second", step=2)
        r.tag("v1")
    return d


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TVCS_REPO", "TVCS_DEBUG")}
    for k in ("TVCS_PAGER", "PAGER", "LESS"):
        env.pop(k, None)
    env.update(extra)
    return env


def _imported(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run the tvcs script under ``python -X importtime``: its result and the modules it
    imported."""
    script = [str(TVCS)] if TVCS.exists() else ["-m", "tensorvcs.cli"]
    p = subprocess.run(
        [sys.executable, "-X", "importtime", *script, *args],
        cwd=cwd, env=_env(), text=True, capture_output=True, timeout=120,
    )
    mods = set()
    for line in p.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            mods.add(line.rsplit("|", 1)[1].strip())
    return p, mods


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["log"], ["log", "--oneline"], ["log", "--json"], [],
     ["show"], ["ls", "--stats"]],
)
def test_fast_paths_do_not_import_torch(repo_dir: Path, args: list[str]) -> None:
    p, mods = _imported(args, repo_dir)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "tensorvcs.cli" in mods and "click" in mods  # the listing is real
    assert not {m for m in mods if m == "torch" or m.startswith("torch.")}
    if args and args[0] == "log":
        assert "second" in p.stdout and "first" in p.stdout
    if args == ["show"]:  # the manifest is read and validated
        assert "second" in p.stdout and "1 tensor(s), 24 B" in p.stdout
    if args and args[0] == "ls":
        assert p.stdout.splitlines()[1].split()[:3] == ["w", "float32", "[6]"]
    if args == ["--version"]:
        assert p.stdout == "tvcs 0.1.0\n"


def test_bare_tvcs_lists_the_verbs(repo_dir: Path) -> None:
    p = subprocess.run(CMD, cwd=repo_dir, env=_env(), text=True, capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stderr == ""
    assert p.stdout.startswith("Usage: tvcs [OPTIONS] COMMAND [ARGS]...")
    for title, verbs in SECTIONS.items():
        assert f"\n{title}:\n" in p.stdout
        for verb, (_, summary) in verbs.items():
            assert any(
                line.split() and line.split()[0] == verb and summary[:20] in line
                for line in p.stdout.splitlines()
            ), verb
    assert p.stdout == subprocess.run(
        [*CMD, "--help"], cwd=repo_dir, env=_env(), text=True, capture_output=True, timeout=60
    ).stdout


def test_verb_table_matches_the_modules() -> None:
    """Every verb a module defines is in the table of `tvcs --help` (and under the module
    the table names); every verb in the table exists."""
    import importlib

    defined = {}
    for module in MODULES:
        for cmd in importlib.import_module(f"tensorvcs.cli.{module}").COMMANDS:
            defined[cmd.name] = module
    assert {v: m for v, (m, _) in VERBS.items()} == defined
    cli.load_all()
    assert sorted(cli.commands) == sorted(defined)
    assert all(len(s) <= 60 and s.endswith(".") for _, s in VERBS.values())


def _run_on_tty(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, str]:
    """Run tvcs with stdout on a pseudo-terminal: (exit code, what reached the terminal,
    stderr)."""
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen(
            [*CMD, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave,
            stderr=subprocess.PIPE, text=True,
        )
        os.close(slave)
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not data:
                break
            chunks.append(data)
        _, err = p.communicate(timeout=60)
    finally:
        os.close(master)
    return p.returncode, b"".join(chunks).decode(errors="replace").replace("\r\n", "\n"), err


def test_pager_on_a_terminal(repo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "paged.txt"
    less = tmp_path / "less.txt"
    pager = f'printf %s "$LESS" > {less}; cat > {out}'
    code, screen, err = _run_on_tty(["log"], repo_dir, _env(TVCS_PAGER=pager))
    assert (code, err) == (0, "")
    text = out.read_text()
    assert "second" in text and "first" in text
    assert "\x1b[33mcommit " in text  # colours go to the pager (less -R shows them)
    assert "commit" not in screen  # everything went through the pager
    assert less.read_text() == "FRX"

    # $PAGER when $TVCS_PAGER is not set; $LESS is left as the user has it
    out.unlink()
    code, screen, _ = _run_on_tty(["ls"], repo_dir, _env(PAGER=f"cat > {out}", LESS="S"))
    assert code == 0 and "w" in out.read_text() and screen == ""

    # --no-pager, an empty TVCS_PAGER, or a verb that is not paged: straight to the terminal
    for args, env in (
        (["--no-pager", "log"], _env(TVCS_PAGER=f"cat > {out}")),
        (["log"], _env(TVCS_PAGER="", PAGER=f"cat > {out}")),
        (["branch"], _env(TVCS_PAGER=f"cat > {out}")),
    ):
        out.unlink(missing_ok=True)
        code, screen, err = _run_on_tty(args, repo_dir, env)
        assert (code, err) == (0, ""), args
        assert not out.exists(), args
        assert ("second" in screen) if "log" in args else ("main" in screen)


def test_no_pager_when_stdout_is_not_a_terminal(repo_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "paged.txt"
    p = subprocess.run(
        [*CMD, "log", "--oneline"], cwd=repo_dir, env=_env(TVCS_PAGER=f"cat > {out}"),
        text=True, capture_output=True, timeout=60,
    )
    assert p.returncode == 0 and not out.exists()
    assert [line.split("  ")[-1] for line in p.stdout.splitlines()] == ["second", "first"]
    assert "\x1b[" not in p.stdout


def test_closed_stdout_is_quiet(repo_dir: Path) -> None:
    """`tvcs log | head`: a reader that went away ends tvcs quietly (exit 1, click's rule for
    a broken pipe), with no error and no traceback."""
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run(
            [*CMD, "log"], cwd=repo_dir, env=_env(), stdout=w, stderr=subprocess.PIPE,
            text=True, timeout=60,
        )
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (1, "")
