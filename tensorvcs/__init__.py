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
    TensorVCSError,
    UnsupportedValueError,
    UsageError,
)
from .format.commit import Commit
from .loading import LoadReport
from .repo import Repo

__version__ = "0.1.0"

__all__ = [
    "Commit",
    "CorruptObjectError",
    "FormatVersionError",
    "LoadError",
    "LoadReport",
    "LockTimeoutError",
    "NotFoundError",
    "ObjectNotFoundError",
    "RefConflictError",
    "Repo",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "TensorVCSError",
    "UnsupportedValueError",
    "UsageError",
    "__version__",
]
