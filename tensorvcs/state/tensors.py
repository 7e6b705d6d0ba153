"""Tensors as canonical bytes: the dtype table, checks, and zero-copy byte views.

A tensor's canonical content is its elements in row-major (C) order, each element in
little-endian byte order, exactly as a contiguous CPU tensor holds them on a little-endian host.
"""

from __future__ import annotations

import sys

import torch

from ..errors import CorruptObjectError, UnsupportedValueError

if sys.byteorder != "little":  # pragma: no cover - no big-endian CI
    raise ImportError("tensorvcs stores little-endian bytes and needs a little-endian host")


def _build_dtype_table() -> dict[str, torch.dtype]:
    table: dict[str, torch.dtype] = {}
    for attr in dir(torch):
        d = getattr(torch, attr)
        if isinstance(d, torch.dtype):
            name = str(d).removeprefix("torch.")
            if name.startswith(("qint", "quint")):
                continue  # quantized tensors need scale/zero-point: not a plain byte layout
            table[name] = d
    return table


DTYPES: dict[str, torch.dtype] = _build_dtype_table()


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise CorruptObjectError(
            f"dtype {name!r} is not known to this torch {torch.__version__}"
        ) from None


def check_storable(t: torch.Tensor, where: str) -> None:
    """Raise UnsupportedValueError for tensors that have no plain strided byte layout."""
    reason = None
    if t.layout != torch.strided:
        reason = f"layout {t.layout} (only strided tensors are stored; call .to_dense())"
    elif t.is_quantized:
        reason = "a quantized tensor (dequantize it, or store int_repr() and its scale)"
    elif t.is_meta:
        reason = "a meta tensor, which has no data"
    elif getattr(t, "is_nested", False):
        reason = "a nested tensor"
    elif type(t) not in (torch.Tensor, torch.nn.Parameter):
        reason = (
            f"a tensor subclass {type(t).__qualname__} (save its local shards, or use the "
            "torch.distributed.checkpoint integration)"
        )
    elif dtype_name(t.dtype) not in DTYPES:
        reason = f"dtype {t.dtype}"
    if reason:
        raise UnsupportedValueError(f"cannot store tensor at key path {where!r}: {reason}", where)


def byte_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor's canonical bytes as a 1-D uint8 tensor on its own device.

    Zero-copy for contiguous tensors; non-contiguous ones (and conj/neg views) are made
    contiguous first.
    """
    t = t.detach()
    if t.is_conj():
        t = t.resolve_conj()
    if t.is_neg():
        t = t.resolve_neg()
    if not t.is_contiguous():
        t = t.contiguous()
    return t.reshape(-1).view(torch.uint8)


def nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()
