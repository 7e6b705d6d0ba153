"""Opening the Store at a location: a local path or a URL (``s3://``, ``file://``, ...).

Both the repository (Repo.open / Repo.init with a URL) and the remotes (push, fetch, clone)
open stores through here, so neither needs the other for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import Store
from .local import LocalStore

DIRNAME = ".tvcs"
CONFIG = "config.json"


def is_url(s: str) -> bool:
    """True for ``scheme://...`` (fsspec storage); False for a local path."""
    return "://" in str(s)


def open_store(url: str, **storage_options: Any) -> Store:
    """The Store at ``url``: for a local path, a LocalStore over the repository's .tvcs when
    it has one, else over the path itself (a bare repository); for a URL, an FsspecStore
    (``storage_options`` go to it)."""
    if not is_url(url):
        p = Path(url).expanduser().resolve()
        return LocalStore(p / DIRNAME if (p / DIRNAME / CONFIG).is_file() else p)
    from .fsspec_store import FsspecStore

    return FsspecStore(url, **storage_options)


__all__ = ["is_url", "open_store"]
