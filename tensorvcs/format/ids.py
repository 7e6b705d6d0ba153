"""Object ids: BLAKE3-256 of an object's canonical, uncompressed content, as 64 hex digits.
And the content checksum a writer records in an object's envelope (docs/format.md section 4):
XXH3-128 of the same content, which checkout verifies in place of the id (about 7x cheaper;
fsck and objects that arrive from elsewhere still verify the id)."""

from __future__ import annotations

import re

import blake3
import xxhash

from ..errors import UsageError

ID_HEX_LEN = 64
_ID_RE = re.compile(r"^[0-9a-f]{64}$")
_PREFIX_RE = re.compile(r"^[0-9a-f]{4,64}$")
_CHECK_RE = re.compile(r"^[0-9a-f]{32}$")
# the codec-parameter key of the content checksum
CHECK_KEY = "xxh128"

Buffer = bytes | bytearray | memoryview


def object_id(data: Buffer) -> str:
    """The id of ``data``: BLAKE3-256 in lowercase hex."""
    return blake3.blake3(data).hexdigest()


def content_check(data: Buffer) -> str:
    """The content checksum of ``data``: XXH3-128 in lowercase hex (32 digits)."""
    return xxhash.xxh3_128_hexdigest(data)


def is_content_check(value: object) -> bool:
    return isinstance(value, str) and bool(_CHECK_RE.match(value))


def is_object_id(text: str) -> bool:
    return bool(_ID_RE.match(text))


def is_id_prefix(text: str) -> bool:
    """True for 4 to 64 lowercase hex digits (what a revision may abbreviate an id to)."""
    return bool(_PREFIX_RE.match(text))


def check_object_id(text: str) -> str:
    if not is_object_id(text):
        raise UsageError(f"not an object id (64 lowercase hex digits): {text!r}")
    return text
