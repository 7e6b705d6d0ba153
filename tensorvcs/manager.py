"""``CheckpointManager``: periodic, asynchronous, retention-managed checkpoints for any loop.

::

    mgr = tv.CheckpointManager(repo, every_n_steps=100,
                               keep=[tv.KeepLast(3), tv.KeepBest("val_loss")])
    mgr.watch(optimizer)               # counts real optimizer steps, wherever step() runs
    extra = mgr.restore(model=model, optimizer=optimizer, scheduler=scheduler, data=gen)
    for batch in loader:
        ...
        optimizer.step()
        mgr.maybe_save({"model": model, "optimizer": optimizer, "scheduler": scheduler,
                        "data": gen, "epoch": epoch}, metrics={"loss": loss})
    mgr.close()

Steps are counted with ``torch.optim.Optimizer.register_step_post_hook``, so a step taken
outside any training-step hook (Lightning manual optimization in ``on_train_batch_end``,
gradient accumulation, GradScaler skipping a step) is counted exactly when it happens.
Without a watched optimizer, each ``maybe_save`` call counts as one step, unless the call
gives the step (``maybe_save(..., step=n)``, or ``mgr.step = n`` since the previous call).
``maybe_save`` on a manager with neither ``every_n_steps`` nor ``every_n_seconds`` raises
``UsageError`` (it could never save; use ``save``).

A save waits only for a host snapshot (``tensorvcs.snapshot``): tensors copied to CPU memory,
the RNG states captured. Hashing, compression, writing, tagging, retention and gc then run in
one background thread, and after them the re-encoding of the previous checkpoint's chunks as
deltas (``compact_in_background``), which the next save stops between two chunks. At most one
commit is in flight: the next save first waits for it. An error in the background is raised
by the next call (``save``, ``maybe_save``, ``wait``, ``close``, ``restore``); a failed
re-encoding only warns (the checkpoints are complete without it).

Every checkpoint is a commit on ``branch`` (default: HEAD's branch) tagged ``step-<step>``
(``<branch>/step-<step>`` when a branch is given),
with commit metadata ``{"tensorvcs.manager": {...}}`` marking it as this kind of checkpoint.
The committed state is the state passed to ``save`` plus the key ``"_tvcs"``: ``{"step": int,
"rng": {python, numpy, torch, cuda}}``.

Resuming: ``mgr.restore(...)`` (no ``ref``) restores ``mgr.latest()``, the newest checkpoint in
the branch's history. A commit exists only once it is complete (objects → manifest → commit →
ref, each durable before the next) and its tag is written after that, so after a crash at any
point (a SIGKILL in the middle of a background commit, or of the retention pass after it) this
is the newest checkpoint that was completely written, whatever the tags say. Prefer it to the
tag of the step you expect to be the last one.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import history, maintenance
from .errors import LockTimeoutError, NotFoundError, UsageError
from .loading import LoadReport, load_state
from .refs import HEAD, HEADS, check_ref_name
from .retention import CheckpointInfo, KeepBest, Policy, select
from .revisions import Revision, rev_label
from .snapshot import capture_rng, restore_rng, snapshot

if TYPE_CHECKING:
    from .format.commit import Commit
    from .repo import Repo

__all__ = ["MARKER", "STATE_KEY", "AsyncCommitter", "CheckpointManager", "SavedCheckpoint"]

MARKER = "tensorvcs.manager"  # commit metadata key of checkpoints a manager wrote
STATE_KEY = "_tvcs"  # the manager's own entry in a committed state
DEFAULT_TAG = "step-{step}"
# background work (docs/integrations.md, "Background work"): its threads and their niceness
DEFAULT_BACKGROUND_THREADS = 1
DEFAULT_BACKGROUND_NICE = 10
MAX_NICE = 19
BACKGROUND_LOCK_TIMEOUT = 1.0  # background re-encodings wait this long for the locks, else later
BACKGROUND_LOCK_POLL = 0.05  # ... in tries this long, asking between them whether to stop
IDLE_CALLS_WARNING = 1000  # maybe_save calls with watched optimizers that never step: warn


def thread_niceness() -> int:
    """The calling thread's niceness (Linux schedules threads one by one; 0 elsewhere)."""
    if not sys.platform.startswith("linux"):
        return 0
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def lower_thread_priority(niceness: int | None) -> None:
    """Raise the calling thread's niceness to ``niceness`` (at most 19; a thread inherits the
    niceness of the thread that starts it, so this is a level, not an increment). Linux only:
    elsewhere, where it is lower already, or where the system refuses, it does nothing."""
    if niceness is None or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):  # not permitted here: run at the usual priority
        if os.getpriority(os.PRIO_PROCESS, tid) < niceness:
            os.setpriority(os.PRIO_PROCESS, tid, min(MAX_NICE, niceness))


