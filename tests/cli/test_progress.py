"""Progress bars (issue 12 item 9): phases in order on a terminal, bars that end at their
total, nothing but the normal output in a pipe or with --json; the writer's callbacks."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tensorvcs import Repo
from tensorvcs.cli._util import human_size
from tensorvcs.cli.progress import CountingFile, Progress

from .clihelp import assert_same

TVCS = Path(sys.executable).parent / "tvcs"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PHASE = re.compile(r"^(hashing|encoding|reading|writing|syncing)\s")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TVCS_REPO", "TVCS_DEBUG")}
    env.update(COLUMNS="120", TERM="xterm")
    return env


def in_terminal(args: list[str], cwd: Path, raw: list[str] | None = None
                ) -> tuple[int, str, list[str]]:
    """Run the tvcs script with stderr on a pseudo-terminal (stdout a pipe): exit code,
    stdout, and the lines drawn on the terminal (escape sequences removed; a line redrawn
    in place counts once per drawing). ``raw`` receives what the terminal got, as it came."""
    master, slave = pty.openpty()
    p = subprocess.Popen(
        [str(TVCS), *args], cwd=cwd, env=_env(), stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    out, _ = p.communicate(timeout=300)
    reader.join(timeout=60)
    os.close(master)
    got = b"".join(chunks).decode("utf-8", "replace")
    if raw is not None:
        raw.append(got)
    text = ANSI.sub("", got)
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return p.returncode, out.decode(), lines


class Opaque:
    """A class weights_only refuses to unpickle."""


def first_seen(lines: list[str]) -> list[str]:
    """The phases in the order they first appear."""
    order: list[str] = []
    for ln in lines:
        m = PHASE.match(ln)
        if m and m.group(1) not in order:
            order.append(m.group(1))
    return order


def last_line(lines: list[str], phase: str) -> str:
    return [ln for ln in lines if ln.startswith(phase + " ")][-1]


@pytest.fixture
def big(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor], int]:
    """A repository with a torch file of 32 MiB of tensors (and a small one) in it."""
    subprocess.run([str(TVCS), "init"], cwd=tmp_path, env=_env(), check=True,
                   capture_output=True)
    g = torch.Generator().manual_seed(0)
    state = {f"l{i}.weight": torch.randn(1024, 1024, generator=g) for i in range(8)}
    state["bias"] = torch.randn(100, generator=g)
    torch.save(state, tmp_path / "big.pt")
    return tmp_path, state, sum(t.numel() * t.element_size() for t in state.values())


def test_commit_and_checkout_in_a_terminal(big: tuple[Path, dict[str, torch.Tensor], int]) -> None:
    root, state, tensor_bytes = big
    size = (root / "big.pt").stat().st_size
    code, out, lines = in_terminal(["commit", "big.pt", "-m", "first"], root)
    assert code == 0, lines
    assert re.fullmatch(r"\[main [0-9a-f]{12}\] first\n 1 file\(s\), 32\.0 MiB; .* new in the "
                        r"store\n", out)
    assert first_seen(lines) == ["hashing", "encoding", "syncing"]
    # each bar's last drawing is complete, with its exact total (IEC units as everywhere)
    hashing, encoding, syncing = (last_line(lines, p) for p in ("hashing", "encoding", "syncing"))
    assert f"100.0% {human_size(size)} / {human_size(size)}" in hashing
    assert f"100.0% {human_size(tensor_bytes)} / {human_size(tensor_bytes)}" in encoding
    assert re.search(r"[0-9.]+ (B|KiB|MiB|GiB)/s", encoding)  # the rate
    assert re.search(r"done\s+[0-9.]+ s$", syncing)  # no byte count, and it finished
    # while the bytes were going, a drawing showed the time left
    assert any(ln.startswith("encoding") and "eta" in ln for ln in lines)

    code, out, lines = in_terminal(["checkout", "HEAD", "big.pt", "-o", "out.pt"], root)
    assert code == 0, lines
    assert out == f"wrote out.pt ({human_size((root / 'out.pt').stat().st_size)}, pt)\n" \
        "checked out 1 file(s) from " + out.split()[-1] + "\n"
    assert first_seen(lines) == ["reading", "writing", "syncing"]
    reading = last_line(lines, "reading")
    assert f"100.0% {human_size(tensor_bytes)} / {human_size(tensor_bytes)}" in reading
    written = human_size((root / "out.pt").stat().st_size)
    assert f"100.0% {written} / {written}" in last_line(lines, "writing")
    assert all(last_line(lines, p).endswith(" out.pt") for p in ("reading", "writing"))
    assert_same(torch.load(root / "out.pt", weights_only=True), state)


def test_pipes_and_json_get_no_bars(big: tuple[Path, dict[str, torch.Tensor], int]) -> None:
    root, _, _ = big
    p = subprocess.run([str(TVCS), "commit", "big.pt", "-m", "piped"], cwd=root, env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0
    assert p.stderr == ""  # not a terminal: nothing but the normal output
    assert re.fullmatch(r"\[main [0-9a-f]{12}\] piped\n 1 file\(s\), 32\.0 MiB; .*\n", p.stdout)
    # --json on a terminal: the JSON document alone, no bar
    code, out, lines = in_terminal(["checkout", "HEAD", "big.pt", "-o", "o.pt", "--json"], root)
    assert code == 0
    assert lines == []
    assert json.loads(out)["files"][0]["dest"].endswith("o.pt")


def test_notes_and_errors_while_bars_show(big: tuple[Path, dict[str, torch.Tensor], int]
                                          ) -> None:
    """A note printed while the bars run is a whole line of its own; an error ends the bars
    and gives the cursor back (rich hides it while drawing)."""
    root, _, _ = big
    (root / "junk.bin").write_bytes(os.urandom(100_000))
    code, out, lines = in_terminal(["commit", "big.pt", "junk.bin", "-m", "two"], root)
    assert code == 0, lines
    assert "tvcs: note: junk.bin: not a torch checkpoint: stored as opaque bytes" in lines
    assert first_seen(lines) == ["hashing", "encoding", "syncing"]
    total = human_size(sum(t.numel() * t.element_size() for t in big[1].values()) + 100_000)
    assert f"100.0% {total} / {total}" in last_line(lines, "encoding")

    torch.save({"w": torch.zeros(1 << 20), "x": Opaque()}, root / "unsafe.pt")
    raw: list[str] = []
    code, out, lines = in_terminal(["commit", "unsafe.pt", "-m", "no"], root, raw)
    assert code == 7 and out == ""
    errors = [ln for ln in lines if ln.startswith("tvcs: error:")]
    assert len(errors) == 1 and "unsafe.pt" in errors[0] and "--unsafe-pickle" in errors[0]
    assert raw[0].rfind("\x1b[?25h") > raw[0].rfind("\x1b[?25l") >= 0  # cursor shown again
    assert not any("Traceback" in ln for ln in lines)


def test_progress_phases_grow_and_end_complete() -> None:
    buf = io.StringIO()
    p = Progress(enabled=True, min_interval=0.0, file=buf, width=100)
    p.start("hashing", 3 << 20)
    for _ in range(3):
        p.update(1 << 20)
    p.phase("encoding", 0)
    p.phase("encoding", 1 << 20)  # the same phase: its total grows
    p.phase("encoding", 1 << 20)
    CountingFile(io.BytesIO(), p.update).write(b"\0" * (2 << 20))
    p.phase("syncing")
    p.finish()
    assert p.phases == ["hashing", "encoding", "syncing"]
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", ANSI.sub("", buf.getvalue()))]
    final = [ln for ln in lines if ln][-3:]
    assert final[0].startswith("hashing") and "100.0% 3.0 MiB / 3.0 MiB" in final[0]
    assert final[1].startswith("encoding") and "100.0% 2.0 MiB / 2.0 MiB" in final[1]
    assert final[2].startswith("syncing") and "done" in final[2]

    # a narrow terminal: shorter bars, no file name, never a wrapped line
    narrow = io.StringIO()
    p = Progress(enabled=True, min_interval=0.0, file=narrow, width=60)
    p.subject = "some/folder/with/a/long/name/model.safetensors"
    p.start("writing", 5 << 30)
    p.update(5 << 30)
    p.finish()
    final = [ln for ln in re.split(r"[\r\n]+", ANSI.sub("", narrow.getvalue())) if ln.strip()]
    assert final[-1].startswith("writing") and "100.0% 5.0 GiB / 5.0 GiB" in final[-1]
    assert all(len(ln) <= 60 and "model" not in ln for ln in final)
    wide = io.StringIO()
    p = Progress(enabled=True, min_interval=0.0, file=wide, width=110)
    p.subject = "some/folder/with/a/long/name/model.safetensors"
    p.start("writing", 10)
    p.update(10)
    p.finish()
    last = [ln for ln in re.split(r"[\r\n]+", ANSI.sub("", wide.getvalue())) if ln.strip()][-1]
    assert "100.0% 10 B / 10 B" in last and len(last.rstrip()) <= 110
    assert last.rstrip().endswith(" …/name/model.safetensors")  # the end of the path is kept

    quiet = io.StringIO()
    q = Progress(enabled=False, file=quiet)
    q.start("x", 10)
    q.update(5)
    q.phase("syncing")
    q.finish()
    assert quiet.getvalue() == "" and q.phases == []
    assert Progress().enabled is False  # stderr is not a terminal under pytest


sizes = st.lists(st.sampled_from([0, 4, 100, 3000, 5000, 20_000, 70_000]), min_size=1,
                 max_size=8)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(first=sizes, second=sizes, repeat=st.booleans())
def test_writer_reports_every_byte_once(tmp_path_factory: pytest.TempPathFactory,
                                        first: list[int], second: list[int],
                                        repeat: bool) -> None:
    """on_phase('encoding', total) with the tensors' bytes, on_bytes adding up to it exactly
    (chunks, packs, tensors stored before or repeated in the commit), then 'syncing'."""
    r = Repo.init(tmp_path_factory.mktemp("r"), chunk_size=16384, pack_threshold=4096)
    g = torch.Generator().manual_seed(len(first) * 31 + len(second))
    states = []
    for n in (first, second):
        state = {f"t{i}": torch.randn(k // 4, generator=g) for i, k in enumerate(n)}
        if repeat:
            state["again"] = next(iter(state.values())).clone()  # the same bytes twice
        states.append(state)
    for state in (states[0], states[0], states[1]):  # the second: every object stored before
        events: list[tuple[str, int]] = []
        done: list[int] = []
        lock = threading.Lock()

        def on_bytes(k: int, done: list[int] = done, lock: threading.Lock = lock) -> None:
            with lock:
                done.append(k)

        def on_phase(name: str, total: int, events: list[tuple[str, int]] = events) -> None:
            events.append((name, total))

        r.commit(state, "x", on_bytes=on_bytes, on_phase=on_phase)
        total = sum(t.numel() * t.element_size() for t in state.values())
        assert events == [("encoding", total), ("syncing", 0)]
        assert sum(done) == total
    r.close()
