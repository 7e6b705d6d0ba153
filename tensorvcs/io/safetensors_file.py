"""safetensors files: the exact header, lazily mapped tensors, and a streaming writer.

A ``.safetensors`` file is an 8-byte little-endian header length N, N bytes of JSON header
(``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}``), then
the data. For a byte-identical round trip the CLI keeps the header bytes exactly as they are
(key order, spacing and padding included) and stores each tensor by name; checkout writes the
header, then every tensor's bytes at its offsets. That works when the tensors tile the data
region exactly: sorted by offset, each begins where the previous ends, the first at 0, the
last at the end of the file. ``Layout.problem`` says why a file does not (gaps, overlapping or
aliased tensors, trailing bytes, a dtype torch lacks); such a file is stored as opaque bytes.

Tensors are read through one read-only ``mmap`` of the file (``tensor_views``): each tensor is
a view of the mapping, so nothing is copied until the writer reads a chunk of it, and
``mapped.PageDropper`` keeps the resident pages few. (``safe_open(...).get_tensor`` would copy
every tensor into memory, and a commit needs all of a file's tensors as leaves at once.)
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import CorruptObjectError, InputFileError

MAX_HEADER = 100 << 20  # the reference implementation's limit
MAX_SIZE = (1 << 63) - 1  # a dimension, an offset, a tensor's bytes

# safetensors dtype name -> torch dtype (only those this torch has)
_NAMES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U64": "uint64",
    "U32": "uint32",
    "U16": "uint16",
    "U8": "uint8",
    "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn",
    "F8_E4M3FNUZ": "float8_e4m3fnuz",
    "F8_E5M2": "float8_e5m2",
    "F8_E5M2FNUZ": "float8_e5m2fnuz",
    "F8_E8M0": "float8_e8m0fnu",
    "C64": "complex64",
    "C128": "complex128",
}
DTYPES: dict[str, torch.dtype] = {
    k: getattr(torch, v)
    for k, v in _NAMES.items()
    if isinstance(getattr(torch, v, None), torch.dtype)
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}


@dataclass
class TensorSpec:
    name: str
    dtype: str  # safetensors name ("F32")
    shape: list[int]
    begin: int  # offsets relative to the start of the data region
    end: int


@dataclass
class Layout:
    header: bytes  # the 8-byte length and the JSON header, exactly as in the file
    metadata: dict[str, str] | None
    tensors: list[TensorSpec]  # in header order
    size: int  # file size
    problem: str | None = None  # why the file cannot be stored by tensors (None: it can)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def data_start(self) -> int:
        return len(self.header)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def read_layout(path: str | os.PathLike[str]) -> Layout:
    """Parse and check the header of ``path``. InputFileError if it is not a safetensors
    file; a well-formed file whose tensors do not tile the data gets ``problem`` set."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputFileError(f"{path}: not a safetensors file (shorter than 8 bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise InputFileError(
                f"{path}: not a safetensors file (header length {n} does not fit the file)"
            )
        raw = f.read(n)
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
        if not isinstance(doc, dict):
            raise ValueError("the header is not a JSON object")
        metadata = doc.pop("__metadata__", None)
        if metadata is not None and not (
            isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())
        ):
            raise ValueError("__metadata__ must map strings to strings")
        specs = _specs(doc)
        for s in specs:
            if math.prod(s.shape) > MAX_SIZE:
                raise ValueError(f"tensor {s.name!r}: shape {s.shape} is too large")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise InputFileError(f"{path}: not a valid safetensors header: {e}") from None
    except RecursionError:
        raise InputFileError(
            f"{path}: not a valid safetensors header: its JSON nests too deeply"
        ) from None
    layout = Layout(head + raw, metadata, specs, size)
    layout.problem = _tiling_problem(layout)
    return layout


def _specs(doc: dict[str, Any]) -> list[TensorSpec]:
    """The tensor entries of a parsed header (``__metadata__`` removed); ValueError names the
    first malformed one."""
    specs = []
    for name, info in doc.items():
        if not isinstance(info, dict):
            raise ValueError(f"tensor {name!r}: malformed entry")
        dtype: Any = info.get("dtype")
        shape: Any = info.get("shape")
        offs: Any = info.get("data_offsets")
        ok = isinstance(dtype, str) and isinstance(shape, list) and isinstance(offs, list)
        if not ok or len(offs) != 2:
            raise ValueError(f"tensor {name!r}: malformed entry")
        if not all(type(x) is int and 0 <= x <= MAX_SIZE for x in [*shape, *offs]):
            raise ValueError(f"tensor {name!r}: bad shape or offsets")
        if offs[1] < offs[0]:
            raise ValueError(f"tensor {name!r}: bad shape or offsets")
        specs.append(TensorSpec(name, dtype, list(shape), offs[0], offs[1]))
    return specs


