"""Writing a torch.save file one tensor at a time: the zip torch.save writes, its storage
bytes streamed in from wherever the caller has them.

``torch.save`` needs every tensor of the state in memory at once. Here it runs instead on a
*skeleton* of the state under ``torch.serialization.skip_data``: its tensors are allocated
but never touched (address space, not memory), and torch writes everything but the storage
bytes -- the pickle, the zip's local headers, data descriptors and central directory -- and
seeks over the place of each storage's bytes. A recorder keeps those writes and gaps
(``record``). ``plan`` then reads the recorded zip: which gap holds which storage record
(``data/<key>``), and where each record's CRC-32 goes (torch sets bit 3 of every entry, so
the CRC is in the data descriptor after the bytes and in the central directory entry, and the
local header holds zero; under skip_data both hold zero). ``replay`` writes the recording in
file order, each gap filled with its storage's bytes as the caller yields them and the CRCs
patched in on the way: one sequential pass over the bytes, nothing held but the caller's
window. The file is the one ``torch.save`` of the full state writes, byte for byte but for
``.data/serialization_id`` (random for every save).

Anything in the recording that is not laid out as described raises Unsupported, and the
caller falls back to a plain torch.save.
"""

from __future__ import annotations

import bisect
import io
import pickle
import re
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

LOCAL = b"PK\x03\x04"
CENTRAL = b"PK\x01\x02"
DESCRIPTOR = b"PK\x07\x08"
END = b"PK\x05\x06"
END64 = b"PK\x06\x06"
LOCATOR64 = b"PK\x06\x07"
_RECORD = re.compile(r"(?:^|/)data/(\d+)$")
PICKLE_PROTOCOL = 2  # torch.save's default


class Unsupported(Exception):
    """The recording is not the zip layout this module knows (another torch version)."""


class _Recorder:
    """A write-only file for torch.save: keeps what is written, and the length of each
    forward seek (a gap where skip_data leaves out a storage's bytes)."""

    def __init__(self) -> None:
        self.parts: list[bytes | int] = []
        self.pos = 0

    def write(self, data: Any) -> int:
        b = bytes(data)
        self.parts.append(b)
        self.pos += len(b)
        return len(b)

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == io.SEEK_SET else self.pos + offset
        if whence not in (io.SEEK_SET, io.SEEK_CUR) or target < self.pos:
            raise io.UnsupportedOperation("only forward seeks are recorded")
        if target > self.pos:
            self.parts.append(target - self.pos)
            self.pos = target
        return self.pos

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass


def _storage_of(obj: Any) -> torch.UntypedStorage | None:
    if isinstance(obj, torch.storage.TypedStorage):
        return obj._untyped_storage
    if isinstance(obj, torch.UntypedStorage):
        return obj
    return None


def _storage_order(obj: Any) -> list[torch.UntypedStorage]:
    """The storages of ``obj`` in the order torch.save numbers them (``data/0``, ...): order
    of first appearance while pickling, one per storage (torch keys them by ``_cdata``)."""
    seen: dict[int, torch.UntypedStorage] = {}

    class Order(pickle.Pickler):
        def persistent_id(self, o: Any) -> Any:
            s = _storage_of(o)
            if s is None:
                return None
            seen.setdefault(s._cdata, s)
            return ("storage", s._cdata)

    Order(io.BytesIO(), protocol=PICKLE_PROTOCOL).dump(obj)
    return list(seen.values())


@dataclass
class Gap:
    offset: int  # in the file
    length: int
    key: int  # the storage record data/<key>
    crc_at: tuple[int, int]  # file offsets of its CRC: data descriptor, central directory


class _Layout:
    """The recorded file: bytes by file offset, gaps marked, readable and patchable."""

    def __init__(self, parts: list[bytes | int]) -> None:
        self.parts: list[bytearray | int] = [bytearray(p) if isinstance(p, bytes) else p
                                             for p in parts]
        self.starts: list[int] = []
        pos = 0
        for p in self.parts:
            self.starts.append(pos)
            pos += p if isinstance(p, int) else len(p)
        self.size = pos

    def _spans(self, off: int, n: int) -> Iterable[tuple[bytearray, int, int, int]]:
        if off < 0 or off + n > self.size:
            raise Unsupported(f"offset {off}+{n} is outside the {self.size}-byte file")
        k = bisect.bisect_right(self.starts, off) - 1
        done = 0
        while done < n:
            part, start = self.parts[k], self.starts[k]
            if isinstance(part, int):
                raise Unsupported(f"offset {off + done} falls in a gap")
            lo = off + done - start
            take = min(n - done, len(part) - lo)
            yield part, lo, done, take
            done += take
            k += 1

    def read(self, off: int, n: int) -> bytes:
        out = bytearray(n)
        for part, lo, at, take in self._spans(off, n):
            out[at : at + take] = part[lo : lo + take]
        return bytes(out)

    def patch(self, off: int, data: bytes) -> None:
        for part, lo, at, take in self._spans(off, len(data)):
            part[lo : lo + take] = data[at : at + take]

    def gaps(self) -> dict[int, int]:
        return {s: p for s, p in zip(self.starts, self.parts, strict=True) if isinstance(p, int)}


