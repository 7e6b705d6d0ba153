"""The canonical JSON used for manifests, commits, config and refs' logs.

Compact separators, keys sorted, UTF-8, no NaN/Infinity tokens (those are tagged by the
value encoding), so the same document always has the same bytes and the same id.
"""

from __future__ import annotations

import json
from typing import Any


def dumps(doc: Any) -> bytes:
    return json.dumps(
        doc, separators=(",", ":"), sort_keys=True, ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    if not isinstance(data, str):
        data = bytes(data).decode("utf-8")
    return json.loads(data, parse_constant=_no_constants)
