"""Object ids: BLAKE3-256 of an object's canonical, uncompressed content, as 64 hex digits."""

from __future__ import annotations

import re

import blake3

from ..errors import UsageError

ID_HEX_LEN = 64
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_PREFIX_RE = re.compile(r"^[0-9a-f]{4,64}$")

Buffer = bytes | bytearray | memoryview


def object_id(data: Buffer) -> str:
    """The id of ``data``: BLAKE3-256 in lowercase hex."""
    return blake3.blake3(data).hexdigest()


def is_object_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def is_id_prefix(text: str) -> bool:
    """True for 4 to 64 lowercase hex digits (what a revision may abbreviate an id to)."""
    return bool(_PREFIX_RE.match(text))


def check_object_id(text: str) -> str:
    if not is_object_id(text):
        raise UsageError(f"not an object id (64 lowercase hex digits): {text!r}")
    return text
