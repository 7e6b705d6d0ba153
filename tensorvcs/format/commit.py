"""Commits: canonical JSON naming a manifest, the parents, and who/when/why.

::

    {"type": "commit", "version": 1, "manifest": <id>, "parents": [<id>, ...],
     "message": str, "author": str, "timestamp": "YYYY-MM-DDTHH:MM:SS.ffffffZ",
     "step": int | null, "metrics": <value node of a str-keyed dict>,
     "metadata": <value node of a str-keyed dict>}
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any

from ..errors import CorruptObjectError
from . import jsonenc, values
from .ids import is_object_id

COMMIT_VERSION = 1
MAX_STEP = (1 << 63) - 1
_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_REQUIRED = ("manifest", "parents", "message", "author", "timestamp", "step", "metrics", "metadata")


def parse_timestamp(text: str) -> _dt.datetime:
    """The UTC time of a ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` timestamp; ValueError when ``text`` is
    not one or names no real date and time. (datetime's own constructor checks the fields:
    ``strptime`` did the same, but its first call compiled locale patterns, ~2 ms of the first
    checkout of a fresh process.)"""
    if not isinstance(text, str) or not _TIMESTAMP.fullmatch(text):
        raise ValueError(f"timestamp {text!r:.40} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    return _dt.datetime(
        int(text[0:4]), int(text[5:7]), int(text[8:10]),
        int(text[11:13]), int(text[14:16]), int(text[17:19]), int(text[20:26]),
        tzinfo=_dt.timezone.utc,
    )


def _commit_problem(doc: dict[str, Any]) -> str | None:
    """Why a commit document is malformed (None when it is not)."""
    for name in _REQUIRED:
        if name not in doc:
            return f"it lacks field {name!r}"
    manifest, parents = doc["manifest"], doc["parents"]
    if not isinstance(manifest, str) or not is_object_id(manifest):
        return f"manifest {manifest!r:.80} is not an object id"
    if not isinstance(parents, list):
        return "parents is not a list"
    for p in parents:
        if not isinstance(p, str) or not is_object_id(p):
            return f"parent {p!r:.80} is not an object id"
    if len(set(parents)) != len(parents):
        return "a parent is listed twice"
    for name in ("message", "author", "timestamp"):
        if not isinstance(doc[name], str):
            return f"{name} is not a string"
    if not _TIMESTAMP.fullmatch(doc["timestamp"]):
        return f"timestamp {doc['timestamp']!r:.40} is not YYYY-MM-DDTHH:MM:SS.ffffffZ"
    try:
        parse_timestamp(doc["timestamp"])
    except ValueError:
        return f"timestamp {doc['timestamp']!r:.40} is not a valid date and time"
    step = doc["step"]
    if step is not None and (type(step) is not int or abs(step) > MAX_STEP):
        return f"step {step!r:.40} is not a 64-bit integer or null"
    for name in ("metrics", "metadata"):
        node = doc[name]
        if not (isinstance(node, list) and node[:1] in (["dict"], ["odict"])):
            return f"{name} is not a dict node"
    return None


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _change_norms(changes: Any) -> dict[str, float] | None:
    """A stored ``changes`` field as key path -> norm; None unless every norm is a finite
    number >= 0 under a string key."""
    if not isinstance(changes, dict):
        return None
    out: dict[str, float] = {}
    for k, v in changes.items():
        norm = values.finite_float(v)
        if not isinstance(k, str) or norm is None or norm < 0:
            return None
        out[k] = norm
    return out


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
    # ‖tensor − the first parent's tensor‖ (L2) per key path, for tensors whose parent has the
    # same dtype and shape and that changed; encoded only when not empty
    changes: dict[str, float] = field(default_factory=dict)
    id: str = ""  # filled in once stored; not part of the encoding

    def to_bytes(self) -> bytes:
        hooks = values.Hooks()
        doc: dict[str, Any] = {
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
        if self.changes:
            doc["changes"] = {k: float(v) for k, v in sorted(self.changes.items())}
        return jsonenc.dumps(doc)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, oid: str) -> Commit:
        """Parse and fully validate a commit (every field's type, ids, the timestamp, the
        metrics and metadata trees); CorruptObjectError names ``oid``."""
        doc = jsonenc.load_stored(data, f"commit {oid}", oid)
        if not isinstance(doc, dict) or doc.get("type") != "commit":
            raise CorruptObjectError(f"object {oid} is not a commit", oid)
        version = doc.get("version")
        if type(version) is not int or version != COMMIT_VERSION:
            raise CorruptObjectError(f"commit {oid} has unsupported version {version!r:.40}", oid)
        problem = _commit_problem(doc)
        if problem:
            raise CorruptObjectError(f"commit {oid} is malformed: {problem}", oid)
        try:
            for name in ("metrics", "metadata"):
                values.check_tree(doc[name], path=(f"<{name}>",))
            hooks = values.Hooks()
            metrics = values.decode(doc["metrics"], hooks)
            metadata = values.decode(doc["metadata"], hooks)
        except CorruptObjectError as e:
            raise CorruptObjectError(f"commit {oid} is malformed: {e}", oid, e.key_path) from None
        changes = _change_norms(doc.get("changes", {}))
        if changes is None:
            raise CorruptObjectError(f"commit {oid} is malformed: bad 'changes' field", oid)
        return cls(
            manifest=doc["manifest"],
            parents=list(doc["parents"]),
            message=doc["message"],
            author=doc["author"],
            timestamp=doc["timestamp"],
            step=doc["step"],
            metrics=metrics,
            metadata=metadata,
            changes=changes,
            id=oid,
        )

    @property
    def datetime(self) -> _dt.datetime:
        return parse_timestamp(self.timestamp)
