"""Hugging Face integration: commit checkpoint folders (``Trainer``'s ``checkpoint-N``, a
PEFT adapter, a ``save_pretrained`` folder) and check them out again.

::

    from transformers import Trainer, TrainingArguments
    import tensorvcs as tv
    from tensorvcs.integrations.transformers import TVCSTrainerCallback, checkout_to_dir

    repo = tv.Repo.init("run")
    cb = TVCSTrainerCallback(repo, keep=[tv.KeepLast(2), tv.KeepBest("eval_loss")])
    trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb])
    trainer.train()
    # later: resume from the newest complete checkpoint (None when there is none yet)
    trainer.train(resume_from_checkpoint=cb.checkout_latest("resume/"))
    # or from any tag or commit
    trainer.train(resume_from_checkpoint=checkout_to_dir(repo, "step-400", "resume/"))

A folder is committed as the state ``{"files": {relative path: entry}}``, each entry one of:

- ``{"format": "safetensors", "tensors": {name: tensor}, "metadata": {str: str} | None}``
  for ``*.safetensors`` (model weights, PEFT adapters): tensors are stored by content, so a
  frozen base costs nothing after the first commit;
- ``{"format": "torch", "value": ...}`` for ``*.pt``/``*.pth``/``*.bin`` files that
  ``torch.load(weights_only=True)`` reads (optimizer, scheduler, RNG states, scaler);
- ``{"format": "bytes", "data": bytes}`` for everything else, stored as is: JSON
  (``trainer_state.json``, ``config.json``, ``adapter_config.json``), tokenizer files, and
  pickles such as ``training_args.bin``, which are never unpickled.

``checkout_to_dir`` writes the files back: JSON and other byte files bit for bit, tensors bit
for bit inside freshly written ``.safetensors`` / ``torch.save`` files.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover - transformers missing
    raise ImportError(
        "tensorvcs.integrations.transformers needs `transformers`: "
        "pip install 'tensorvcs[integrations]'"
    ) from e

from ..errors import UnsupportedValueError, UsageError
from ..format import values
from ..format.commit import Commit
from ..io.torch_file import rng_safe_globals
from ..manager import DEFAULT_TAG, CheckpointManager
from ..repo import Repo
from ..retention import Policy
from ..state.encode import CommitHooks

__all__ = ["TVCSTrainerCallback", "checkout_to_dir", "commit_dir", "dir_state"]

FILES_KEY = "files"
MARKER = "tensorvcs.transformers"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
NEVER_UNPICKLE = ("training_args.bin",)  # a pickled TrainingArguments: kept as bytes


def _encodable(value: Any) -> bool:
    try:
        values.encode(value, CommitHooks(False, lambda b: ""))
    except UnsupportedValueError:
        return False
    return True


def _read_file(path: Path) -> dict[str, Any]:
    name = path.name
    if name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata()
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        return {"format": "safetensors", "tensors": tensors, "metadata": meta}
    if name.endswith(TORCH_SUFFIXES) and name not in NEVER_UNPICKLE:
        try:
            with rng_safe_globals():
                value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # not a weights-only torch file: keep its bytes
            value = None
        else:
            if _encodable(value):
                return {"format": "torch", "value": value}
    return {"format": "bytes", "data": path.read_bytes()}


def dir_state(path: str | os.PathLike[str], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """The state ``commit_dir`` commits for the folder ``path`` (see the module doc); file
    names matching an ``exclude`` glob (on the relative path) are left out."""
    import fnmatch

    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    pats = list(exclude)
    files: dict[str, Any] = {}
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if any(fnmatch.fnmatchcase(rel, g) for g in pats):
            continue
        files[rel] = _read_file(p)
    return {FILES_KEY: files}


def commit_dir(
    repo: Repo,
    path: str | os.PathLike[str],
    message: str | None = None,
    *,
    step: int | None = None,
    metrics: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    branch: str | None = None,
    tags: Sequence[str] = (),
    exclude: Iterable[str] = (),
) -> Commit:
    """Commit the checkpoint folder ``path`` (a Trainer ``checkpoint-N`` folder, a PEFT
    adapter folder, any ``save_pretrained`` output) and tag it with ``tags``."""
    state = dir_state(path, exclude)
    meta = {MARKER: {"dir": Path(path).name}, **dict(metadata or {})}
    c = repo.commit(
        state,
        message or f"folder {Path(path).name}",
        step=step,
        metrics=metrics,
        metadata=meta,
        branch=branch,
    )
    for t in tags:
        repo.tag(t, c.id, force=True)
    return c


def checkout_to_dir(
    repo: Repo, rev: str, path: str | os.PathLike[str], *, overwrite: bool = True
) -> str:
    """Write the folder committed at ``rev`` into ``path`` (created if needed) and return
    ``path`` as a string, ready for ``trainer.train(resume_from_checkpoint=...)``,
    ``from_pretrained`` or ``PeftModel.from_pretrained``."""
    from safetensors.torch import save_file

    state = repo.checkout(rev)
    files = state.get(FILES_KEY) if isinstance(state, Mapping) else None
    if not isinstance(files, Mapping):
        raise UsageError(f"{rev} is not a committed folder (no {FILES_KEY!r} key)")
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    for rel, entry in files.items():
        target = (root / rel).resolve()
        if root.resolve() not in target.parents:
            raise UsageError(f"refusing to write {rel!r} outside {root}")
        if target.exists() and not overwrite:
            raise UsageError(f"{target} exists (pass overwrite=True)")
        target.parent.mkdir(parents=True, exist_ok=True)
        fmt = entry.get("format")
        tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
        if fmt == "safetensors":
            tensors = {k: v.contiguous() for k, v in entry["tensors"].items()}
            save_file(tensors, str(tmp), metadata=entry.get("metadata"))
        elif fmt == "torch":
            torch.save(entry["value"], tmp)
        elif fmt == "bytes":
            tmp.write_bytes(entry["data"])
        else:
            raise UsageError(f"{rel!r} at {rev}: unknown file format {fmt!r}")
        os.replace(tmp, target)
    return str(root)


def _metrics_at(state: Any) -> dict[str, float]:
    """The numbers the Trainer logged at the current step (loss, eval_loss, ...)."""
    out: dict[str, float] = {}
    for entry in getattr(state, "log_history", None) or []:
        if entry.get("step") != state.global_step:
            continue
        for k, v in entry.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out[k] = float(v)
    if isinstance(getattr(state, "best_metric", None), (int, float)):
        out.setdefault("best_metric", float(state.best_metric))
    return out


class TVCSTrainerCallback(TrainerCallback):
    """Commit every checkpoint folder the Trainer saves (``on_save``), tagged
    ``step-<global_step>``, with the metrics logged at that step, in a background thread,
    under the retention policies ``keep``.

    Args:
        repo: the repository (or the path of its working directory; created if absent).
        keep: retention policies (``tv.KeepLast(2)``, ``tv.KeepBest("eval_loss")``...).
        async_commit: commit in a background thread after the files are read.
        branch: the branch to commit to (default: HEAD's branch).
        gc_every: gc after this many retention passes that dropped checkpoints.
        tag_format: the tag of each checkpoint (``step`` is the global step; default
            ``step-<step>``, or ``<branch>/step-<step>`` with ``branch``).
        exclude: globs of file names in the folder not to commit.
        delete_dirs: delete each checkpoint folder once it is committed (the store is then
            the only copy; resume with ``checkout_to_dir``).
    """

    def __init__(
        self,
        repo: Repo | str | os.PathLike[str],
        *,
        keep: Sequence[Policy] | None = None,
        async_commit: bool = True,
        branch: str | None = None,
        gc_every: int | None = 1,
        tag_format: str | None = DEFAULT_TAG,
        exclude: Iterable[str] = (),
        delete_dirs: bool = False,
    ) -> None:
        if not isinstance(repo, Repo):
            p = Path(repo)
            repo = Repo.open(p) if (p / ".tvcs").is_dir() else Repo.init(p)
        self.repo = repo
        self.exclude = list(exclude)
        self.delete_dirs = delete_dirs
        self.manager = CheckpointManager(
            repo,
            keep=keep,
            async_commit=async_commit,
            branch=branch,
            gc_every=gc_every,
            tag_format=tag_format,
            message="HF Trainer checkpoint-{step}",
            save_rng=False,  # the folder's rng_state.pth holds the Trainer's own
        )

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            warnings.warn(f"TVCSTrainerCallback: no checkpoint folder {folder}", stacklevel=2)
            return
        files = dir_state(folder, self.exclude)
        meta = {
            MARKER: {
                "dir": folder.name,
                "epoch": state.epoch,
                "best_model_checkpoint": state.best_model_checkpoint,
            }
        }
        self.manager.save(
            files, step=state.global_step, metrics=_metrics_at(state), metadata=meta, copy=False
        )
        if self.delete_dirs:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.manager.wait()

    def checkout(self, rev: str, path: str | os.PathLike[str]) -> str:
        """``checkout_to_dir`` after waiting for the commit in flight."""
        self.manager.wait()
        return checkout_to_dir(self.repo, rev, path)

    def checkout_latest(self, path: str | os.PathLike[str]) -> str | None:
        """Write the newest complete checkpoint on the branch (``CheckpointManager.latest``:
        never a tag a crash left behind) into ``path`` and return ``path``; None when there
        is none yet. ``trainer.train(resume_from_checkpoint=cb.checkout_latest("resume"))``
        resumes a run, or starts it fresh."""
        newest = self.manager.latest()
        if newest is None:
            return None
        return checkout_to_dir(self.repo, newest.commit, path)

    def close(self) -> None:
        self.manager.close()
