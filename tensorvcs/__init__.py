"""tensorvcs: a content-addressed, git-like version store for PyTorch training checkpoints."""

from .errors import (
    CorruptObjectError,
    FormatVersionError,
    LoadError,
    LockTimeoutError,
    NotFoundError,
    ObjectNotFoundError,
    RefConflictError,
    RepoNotFoundError,
    RevisionNotFoundError,
    SelectionError,
    TensorVCSError,
    UnsupportedValueError,
    UsageError,
)
from .format.commit import Commit
from .history import drop
from .loading import LoadReport
from .maintenance import fsck, gc
from .manager import CheckpointManager
from .repo import Repo
from .retention import (
    CheckpointInfo,
    KeepBest,
    KeepEvery,
    KeepIf,
    KeepLast,
    KeepNewerThan,
    KeepSteps,
)

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # tv.dcp (torch.distributed.checkpoint integration) is imported on first use: it pulls in
    # torch.distributed, which a plain `import tensorvcs` should not pay for.
    if name == "dcp":
        import importlib

        return importlib.import_module(".dcp", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "CheckpointInfo",
    "CheckpointManager",
    "Commit",
    "CorruptObjectError",
    "FormatVersionError",
    "KeepBest",
    "KeepEvery",
    "KeepIf",
    "KeepLast",
    "KeepNewerThan",
    "KeepSteps",
    "LoadError",
    "LoadReport",
    "LockTimeoutError",
    "NotFoundError",
    "ObjectNotFoundError",
    "RefConflictError",
    "Repo",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "SelectionError",
    "TensorVCSError",
    "UnsupportedValueError",
    "UsageError",
    "__version__",
    "drop",
    "fsck",
    "gc",
]
