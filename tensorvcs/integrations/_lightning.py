"""The Lightning integration, written once against the interfaces both ``lightning`` and
``pytorch_lightning`` share; ``lightning.py`` and ``pytorch_lightning.py`` bind these mixins
to each package's own ``CheckpointIO`` and ``Callback`` classes (the Trainer checks
``isinstance`` against its own package's classes).

Nothing here imports a Lightning package.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

import torch

from .. import history, maintenance
from ..errors import TensorVCSError, UsageError
from ..manager import DEFAULT_TAG, STATE_KEY, AsyncCommitter, CheckpointManager, plain_metrics
from ..refs import check_ref_name
from ..repo import Repo
from ..retention import Policy
from ..snapshot import plain_containers, snapshot
from .pointer import read_pointer as read_json_pointer
from .pointer import write_pointer

IO_MARKER = "tensorvcs.lightning"  # commit metadata key of checkpoints TVCSCheckpointIO wrote
POINTER_KIND = "tensorvcs-checkpoint-pointer"
_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\@{]")


# The background committers of this process's TVCSCheckpointIO and TVCSCheckpoint objects, by
# repository: before one of them commits, it lets the others' commits in flight finish, so
# commits reach a branch in the order they were saved. (A TVCSCheckpoint's synchronous commit
# at step 6 would otherwise land before TVCSCheckpointIO's asynchronous one of step 4, which
# then gets step 6 as its parent.)
_WRITERS: dict[str, weakref.WeakSet[AsyncCommitter]] = {}
_WRITERS_LOCK = threading.Lock()


def _register(repo: Repo, committer: AsyncCommitter) -> None:
    with _WRITERS_LOCK:
        _WRITERS.setdefault(str(repo.path), weakref.WeakSet()).add(committer)


def _after_others(repo: Repo, me: AsyncCommitter) -> None:
    """Wait until the commits in flight of the other writers on ``repo`` are done (their
    errors stay theirs to raise)."""
    with _WRITERS_LOCK:
        others = [c for c in _WRITERS.get(str(repo.path), ()) if c is not me]
    # their commits, not the delta re-encodings a manager may run after one (those stop
    # only for their own manager's next save, and may run beside this commit)
    pending = [f for c in others if (f := c.first_part) is not None]
    if pending:
        wait_futures(pending)


def _repo(repo: Repo | str | os.PathLike[str]) -> Repo:
    if isinstance(repo, Repo):
        return repo
    try:
        return Repo.open(repo)
    except TensorVCSError:
        return Repo.init(repo)


def _sanitize(part: str) -> str:
    part = _BAD_CHARS.sub("_", part).replace("..", "_")
    if part.startswith((".", "-")):
        part = "_" + part
    if part.endswith((".", ".lock")):
        part += "_"
    return part or "_"


def read_pointer(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The content of a pointer file ``TVCSCheckpointIO`` wrote at ``path``, or None when
    ``path`` is not one."""
    return read_json_pointer(path, POINTER_KIND, "tag")


def tag_for(repo: Repo, path: str | os.PathLike[str], prefix: str = "ckpt/") -> str:
    """See ``IOMixin.tag_for``."""
    p = Path(path)
    try:
        parts = p.resolve().relative_to(repo.root).with_suffix("").parts
    except ValueError:
        parts = (p.stem,)
    return check_ref_name(prefix + "/".join(_sanitize(x) for x in parts if x), "tag")


def resolve_checkpoint(repo: Repo, path: str | os.PathLike[str], prefix: str = "ckpt/") -> str:
    """See ``IOMixin.resolve``."""
    pointer = read_pointer(path)
    tag = pointer["tag"] if pointer else None
    if tag is None:
        try:
            tag = tag_for(repo, path, prefix)
        except UsageError:
            tag = None
    tags = repo.tags()
    if tag is not None and tag in tags:
        return tags[tag]
    if pointer is not None:
        raise FileNotFoundError(f"checkpoint {path} points at tag {tag!r}, which {repo.path} lacks")
    try:
        return repo.resolve(str(path))
    except TensorVCSError:
        raise FileNotFoundError(
            f"checkpoint not found: {path} (no pointer file, no tag {tag!r} in {repo.path}, "
            "and not a revision)"
        ) from None


