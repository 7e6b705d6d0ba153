"""Pointer files: the small JSON file a framework integration leaves at a checkpoint path, so
the framework's own file bookkeeping (ModelCheckpoint's top-k, ``ckpt_path="last"``) keeps
working while the checkpoint itself lives in the store.

A pointer is ``{"kind": <kind>, "repo": <repository root>, ...}`` plus what it points at (a tag
or a commit id); each integration uses its own ``kind``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MAX_POINTER_BYTES = 65536


def write_pointer(path: str | os.PathLike[str], kind: str, **fields: Any) -> None:
    """Write a pointer file at ``path`` atomically (temp file, then rename)."""
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(f"checkpoint path {p} is a directory, not a pointer file")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"kind": kind, **fields}, indent=1) + "\n")
    os.replace(tmp, p)


def read_pointer(path: str | os.PathLike[str], kind: str, key: str) -> dict[str, Any] | None:
    """The pointer at ``path`` if it is one of ``kind`` with a string ``key``, else None."""
    p = Path(path)
    try:
        if not p.is_file() or p.stat().st_size > MAX_POINTER_BYTES:
            return None
        doc = json.loads(p.read_bytes())
    except (OSError, ValueError):
        return None
    if isinstance(doc, dict) and doc.get("kind") == kind and isinstance(doc.get(key), str):
        return doc
    return None
