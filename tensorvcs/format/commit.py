"""Commits: canonical JSON naming a manifest, the parents, and who/when/why.

::

    {"type": "commit", "version": 1, "manifest": <id>, "parents": [<id>, ...],
     "message": str, "author": str, "timestamp": "YYYY-MM-DDTHH:MM:SS.ffffffZ",
     "step": int | null, "metrics": <value node of a str-keyed dict>,
     "metadata": <value node of a str-keyed dict>}
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptObjectError
from . import jsonenc, values
from .ids import is_object_id

COMMIT_VERSION = 1


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass
class Commit:
    manifest: str
    parents: list[str]
    message: str = ""
    author: str = ""
    timestamp: str = field(default_factory=utc_now)
    step: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    id: str = ""  # filled in once stored; not part of the encoding

    def to_bytes(self) -> bytes:
        hooks = values.Hooks()
        return jsonenc.dumps(
            {
                "type": "commit",
                "version": COMMIT_VERSION,
                "manifest": self.manifest,
                "parents": list(self.parents),
                "message": self.message,
                "author": self.author,
                "timestamp": self.timestamp,
                "step": self.step,
                "metrics": values.encode(dict(self.metrics), hooks, ("<metrics>",)),
                "metadata": values.encode(dict(self.metadata), hooks, ("<metadata>",)),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, oid: str) -> Commit:
        try:
            doc = jsonenc.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise CorruptObjectError(f"commit {oid} is not valid JSON: {e}", oid) from e
        if not isinstance(doc, dict) or doc.get("type") != "commit":
            raise CorruptObjectError(f"object {oid} is not a commit", oid)
        if doc.get("version") != COMMIT_VERSION:
            raise CorruptObjectError(f"commit {oid} has unsupported version", oid)
        try:
            hooks = values.Hooks()
            c = cls(
                manifest=doc["manifest"],
                parents=list(doc["parents"]),
                message=str(doc["message"]),
                author=str(doc["author"]),
                timestamp=str(doc["timestamp"]),
                step=doc["step"],
                metrics=values.decode(doc["metrics"], hooks),
                metadata=values.decode(doc["metadata"], hooks),
                id=oid,
            )
        except (KeyError, TypeError) as e:
            raise CorruptObjectError(f"commit {oid} lacks field {e}", oid) from e
        refs = [c.manifest, *c.parents]
        if not all(isinstance(r, str) and is_object_id(r) for r in refs):
            raise CorruptObjectError(f"commit {oid} names a malformed object id", oid)
        if c.step is not None and type(c.step) is not int:
            raise CorruptObjectError(f"commit {oid} has a non-integer step", oid)
        return c

    @property
    def datetime(self) -> _dt.datetime:
        return _dt.datetime.strptime(self.timestamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=_dt.timezone.utc
        )