def _tiling_problem(layout: Layout) -> str | None:
    data = layout.size - layout.data_start
    for s in layout.tensors:
        if s.dtype not in DTYPES:
            return f"tensor {s.name!r} has dtype {s.dtype}, which this torch does not have"
        nbytes = math.prod(s.shape) * DTYPES[s.dtype].itemsize
        if s.end - s.begin != nbytes:
            return f"tensor {s.name!r}: offsets span {s.end - s.begin} bytes, not {nbytes}"
        if s.end > data:
            return f"tensor {s.name!r} ends past the end of the file"
    pos = 0
    for s in sorted(layout.tensors, key=lambda s: (s.begin, s.end)):
        if s.begin < pos:
            return f"tensor {s.name!r} overlaps another tensor"
        if s.begin > pos:
            return f"a gap of {s.begin - pos} bytes before tensor {s.name!r}"
        pos = s.end
    if pos != data:
        return f"{data - pos} bytes after the last tensor"
    return None


def tensor_views(
    path: str | os.PathLike[str], layout: Layout
) -> tuple[mmap.mmap | None, dict[str, torch.Tensor]]:
    """{name: tensor} in header order, each a view of one read-only mapping of the file.

    Keep the returned mmap referenced while the tensors are used; never close it (the views
    would dangle) — it is released with the last view."""
    out: dict[str, torch.Tensor] = {}
    mm: mmap.mmap | None = None
    if layout.size > layout.data_start:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    for s in layout.tensors:
        dtype = DTYPES[s.dtype]
        n = s.end - s.begin
        if n == 0 or mm is None:
            out[s.name] = torch.empty(s.shape, dtype=dtype)
            continue
        u8 = np.frombuffer(mm, dtype=np.uint8, count=n, offset=layout.data_start + s.begin)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "non-writable buffer": we only read
            t = torch.from_numpy(u8)
        out[s.name] = t.view(dtype).reshape(s.shape)
    return mm, out


def make_header(
    items: list[tuple[str, str, list[int], int]], metadata: dict[str, str] | None
) -> bytes:
    """The 8-byte length and JSON header for tensors written back to back in ``items`` order
    (name, safetensors dtype, shape, nbytes); padded with spaces to a multiple of 8 bytes, as
    the reference writer does."""
    doc: dict[str, Any] = {}
    if metadata:
        doc["__metadata__"] = metadata
    pos = 0
    for name, dtype, shape, nbytes in items:
        doc[name] = {"dtype": dtype, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-(len(text)) % 8)
    return struct.pack("<Q", len(text)) + text


def header_order(
    header: bytes, where: str = "stored safetensors header"
) -> list[tuple[str, int, int]]:
    """(name, begin, end) of the tensors of a stored header, in data order. A header that
    does not parse is CorruptObjectError naming ``where`` (the file entry's path)."""
    try:
        if len(header) < 8:
            raise ValueError(f"{len(header)} bytes, shorter than its length field")
        (n,) = struct.unpack_from("<Q", header, 0)
        if n > MAX_HEADER or 8 + n > len(header):
            raise ValueError(f"header length {n} does not fit the {len(header)} stored bytes")
        doc = json.loads(header[8 : 8 + n].decode("utf-8"), object_pairs_hook=_no_duplicates)
        if not isinstance(doc, dict):
            raise ValueError("the header is not a JSON object")
        doc.pop("__metadata__", None)
        items = [(s.name, s.begin, s.end) for s in _specs(doc)]
    except (ValueError, KeyError, TypeError) as e:  # UnicodeDecodeError is a ValueError
        raise CorruptObjectError(f"{where}: not a valid safetensors header: {e}") from None
    except RecursionError:
        raise CorruptObjectError(
            f"{where}: not a valid safetensors header: its JSON nests too deeply"
        ) from None
    return sorted(items, key=lambda x: (x[1], x[2]))
