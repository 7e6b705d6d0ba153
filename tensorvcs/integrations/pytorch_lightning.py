"""``TVCSCheckpointIO`` and ``TVCSCheckpoint`` for the ``pytorch_lightning`` package (the same
classes as ``tensorvcs.integrations.lightning``, bound to ``pytorch_lightning``'s own
``CheckpointIO`` and ``Callback``, which its Trainer requires)."""

from __future__ import annotations

try:
    from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
    from pytorch_lightning.callbacks import Callback
except ImportError as e:
    raise ImportError(
        "tensorvcs.integrations.pytorch_lightning needs `pytorch_lightning`: "
        "pip install pytorch_lightning"
    ) from e

from ._lightning import CallbackMixin, IOMixin, read_pointer

__all__ = ["TVCSCheckpoint", "TVCSCheckpointIO", "read_pointer"]


class TVCSCheckpointIO(IOMixin, CheckpointIO):
    """A ``CheckpointIO`` that saves checkpoints as tensorvcs commits; see
    ``tensorvcs.integrations.lightning``."""


class TVCSCheckpoint(CallbackMixin, Callback):
    """Commit every ``every_n_steps`` real optimizer steps; see
    ``tensorvcs.integrations.lightning``."""