class IOMixin:
    """The ``CheckpointIO`` methods of ``TVCSCheckpointIO`` (see lightning.py)."""

    def __init__(
        self,
        repo: Repo | str | os.PathLike[str],
        *,
        branch: str | None = None,
        tag_prefix: str = "ckpt/",
        pointer_files: bool = True,
        async_commit: bool = True,
        gc_every: int | None = 1,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__()
        self.repo = _repo(repo)
        if branch is not None:
            check_ref_name(branch, "branch")
        self.branch = branch
        self.tag_prefix = tag_prefix
        self.pointer_files = pointer_files
        self.gc_every = gc_every
        self.allow_pickle = allow_pickle
        self._committer = AsyncCommitter(async_commit, "tvcs-lightning-io")
        _register(self.repo, self._committer)
        self._last: tuple[list[Any], str] | None = None  # (signature, tag) of the last save
        self._drops_since_gc = 0
        self._forget: set[str] = set()  # commits dropped since the last gc

    # -- paths and refs ---------------------------------------------------------------------
    def tag_for(self, path: str | os.PathLike[str]) -> str:
        """The tag a checkpoint path maps to: ``tag_prefix`` + the path relative to the
        repository's working directory without its suffix (just the file name's stem for a
        path outside it), with characters tags cannot hold replaced by ``_``."""
        return tag_for(self.repo, path, self.tag_prefix)

    def resolve(self, path: str | os.PathLike[str]) -> str:
        """The commit a checkpoint path names: through its pointer file, the tag derived
        from it, or the path read as a revision (``"step-100"``, ``"best"``, a commit id).
        Raises FileNotFoundError when none of these exists."""
        return resolve_checkpoint(self.repo, path, self.tag_prefix)

    def _write_pointer(self, path: str | os.PathLike[str], tag: str) -> None:
        write_pointer(path, POINTER_KIND, repo=str(self.repo.root), tag=tag)

    # -- CheckpointIO ------------------------------------------------------------------------
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        """Commit ``checkpoint`` and tag it with the tag of ``path`` (moving the tag when the
        same path is saved again); write a small pointer file at ``path``.
        ``storage_options`` may be a dict with ``message``, ``metrics`` and ``metadata``."""
        opts = dict(storage_options or {}) if isinstance(storage_options, Mapping) else None
        if storage_options is not None and opts is None:
            raise TypeError(f"{type(self).__name__} takes storage_options as a dict or None")
        opts = opts or {}
        tag = self.tag_for(path)
        self._committer.wait()
        _after_others(self.repo, self._committer)
        sig = _signature(checkpoint)
        last, self._last = self._last, (sig, tag)
        prev = self.repo.tags().get(last[1]) if last is not None and last[0] == sig else None
        if prev is not None:
            # the same state saved again under another path (ModelCheckpoint's save_last
            # after a top-k save): tag the commit already made rather than commit it twice
            self._committer.submit(lambda: self._retag(path, tag, prev))
            return
        async_ = self._committer.async_commit
        payload = snapshot(checkpoint) if async_ else plain_containers(checkpoint)
        step = checkpoint.get("global_step")
        own = checkpoint.get(STATE_KEY)
        if isinstance(own, Mapping) and type(own.get("step")) is int:
            step = own["step"]
        metrics = _monitor_metrics(checkpoint)
        metrics.update(plain_metrics(opts.get("metrics")))
        metadata = dict(opts.get("metadata") or {})
        metadata[IO_MARKER] = {
            "path": str(path),
            "tag": tag,
            "epoch": checkpoint.get("epoch"),
            "weights_only": "optimizer_states" not in checkpoint,
        }
        message = opts.get("message") or f"lightning checkpoint {Path(path).name}"

        def commit() -> Any:
            c = self.repo.commit(
                payload,
                message,
                step=step if type(step) is int else None,
                metrics=metrics,
                metadata=metadata,
                branch=self.branch,
                allow_pickle=self.allow_pickle,
            )
            previous = self.repo.tags().get(tag)
            self.repo.tag(tag, c.id, force=True)
            # the pointer once the commit and its tag are durable: after a crash, a pointer
            # file always names a complete checkpoint (a half-done save leaves the old one)
            if self.pointer_files:
                self._write_pointer(path, tag)
            if previous is not None and previous != c.id:
                self._drop(previous)  # the path was overwritten: its old checkpoint is gone
            return c

        self._committer.submit(commit)

    def _retag(self, path: Any, tag: str, oid: str) -> str:
        previous = self.repo.tags().get(tag)
        self.repo.tag(tag, oid, force=True)
        if self.pointer_files:
            self._write_pointer(path, tag)
        if previous is not None and previous != oid:
            self._drop(previous)
        return oid

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """The checkpoint committed for ``path`` (see ``resolve``), as Lightning saved it."""
        self._committer.wait()
        if read_pointer(path) is None and Path(path).is_file():  # a plain torch.save file
            kwargs = {} if weights_only is None else {"weights_only": weights_only}
            return torch.load(path, map_location=map_location, **kwargs)
        oid = self.resolve(path)
        where = map_location if isinstance(map_location, (str, torch.device)) else None
        state = self.repo.checkout(
            oid, map_location=where, allow_pickle=self.allow_pickle and weights_only is not True
        )
        if not isinstance(state, dict):
            raise UsageError(f"commit {oid[:12]} is not a Lightning checkpoint")
        return state

    def remove_checkpoint(self, path: Any) -> None:
        """Delete the tag of ``path`` and its pointer file; drop the commit from the branch's
        history (so ``gc`` frees its bytes) unless another tag still names it."""
        self._committer.wait()
        pointer = read_pointer(path)
        try:
            tag = pointer["tag"] if pointer else self.tag_for(path)
        except UsageError:
            tag = None
        oid = self.repo.tags().get(tag) if tag else None
        if oid is not None:
            self.repo.delete_tag(tag)  # type: ignore[arg-type]
            self._drop(oid)
        if pointer is not None:
            Path(path).unlink(missing_ok=True)

    def _drop(self, oid: str) -> None:
        if oid in self.repo.tags().values():
            return  # another tag (another path, "best", a user's tag) still names it
        if IO_MARKER not in self.repo.get_commit(oid).metadata:
            return  # not a commit this plugin wrote
        try:
            mapping = history.drop(self.repo, [oid], branch=self.branch)
        except UsageError:
            return  # not on the branch's first-parent history: leave it
        self._forget.update(mapping)  # the user asked for it to go: its reflog entries too
        self._drops_since_gc += 1
        if self.gc_every and self._drops_since_gc >= self.gc_every:
            maintenance.gc(self.repo, prune="now", forget=self._forget)
            self._forget.clear()
            self._drops_since_gc = 0

    def teardown(self) -> None:
        """Wait for the commit in flight (its error is raised here)."""
        self._committer.close()


def _signature(checkpoint: Mapping[str, Any]) -> list[Any]:
    """What tells two saves of the same training state apart, cheaply: every value outside
    ``callbacks`` (ModelCheckpoint's own bookkeeping differs between the two saves), each
    tensor by its storage, offset, shape, dtype and version counter (which every in-place
    change bumps), nothing of its data read."""
    out: list[Any] = []

    def walk(v: Any, depth: int) -> None:
        if isinstance(v, torch.Tensor):
            out.append(
                (
                    v.untyped_storage().data_ptr(),
                    v.storage_offset(),
                    tuple(v.shape),
                    str(v.dtype),
                    v._version,
                )
            )
        elif depth < 64 and isinstance(v, Mapping):
            out.append(("{", len(v)))
            for k, x in v.items():
                out.append(repr(k))
                walk(x, depth + 1)
        elif depth < 64 and isinstance(v, (list, tuple)):
            out.append(("[", len(v)))
            for x in v:
                walk(x, depth + 1)
        else:
            out.append(repr(v))

    walk({k: v for k, v in checkpoint.items() if k != "callbacks"}, 0)
    return out


def _monitor_metrics(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """{monitor: current score} of every ModelCheckpoint state in ``checkpoint``."""
    out: dict[str, Any] = {}
    callbacks = checkpoint.get("callbacks")
    if not isinstance(callbacks, Mapping):
        return out
    for st in callbacks.values():
        if isinstance(st, Mapping) and isinstance(st.get("monitor"), str):
            score = st.get("current_score")
            if isinstance(score, torch.Tensor) and score.numel() == 1:
                out[st["monitor"]] = score.item()
            elif isinstance(score, (int, float)) and not isinstance(score, bool):
                out[st["monitor"]] = score
    return out


def _scalar_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[str(k)] = float(v.detach().item())
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[str(k)] = float(v)
    return out


class CallbackMixin:
    """The hooks of ``TVCSCheckpoint`` (see lightning.py)."""

    def __init__(
        self,
        repo: Repo | str | os.PathLike[str],
        every_n_steps: int | None = None,
        *,
        every_n_seconds: float | None = None,
        keep: Sequence[Policy] | None = None,
        save_weights_only: bool = False,
        async_commit: bool = True,
        branch: str | None = None,
        gc_every: int | None = 1,
        tag_format: str | None = DEFAULT_TAG,
        allow_pickle: bool = False,
    ) -> None:
        super().__init__()
        self.repo = _repo(repo)
        self.every_n_steps = every_n_steps
        self.save_weights_only = save_weights_only
        self.manager = CheckpointManager(
            self.repo,
            every_n_steps=every_n_steps,
            every_n_seconds=every_n_seconds,
            keep=keep,
            async_commit=async_commit,
            branch=branch,
            gc_every=gc_every,
            tag_format=tag_format,
            allow_pickle=allow_pickle,
        )
        self._restored_step: int | None = None
        _register(self.repo, self.manager._committer)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(  # type: ignore[attr-defined]
            every_n_steps=self.every_n_steps, branch=self.manager.branch
        )

    # -- state -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.manager.step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        step = state_dict.get("step")
        self._restored_step = step if type(step) is int else None

    # -- hooks -------------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.manager.watch(*trainer.optimizers)
        loaded = getattr(
            getattr(trainer, "_checkpoint_connector", None), "_loaded_checkpoint", None
        )
        step = self._restored_step
        if isinstance(loaded, dict) and loaded:
            own = loaded.get(STATE_KEY)
            if isinstance(own, Mapping) and type(own.get("step")) is int:
                step = own["step"]
            elif step is None and type(loaded.get("global_step")) is int:
                step = loaded["global_step"]
            self._complete_weights_only(trainer, loaded)
        if step is not None:
            self.manager.step = step
            self.manager._last_save_step = step
        if trainer.ckpt_path:  # a new branch forks at the commit the run resumed from
            with contextlib.suppress(FileNotFoundError):
                self.manager.restored_from = resolve_checkpoint(self.repo, trainer.ckpt_path)

    @staticmethod
    def _complete_weights_only(trainer: Any, loaded: dict[str, Any]) -> None:
        """Lightning raises KeyError('optimizer_states') when fit resumes a weights-only
        checkpoint: supply the fresh optimizers' and schedulers' own states instead."""
        missing = [k for k in ("optimizer_states", "lr_schedulers") if k not in loaded]
        if not missing:
            return
        warnings.warn(
            "resuming a weights-only checkpoint: the optimizers and LR schedulers start "
            "fresh (weights, epoch and step are restored)",
            stacklevel=2,
        )
        if "optimizer_states" in missing:
            loaded["optimizer_states"] = [
                trainer.strategy.optimizer_state(o) for o in trainer.optimizers
            ]
        if "lr_schedulers" in missing:
            loaded["lr_schedulers"] = [
                c.scheduler.state_dict() for c in trainer.lr_scheduler_configs
            ]

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        # a step taken after our on_train_batch_end (in the LightningModule's hook) lands here
        self._maybe_save(trainer)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._maybe_save(trainer)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self._maybe_save(trainer)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.manager.wait()

    def latest_ckpt_path(self) -> str | None:
        """The commit id of the newest complete checkpoint on this callback's branch
        (``CheckpointManager.latest``: never a tag a crash left pointing at an incomplete
        or dropped checkpoint), for ``trainer.fit(model, ckpt_path=...)`` with
        ``TVCSCheckpointIO`` in the plugins; None when there is none yet, and ``fit`` then
        starts fresh."""
        newest = self.manager.latest()
        return newest.commit if newest is not None else None

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self.manager.close()

    def _maybe_save(self, trainer: Any) -> None:
        self.manager._committer.check()
        if trainer.sanity_checking or not self.manager.should_save():
            return
        step = self.manager.step
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(self.save_weights_only)
        if trainer.is_global_zero:
            metrics = _scalar_metrics(trainer.callback_metrics)
            _after_others(self.repo, self.manager._committer)
            self.manager.save(checkpoint, step=step, metrics=metrics)
        else:
            self.manager._last_save_step = step
