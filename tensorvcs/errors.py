"""One exception root for everything tensorvcs raises on purpose.

Each subclass carries an ``exit_code`` that the CLI returns; docs/cli.md lists them.
User errors (bad input, unknown revision, conflicting update) are distinct from
corruption (the repository's bytes are wrong) and from bugs (any other exception).
"""

from __future__ import annotations


class TensorVCSError(Exception):
    """Root of every error tensorvcs raises deliberately."""

    exit_code = 1


class UsageError(TensorVCSError):
    """The caller asked for something malformed (bad name, bad argument)."""

    exit_code = 2


class RepoNotFoundError(TensorVCSError):
    """No repository at, or above, the given path."""

    exit_code = 3


class NotFoundError(TensorVCSError):
    """A revision, ref, object or file that was asked for does not exist."""

    exit_code = 4


class RevisionNotFoundError(NotFoundError):
    """A revision expression names no commit."""


class ObjectNotFoundError(NotFoundError):
    """An object id is referenced but absent from the store."""

    def __init__(self, message: str, object_id: str | None = None) -> None:
        super().__init__(message)
        self.object_id = object_id


class CorruptObjectError(TensorVCSError):
    """Stored bytes do not decode, or decode to content whose hash is not the id."""

    exit_code = 5

    def __init__(
        self, message: str, object_id: str | None = None, key_path: str | None = None
    ) -> None:
        super().__init__(message)
        self.object_id = object_id
        self.key_path = key_path


class RefConflictError(TensorVCSError):
    """A compare-and-swap ref update found another value than expected."""

    exit_code = 6


class UnsupportedValueError(TensorVCSError):
    """A value in a checkpoint cannot be stored safely (names its key path)."""

    exit_code = 7

    def __init__(self, message: str, key_path: str | None = None) -> None:
        super().__init__(message)
        self.key_path = key_path


class FormatVersionError(TensorVCSError):
    """The repository was written by a format version or feature this build does not know."""

    exit_code = 8


class LoadError(TensorVCSError):
    """A strict load found missing/unexpected/mismatched keys, or a required glob loaded nothing."""

    exit_code = 9


class LockTimeoutError(TensorVCSError):
    """A repository lock could not be taken in time."""

    exit_code = 10


class InputFileError(TensorVCSError):
    """A file given to the CLI is corrupt, or in a format it cannot convert (names the file)."""

    exit_code = 11


class OverwriteError(TensorVCSError):
    """Checkout would overwrite a file whose content no commit holds (use --force)."""

    exit_code = 12


class SelectionError(NotFoundError):
    """Include/exclude globs (or a partial clone's filter) select nothing of a commit; the
    message names the commit and the globs."""
