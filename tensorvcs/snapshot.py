"""Host snapshots of a live training state, and the RNG states a bit-exact resume needs.

``snapshot(state)`` returns a copy of ``state`` that later training steps cannot change: every
tensor is copied to CPU memory, containers are rebuilt, and live objects are replaced by their
state: anything with a ``state_dict()`` method (modules, optimizers, schedulers, GradScaler,
stateful samplers) by that state dict, a ``torch.Generator`` by ``get_state()``. This is the
only part of an asynchronous commit the training loop waits for; hashing, compression and
writes then work on the copy in the background.

Aliasing is kept: views of one storage that cover most of it (tied weights, flat parameter
buffers) are rebuilt over one copied storage, so the store still writes tied weights once and
checks them out as one tensor.
"""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from .format.values import KeyPath, path_str
from .state.tensors import check_storable

__all__ = ["capture_rng", "plain_containers", "restore_rng", "snapshot"]


class _Snapshotter:
    def __init__(self) -> None:
        # storage key -> copied CPU storage; view key -> copied view
        self.storages: dict[tuple[Any, ...], torch.UntypedStorage] = {}
        self.views: dict[tuple[Any, ...], torch.Tensor] = {}

    def tensor(self, t: torch.Tensor, path: KeyPath) -> torch.Tensor:
        check_storable(t, path_str(path))
        if t.numel() == 0 or t.is_conj() or t.is_neg():
            out = t.detach().resolve_conj().resolve_neg().to("cpu", copy=True)
            return self._wrap(t, out)
        storage = t.untyped_storage()
        skey = (t.device, storage.data_ptr(), storage.nbytes())
        vkey = (skey, t.dtype, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        hit = self.views.get(vkey)
        if hit is not None:
            return hit
        if t.numel() * t.element_size() * 2 >= storage.nbytes():
            # the view covers most of its storage: copy the storage once, rebuild the view
            copied = self.storages.get(skey)
            if copied is None:
                copied = storage.clone() if t.device.type == "cpu" else storage.cpu()
                self.storages[skey] = copied
            out = torch.empty((0,), dtype=t.dtype)
            out.set_(copied, t.storage_offset(), t.size(), t.stride())
        else:  # a small view of a big storage: copy just the view
            out = t.detach().to("cpu", copy=True)
        out = self._wrap(t, out)
        self.views[vkey] = out
        return out

    @staticmethod
    def _wrap(src: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        if isinstance(src, torch.nn.Parameter):
            return torch.nn.Parameter(out, requires_grad=src.requires_grad)
        return out

    def value(self, v: Any, path: KeyPath) -> Any:
        t = type(v)
        if v is None or t in (bool, int, float, str, bytes, complex):
            return v
        if isinstance(v, torch.Tensor):
            return self.tensor(v, path)
        if isinstance(v, torch.Generator):
            return v.get_state().clone()
        if isinstance(v, np.ndarray):
            return v.copy()
        if isinstance(v, np.generic):
            return v
        if t is OrderedDict:
            out: Any = OrderedDict((k, self.value(x, (*path, k))) for k, x in v.items())
            meta = getattr(v, "_metadata", None)
            if meta is not None:
                out._metadata = copy.deepcopy(meta)
            return out
        if isinstance(v, Mapping):  # dict and dict-like (AttributeDict, defaultdict): a dict
            return {k: self.value(x, (*path, k)) for k, x in v.items()}
        if t is list or t is tuple:
            return t(self.value(x, (*path, i)) for i, x in enumerate(v))
        if t is set or t is frozenset:
            return t(v)
        if t is bytearray:
            return bytes(v)
        if isinstance(v, (torch.dtype, torch.device, torch.Size)):
            return v
        state_dict = getattr(v, "state_dict", None)
        if callable(state_dict) and not isinstance(v, type):
            return self.value(state_dict(), path)
        try:  # anything else (stored only with allow_pickle): a private copy
            return copy.deepcopy(v)
        except Exception:
            return v


def snapshot(state: Any) -> Any:
    """A CPU copy of ``state`` that later training cannot change (see the module docstring)."""
    return _Snapshotter().value(state, ())


def plain_containers(state: Any) -> Any:
    """``state`` with dict-like containers (AttributeDict, defaultdict, ...) turned into plain
    dicts, recursively through dicts, lists and tuples; leaves are not copied."""
    t = type(state)
    if t is OrderedDict:
        out: Any = OrderedDict((k, plain_containers(v)) for k, v in state.items())
        meta = getattr(state, "_metadata", None)
        if meta is not None:
            out._metadata = meta
        return out
    if isinstance(state, Mapping):
        return {k: plain_containers(v) for k, v in state.items()}
    if t is list or t is tuple:
        return t(plain_containers(v) for v in state)
    return state


def capture_rng() -> dict[str, Any]:
    """The global RNG states: python ``random``, numpy's legacy global generator, torch CPU,
    and every CUDA device when CUDA is initialized."""
    out: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = list(torch.cuda.get_rng_state_all())
    return out


def restore_rng(rng: Mapping[str, Any]) -> None:
    """Set the global RNG states that ``capture_rng`` returned (missing parts are skipped)."""
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng:
        np.random.set_state(tuple(rng["numpy"]))
    if "torch" in rng:
        torch.set_rng_state(rng["torch"].cpu())
    cuda = rng.get("cuda")
    if cuda and torch.cuda.is_available():
        states = [s.cpu() for s in cuda]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
        else:  # another device count than at save time: seed what matches
            for i, s in enumerate(states[: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
