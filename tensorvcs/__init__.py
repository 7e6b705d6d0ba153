"""tensorvcs: a content-addressed, git-like version store for PyTorch training checkpoints."""

from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from .remote import clone_repo as clone
    from .remote import fetch, pull, push, remote_add, remote_remove, remotes

__version__ = "0.1.0"

# tv.push, tv.clone, ...: functions over a Repo in tensorvcs.remote (a layer above the repo),
# imported on first use: `import tensorvcs` (and tensorvcs.repo) never loads tensorvcs.remote.
_REMOTE_FUNCTIONS = {
    "clone": "clone_repo",
    "fetch": "fetch",
    "pull": "pull",
    "push": "push",
    "remote_add": "remote_add",
    "remote_remove": "remote_remove",
    "remotes": "remotes",
}


def __getattr__(name: str) -> object:
    import importlib

    # tv.dcp (torch.distributed.checkpoint integration) is imported on first use: it pulls in
    # torch.distributed, which a plain `import tensorvcs` should not pay for.
    if name == "dcp":
        return importlib.import_module(".dcp", __name__)
    if name in _REMOTE_FUNCTIONS:
        return getattr(importlib.import_module(".remote", __name__), _REMOTE_FUNCTIONS[name])
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
    "clone",
    "drop",
    "fetch",
    "fsck",
    "gc",
    "pull",
    "push",
    "remote_add",
    "remote_remove",
    "remotes",
]
