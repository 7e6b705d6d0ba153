"""The envelope every stored object carries: magic, version, kind, codec and codec parameters.

Layout (little-endian)::

    0   4  magic  b"TVCO"
    4   1  envelope version (1)
    5   1  kind   (KIND_* below; advisory: a referrer knows what it points at)
    6   1  codec  (codecs.CODEC_*)
    7   1  reserved, 0
    8   8  content length (u64): bytes after decoding
    16  4  parameter length P (u32)
    20  P  codec parameters: a JSON object, UTF-8
    20+P   payload
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from mmap import mmap
from typing import Any

import numpy as np

from ..errors import CorruptObjectError
from . import codecs
from .config import MAX_CHUNK_SIZE
from .ids import CHECK_KEY, object_id

MAGIC = b"TVCO"
ENVELOPE_VERSION = 1
_HEADER = struct.Struct("<4sBBBBQI")
HEADER_SIZE = _HEADER.size

KIND_CHUNK = 1  # a slice of one tensor's bytes
KIND_PACK = 2  # several small tensors' bytes, concatenated
KIND_MANIFEST = 3
KIND_COMMIT = 4
KIND_BLOB = 5  # opaque bytes: a pickled value, or a file the CLI stores as is
KIND_NAMES = {
    KIND_CHUNK: "chunk",
    KIND_PACK: "pack",
    KIND_MANIFEST: "manifest",
    KIND_COMMIT: "commit",
    KIND_BLOB: "blob",
}

# The most content an object of each kind may declare (docs/format.md, "Validation limits"):
# a length beyond it is corruption, refused before anything is allocated. Chunks and packs
# are at most a chunk_size, and no repository has a chunk_size above MAX_CHUNK_SIZE.
MAX_CONTENT = {
    KIND_CHUNK: MAX_CHUNK_SIZE,
    KIND_PACK: MAX_CHUNK_SIZE,
    KIND_MANIFEST: 1 << 31,
    KIND_COMMIT: 1 << 28,
    KIND_BLOB: 1 << 36,
}
MAX_PARAMS = 16 << 20  # bytes of codec parameters


@dataclass(frozen=True)
class Header:
    kind: int
    codec: int
    length: int
    params: dict[str, Any]
    payload_offset: int


def pack(kind: int, length: int, enc: codecs.Encoded) -> list[bytes | bytearray | memoryview]:
    """The pieces of an object file, in order (written without joining them)."""
    params = json.dumps(enc.params, separators=(",", ":"), sort_keys=True).encode()
    head = _HEADER.pack(MAGIC, ENVELOPE_VERSION, kind, enc.codec, 0, length, len(params))
    return [head + params, *enc.pieces]


def without_check(data: bytes, h: Header) -> bytes:
    """The object file ``data`` (whose header is ``h``) without the content checksum in its
    parameters, the payload unchanged: how a transfer stores what it receives, so that
    objects from elsewhere are verified against their id, not against a checksum their
    sender chose (docs/format.md section 4)."""
    if CHECK_KEY not in h.params:
        return data
    params = {k: v for k, v in h.params.items() if k != CHECK_KEY}
    payload = memoryview(data)[h.payload_offset :]
    return b"".join(pack(h.kind, h.length, codecs.Encoded(h.codec, params, (payload,))))


def header_span(data: bytes | memoryview | mmap) -> int:
    """Bytes from the file's start through its codec parameters (needs HEADER_SIZE bytes)."""
    return HEADER_SIZE + int(_HEADER.unpack_from(data, 0)[-1])


def read_header(data: bytes | memoryview | mmap, oid: str) -> Header:
    """Parse and check an object's envelope: fields, length bound, codec parameters (a delta's
    base must be a valid id other than the object's own). CorruptObjectError names ``oid``."""
    if len(data) < HEADER_SIZE:
        raise CorruptObjectError(f"object {oid} is truncated ({len(data)} bytes)", oid)
    magic, version, kind, codec, reserved, length, plen = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise CorruptObjectError(f"object {oid} has no tensorvcs envelope (bad magic)", oid)
    if version != ENVELOPE_VERSION:
        raise CorruptObjectError(
            f"object {oid} has envelope version {version}; this build reads {ENVELOPE_VERSION}",
            oid,
        )
    if reserved != 0 or kind not in KIND_NAMES:
        raise CorruptObjectError(f"object {oid} has a malformed header (kind {kind})", oid)
    if codec not in codecs.CODEC_NAMES:
        raise CorruptObjectError(f"object {oid} has a malformed header: unknown codec {codec}", oid)
    if length > MAX_CONTENT[kind]:
        raise CorruptObjectError(
            f"object {oid} is corrupt: it declares {length} bytes of content, more than a "
            f"{KIND_NAMES[kind]} may hold ({MAX_CONTENT[kind]})",
            oid,
        )
    end = HEADER_SIZE + plen
    if plen > MAX_PARAMS or end > len(data):
        raise CorruptObjectError(
            f"object {oid} is truncated or has unreadable codec parameters ({plen} bytes)", oid
        )
    try:
        params = json.loads(bytes(data[HEADER_SIZE:end]))
        if not isinstance(params, dict):
            raise ValueError("parameters are not a JSON object")
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise CorruptObjectError(f"object {oid} has unreadable codec parameters: {e}", oid) from e
    if codec == codecs.CODEC_DELTA:
        try:
            base = codecs.delta_params(params, length).base
        except ValueError as e:
            raise CorruptObjectError(f"object {oid} has bad delta parameters: {e}", oid) from e
        if base == oid:
            raise CorruptObjectError(
                f"object {oid} is corrupt: it is a delta against itself (its chain loops)", oid
            )
    return Header(kind, codec, length, params, end)


def check_fits(h: Header, payload: memoryview, oid: str) -> None:
    """Refuse (CorruptObjectError) a payload that cannot decode to the header's length:
    checked from sizes and zstd frame headers alone, before the content is allocated."""
    try:
        if h.codec == codecs.CODEC_DELTA:
            codecs.check_delta_payload(h.params, payload, h.length)
        else:
            codecs.check_payload(h.codec, h.params, payload, h.length)
    except ValueError as e:
        raise CorruptObjectError(f"object {oid} does not decode: {e}", oid) from e


def allocate(h: Header, oid: str, payload: memoryview | None = None) -> np.ndarray:
    """An uninitialised buffer for the content of ``oid``; one allocation guard for object
    content. The length is bounded by the header check (MAX_CONTENT); with ``payload``, it
    must also be one the payload can decode to (``check_fits``). A length that cannot be
    allocated is corruption, not a real object."""
    if payload is not None:
        check_fits(h, payload, oid)
    try:
        return np.empty(h.length, dtype=np.uint8)
    except (MemoryError, ValueError) as e:
        raise CorruptObjectError(f"object {oid} declares {h.length} bytes: {e}", oid) from e


def open_object(
    data: bytes | memoryview, oid: str, verify: bool = True
) -> tuple[Header, np.ndarray]:
    """Decode a self-contained object file and check that its content hashes to ``oid``.

    Delta objects need their base: read them through store.objects.ObjectStore.
    """
    h = read_header(data, oid)
    if h.codec == codecs.CODEC_DELTA:
        raise CorruptObjectError(f"object {oid} is a delta; its base is needed to decode it", oid)
    payload = memoryview(data)[h.payload_offset :]
    out = allocate(h, oid, payload)
    codecs.decode_into(h.codec, h.params, payload, out, oid)
    if verify and object_id(out.data) != oid:
        raise CorruptObjectError(f"object {oid} is corrupt: its content hashes differently", oid)
    return h, out
