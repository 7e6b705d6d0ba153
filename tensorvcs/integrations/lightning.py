"""Lightning integration: ``TVCSCheckpointIO`` (a ``CheckpointIO`` plugin) and the
``TVCSCheckpoint`` callback. Uses the ``lightning`` package, or ``pytorch_lightning`` when only
that is installed (``tensorvcs.integrations.pytorch_lightning`` always binds to the latter).

::

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    import tensorvcs as tv
    from tensorvcs.integrations.lightning import TVCSCheckpoint, TVCSCheckpointIO

    repo = tv.Repo.init("run")
    ckpt = TVCSCheckpoint(repo, every_n_steps=100, keep=[tv.KeepLast(3)])
    trainer = L.Trainer(
        plugins=[TVCSCheckpointIO(repo)],          # ModelCheckpoint saves into the store
        callbacks=[ModelCheckpoint(dirpath="ckpts", monitor="val_loss", save_top_k=2), ckpt],
    )
    trainer.fit(model, ckpt_path=ckpt.latest_ckpt_path())  # the newest complete checkpoint
    trainer.fit(model, ckpt_path="step-300")       # or a tag, a commit or a path

``TVCSCheckpointIO``: ``save_checkpoint(checkpoint, path)`` commits the checkpoint dict and tags
the commit with a tag derived from ``path`` (``ckpt/<path relative to the repository, no
suffix>``), writing a small JSON pointer file at ``path`` so that ModelCheckpoint's own file
logic (version counters, ``ckpt_path="last"``) keeps working; ``load_checkpoint(path)`` checks
out that commit (``path`` may also be a revision such as ``"step-300"`` or ``"best"``);
``remove_checkpoint(path)`` deletes the tag and the pointer and drops the commit from the
branch's history, then gc frees its bytes.

``TVCSCheckpoint(repo, every_n_steps=N, keep=[...])``: commits Lightning's full checkpoint
every N *real* optimizer steps (counted by a post-step hook on each optimizer, so manual
optimization with ``opt.step()`` anywhere, e.g. in ``on_train_batch_end``, is counted), in a
background thread, with retention policies. With ``save_weights_only=True`` it commits
weights-only checkpoints, and on resume it supplies fresh optimizer/scheduler states where
Lightning would raise ``KeyError: 'optimizer_states'``. ``latest_ckpt_path()`` is the newest
complete checkpoint on its branch (None when there is none: ``fit`` starts fresh), even after
a kill in the middle of a commit.
"""

from __future__ import annotations

try:
    from lightning.fabric.plugins.io.checkpoint_io import CheckpointIO
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - only pytorch_lightning installed
    try:
        from lightning_fabric.plugins.io.checkpoint_io import (  # type: ignore[assignment]
            CheckpointIO,
        )
        from pytorch_lightning.callbacks import Callback  # type: ignore[assignment]
    except ImportError as e:
        raise ImportError(
            "tensorvcs.integrations.lightning needs `lightning` (or `pytorch_lightning`): "
            "pip install 'tensorvcs[integrations]'"
        ) from e

from ._lightning import CallbackMixin, IOMixin, read_pointer

__all__ = ["TVCSCheckpoint", "TVCSCheckpointIO", "read_pointer"]


class TVCSCheckpointIO(IOMixin, CheckpointIO):
    """A ``CheckpointIO`` that saves checkpoints as tensorvcs commits (see the module doc).

    Args:
        repo: a ``tv.Repo`` or the path of its working directory (created if absent).
        branch: the branch to commit to (default: HEAD's branch).
        tag_prefix: the prefix of the tags checkpoint paths map to.
        pointer_files: write a small JSON pointer file at each checkpoint path.
        async_commit: commit in a background thread (the default, as for TVCSCheckpoint and
            the other integrations; the loop waits for a CPU copy). The next save,
            load_checkpoint, remove_checkpoint and teardown wait for it.
        gc_every: gc after this many removed checkpoints (None: never).
        allow_pickle: store values that are not tensors/containers/scalars as pickles.
    """


class TVCSCheckpoint(CallbackMixin, Callback):
    """Commit every ``every_n_steps`` real optimizer steps (see the module doc)."""
