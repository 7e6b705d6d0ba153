"""Reading tensors back: each selected entry is allocated once and its objects are decoded
straight into its memory, in parallel; every object's hash is checked on the way."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from ..errors import CorruptObjectError, ObjectNotFoundError, UnsupportedValueError
from ..format.manifest import TensorEntry
from ..store.objects import ObjectStore
from .tensors import byte_view, dtype_from_name


def _u8(t: torch.Tensor) -> np.ndarray:
    return byte_view(t).numpy()


def _at_key_path(
    err: CorruptObjectError | ObjectNotFoundError, key_path: str
) -> CorruptObjectError | ObjectNotFoundError:
    """The same error, its message (and key_path, for corruption) naming the tensor's key."""
    message = f"tensor at key path {key_path!r}: {err}"
    if isinstance(err, CorruptObjectError):
        return CorruptObjectError(message, err.object_id, key_path)
    return ObjectNotFoundError(message, err.object_id)


def as_committed(t: torch.Tensor, e: TensorEntry) -> torch.Tensor:
    """``t`` (entry ``e``'s bytes) as it was committed: a Parameter, or requiring grad."""
    if e.param:
        return torch.nn.Parameter(t, requires_grad=e.requires_grad)
    if e.requires_grad and t.is_floating_point():
        t.requires_grad_(True)
    return t


class TensorReader:
    def __init__(self, objects: ObjectStore, pool: ThreadPoolExecutor) -> None:
        self.objects = objects
        self.pool = pool

    def read(
        self, entries: dict[int, TensorEntry], where: Callable[[int], str]
    ) -> dict[int, torch.Tensor]:
        """Tensors for ``entries`` ({index: entry}); ``where(i)`` names entry i's key path."""
        out: dict[int, torch.Tensor] = {}
        views: dict[int, np.ndarray] = {}
        jobs: list[tuple[int, Future[Any]]] = []
        packs: dict[str, list[int]] = {}
        for i, e in entries.items():
            try:
                t = torch.empty(e.shape, dtype=dtype_from_name(e.dtype))
            except (RuntimeError, MemoryError) as err:  # torch reports a failed allocation so
                raise UnsupportedValueError(
                    f"tensor at key path {where(i)!r}: cannot allocate {e.nbytes} bytes for "
                    f"{e.dtype}{list(e.shape)} ({type(err).__name__}: {str(err)[:120]})"
                ) from None
            if t.numel() * t.element_size() != e.nbytes:
                raise CorruptObjectError(
                    f"tensor at key path {where(i)!r}: {e.dtype}{e.shape} is not {e.nbytes} bytes"
                )
            out[i] = t
            if e.pack is None:
                views[i] = _u8(t)
        # Queued only once every tensor is allocated and viewed: torch.empty and reshape
        # release the GIL, and with jobs already running each call waited to take it back.
        for i, e in entries.items():
            if e.pack is not None:
                packs.setdefault(e.pack, []).append(i)
                continue
            dst = views[i]
            off = 0
            for oid, length in e.chunks or []:
                piece = dst[off : off + length]
                jobs.append((i, self.pool.submit(self.objects.read_into, oid, piece)))
                off += length
        for pack_id, members in packs.items():
            fut = self.pool.submit(self._unpack, pack_id, members, entries, out)
            jobs.append((members[0], fut))
        for i, fut in jobs:
            try:
                fut.result()
            except (CorruptObjectError, ObjectNotFoundError) as err:
                raise _at_key_path(err, where(i)) from err
        return {i: as_committed(out[i], e) for i, e in entries.items()}

    def _unpack(
        self,
        pack_id: str,
        members: list[int],
        entries: dict[int, TensorEntry],
        out: dict[int, torch.Tensor],
    ) -> None:
        _, content = self.objects.read(pack_id)
        for i in members:
            e = entries[i]
            if e.offset + e.nbytes > content.nbytes:
                raise CorruptObjectError(
                    f"pack {pack_id} is {content.nbytes} bytes; entry needs {e.offset}+{e.nbytes}",
                    pack_id,
                )
            _u8(out[i])[:] = content[e.offset : e.offset + e.nbytes]
