"""The canonical JSON used for manifests, commits, config and refs' logs.

Compact separators, keys sorted, UTF-8, no NaN/Infinity tokens (those are tagged by the
value encoding), so the same document always has the same bytes and the same id.
"""

from __future__ import annotations

import json
from typing import Any

from ..errors import CorruptObjectError


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


def load_stored(data: bytes | bytearray | memoryview, where: str, oid: str | None) -> Any:
    """The JSON document of a stored object (``where`` names it in errors): invalid UTF-8 or
    JSON, and nesting too deep for the parser, are all CorruptObjectError."""
    try:
        return loads(data)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CorruptObjectError(f"{where} is not valid JSON: {e}", oid) from None
    except RecursionError:
        raise CorruptObjectError(f"{where} is not valid JSON: it nests too deeply", oid) from None