class AsyncCommitter:
    """Runs jobs one at a time in a background thread (or inline when ``async_commit`` is
    false). ``submit`` waits for the previous job first; a job's exception is raised by the
    next ``submit``, ``check`` (only if already finished), ``wait`` or ``close``.
    ``niceness``: the background thread's (``lower_thread_priority``; None: as started).

    A job may have a second part, ``after(stopped)``: work that may be cut short (the
    manager's delta re-encodings). The future ``submit`` returns is done when the first part
    is; ``wait`` (and so the next ``submit``) asks the second part to stop (``stopped()``
    turns True) and waits for it to do so, unless ``finish=True``. Without a background
    thread (``async_commit=False``) there is no second part: ``after`` is not run."""

    def __init__(
        self, async_commit: bool = True, name: str = "tvcs-commit", niceness: int | None = None
    ) -> None:
        self.async_commit = async_commit
        self.name = name
        self.niceness = niceness
        self._executor: ThreadPoolExecutor | None = None
        self._future: Future[Any] | None = None  # the job in flight, both parts
        self._done: Future[Any] | None = None  # its first part (what submit returned)
        self._stop = threading.Event()  # asks that job's second part to stop (one per job)
        self.last_result: Any = None

    @property
    def busy(self) -> bool:
        return self._future is not None and not self._future.done()

    def check(self) -> None:
        """Raise the error of a background job that has already finished (never blocks)."""
        f = self._future
        if f is not None and f.done():
            self._future = None
            self.last_result = f.result()

    @property
    def first_part(self) -> Future[Any] | None:
        """The first part of the job in flight (done when its result is), or None."""
        return self._done if self._future is not None else None

    def wait(self, finish: bool = False) -> Any:
        """Wait for the job in flight; return its result or raise its error. Its second part
        is asked to stop first, unless ``finish``."""
        f, stop = self._future, self._stop
        if f is not None:
            self._future = None
            if not finish:
                stop.set()
            self.last_result = f.result()
        return self.last_result

    def submit(
        self, fn: Callable[[], Any], after: Callable[[Callable[[], bool]], None] | None = None
    ) -> Future[Any]:
        self.wait()
        if not self.async_commit:
            fut: Future[Any] = Future()
            fut.set_result(fn())
            self.last_result = fut.result()
            return fut
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                1,
                thread_name_prefix=self.name,
                initializer=lower_thread_priority,
                initargs=(self.niceness,),
            )
        done: Future[Any] = Future()
        stop = threading.Event()

        def job() -> Any:
            try:
                result = fn()
            except BaseException as err:
                done.set_exception(err)
                raise
            done.set_result(result)
            if after is not None:
                after(stop.is_set)
            return result

        self._stop, self._done = stop, done
        self._future = self._executor.submit(job)
        return done

    def close(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


@dataclass
class SavedCheckpoint:
    """What one ``save`` produced (filled in by the background commit)."""

    step: int
    commit: str  # the id at commit time; retention rewrites descendants (follow ``tag``)
    tag: str | None
    new_stored_bytes: int | None  # bytes of new tensor objects this commit wrote
    logical_bytes: int | None  # bytes of all its tensors
    seconds: float  # hashing + compression + writes (+ retention), in the background
    dropped: list[str]  # commits retention dropped after this save


def plain_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Metrics as plain numbers (one-element tensors and numpy scalars become Python numbers;
    other values are left for ``Repo.commit`` to refuse)."""
    out: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.detach().item()
        elif isinstance(v, np.generic):
            v = v.item()
        out[str(k)] = v
    return out


def _info(c: Commit) -> CheckpointInfo:
    return CheckpointInfo(c.id, c.step, c.datetime.timestamp(), dict(c.metrics))


def _is_factory(x: Any) -> bool:
    return callable(x) and not isinstance(x, Mapping) and not hasattr(x, "state_dict")


class CheckpointManager:
    """Periodic, asynchronous, retention-managed checkpoints of a training state (see the
    module docstring).

    Args:
        repo: the repository to commit into.
        every_n_steps: ``maybe_save`` saves when the step count crosses a multiple of it.
        every_n_seconds: ``maybe_save`` saves when this long has passed since the last save.
        keep: retention policies (``tv.KeepLast``, ``tv.KeepBest``, ``tv.KeepEvery``,
            ``tv.KeepNewerThan``, ...); a checkpoint is kept if any keeps it, and the newest
            is always kept. None: keep every checkpoint.
        async_commit: commit in a background thread (the loop waits only for a CPU copy).
        branch: the branch to commit to (default: HEAD's branch). A branch that does not
            exist yet starts at the commit ``restore`` resumed from (else at HEAD).
        gc_every: run ``repo.gc()`` after this many retention passes that dropped
            checkpoints (1: each time; None or 0: never, run gc yourself).
        tag_format: the tag of each checkpoint (``str.format`` with ``step``); None: no tag.
            The default is ``step-<step>``, or ``<branch>/step-<step>`` with ``branch``.
        save_rng: also store the global RNG states (restored by ``restore``).
        allow_pickle: store (and restore) values that are not tensors/containers/scalars as
            opaque pickles.
        background_threads: threads that hash, compress and write a background commit (its
            own pool, besides the thread that runs the commit). None: the repository's pool
            (``Repo.workers``, twice the cores). Few threads leave the cores to training.
        background_nice: niceness added to the background threads (Linux, per thread; at
            most 19), so that the scheduler prefers the training loop's threads. 0: none.
        defer_deltas: background commits leave the re-encoding of the parent checkpoint's
            chunks as deltas (a size optimisation, docs/format.md "reverse deltas") until
            the checkpoint is durable: the commit becomes durable sooner. Until the
            re-encoding is done the older checkpoint is stored whole; what any checkout or
            ``restore`` returns is the same either way.
        compact_in_background: with ``defer_deltas``, the background thread does that work
            right after each commit is durable (from the snapshot still in memory), so the
            repository stays as small as with deltas made in the commit; the next ``save``
            (or ``wait``, ``restore``, ``close``) stops it between chunks and leaves the rest
            for the next pass or ``compact()``. False: everything waits for ``compact()``
            or ``close()``, and every checkpoint of the run is stored whole until then.
    """

    def __init__(
        self,
        repo: Repo,
        *,
        every_n_steps: int | None = None,
        every_n_seconds: float | None = None,
        keep: Sequence[Policy] | None = None,
        async_commit: bool = True,
        branch: str | None = None,
        gc_every: int | None = 1,
        tag_format: str | None = DEFAULT_TAG,
        message: str = "checkpoint at step {step}",
        save_rng: bool = True,
        allow_pickle: bool = False,
        background_threads: int | None = DEFAULT_BACKGROUND_THREADS,
        background_nice: int = DEFAULT_BACKGROUND_NICE,
        defer_deltas: bool = True,
        compact_in_background: bool = True,
    ) -> None:
        if every_n_steps is not None and every_n_steps <= 0:
            raise UsageError(f"every_n_steps must be positive, not {every_n_steps}")
        if every_n_seconds is not None and every_n_seconds <= 0:
            raise UsageError(f"every_n_seconds must be positive, not {every_n_seconds}")
        for p in keep or []:
            if not isinstance(p, Policy):
                raise UsageError(f"keep= takes retention policies (tv.KeepLast(3), ...), not {p!r}")
        if branch is not None:
            check_ref_name(branch, "branch")
        if background_threads is not None and (
            type(background_threads) is not int or background_threads < 1
        ):
            raise UsageError(
                f"background_threads must be a positive int or None, not {background_threads!r}"
            )
        if type(background_nice) is not int or not 0 <= background_nice <= MAX_NICE:
            raise UsageError(
                f"background_nice must be an int from 0 to {MAX_NICE}, not {background_nice!r}"
            )
        if tag_format == DEFAULT_TAG and branch is not None:
            tag_format = f"{branch}/{DEFAULT_TAG}"  # runs on different branches: no clash
        if tag_format is not None:
            check_ref_name(tag_format.format(step=0), "tag")
        self.repo = repo
        self.every_n_steps = every_n_steps
        self.every_n_seconds = every_n_seconds
        self.keep = list(keep or [])
        self.branch = branch
        self.gc_every = gc_every
        self.tag_format = tag_format
        self.message = message
        self.save_rng = save_rng
        self.allow_pickle = allow_pickle
        self.background_threads = background_threads
        self.background_nice = background_nice
        self.defer_deltas = defer_deltas
        self.compact_in_background = compact_in_background
        self._pool: ThreadPoolExecutor | None = None  # background_threads threads
        self._deferred: list[tuple[str, str, int]] = []  # re-encodings left for compact()
        # the last background commit's chunks in memory for those re-encodings (views of its
        # snapshot, the parents' from the delta-base cache): dropped by the pass that uses them
        self._deferred_content: dict[str, np.ndarray] = {}
        self.saved: list[SavedCheckpoint] = []
        self.load_reports: dict[str, LoadReport] = {}
        self.restored_from: str | None = None
        # the background threads' niceness: this thread's (the loop's), plus background_nice
        self._niceness = min(MAX_NICE, thread_niceness() + background_nice)
        self._committer = AsyncCommitter(
            async_commit, "tvcs-checkpoint", self._niceness if background_nice else None
        )
        self._hooks: list[Any] = []
        self._counts: dict[int, int] = {}
        self._offset = 0
        self._last_save_step: int | None = None
        self._last_save_time = time.monotonic()
        self._drops_since_gc = 0
        self._forget: set[str] = set()  # commits dropped since the last gc
        self._lock = threading.Lock()
        self._step_given = False  # mgr.step assigned since the last maybe_save
        self._idle_calls = 0  # maybe_save calls while the watched optimizers never stepped

    # -- steps ------------------------------------------------------------------------------
    @property
    def step(self) -> int:
        """Steps so far: the most-stepped watched optimizer's count (without a watched
        optimizer, the ``maybe_save`` calls), plus the step restored from a checkpoint (or set
        by ``step=``/assignment)."""
        return self._offset + max(self._counts.values(), default=0)

    @step.setter
    def step(self, value: int) -> None:
        self._set_step(value)
        self._step_given = True  # the next maybe_save does not count a step of its own

    def _set_step(self, value: int) -> None:
        if type(value) is not int:
            raise UsageError(f"step must be an int, not {type(value).__name__}")
        self._offset = value - max(self._counts.values(), default=0)

    def watch(self, *optimizers: torch.optim.Optimizer) -> CheckpointManager:
        """Count the real steps of ``optimizers`` (a post-step hook on each; with several, the
        step is the largest count, so alternating GAN optimizers count once per round)."""
        for opt in optimizers:
            if not isinstance(opt, torch.optim.Optimizer):
                # LightningOptimizer and similar wrappers hold the real optimizer
                inner = getattr(opt, "optimizer", getattr(opt, "_optimizer", None))
                if not isinstance(inner, torch.optim.Optimizer):
                    raise UsageError(f"watch() takes torch optimizers, not {type(opt).__name__}")
                opt = inner
            key = id(opt)
            if key in self._counts:
                continue
            self._counts[key] = 0
            self._hooks.append(opt.register_step_post_hook(self._make_hook(key)))
        return self

    def _make_hook(self, key: int) -> Callable[..., None]:
        def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
            self._counts[key] += 1

        return hook

    def unwatch(self) -> None:
        """Remove the step hooks (the step count is kept)."""
        base = self.step
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._counts.clear()
        self._offset = base

    def should_save(self, step: int | None = None) -> bool:
        """Whether a step- or time-based save is due at ``step`` (default: ``self.step``)."""
        s = self.step if step is None else step
        last = self._last_save_step if self._last_save_step is not None else 0
        n = self.every_n_steps
        if n and s > last and s // n > last // n:
            return True
        t = self.every_n_seconds
        return bool(t and time.monotonic() - self._last_save_time >= t)

    # -- saving -----------------------------------------------------------------------------
    def maybe_save(
        self,
        state: Any,
        *,
        step: int | None = None,
        metrics: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Save if a save is due (or ``force``). ``state`` may be a callable returning the
        state, called only when saving; so may ``metrics``. Returns whether it saved.

        Call it once per training step. The step is the watched optimizers' count
        (``watch``); without a watched optimizer, this call counts one step, unless it is
        given: ``step=n`` here, or ``mgr.step = n`` since the previous call. Raises
        ``UsageError`` when the manager has neither ``every_n_steps`` nor
        ``every_n_seconds`` (no save could ever be due) and ``force`` is false."""
        self._committer.check()
        if not (force or self.every_n_steps or self.every_n_seconds):
            raise UsageError(
                "maybe_save() can never save: this CheckpointManager has neither every_n_steps= "
                "nor every_n_seconds=. Pass one of them, call save() to save now, or pass "
                "force=True"
            )
        if step is not None:
            self._set_step(step)
        elif not self._counts and not self._step_given:
            self._offset += 1  # no optimizer watched: each call is one step
        elif self._counts:
            self._check_watched_optimizers_step()
        self._step_given = False
        if not (force or self.should_save()):
            return False
        if _is_factory(state):
            state = state()
        if callable(metrics):
            metrics = metrics()
        self.save(state, metrics=metrics, metadata=metadata)
        return True

    def _check_watched_optimizers_step(self) -> None:
        """Warn once when the watched optimizers have not stepped in many ``maybe_save`` calls
        (an optimizer other than the one stepped was watched: no step-based save would come)."""
        if any(self._counts.values()):
            self._idle_calls = 0
            return
        self._idle_calls += 1
        if self._idle_calls == IDLE_CALLS_WARNING:
            warnings.warn(
                f"CheckpointManager: maybe_save() was called {IDLE_CALLS_WARNING} times and "
                "no watched optimizer has taken a step, so no step-based save is due. Watch "
                "the optimizer whose step() the loop calls (mgr.watch(optimizer)), or pass "
                "maybe_save(..., step=n)",
                stacklevel=3,
            )

    def save(
        self,
        state: Mapping[str, Any],
        *,
        step: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        message: str | None = None,
        tags: Sequence[str] = (),
        copy: bool = True,
    ) -> Future[Commit]:
        """Checkpoint ``state`` now. Live objects in it (modules, optimizers, schedulers,
        generators) are replaced by their state. Returns a future of the commit (already
        done when ``async_commit`` is false). ``copy=False`` skips the snapshot: only for a
        state nothing else will modify (one freshly loaded from files)."""
        self._committer.check()
        if step is not None:
            self._set_step(step)
        step = self.step
        if not isinstance(state, Mapping):
            raise UsageError(f"save() takes a dict of state, not {type(state).__name__}")
        if STATE_KEY in state:
            raise UsageError(f"the key {STATE_KEY!r} is reserved for the checkpoint manager")
        for t in tags:
            check_ref_name(t, "tag")
        self._committer.wait()  # at most one commit in flight, and one host copy
        payload = snapshot(state) if copy else dict(state)
        own: dict[str, Any] = {"step": step}
        if self.save_rng:
            own["rng"] = capture_rng()
        payload[STATE_KEY] = own
        plain = plain_metrics(metrics)
        self._last_save_step = step
        self._last_save_time = time.monotonic()
        msg = (message or self.message).format(step=step)
        meta = dict(metadata or {})
        after = self._compact_after if self._compacts_after() else None
        return self._committer.submit(
            lambda: self._commit(payload, step, plain, meta, msg, list(tags)), after
        )

    def _commit(
        self,
        payload: dict[str, Any],
        step: int,
        metrics: dict[str, Any],
        metadata: dict[str, Any],
        message: str,
        tags: list[str],
    ) -> Commit:
        t0 = time.perf_counter()
        tag = self.tag_format.format(step=step) if self.tag_format else None
        metadata[MARKER] = {"version": 1, "tag": tag}
        if (
            self.branch is not None
            and self.restored_from is not None
            and self.branch not in self.repo.branches()
        ):  # a new branch for a resumed run starts at the commit it resumed from
            self.repo.branch(self.branch, self.restored_from)
        c = self.repo.commit(
            payload,
            message,
            step=step,
            metrics=metrics,
            metadata=metadata,
            branch=self.branch,
            allow_pickle=self.allow_pickle,
            owned=True,  # a snapshot (or a state the caller promised not to modify)
            pool=self._background_pool(),
            defer_deltas=self._background() and self.defer_deltas,
        )
        stats = getattr(self.repo, "last_write_stats", None)
        # the snapshot's chunks in memory, for the second part of this job only: handed to
        # it once the rest succeeded (a failed job has no second part to let them go)
        content: dict[str, np.ndarray] = {}
        if stats is not None:
            if self._compacts_after():
                content = stats.deferred_content
            stats.deferred_content = {}
        with self._lock:
            self._deferred.extend(getattr(stats, "deferred", None) or [])
        # repo.commit has returned: the commit and the branch are durable. Only now are the
        # tags written, so a tag never names a checkpoint that a crash left incomplete.
        for name in ([tag] if tag else []) + tags:
            self.repo.tag(name, c.id, force=True)
        rec = SavedCheckpoint(
            step=step,
            commit=c.id,
            tag=tag,
            new_stored_bytes=getattr(stats, "new_stored_bytes", None),
            logical_bytes=getattr(stats, "logical_bytes", None),
            seconds=0.0,
            dropped=[],
        )
        with self._lock:
            self.saved.append(rec)
        rec.dropped = self.apply_retention()
        rec.seconds = time.perf_counter() - t0
        with self._lock:
            self._deferred_content = content
        return c

    def _background(self) -> bool:
        return self._committer.async_commit

    def _compacts_after(self) -> bool:
        return self._background() and self.defer_deltas and self.compact_in_background

    def _compact_after(self, stopped: Callable[[], bool]) -> None:
        """The second part of a background commit (``compact_in_background``): the
        re-encodings it deferred, and any an earlier pass left, from the chunks in memory
        where it has them. ``stopped()`` turns True when the loop wants the thread back (a
        save, a wait): the items not begun go back to the list. A failure leaves them there
        too (for ``compact()``), with a warning: the checkpoints are complete without it."""
        with self._lock:
            items, self._deferred = self._deferred, []
            contents, self._deferred_content = self._deferred_content, {}
        # the last commit's items first, while their chunks are in memory; an earlier pass's
        # leftovers (read back from the store) after them, so a backlog cannot starve them
        items = [i for i in items if i[1] in contents] + [i for i in items if i[1] not in contents]
        back = items  # what goes back to the list unless the pass ran to its end or stop
        try:
            if items and not stopped():
                left: list[tuple[str, str, int]] = []
                self._apply_when_unlocked(items, contents, stopped, left)
                back = left
        except LockTimeoutError:  # a compaction or gc elsewhere: its business, or later
            pass
        except Exception as err:  # a size optimisation must not stop a training run
            warnings.warn(
                f"CheckpointManager: re-encoding older checkpoints as deltas in the "
                f"background failed ({type(err).__name__}: {err}); compact() will retry",
                stacklevel=1,
            )
        finally:
            del contents
            with self._lock:
                self._deferred[:0] = back

    def _apply_when_unlocked(
        self,
        items: list[tuple[str, str, int]],
        contents: dict[str, Any],
        stopped: Callable[[], bool],
        left: list[tuple[str, str, int]],
    ) -> None:
        """``apply_deferred_deltas`` once the gc and compaction locks are free, within
        BACKGROUND_LOCK_TIMEOUT; it waits in short tries and gives up as soon as ``stopped()``
        (LockTimeoutError), so a save never waits for a pass that waits for a lock. The
        locks are taken before any item begins, so a try that times out did nothing."""
        deadline = time.monotonic() + BACKGROUND_LOCK_TIMEOUT
        while True:
            wait = max(0.0, min(BACKGROUND_LOCK_POLL, deadline - time.monotonic()))
            try:
                self.repo.apply_deferred_deltas(
                    items, self._background_pool(), contents=contents, stop=stopped,
                    left=left, timeout=wait,
                )
                return
            except LockTimeoutError:
                if stopped() or time.monotonic() >= deadline:
                    raise

    def _background_pool(self) -> ThreadPoolExecutor | None:
        """The background commit's own pool (None: the repository's)."""
        if self.background_threads is None or not self._background():
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.background_threads,
                thread_name_prefix="tvcs-background",
                initializer=lower_thread_priority,
                initargs=(self._niceness if self.background_nice else None,),
            )
        return self._pool

    @property
    def deferred(self) -> int:
        """Delta re-encodings background commits left undone (for the next background pass,
        or ``compact()``)."""
        with self._lock:
            return len(self._deferred)

    def compact(self) -> int:
        """Do the work background commits deferred (``defer_deltas``): re-encode the older
        checkpoints' chunks as deltas against the newer ones, now, in this thread, on the
        repository's pool. Call it when the loop pauses (evaluation, the end of an epoch);
        ``close()`` calls it. Checkpoints that retention dropped meanwhile cost nothing.
        Returns the chunks re-encoded. Nothing reads differently before or after: resuming
        never depends on it (after a crash the chunks simply stay whole, until
        ``tv.compact(repo)`` / ``tvcs compact`` finds the work in the history)."""
        self._committer.wait()
        with self._lock:
            items, self._deferred = self._deferred, []
            self._deferred_content = {}  # a commit that failed after its write left it
        return self.repo.apply_deferred_deltas(items) if items else 0

    def wait(self, compaction: bool = False) -> Commit | None:
        """Wait for the commit in flight; return the last commit (raise its error). The
        background re-encodings after it (``compact_in_background``) are stopped between
        chunks, or, with ``compaction=True``, waited for."""
        return self._committer.wait(finish=compaction)

    def close(self) -> None:
        """Wait for the commit in flight, do the deferred work (``compact``), remove the step
        hooks, stop the threads."""
        try:
            self._committer.close()
            self.compact()
        finally:
            self.unwatch()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> CheckpointManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- history and retention --------------------------------------------------------------
    def _tip(self) -> str | None:
        if self.branch is not None:
            return self.repo.refs.read(HEADS + self.branch)
        return self.repo.refs.read(HEAD)

    def _history(self, tip: str | None = None) -> Iterator[Commit]:
        """The first-parent history of ``tip`` (default: the branch's), newest first."""
        oid = self._tip() if tip is None else tip
        while oid:
            c = self.repo.get_commit(oid)
            yield c
            oid = c.parents[0] if c.parents else None

    def checkpoints(self) -> list[CheckpointInfo]:
        """The checkpoints a manager committed on the branch (its first-parent history, so
        earlier runs' too), oldest first. Retention chooses among these; other commits
        (yours, TVCSCheckpointIO's) are left alone."""
        out = [_info(c) for c in self._history() if MARKER in c.metadata]
        out.reverse()
        return out

    def latest(self) -> CheckpointInfo | None:
        """The newest complete checkpoint: the manager checkpoint nearest the tip of the
        branch's first-parent history (``.commit`` is its id, ``.step`` its step), or None
        when the branch has none. This is what ``restore()`` resumes from.

        It first waits for the commit in flight (raising its error). It never goes by tags: a
        commit exists only once it is complete (objects → manifest → commit → ref, each
        durable before the next), so after a crash at any point, a SIGKILL in the middle of a
        background commit or of the retention pass after it included, this is the newest
        checkpoint that was completely written."""
        self._committer.wait()
        return next((_info(c) for c in self._history() if MARKER in c.metadata), None)

    def apply_retention(self) -> list[str]:
        """Drop the checkpoints no policy keeps (``Repo.drop``), move the ``best`` tags, and
        gc every ``gc_every`` drops. Returns the dropped commit ids. Runs after every save;
        call it yourself after changing ``keep``. A checkpoint that carries a tag the manager
        did not make is never dropped."""
        if not self.keep:
            return []
        infos = self.checkpoints()
        self._repair_tags([c.commit for c in infos])
        kept = select(infos, self.keep, time.time())
        by_commit: dict[str, list[str]] = {}
        for name, oid in self.repo.tags().items():
            by_commit.setdefault(oid, []).append(name)
        best_tags = {p.tag for p in self.keep if isinstance(p, KeepBest) and p.tag}
        for c in infos:
            own = {self.repo.get_commit(c.commit).metadata[MARKER].get("tag")} | best_tags
            if any(t not in own for t in by_commit.get(c.commit, [])):
                kept.add(c.commit)  # someone tagged it: not ours to drop
        survivors = [c for c in infos if c.commit in kept]
        for p in self.keep:
            if isinstance(p, KeepBest) and p.tag and p.k > 0:
                best = p.best(survivors)
                if best is not None and self.repo.tags().get(p.tag) != best.commit:
                    self.repo.tag(p.tag, best.commit, force=True)
        drop = [c.commit for c in infos if c.commit not in kept]
        if not drop:
            return []
        mapping = history.drop(self.repo, drop, branch=self.branch)
        with self._lock:
            for rec in self.saved:
                new = mapping.get(rec.commit)
                if new is not None:
                    rec.commit = new
        self._reclaim(mapping)
        return drop

    def _reclaim(self, mapping: Mapping[str, str | None]) -> None:
        """Every ``gc_every`` drops, reclaim what retention dropped: the dropped and rewritten
        commits' reflog entries go (the user asked for them to go) and gc prunes at once.
        Everything else keeps git's protection (reflogs, two weeks for unreachable objects)."""
        self._forget.update(mapping)
        self._drops_since_gc += 1
        if self.gc_every and self._drops_since_gc >= self.gc_every:
            maintenance.gc(self.repo, prune="now", forget=self._forget)
            self._forget.clear()
            self._drops_since_gc = 0

    def _repair_tags(self, on_branch: Sequence[str], *, create: Sequence[str] = ()) -> None:
        """Point the own tag (``step-<step>``) of each checkpoint in ``on_branch`` (the
        branch's) back at it where it names an earlier copy of the same checkpoint that is
        off the branch (same manifest and step: what a crash in the middle of retention's
        drop can leave, the branch rewritten and the tags not yet moved); for those in
        ``create``, also write the tag if it is missing (a crash after the commit, before its
        tag). A tag naming anything else is left alone."""
        members = set(on_branch)
        tags = self.repo.tags()
        for oid in on_branch:
            c = self.repo.get_commit(oid)
            name = c.metadata.get(MARKER, {}).get("tag")
            current = tags.get(name) if name else None
            if not name or current == oid:
                continue
            if current is None:
                if oid not in create:
                    continue
            elif current in members or not self._same_checkpoint(current, c):
                continue
            self.repo.tag(name, oid, force=True)
            tags[name] = oid

    def _same_checkpoint(self, oid: str, c: Commit) -> bool:
        """Whether ``oid`` is a copy of the manager checkpoint ``c`` (a rewritten one)."""
        try:
            other = self.repo.get_commit(oid)
        except NotFoundError:
            return False
        return (
            MARKER in other.metadata
            and other.manifest == c.manifest
            and other.step == c.step
            and other.metadata[MARKER].get("tag") == c.metadata[MARKER].get("tag")
        )

    def _on_branch(self, oid: str) -> str:
        """``oid``, or when it is a manager checkpoint off the branch's history that the
        branch holds a copy of (its tag survived an interrupted drop), the copy."""
        c = self.repo.get_commit(oid)
        if MARKER not in c.metadata:
            return oid
        tip = self._tip() or self.repo.refs.read(HEAD)
        history = list(self._history(tip)) if tip else []
        if any(h.id == oid for h in history):
            return oid
        copy = next((h.id for h in history if self._same_checkpoint(h.id, c)), None)
        return copy or oid

    # -- restoring --------------------------------------------------------------------------
    def restore(
        self,
        model: torch.nn.Module | None = None,
        optimizer: Any = None,
        scheduler: Any = None,
        *,
        ref: Revision | None = None,
        strict: bool = True,
        map_location: str | torch.device | None = None,
        rng: bool = True,
        **objects: Any,
    ) -> dict[str, Any] | None:
        """Resume from ``ref`` (default: ``latest()``, the newest complete checkpoint in the
        branch's history, whatever the tags say): load ``model`` (strict:
        missing/unexpected/mismatched keys raise ``tv.LoadError``), ``optimizer``,
        ``scheduler`` and every other named object (``data=generator``, ``scaler=...``: the
        state saved under that key; anything with ``load_state_dict``, or a
        ``torch.Generator``), set the step, and restore the RNG states. A checkpoint without
        optimizer or scheduler state (weights only) leaves them as they are, with a warning.
        Returns the rest of the saved state (your own keys), or None when there is nothing
        to restore yet.

        A ``ref`` naming a manager checkpoint off the branch's history of which the branch
        holds a copy (a tag a crash during retention left behind) resumes from that copy. When
        the checkpoint resumed from has lost its ``step-<step>`` tag (a crash after its
        commit, before its tag), the tag is written again."""
        self._committer.wait()
        if ref is None:
            newest = self.latest()
            if newest is None:
                return None
            oid = newest.commit
            self._repair_tags([oid], create=[oid])
        else:
            oid = self._on_branch(self.repo.resolve(ref))
        commit = self.repo.get_commit(oid)
        state = self.repo.checkout(oid, map_location=map_location, allow_pickle=self.allow_pickle)
        if not isinstance(state, dict):
            raise UsageError(f"commit {oid[:12]} holds a {type(state).__name__}, not a dict")
        own = state.pop(STATE_KEY, None) or {}
        source = f"{'latest checkpoint' if ref is None else rev_label(ref)} ({oid[:12]})"
        targets = {"model": model, "optimizer": optimizer, "scheduler": scheduler, **objects}
        self.load_reports = {}
        for name, obj in targets.items():
            if obj is None:
                continue
            if name not in state:
                if name == "model" or (strict and name not in ("optimizer", "scheduler")):
                    raise NotFoundError(f"checkpoint {source} has no {name!r} state")
                warnings.warn(
                    f"checkpoint {source} has no {name!r} state (weights-only?): "
                    f"{name} keeps its current state",
                    stacklevel=2,
                )
                continue
            self._load_object(name, obj, state.pop(name), strict, source)
        step = own.get("step", commit.step)
        self._set_step(int(step) if step is not None else 0)
        self._step_given = False  # the next maybe_save follows a step taken after restore
        self._last_save_step = self.step
        self._last_save_time = time.monotonic()
        if rng and own.get("rng"):
            restore_rng(own["rng"])
        self.restored_from = oid
        return state

    def _load_object(self, name: str, obj: Any, value: Any, strict: bool, source: str) -> None:
        if isinstance(obj, torch.nn.Module):
            if not isinstance(value, Mapping):
                raise UsageError(f"{name!r} of {source} is not a state dict")
            self.load_reports[name] = load_state(
                obj, value, strict=strict, required=None, source=f"{source} key {name!r}"
            )
        elif isinstance(obj, torch.Generator):
            obj.set_state(value)
        elif callable(getattr(obj, "load_state_dict", None)):
            obj.load_state_dict(value)
        else:
            raise UsageError(
                f"cannot restore {name!r} into a {type(obj).__name__}: it has no load_state_dict"
            )
