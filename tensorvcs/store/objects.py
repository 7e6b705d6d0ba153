"""The object store: enveloped, content-addressed objects on top of a Store.

An object with id ``abcd…`` lives at ``objects/ab/cd…``. Writes never replace an existing
object (same id, same content); reads verify the content hash unless told not to.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np

from ..errors import CorruptObjectError, ObjectNotFoundError
from ..format import codecs, envelope
from ..format.ids import Buffer, check_object_id, is_object_id, object_id
from .base import Store

OBJECTS = "objects"
HEAD_BYTES = 4096  # enough for any envelope header and its codec parameters


def object_name(oid: str) -> str:
    return f"{OBJECTS}/{oid[:2]}/{oid[2:]}"


class ObjectStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self.bytes_read = 0  # stored (encoded) bytes read since creation; for tests and stats
        self.objects_read = 0

    def has(self, oid: str) -> bool:
        return self.store.exists(object_name(oid))

    def write(self, oid: str, kind: int, length: int, enc: codecs.Encoded) -> int:
        """Store an already-encoded object; returns the bytes written (0 when it was present)."""
        if self.has(oid):
            return 0
        pieces = envelope.pack(kind, length, enc)
        if not self.store.put_if_absent(object_name(oid), pieces):
            return 0
        return sum(len(p) for p in pieces)

    def replace(
        self, oid: str, kind: int, length: int, enc: codecs.Encoded, *, sync: bool = True
    ) -> None:
        """Atomically swap the stored encoding of an existing object (same content, same id).
        ``sync=False`` leaves the folder fsync to the caller's next ``store.sync()``."""
        self.store.put(object_name(oid), envelope.pack(kind, length, enc), sync=sync)

    def put_bytes(self, kind: int, content: Buffer) -> str:
        """Hash, encode (zstd when it pays) and store untyped content; returns its id."""
        oid = object_id(content)
        if not self.has(oid):
            self.write(oid, kind, len(content), codecs.encode_bytes(content))
        return oid

    def raw(self, oid: str) -> bytes:
        """The stored file of ``oid`` (envelope and payload), not decoded."""
        try:
            data = self.store.get(object_name(check_object_id(oid)))
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {oid} is missing from the store", oid) from None
        with self._lock:
            self.bytes_read += len(data)
            self.objects_read += 1
        return data

    def header(self, oid: str) -> envelope.Header:
        """The envelope of ``oid`` (reads only the file's beginning)."""
        try:
            data = self.store.get_head(object_name(oid), HEAD_BYTES)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"object {oid} is missing from the store", oid) from None
        if len(data) >= envelope.HEADER_SIZE and envelope.header_span(data) > len(data):
            data = self.store.get(object_name(oid))
        return envelope.read_header(data, oid)

    def read(self, oid: str, *, verify: bool = True) -> tuple[envelope.Header, np.ndarray]:
        """Decode ``oid``; its content must hash to ``oid`` (CorruptObjectError otherwise)."""
        data = self.raw(oid)
        h = envelope.read_header(data, oid)
        out = envelope.allocate(h, oid)
        self._decode(oid, data, h, out, verify)
        return h, out

    def read_bytes(self, oid: str) -> bytes:
        return self.read(oid)[1].tobytes()

    def read_into(self, oid: str, out: np.ndarray, *, verify: bool = True) -> envelope.Header:
        """Decode ``oid`` straight into the uint8 array ``out`` and verify its hash there."""
        data = self.raw(oid)
        h = envelope.read_header(data, oid)
        if h.length != out.nbytes:
            raise CorruptObjectError(
                f"object {oid} holds {h.length} bytes where {out.nbytes} were expected", oid
            )
        self._decode(oid, data, h, out, verify)
        return h

    def _decode(
        self, oid: str, data: bytes, h: envelope.Header, out: np.ndarray, verify: bool
    ) -> None:
        payload = memoryview(data)[h.payload_offset :]
        if h.codec == codecs.CODEC_DELTA:
            base = _base_id(oid, h)
            # The base is decoded unverified: the final hash covers the whole chain. Only on
            # a mismatch is the chain walked again to name the object that is wrong.
            try:
                self.read_into(base, out, verify=False)
            except CorruptObjectError:
                self.read(base)  # raises naming the base (or one below it), if it is corrupt
                raise CorruptObjectError(
                    f"object {oid} is corrupt: it does not fit its delta base {base}", oid
                ) from None
            codecs.decode_delta_into(h.params, payload, out, oid)
        else:
            codecs.decode_into(h.codec, h.params, payload, out, oid)
        if verify and object_id(out.data) != oid:
            if h.codec == codecs.CODEC_DELTA:
                self.read(h.params["base"])  # raises naming the corrupt base, if it is one
            raise CorruptObjectError(
                f"object {oid} is corrupt: its content hashes differently", oid
            )

    def delta_base(self, oid: str) -> str | None:
        """The base a delta object needs, or None for a self-contained object."""
        h = self.header(oid)
        return _base_id(oid, h) if h.codec == codecs.CODEC_DELTA else None

    def depth(self, oid: str) -> int:
        """Deltas to decode before reaching a self-contained object (0 for one)."""
        h = self.header(oid)
        return int(h.params.get("depth", 1)) if h.codec == codecs.CODEC_DELTA else 0

    def kind(self, oid: str) -> int:
        return self.header(oid).kind

    def stored_size(self, oid: str) -> int:
        return self.store.size(object_name(oid))

    def ids(self) -> Iterator[str]:
        for name in self.store.list(OBJECTS):
            parts = name.split("/")
            if len(parts) == 3 and len(parts[1]) == 2:
                oid = parts[1] + parts[2]
                if len(oid) == 64:
                    yield oid

    def ids_with_prefix(self, prefix: str) -> list[str]:
        if len(prefix) < 2:
            return [i for i in self.ids() if i.startswith(prefix)]
        folder = f"{OBJECTS}/{prefix[:2]}"
        return [
            prefix[:2] + n.rsplit("/", 1)[1]
            for n in self.store.list(folder)
            if (prefix[:2] + n.rsplit("/", 1)[1]).startswith(prefix)
        ]

    def delete(self, oid: str) -> None:
        self.store.delete(object_name(oid))

    def check(self, oid: str) -> envelope.Header:
        """Read and verify one object; raises CorruptObjectError / ObjectNotFoundError."""
        h, _ = self.read(oid)
        return h


def _base_id(oid: str, h: envelope.Header) -> str:
    base = h.params.get("base")
    if not isinstance(base, str) or not is_object_id(base):
        raise CorruptObjectError(f"object {oid} is a delta without a valid base id", oid)
    return base


__all__ = ["OBJECTS", "CorruptObjectError", "ObjectStore", "object_name"]
