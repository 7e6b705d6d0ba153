"""The torch-aware leaves of the value tree, for committing and for checking out.

Leaf tags added here (see docs/format.md):

- ``["tensor", i]`` — entry ``i`` of the manifest's tensor table. Two references to the very
  same tensor view (tied weights) share one entry, and come back as one tensor.
- ``["ndarray", i, dtype, shape]`` — a numpy array; entry ``i`` holds its bytes (as uint8).
- ``["npscalar", dtype, base64 bytes]`` — a numpy scalar (np.float32(0.5), ...).
- ``["dtype", name]``, ``["device", str]``, ``["size", [ints]]`` — torch.dtype/device/Size.
- ``["pickle", object id, type name]`` — an opaque pickle, written only with allow_pickle=True
  and unpickled only with allow_pickle=True at checkout.
"""

from __future__ import annotations

import base64
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import CorruptObjectError, UnsupportedValueError
from ..format.values import Hooks, KeyPath, Node, path_str
from .tensors import DTYPES, check_storable, dtype_from_name, dtype_name


@dataclass
class PendingTensor:
    """A tensor found while encoding, waiting to be written."""

    tensor: torch.Tensor
    path: KeyPath
    width: int  # element width for the byte-plane codec


class CommitHooks(Hooks):
    def __init__(self, allow_pickle: bool, put_blob: Callable[[bytes], str]) -> None:
        self.allow_pickle = allow_pickle
        self.put_blob = put_blob
        self.pending: list[PendingTensor] = []
        self._views: dict[tuple[Any, ...], int] = {}

    def _add(self, t: torch.Tensor, path: KeyPath, width: int) -> int:
        key = None
        if t.numel() > 0 and t.device.type != "meta":
            key = (
                t.device,
                t.dtype,
                t.untyped_storage().data_ptr(),
                t.storage_offset(),
                tuple(t.shape),
                tuple(t.stride()),
                t.is_conj(),
                t.is_neg(),
            )
            if key in self._views:
                return self._views[key]
        self.pending.append(PendingTensor(t, path, width))
        idx = len(self.pending) - 1
        if key is not None:
            self._views[key] = idx
        return idx

    def encode_leaf(self, value: Any, path: KeyPath) -> Node | None:
        if isinstance(value, torch.Tensor):
            check_storable(value, path_str(path))
            # complex elements are (real, imaginary): code them as two real lanes
            width = value.element_size() // (2 if value.is_complex() else 1)
            return ["tensor", self._add(value, path, width)]
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject or value.dtype.fields is not None:
                return None  # object / structured arrays: only as an opaque pickle
            data = np.ascontiguousarray(value)
            u8 = torch.from_numpy(data.reshape(-1).view(np.uint8))
            idx = self._add(u8, path, max(1, value.dtype.itemsize))
            return ["ndarray", idx, value.dtype.str, list(value.shape)]
        if isinstance(value, np.generic) and not isinstance(value, np.object_):
            return ["npscalar", value.dtype.str, base64.b64encode(value.tobytes()).decode()]
        if isinstance(value, torch.dtype):
            return ["dtype", dtype_name(value)]
        if isinstance(value, torch.device):
            return ["device", str(value)]
        if type(value) is torch.Size:
            return ["size", list(value)]
        return None

    def encode_opaque(self, value: Any, path: KeyPath) -> Node | None:
        if not self.allow_pickle:
            hint = state_dict_hint(value, path)
            if hint:
                raise UnsupportedValueError(hint, path_str(path))
            return None
        try:
            data = pickle.dumps(value, protocol=4)
        except Exception as e:
            raise UnsupportedValueError(
                f"cannot pickle value of type {type(value).__qualname__} at key path "
                f"{path_str(path)!r}: {e}",
                path_str(path),
            ) from e
        t = type(value)
        return ["pickle", self.put_blob(data), f"{t.__module__}.{t.__qualname__}"]


def state_dict_hint(value: Any, path: KeyPath) -> str | None:
    """The error for a live object whose state is its ``state_dict()`` (a module, an
    optimizer, a scheduler...), committed itself by mistake; None for anything else."""
    t = type(value)
    name = f"{t.__module__}.{t.__qualname__}"
    if isinstance(value, torch.nn.Module):
        what, var = f"an nn.Module ({name})", "module"
    elif isinstance(value, torch.optim.Optimizer):
        what, var = f"an optimizer ({name})", "optimizer"
    elif callable(getattr(value, "state_dict", None)) and not isinstance(value, type):
        what, var = f"a {name}", "its"
    else:
        return None
    call = "its state_dict()" if var == "its" else f"{var}.state_dict()"
    back = "load_state_dict" if var == "its" else f"{var}.load_state_dict"
    return (
        f"cannot store {what} at key path {path_str(path)!r}: commit {call} instead "
        f"(its tensors and settings; load it back with {back})"
    )


class CheckoutHooks(Hooks):
    def __init__(
        self,
        load_tensor: Callable[[int, KeyPath], torch.Tensor],
        load_blob: Callable[[str, KeyPath], bytes],
        allow_pickle: bool,
    ) -> None:
        self.load_tensor = load_tensor
        self.load_blob = load_blob
        self.allow_pickle = allow_pickle

    def decode_leaf(self, node: list[Any], path: KeyPath) -> Any:
        tag = node[0]
        try:
            if tag == "tensor":
                return self.load_tensor(int(node[1]), path)
            if tag == "ndarray":
                raw = self.load_tensor(int(node[1]), path)
                dt = np.dtype(node[2])
                return raw.numpy().view(dt).reshape([int(x) for x in node[3]]).copy()
            if tag == "npscalar":
                return np.frombuffer(base64.b64decode(node[2]), dtype=np.dtype(node[1]))[0]
            if tag == "dtype":
                if node[1] not in DTYPES:
                    return getattr(torch, node[1])
                return dtype_from_name(node[1])
            if tag == "device":
                return torch.device(node[1])
            if tag == "size":
                return torch.Size(int(x) for x in node[1])
        except (IndexError, TypeError, ValueError, AttributeError) as e:
            raise CorruptObjectError(f"malformed {tag} node at key path {path_str(path)!r}") from e
        if tag == "pickle":
            if not self.allow_pickle:
                raise UnsupportedValueError(
                    f"key path {path_str(path)!r} holds an opaque pickle of {node[2]}; pass "
                    "allow_pickle=True to unpickle it (this runs code from the checkpoint)",
                    path_str(path),
                )
            return pickle.loads(self.load_blob(node[1], path))
        return super().decode_leaf(node, path)
