"""tensorvcs: a content-addressed, git-like version store for PyTorch training checkpoints.

Everything but the errors is imported on first use (PEP 562 ``__getattr__``): ``import
tensorvcs`` does not load torch, so ``tvcs --help``, ``--version`` and ``log`` start at once;
``tv.Repo``, ``tv.CheckpointManager`` ... import their module the first time they are named.
"""

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

if TYPE_CHECKING:
    from .compaction import compact
    from .format.commit import Commit
    from .history import drop
    from .loading import LoadReport
    from .maintenance import fsck, gc
    from .manager import CheckpointManager
    from .remote import clone_repo as clone
    from .remote import fetch, pull, push, remote_add, remote_remove, remotes
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

# public name -> (module, attribute), imported on first use. tv.push, tv.clone, ... are
# functions over a Repo in tensorvcs.remote (a layer above the repo): `import tensorvcs` (and
# tensorvcs.repo) never loads tensorvcs.remote.
_LAZY = {
    "Commit": (".format.commit", "Commit"),
    "compact": (".compaction", "compact"),
    "drop": (".history", "drop"),
    "LoadReport": (".loading", "LoadReport"),
    "fsck": (".maintenance", "fsck"),
    "gc": (".maintenance", "gc"),
    "CheckpointManager": (".manager", "CheckpointManager"),
    "Repo": (".repo", "Repo"),
    "CheckpointInfo": (".retention", "CheckpointInfo"),
    "KeepBest": (".retention", "KeepBest"),
    "KeepEvery": (".retention", "KeepEvery"),
    "KeepIf": (".retention", "KeepIf"),
    "KeepLast": (".retention", "KeepLast"),
    "KeepNewerThan": (".retention", "KeepNewerThan"),
    "KeepSteps": (".retention", "KeepSteps"),
    "clone": (".remote", "clone_repo"),
    "fetch": (".remote", "fetch"),
    "pull": (".remote", "pull"),
    "push": (".remote", "push"),
    "remote_add": (".remote", "remote_add"),
    "remote_remove": (".remote", "remote_remove"),
    "remotes": (".remote", "remotes"),
}


def __getattr__(name: str) -> object:
    import importlib

    # tv.dcp (torch.distributed.checkpoint integration) pulls in torch.distributed.
    if name == "dcp":
        return importlib.import_module(".dcp", __name__)
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module, __name__), attr)
        # `gc`, `fsck` and `drop` are functions named like no submodule; cache them so the next
        # lookup is a plain attribute (a submodule import never overwrites these names)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | {"dcp"})


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
    "compact",
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