def _u16(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", b, at)[0])


def _u32(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", b, at)[0])


def _u64(b: bytes, at: int) -> int:
    return int(struct.unpack_from("<Q", b, at)[0])


def _central_directory(f: _Layout) -> tuple[int, int]:
    """(offset, entry count) of the central directory, from the end records."""
    if f.size < 22 or f.read(f.size - 22, 4) != END:
        raise Unsupported("no end of central directory record at the end of the file")
    end = f.read(f.size - 22, 22)
    count, offset = _u16(end, 10), _u32(end, 16)
    if offset == 0xFFFFFFFF or count == 0xFFFF:
        loc = f.read(f.size - 42, 20)
        if loc[:4] != LOCATOR64:
            raise Unsupported("no zip64 end of central directory locator")
        rec = f.read(_u64(loc, 8), 56)
        if rec[:4] != END64:
            raise Unsupported("no zip64 end of central directory record")
        count, offset = _u64(rec, 32), _u64(rec, 48)
    return offset, count


def _zip64_fields(extra: bytes) -> list[int]:
    at = 0
    while at + 4 <= len(extra):
        tag, n = _u16(extra, at), _u16(extra, at + 2)
        if tag == 1:
            return [_u64(extra, at + 4 + 8 * j) for j in range(n // 8)]
        at += 4 + n
    return []


def plan(
    parts: list[bytes | int], storages: list[torch.UntypedStorage]
) -> tuple[_Layout, list[Gap]]:
    """Each gap of the recording with the storage record it holds and where its CRC goes."""
    f = _Layout(parts)
    gaps = f.gaps()
    offset, count = _central_directory(f)
    found: list[Gap] = []
    at = offset
    for _ in range(count):
        head = f.read(at, 46)
        if head[:4] != CENTRAL:
            raise Unsupported(f"no central directory entry at offset {at}")
        flags, size32, lho32 = _u16(head, 8), _u32(head, 24), _u32(head, 42)
        n, e, c = _u16(head, 28), _u16(head, 30), _u16(head, 32)
        name = f.read(at + 46, n).decode("utf-8", "replace")
        big = iter(_zip64_fields(f.read(at + 46 + n, e)))
        size = next(big) if size32 == 0xFFFFFFFF else size32
        if _u32(head, 20) == 0xFFFFFFFF:  # the compressed size comes next in the zip64 field
            next(big)
        lho = next(big) if lho32 == 0xFFFFFFFF else lho32
        m = _RECORD.search(name)
        if m is not None and size:
            key = int(m.group(1))
            local = f.read(lho, 30)
            if local[:4] != LOCAL or not flags & 0x8 or _u16(head, 10) != 0:
                raise Unsupported(f"record {name}: not a stored entry with a data descriptor")
            start = lho + 30 + _u16(local, 26) + _u16(local, 28)
            if gaps.get(start) != size or key >= len(storages):
                raise Unsupported(f"record {name}: its bytes are not one gap of {size} bytes")
            if storages[key].nbytes() != size:
                raise Unsupported(f"record {name} is {size} bytes, its storage is not")
            if f.read(start + size, 4) != DESCRIPTOR:
                raise Unsupported(f"record {name}: no data descriptor after its bytes")
            if at <= start:
                raise Unsupported(f"record {name}: the central directory precedes its bytes")
            found.append(Gap(start, size, key, (start + size + 4, at + 16)))
        at += 46 + n + e + c
    if len(found) != len(gaps):
        raise Unsupported(f"{len(gaps)} gaps in the recording, {len(found)} storage records")
    return f, sorted(found, key=lambda g: g.offset)


def record(obj: Any) -> tuple[list[bytes | int], list[torch.UntypedStorage]]:
    """What torch.save writes for ``obj`` without its storage bytes, and its storages in
    record order. ``obj``'s tensors are not read."""
    rec = _Recorder()
    with torch.serialization.skip_data():
        try:
            torch.save(obj, rec)  # type: ignore[arg-type]
        except (io.UnsupportedOperation, RuntimeError) as e:
            raise Unsupported(f"torch.save under skip_data: {e}") from e
        storages = _storage_order(obj)
    return rec.parts, storages


Fill = Callable[[torch.UntypedStorage], Iterable[Any]]


def replay(layout: _Layout, gaps: list[Gap], storages: list[torch.UntypedStorage],
           fill: Fill, write: Callable[[Any], None]) -> None:
    """Write the recorded file through ``write`` in order, gap k filled with what
    ``fill(storage)`` yields for its storage (exactly its bytes) and its CRC patched in."""
    by_offset = {g.offset: g for g in gaps}
    for start, part in zip(layout.starts, layout.parts, strict=True):
        if not isinstance(part, int):
            write(part)
            continue
        g = by_offset[start]
        crc, n = 0, 0
        for piece in fill(storages[g.key]):
            view = memoryview(piece).cast("B")
            crc = zlib.crc32(view, crc)
            n += view.nbytes
            if n > g.length:
                break
            write(view)
        if n != g.length:
            raise ValueError(f"storage record data/{g.key}: got {n} bytes for {g.length}")
        for at in g.crc_at:  # both lie after this gap, so not written yet
            layout.patch(at, struct.pack("<I", crc))
