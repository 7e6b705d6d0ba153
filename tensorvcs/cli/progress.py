"""Progress bars of the CLI: phases of byte work (hashing, encoding, writing, syncing...) drawn
with rich on stderr, one line per phase, only when stderr is a terminal.

Each line shows the phase, a bar, the percentage, bytes done / total (IEC units, as every size
the CLI prints), the rate and the time left (the time taken once the phase is over). A phase
that has no byte count (``syncing``: the fsyncs and renames after the last byte is written)
shows a moving bar and the time it has run, so no bar sits at 100% while work goes on.

``update`` is called from the writer's pool threads, once per finished chunk: it adds to a
counter under a lock and hands the count to rich at most every ``min_interval`` seconds (the
first count of a phase at once, drawn: every counted phase shows its rate and time left).
rich is imported only when a bar is drawn (``tvcs --help`` and pipes never pay for it)."""

from __future__ import annotations

import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any

from . import _util
from ._util import human_size

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

SYNCING = "syncing"  # the phase after the last byte: fsync of objects and folders, renames


def stderr_isatty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _columns(width: int) -> list[Any]:
    from rich.progress import BarColumn, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.table import Column
    from rich.text import Text

    class Percent(ProgressColumn):
        def render(self, task: Any) -> Text:
            if not task.fields.get("counted", True):
                return Text("  done" if task.finished else "      ")
            return Text(f"{min(task.percentage, 100.0):5.1f}%")

    class Bytes(ProgressColumn):
        def render(self, task: Any) -> Text:
            if not task.fields.get("counted", True):
                return Text("")
            return Text(f"{human_size(task.completed)} / {human_size(task.total)}")

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.speed
            if task.finished and task.finished_time:  # the phase's average, once it is over
                speed = task.completed / task.finished_time
            if not task.fields.get("counted", True) or speed is None:
                return Text("")
            return Text(f"{human_size(speed)}/s")

    class Time(ProgressColumn):
        """'eta 0:00:12' while a counted phase runs, else the time it has taken."""

        remaining = TimeRemainingColumn()

        def render(self, task: Any) -> Text:
            if task.finished or not task.fields.get("counted", True):
                secs = task.finished_time if task.finished else task.elapsed
                return Text(f"{secs or 0.0:.1f} s")
            return Text("eta ") + self.remaining.render(task)

    class Subject(ProgressColumn):
        """The file a line is about; a long path keeps its end (the file name)."""

        room = 0

        def render(self, task: Any) -> Text:
            subject = str(task.fields.get("subject", ""))
            if len(subject) > self.room:
                subject = "…" + subject[-(self.room - 1) :]
            return Text(subject)

    def fixed() -> Column:  # never wrapped
        return Column(no_wrap=True)

    # about 80 cells without the subject: a narrower terminal gets a shorter bar, and the
    # subject (a file name) only the room left, cut with an ellipsis
    columns = [
        TextColumn("{task.description:<9}", table_column=fixed()),
        BarColumn(bar_width=24 if width >= 90 else 10),
        Percent(table_column=fixed()),
        Bytes(table_column=fixed()),
        Rate(table_column=fixed()),
        Time(table_column=fixed()),
    ]
    if width >= 100:
        subject = Subject(table_column=Column(no_wrap=True, overflow="crop"))
        subject.room = width - 86
        columns.append(subject)
    return columns


class Progress:
    """Phased byte progress on stderr (see the module docstring).

    ``start(label, total)`` begins a phase: the previous one's line is left complete.
    ``phase(name, total)`` is ``start`` for a new name; for the phase already running it adds
    ``total`` to it (a second producer of the same work: the importer's blobs, then the
    writer's tensors). ``total=0`` is a phase without a byte count. ``finish()`` ends the
    display. Disabled (stderr is not a terminal, or ``--json``), every call returns at once."""

    def __init__(
        self,
        enabled: bool | None = None,
        min_interval: float = 0.05,
        file: IO[str] | None = None,
        width: int | None = None,
    ) -> None:
        if enabled is None:
            enabled = stderr_isatty()
        self.enabled = enabled
        self.min_interval = min_interval
        self._file = file
        self._width = width
        self._lock = threading.Lock()
        self._rich: RichProgress | None = None
        self._task: TaskID | None = None
        self.label = ""
        self.total = 0
        self.done = 0
        self.phases: list[str] = []  # every phase started, in order
        self.subject = ""  # shown at the end of the phases started from now on (a file name)
        self._last = 0.0

    # -- the display ---------------------------------------------------------------------
    def _display(self) -> RichProgress:
        if self._rich is None:
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            console = Console(
                file=self._file or sys.stderr, force_terminal=True, width=self._width
            )
            # what is written to sys.stderr while the bars show goes above them (notes: through
            # _util.NOTE_SINK); stdout is left alone (rich would send it to stderr)
            self._rich = RichProgress(
                *_columns(console.width), console=console, refresh_per_second=10,
                speed_estimate_period=5.0, redirect_stdout=False, redirect_stderr=True,
            )
            self._rich.start()
            _util.NOTE_SINK.append(self._print)
        return self._rich

    def _print(self, line: str) -> None:
        """A line above the bars (a note: click.echo would write through them)."""
        if self._rich is not None:
            self._rich.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def _close_task(self) -> None:
        """Leave the running phase's line complete: done / total, bar full when it has one."""
        if self._rich is None or self._task is None:
            return
        if self.total:
            self._rich.update(self._task, total=max(self.total, self.done), completed=self.done)
        else:  # a phase without a byte count: a full bar, 'done' and its time
            self._rich.update(self._task, total=1, completed=1)
        self._task = None

    # -- the interface the importer and the writer call ------------------------------------
    def start(self, label: str, total: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._close_task()
            self.label, self.total, self.done = label, max(0, int(total)), 0
            self.phases.append(label)
            rich = self._display()
            self._task = rich.add_task(
                label, total=self.total or None, counted=bool(self.total), subject=self.subject
            )
            self._last = time.monotonic()
            rich.refresh()  # a short phase shows too

    def phase(self, name: str, total: int = 0) -> None:
        if not self.enabled:
            return
        if name == self.label and self._task is not None:
            self.grow(total)
        else:
            self.start(name, total)

    def grow(self, n: int) -> None:
        """Add ``n`` bytes to the running phase's total."""
        if not self.enabled or n <= 0:
            return
        with self._lock:
            if self._rich is None or self._task is None:
                return
            self.total += n
            self._rich.update(self._task, total=self.total, counted=True)

    def update(self, n: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            if self._rich is None or self._task is None:
                return
            first = self.done == 0
            self.done += n
            now = time.monotonic()
            if not first and now - self._last < self.min_interval:
                return
            self._last = now
            self._rich.update(self._task, completed=self.done)
            if first:  # the first bytes of a phase are drawn at once: its rate and time left
                self._rich.refresh()  # show even when the phase ends before the next refresh

    def finish(self) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._close_task()
            if self._rich is not None:
                self._rich.stop()  # the last render stays: every phase's final line
                self._rich = None
                if self._print in _util.NOTE_SINK:
                    _util.NOTE_SINK.remove(self._print)
            self.label = ""


class CountingFile:
    """A binary file wrapper that reports each write's size to ``on_write`` (the output of a
    torch.save, whose bytes no other counter sees)."""

    def __init__(self, fp: IO[bytes], on_write: Any) -> None:
        self.fp = fp
        self.on_write = on_write

    def write(self, data: Any) -> int:
        n = self.fp.write(data)
        self.on_write(memoryview(data).nbytes)
        return n

    def flush(self) -> None:
        self.fp.flush()
