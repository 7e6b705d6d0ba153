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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zstandard

from ..accel import native
from ..errors import CorruptObjectError
from .config import MAX_DELTA_CHAIN
from .ids import CHECK_KEY, content_check, is_object_id

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

# Reader sanity bounds, checked before anything is allocated or decompressed (docs/format.md,
# "Validation limits"). zstd cannot expand one payload byte into more than about 32 Ki bytes
# (a 128 KiB RLE block takes 4 bytes), so a frame claiming more is refused unread.
MAX_EXPANSION = 1 << 17
MAX_PLANE_WIDTH = 1 << 16  # element width of the planes codec
NATIVE_MAX_WIDTH = 64  # widths the native merge takes (wider ones: numpy)
# Decoding's intermediates (zstd'd planes, a delta's difference) up to this size go to
# buffers each thread keeps and reuses (at most about two chunks per thread): fresh memory
# costs the kernel a zeroed page per 4 KiB, as much as the decoding itself on small states.
SCRATCH_MAX = 1 << 23
DIFF_SLOT = -1  # the scratch slot of a delta's difference (planes use 0..width-1)
# Encoding with ``reuse=True`` (a writer that writes each encoding before it encodes again in
# the same thread) puts its planes and a delta's difference into these slots as well.
ENC_PLANES_SLOT = -2
ENC_DIFF_SLOTS = (-3, -4)
BASE_SLOT = -5  # a writer's copy of a parent chunk read back from the store (a delta base)

_local = threading.local()


def scratch(slot: int, n: int) -> np.ndarray:
    """``n`` bytes of this thread's reusable buffer ``slot`` (a fresh array beyond
    SCRATCH_MAX). Valid until the thread next asks for the same slot: decode_into's planes
    use slots 0..width-1, a delta's difference the slot DIFF_SLOT; encodings with ``reuse``
    ENC_PLANES_SLOT and ENC_DIFF_SLOTS, a writer's parent chunk BASE_SLOT."""
    if n > SCRATCH_MAX:
        return np.empty(n, dtype=np.uint8)
    bufs: dict[int, np.ndarray] | None = getattr(_local, "scratch", None)
    if bufs is None:
        bufs = _local.scratch = {}
    b = bufs.get(slot)
    if b is None or b.nbytes < n:
        b = bufs[slot] = np.empty(n, dtype=np.uint8)
    return b[:n]


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

    def checked(self, content: bytes | bytearray | memoryview, **extra: Any) -> Encoded:
        """This encoding with the content checksum of ``content`` (what it decodes to) and
        ``extra`` in its parameters (docs/format.md section 4)."""
        params = {**self.params, **extra, CHECK_KEY: content_check(content)}
        return Encoded(self.codec, params, self.pieces)


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


