"""Codecs: how an object's canonical content is turned into the payload that is stored.

- ``raw``: the content as is.
- ``zstd``: one zstd frame of the whole content.
- ``planes``: the content is a run of fixed-width elements (a tensor's bytes); byte ``i`` of
  every element forms plane ``i``. Each plane is stored zstd-compressed when that pays and raw
  otherwise. For floats only the plane holding sign and exponent shrinks, so deciding per plane
  on a sample skips the incompressible mantissa planes cheaply.

A codec never changes an id: ids hash the decoded content.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from ..errors import CorruptObjectError

CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_PLANES = 2
CODEC_DELTA = 3
CODEC_NAMES = {CODEC_RAW: "raw", CODEC_ZSTD: "zstd", CODEC_PLANES: "planes", CODEC_DELTA: "delta"}
_LANES = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}

ZSTD_LEVEL = 1
# A plane (or blob) is compressed only when zstd brings it to at most this fraction of its size.
WORTH_RATIO = 0.99
# Planes are first tried on a sample of this many bytes; a sample that does not shrink below
# SAMPLE_RATIO skips the whole plane without compressing it.
SAMPLE_BYTES = 1 << 16
SAMPLE_RATIO = 0.98
# Below this size compression is never attempted (envelope overhead dominates).
MIN_COMPRESS_BYTES = 64

_local = threading.local()


# Byte planes of tensors have little long-range structure: what shrinks them is the entropy
# coding of their literals. A small window and a long minimum match (7) leave almost every byte
# to zstd's Huffman literals: on real weights' exponent planes this is smaller than level 1
# (0.344 vs 0.373 of MiniLM's) and compresses ~2.5x and decompresses ~1.5x faster
# (bench/codec_compare.py). Frames are plain zstd: readers need no parameter.
PLANE_PARAMS = zstandard.ZstdCompressionParameters(
    window_log=14,
    hash_log=8,
    chain_log=8,
    search_log=1,
    min_match=7,
    target_length=0,
    strategy=zstandard.STRATEGY_FAST,
)


def _compressor(planes: bool = False) -> zstandard.ZstdCompressor:
    name = "plane_cctx" if planes else "cctx"
    c = getattr(_local, name, None)
    if c is None:
        if planes:
            c = zstandard.ZstdCompressor(compression_params=PLANE_PARAMS)
        else:
            c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
        setattr(_local, name, c)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


@dataclass(frozen=True)
class Encoded:
    """A payload and the codec (id and parameters) that produced it."""

    codec: int
    params: dict[str, Any]
    # the payload as the pieces it was built from: written one after another, never joined
    pieces: tuple[bytes | bytearray | memoryview, ...]

    @property
    def payload(self) -> bytes:
        """The whole payload as one bytes object (a copy; for tests and small objects)."""
        return b"".join(self.pieces)

    @property
    def size(self) -> int:
        return sum(p.nbytes if isinstance(p, memoryview) else len(p) for p in self.pieces)


def _as_u8(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    if isinstance(data, np.ndarray):
        return data.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def _zstd_if_worth(
    data: bytes | bytearray | memoryview | np.ndarray, planes: bool = False
) -> bytes | None:
    n = len(data) if not isinstance(data, np.ndarray) else data.nbytes
    if n < MIN_COMPRESS_BYTES:
        return None
    if n > 2 * SAMPLE_BYTES:
        sample = _as_u8(data)[:SAMPLE_BYTES]
        if len(_compressor(planes).compress(sample.data)) > SAMPLE_RATIO * SAMPLE_BYTES:
            return None
    out = _compressor(planes).compress(_as_u8(data).data)
    return out if len(out) <= WORTH_RATIO * n else None


def encode_bytes(data: bytes | bytearray | memoryview) -> Encoded:
    """Encode untyped content (manifests, commits, opaque blobs): zstd if it pays, else raw."""
    z = _zstd_if_worth(data)
    if z is None:
        return Encoded(CODEC_RAW, {}, (data,))
    return Encoded(CODEC_ZSTD, {"level": ZSTD_LEVEL}, (z,))


def encode_elements(data: bytes | bytearray | memoryview | np.ndarray, width: int) -> Encoded:
    """Encode a run of ``width``-byte elements with the byte-plane codec (or raw)."""
    u8 = _as_u8(data)
    n = u8.nbytes
    if width <= 1 or n % width != 0 or n < MIN_COMPRESS_BYTES:
        z = _zstd_if_worth(u8, planes=True)
        if z is None:
            return Encoded(CODEC_RAW, {}, (u8.data,))
        return Encoded(CODEC_ZSTD, {}, (z,))
    planes = u8.reshape(-1, width).T
    segments: list[bytes | memoryview] = []
    spec: list[list[Any]] = []
    any_compressed = False
    for i in range(width):
        plane = np.ascontiguousarray(planes[i])
        z = _zstd_if_worth(plane, planes=True)
        if z is None:
            segments.append(plane.data)
            spec.append(["raw", plane.nbytes])
        else:
            segments.append(z)
            spec.append(["zstd", len(z)])
            any_compressed = True
    if not any_compressed:
        return Encoded(CODEC_RAW, {}, (u8.data,))
    return Encoded(CODEC_PLANES, {"width": width, "planes": spec}, tuple(segments))


def delta_lane(width: int) -> int:
    """The integer lane the delta codec subtracts in: the element width, capped at 8 bytes."""
    while width not in _LANES:
        width //= 2
    return width


def delta_diff(content: np.ndarray, base: np.ndarray, width: int) -> np.ndarray:
    """zigzag(content - base), element-wise in ``width``-byte little-endian integer lanes,
    wrapping. Small changes of a float's bit pattern become small unsigned numbers, whose high
    byte planes are nearly all zero."""
    lane = _LANES[width]
    d = np.subtract(content.view(lane), base.view(lane))  # wraps: unsigned arithmetic
    z = np.left_shift(d, 1)
    signed = d.view(np.dtype(f"i{width}"))
    np.right_shift(signed, 8 * width - 1, out=signed)  # all ones where d < 0, else zero
    np.bitwise_xor(z, d, out=z)
    return z.view(np.uint8)


def delta_apply(base_then_out: np.ndarray, diff: np.ndarray, width: int) -> None:
    """Invert ``delta_diff`` in place: ``base_then_out`` holds the base and receives the
    content. ``diff`` is consumed (overwritten)."""
    lane = _LANES[width]
    z = diff.view(lane)
    sign = np.bitwise_and(z, 1)
    np.negative(sign, out=sign)  # 0 or all ones (unsigned wrap)
    np.right_shift(z, 1, out=z)
    np.bitwise_xor(z, sign, out=z)
    out = base_then_out.view(lane)
    np.add(out, z, out=out)


def encode_delta(
    content: np.ndarray, base: np.ndarray, width: int, base_id: str, depth: int
) -> Encoded:
    """The delta codec: the byte-plane encoding of ``delta_diff(content, base)``; ``depth`` is
    the number of deltas down to a full (non-delta) object, this one included."""
    lane = delta_lane(width)
    inner = encode_elements(delta_diff(content, base, lane), lane)
    params = {
        "base": base_id,
        "depth": depth,
        "op": "sub-zigzag",
        "width": lane,
        "inner": {"codec": inner.codec, "params": inner.params},
    }
    return Encoded(CODEC_DELTA, params, inner.pieces)


def payload_size(enc: Encoded) -> int:
    return enc.size


def _unzstd(frame: memoryview, n: int) -> bytes:
    """The content of one zstd frame that must hold ``n`` bytes. The size the frame header
    declares is checked first: zstd allocates that much, so a corrupt header must not reach it."""
    declared = zstandard.frame_content_size(frame)
    if declared not in (-1, n):
        raise ValueError(f"zstd frame declares {declared} bytes, expected {n}")
    data = _decompressor().decompress(frame, max_output_size=n)
    if len(data) != n:
        raise ValueError(f"zstd frame holds {len(data)} bytes, expected {n}")
    return data


def decode_into(
    codec: int, params: dict[str, Any], payload: memoryview, out: np.ndarray, object_id: str
) -> None:
    """Decode ``payload`` into the uint8 array ``out`` (whose length is the content length)."""
    n = out.nbytes
    try:
        if codec == CODEC_RAW:
            if len(payload) != n:
                raise ValueError(f"raw payload is {len(payload)} bytes, expected {n}")
            out[:] = np.frombuffer(payload, dtype=np.uint8)
        elif codec == CODEC_ZSTD:
            out[:] = np.frombuffer(_unzstd(payload, n), dtype=np.uint8)
        elif codec == CODEC_PLANES:
            width = int(params["width"])
            spec = params["planes"]
            if width < 2 or n % width or len(spec) != width:
                raise ValueError("plane parameters do not fit the content length")
            rows = out.reshape(-1, width)
            m = n // width
            pos = 0
            for i, (kind, size) in enumerate(spec):
                seg = payload[pos : pos + size]
                pos += size
                if kind == "raw":
                    plane = np.frombuffer(seg, dtype=np.uint8)
                elif kind == "zstd":
                    plane = np.frombuffer(_unzstd(seg, m), dtype=np.uint8)
                else:
                    raise ValueError(f"unknown plane encoding {kind!r}")
                if plane.nbytes != m:
                    raise ValueError(f"plane {i} holds {plane.nbytes} bytes, expected {m}")
                rows[:, i] = plane
            if pos != len(payload):
                raise ValueError("payload is longer than its planes")
        else:
            raise ValueError(f"unknown codec id {codec}")
    except (ValueError, KeyError, TypeError, zstandard.ZstdError) as e:
        raise CorruptObjectError(f"object {object_id} does not decode: {e}", object_id) from e


def decode_delta_into(
    params: dict[str, Any], payload: memoryview, out: np.ndarray, object_id: str
) -> None:
    """Apply a delta payload to ``out``, which already holds the decoded base."""
    try:
        width = int(params["width"])
        if width not in _LANES or out.nbytes % width or params.get("op") != "sub-zigzag":
            raise ValueError("bad delta parameters")
        inner_codec, inner_params = int(params["inner"]["codec"]), params["inner"]["params"]
        diff = np.empty(out.nbytes, dtype=np.uint8)
    except (KeyError, TypeError, ValueError) as e:
        msg = f"object {object_id} has bad delta parameters: {e}"
        raise CorruptObjectError(msg, object_id) from e
    decode_into(inner_codec, inner_params, payload, diff, object_id)
    delta_apply(out, diff, width)
