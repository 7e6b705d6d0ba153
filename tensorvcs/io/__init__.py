"""Import and export of checkpoint files: torch.save files (.pt, .pth, .ckpt, .bin),
safetensors files, folders of them (Hugging Face models, Trainer checkpoints), and opaque
files. The CLI's ``commit`` and ``checkout`` are built on ``importer`` and ``exporter``.

The names below are imported on first use: ``io.worktree`` (what ``tvcs status`` needs) loads
without torch."""

from __future__ import annotations

from typing import Any

__all__ = ["CommitResult", "InputFile", "collect", "commit_files"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import importer

        return getattr(importer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