def encode_elements(
    data: bytes | bytearray | memoryview | np.ndarray, width: int, *, reuse: bool = False
) -> Encoded:
    """Encode a run of ``width``-byte elements with the byte-plane codec (or raw).

    ``reuse=True``: the planes go into this thread's scratch buffer (no fresh memory), so
    the result is valid only until the thread next encodes with ``reuse`` (write it first)."""
    u8 = _as_u8(data)
    n = u8.nbytes
    if width <= 1 or n % width != 0 or n < MIN_COMPRESS_BYTES:
        z = _zstd_if_worth(u8, planes=True)
        if z is None:
            return Encoded(CODEC_RAW, {}, (u8.data,))
        return Encoded(CODEC_ZSTD, {}, (z,))
    out = scratch(ENC_PLANES_SLOT, n).reshape(width, n // width) if reuse else None
    return _encode_planes(split_planes(u8, width, out), lambda: u8.data)


def _encode_planes(planes: np.ndarray, whole: Callable[[], memoryview]) -> Encoded:
    """The planes codec of split ``planes`` (shape (width, m)); ``whole()`` gives the
    unsplit content for the raw encoding, when no plane shrinks."""
    width = planes.shape[0]
    segments: list[bytes | memoryview] = []
    spec: list[list[Any]] = []
    any_compressed = False
    for i in range(width):
        plane = planes[i]
        z = _zstd_if_worth(plane, planes=True)
        if z is None:
            segments.append(plane.data)
            spec.append(["raw", plane.nbytes])
        else:
            segments.append(z)
            spec.append(["zstd", len(z)])
            any_compressed = True
    if not any_compressed:
        return Encoded(CODEC_RAW, {}, (whole(),))
    return Encoded(CODEC_PLANES, {"width": width, "planes": spec}, tuple(segments))


# Plane transposition works on blocks of this many elements, so that what a block reads and
# writes stays in the core's cache (a whole-chunk strided copy runs at a third of the speed).
PLANE_BLOCK = 1 << 16


def split_planes(u8: np.ndarray, width: int, out: np.ndarray | None = None) -> np.ndarray:
    """The byte planes of a run of ``width``-byte elements: row ``i`` holds byte ``i`` of every
    element (into ``out``, shape (width, n / width), when given). For 2-, 4- and 8-byte
    elements a plane is a shift and a truncating cast of the integer lanes (contiguous,
    vectorised: 3-6x numpy's strided byte gather); other widths use a blocked transposed
    copy."""
    m = u8.nbytes // width
    if out is None:
        out = np.empty((width, m), dtype=np.uint8)
    if native is not None and u8.flags.c_contiguous:  # one pass in C (tensorvcs/_native.c)
        native.split_planes(u8, width, out)
        return out
    lane = _LANES.get(width)
    if lane is not None and width > 1:
        v = u8.view(lane)
        for b in range(0, m, PLANE_BLOCK):
            vb = v[b : b + PLANE_BLOCK]
            np.copyto(out[0, b : b + PLANE_BLOCK], vb, casting="unsafe")
            for i in range(1, width):
                np.right_shift(vb, 8 * i, out=out[i, b : b + PLANE_BLOCK], casting="unsafe")
        return out
    rows = u8.reshape(m, width)
    for b in range(0, m, PLANE_BLOCK):
        np.copyto(out[:, b : b + PLANE_BLOCK], rows[b : b + PLANE_BLOCK].T)
    return out


def merge_planes(planes: list[np.ndarray], out: np.ndarray) -> None:
    """Invert ``split_planes``: interleave ``planes`` (each ``out.nbytes / width`` bytes) into
    ``out``, block by block (a whole-array strided scatter into cold memory is slow)."""
    width = len(planes)
    m = out.nbytes // width
    if (
        native is not None
        and width <= NATIVE_MAX_WIDTH
        and out.flags.c_contiguous
        and out.flags.writeable
        and all(p.flags.c_contiguous for p in planes)
    ):
        native.merge_planes(planes, out)
        return
    if width == 2:  # two lanes: a cast, a shift and an or, contiguous
        v = out.view(np.uint16)
        tmp = np.empty(min(m, PLANE_BLOCK), dtype=np.uint16)
        for b in range(0, m, PLANE_BLOCK):
            vb = v[b : b + PLANE_BLOCK]
            t = tmp[: vb.shape[0]]
            np.copyto(vb, planes[0][b : b + PLANE_BLOCK])
            np.copyto(t, planes[1][b : b + PLANE_BLOCK])
            np.left_shift(t, 8, out=t)
            np.bitwise_or(vb, t, out=vb)
        return
    rows = out.reshape(m, width)
    step = 4 * PLANE_BLOCK
    for b in range(0, m, step):
        for i, plane in enumerate(planes):
            rows[b : b + step, i] = plane[b : b + step]


def delta_lane(width: int) -> int:
    """The integer lane the delta codec subtracts in: the element width, capped at 8 bytes."""
    while width not in _LANES:
        width //= 2
    return width


def delta_diff(
    content: np.ndarray, base: np.ndarray, width: int, *, reuse: bool = False
) -> np.ndarray:
    """zigzag(content - base), element-wise in ``width``-byte little-endian integer lanes,
    wrapping. Small changes of a float's bit pattern become small unsigned numbers, whose high
    byte planes are nearly all zero. ``reuse``: computed in this thread's scratch buffers
    (valid until the thread's next ``reuse`` encoding)."""
    lane = _LANES[width]
    d_out = z_out = None
    if reuse:
        n = content.nbytes
        d_out, z_out = (scratch(slot, n).view(lane) for slot in ENC_DIFF_SLOTS)
    d = np.subtract(content.view(lane), base.view(lane), out=d_out)  # wraps: unsigned
    z = np.left_shift(d, 1, out=z_out)
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
    content: np.ndarray,
    base: np.ndarray,
    width: int,
    base_id: str,
    depth: int,
    *,
    reuse: bool = False,
) -> Encoded:
    """The delta codec: the byte-plane encoding of ``delta_diff(content, base)``; ``depth`` is
    the number of deltas down to a full (non-delta) object, this one included. ``reuse``: as
    for encode_elements."""
    lane = delta_lane(width)
    n = content.nbytes
    if _native_delta(lane, n, content, base):
        # zigzag difference and plane split in one pass (no difference array)
        out = scratch(ENC_PLANES_SLOT, n) if reuse else np.empty(n, dtype=np.uint8)
        assert native is not None  # _native_delta checked it
        native.delta_split(content, base, lane, out)
        inner = _encode_planes(
            out.reshape(lane, n // lane),
            lambda: delta_diff(content, base, lane, reuse=reuse).data,  # no plane shrank
        )
    else:
        inner = encode_elements(delta_diff(content, base, lane, reuse=reuse), lane, reuse=reuse)
    params = {
        "base": base_id,
        "depth": depth,
        "op": "sub-zigzag",
        "width": lane,
        "inner": {"codec": inner.codec, "params": inner.params},
    }
    return Encoded(CODEC_DELTA, params, inner.pieces)


def _native_delta(lane: int, n: int, *arrays: np.ndarray) -> bool:
    """Whether the native one-pass delta loops take these contiguous ``n``-byte arrays."""
    return (
        native is not None
        and lane in (2, 4, 8)
        and n >= MIN_COMPRESS_BYTES
        and n % lane == 0
        and all(a.flags.c_contiguous and a.nbytes == n for a in arrays)
    )


def payload_size(enc: Encoded) -> int:
    return enc.size


def _check_frame(frame: memoryview, n: int) -> None:
    """Refuse a zstd frame that cannot hold exactly ``n`` bytes, reading only its header."""
    try:
        declared = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise ValueError(f"not a zstd frame ({e})") from None
    if declared not in (-1, n):
        raise ValueError(f"zstd frame declares {declared} bytes, expected {n}")
    if n > (len(frame) + 1) * MAX_EXPANSION:
        raise ValueError(f"a zstd frame of {len(frame)} bytes cannot hold {n} bytes")


def _unzstd_into(frame: memoryview, out: np.ndarray) -> None:
    """Decode one zstd frame straight into ``out``, which it must fill exactly: the size the
    frame header declares is checked first (_check_frame), a frame that ends early or holds
    more is refused; nothing is allocated beyond zstd's own window."""
    n = out.nbytes
    _check_frame(frame, n)
    view = out.data.cast("B")  # uint8, contiguous: readinto fills it in place
    got = 0
    with _decompressor().stream_reader(frame) as r:
        while got < n:
            k = r.readinto(view[got:])
            if not k:
                break
            got += k
        if got < n:
            raise ValueError(f"zstd frame holds {got} bytes, expected {n}")
        if r.read(1):
            raise ValueError(f"zstd frame holds more than the {n} bytes expected")


def _plane_spec(params: dict[str, Any], n: int) -> tuple[int, list[tuple[str, int]]]:
    width = params.get("width")
    spec = params.get("planes")
    if type(width) is not int or not 2 <= width <= MAX_PLANE_WIDTH or n % width:
        raise ValueError(f"plane width {width!r:.40} does not fit the content length {n}")
    if not isinstance(spec, list) or len(spec) != width:
        raise ValueError("plane parameters do not fit the content length")
    out = []
    for entry in spec:
        if not isinstance(entry, list) or len(entry) != 2:
            raise ValueError(f"malformed plane entry {entry!r:.60}")
        kind, size = entry
        if kind not in ("raw", "zstd") or type(size) is not int or size < 0:
            raise ValueError(f"malformed plane entry {entry!r:.60}")
        out.append((kind, size))
    return width, out


def check_payload(codec: int, params: dict[str, Any], payload: memoryview, n: int) -> None:
    """Raise ValueError unless ``payload`` can decode to exactly ``n`` bytes with ``codec``
    (never 3: a delta's inner codec is checked by its caller). Reads only sizes and zstd frame
    headers: called before the content is allocated."""
    if codec == CODEC_RAW:
        if len(payload) != n:
            raise ValueError(f"raw payload is {len(payload)} bytes, expected {n}")
    elif codec == CODEC_ZSTD:
        _check_frame(payload, n)
    elif codec == CODEC_PLANES:
        width, spec = _plane_spec(params, n)
        m = n // width
        total = sum(size for _, size in spec)
        if total != len(payload):
            longer = "longer" if len(payload) > total else "shorter"
            raise ValueError(f"payload is {longer} than its planes ({len(payload)} != {total})")
        pos = 0
        for i, (kind, size) in enumerate(spec):
            if kind == "raw" and size != m:
                raise ValueError(f"plane {i} holds {size} bytes, expected {m}")
            if kind == "zstd":
                _check_frame(payload[pos : pos + size], m)
            pos += size
    else:
        raise ValueError(f"unknown codec id {codec!r:.20}")


def decode_into(
    codec: int,
    params: dict[str, Any],
    payload: memoryview,
    out: np.ndarray,
    object_id: str,
    merge: Callable[[list[np.ndarray], np.ndarray], None] | None = None,
) -> None:
    """Decode ``payload`` into the uint8 array ``out`` (whose length is the content length).
    ``merge``: what puts a planes payload's planes into ``out`` (default merge_planes)."""
    n = out.nbytes
    try:
        check_payload(codec, params, payload, n)
        if codec == CODEC_RAW:
            out[:] = np.frombuffer(payload, dtype=np.uint8)
        elif codec == CODEC_ZSTD:
            _unzstd_into(payload, out)
        else:
            (merge or merge_planes)(_decode_planes(params, payload, n), out)
    except (ValueError, KeyError, TypeError, zstandard.ZstdError) as e:
        raise CorruptObjectError(f"object {object_id} does not decode: {e}", object_id) from e


def _decode_planes(params: dict[str, Any], payload: memoryview, n: int) -> list[np.ndarray]:
    """The planes of a checked planes payload: raw ones as views of it, zstd'd ones decoded
    into this thread's scratch slots 0..width-1."""
    width, spec = _plane_spec(params, n)
    m = n // width
    pos = 0
    planes: list[np.ndarray] = []
    for i, (kind, size) in enumerate(spec):
        seg = payload[pos : pos + size]
        pos += size
        if kind == "raw":
            plane = np.frombuffer(seg, dtype=np.uint8)
        else:
            plane = scratch(i, m)
            _unzstd_into(seg, plane)
        if plane.nbytes != m:
            raise ValueError(f"plane {i} holds {plane.nbytes} bytes, expected {m}")
        planes.append(plane)
    return planes


@dataclass(frozen=True)
class DeltaParams:
    base: str
    width: int
    depth: int
    inner_codec: int
    inner_params: dict[str, Any]


def delta_params(params: dict[str, Any], n: int) -> DeltaParams:
    """The parameters of a delta object of content length ``n``; ValueError if malformed."""
    base = params.get("base")
    if not isinstance(base, str) or not is_object_id(base):
        raise ValueError(f"base {base!r:.80} is not an object id")
    width = params.get("width")
    if type(width) is not int or width not in _LANES or n % width:
        raise ValueError(f"lane width {width!r:.40} does not fit the content length {n}")
    if params.get("op") != "sub-zigzag":
        raise ValueError(f"unknown delta op {params.get('op')!r:.40}")
    depth = params.get("depth", 1)
    if type(depth) is not int or not 1 <= depth <= MAX_DELTA_CHAIN:
        raise ValueError(f"depth {depth!r:.40} is not in 1..{MAX_DELTA_CHAIN}")
    inner = params.get("inner")
    if not isinstance(inner, dict):
        raise ValueError("no inner codec")
    codec, inner_params = inner.get("codec"), inner.get("params")
    if type(codec) is not int or codec not in (CODEC_RAW, CODEC_ZSTD, CODEC_PLANES):
        raise ValueError(f"inner codec {codec!r:.20} is not raw, zstd or planes")
    if not isinstance(inner_params, dict):
        raise ValueError("inner codec parameters are not an object")
    return DeltaParams(base, width, depth, codec, inner_params)


def check_delta_payload(params: dict[str, Any], payload: memoryview, n: int) -> DeltaParams:
    """``delta_params`` plus the inner payload's sizes (before anything is allocated)."""
    d = delta_params(params, n)
    check_payload(d.inner_codec, d.inner_params, payload, n)
    return d


def decode_delta_into(
    params: dict[str, Any], payload: memoryview, out: np.ndarray, object_id: str
) -> None:
    """Apply a delta payload to ``out``, which already holds the decoded base."""
    try:
        d = check_delta_payload(params, payload, out.nbytes)
    except (ValueError, zstandard.ZstdError) as e:
        msg = f"object {object_id} has bad delta parameters: {e}"
        raise CorruptObjectError(msg, object_id) from e
    n = out.nbytes
    if (
        d.inner_codec == CODEC_PLANES
        and d.inner_params.get("width") == d.width
        and out.flags.writeable
        and _native_delta(d.width, n, out)
    ):
        # planes merged, un-zigzagged and added to the base in one pass (no difference array)
        assert native is not None  # _native_delta checked it
        decode_into(CODEC_PLANES, d.inner_params, payload, out, object_id, native.delta_merge)
        return
    diff = scratch(DIFF_SLOT, n)
    decode_into(d.inner_codec, d.inner_params, payload, diff, object_id)
    delta_apply(out, diff, d.width)
