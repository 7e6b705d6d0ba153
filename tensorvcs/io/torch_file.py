"""torch.save files (``.pt``, ``.pth``, ``.ckpt``, ``.bin``): what a file is, loading it safely.

Loading never runs code from the file unless the caller opted in (``--unsafe-pickle``):

- ``torch.load(weights_only=True, mmap=True)``: the restricted unpickler rebuilds only tensors,
  containers and plain values, and mmap makes every tensor a view of the file (nothing is
  read until the writer reads it). A pickle that needs anything else is refused.
- TorchScript archives (a zip with ``constants.pkl``) are never loaded (``torch.load`` would
  hand them to ``torch.jit.load``, which runs their code): the CLI stores them as opaque bytes.
- A file that is neither a torch zip nor a legacy torch pickle is opaque bytes, too.

The restricted unpickler is given exactly one allow-list beyond torch's own:
``rng_globals()``, the four numpy names a pickled ``numpy.random.get_state()`` needs (the
Hugging Face Trainer's ``rng_state.pth`` holds one). They rebuild a plain numeric array and
its dtype; nothing else from numpy (or anywhere) is accepted.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from typing import Any

import numpy as np
import torch

from ..errors import InputFileError, UnsupportedValueError

TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")

# what a file with a torch suffix turned out to be
TORCH_ZIP = "torch"  # torch.save zip format
TORCH_LEGACY = "torch-legacy"  # torch.save before 1.6 (pickle + tar-free raw storages)
TORCHSCRIPT = "torchscript"
OTHER_ZIP = "zip"
UNKNOWN = "raw"


def rng_globals() -> list[Any]:
    """What ``torch.load(weights_only=True)`` must accept, beyond torch's defaults, to read a
    pickled numpy RNG state (``np.random.get_state()``: a ``uint32`` key array): numpy's
    array reconstructor, ``ndarray``, ``dtype`` and the ``uint32`` dtype class. No other
    global: a file that needs one is still refused."""
    core = getattr(np, "_core", None) or np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def rng_safe_globals() -> Any:
    """A context manager under which ``torch.load(weights_only=True)`` also accepts
    ``rng_globals()`` (numpy RNG states, as the Hugging Face Trainer writes them)."""
    return torch.serialization.safe_globals(rng_globals())


def sniff(path: str | os.PathLike[str], name: str = "") -> str:
    """Classify a file that has a torch suffix by its bytes (nothing is unpickled)."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise InputFileError(f"{name or path}: corrupt zip archive ({e})") from None
        records = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "constants.pkl" in records:
            return TORCHSCRIPT
        if "data.pkl" in records:
            return TORCH_ZIP
        return OTHER_ZIP
    if len(magic) >= 2 and magic[0] == 0x80 and 2 <= magic[1] <= 5:
        return TORCH_LEGACY  # a pickle stream (torch's legacy format starts with one)
    return UNKNOWN


def _refusal(path: str, err: Exception) -> UnsupportedValueError:
    text = str(err)
    m = re.search(r"Unsupported global: GLOBAL ([\w.<>]+)", text)
    hint = ""
    if m:
        why = f"it needs {m.group(1)}"
        if m.group(1).startswith("torch.nn.modules."):
            hint = "; it holds a whole nn.Module: save module.state_dict() instead"
        elif m.group(1).startswith("torch.optim."):
            hint = "; it holds an optimizer object: save optimizer.state_dict() instead"
    else:
        m = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
        why = m.group(1).strip() if m else text.splitlines()[0] if text else type(err).__name__
    return UnsupportedValueError(
        f"{path}: refusing to load a pickle that torch.load(weights_only=True) rejects ({why}); "
        "nothing was executed. Pass --unsafe-pickle only if you trust this file "
        f"(it runs code from the file){hint}"
    )


def load(
    path: str | os.PathLike[str], kind: str, *, unsafe_pickle: bool = False, name: str = ""
) -> Any:
    """Load a torch file of ``kind`` (TORCH_ZIP or TORCH_LEGACY) onto the CPU, memory-mapped
    when the format allows; errors name the file as ``name`` (default: its path)."""
    mmap = kind == TORCH_ZIP
    shown = name or os.fspath(path)
    try:
        with warnings.catch_warnings(), rng_safe_globals():
            warnings.simplefilter("ignore")
            return torch.load(
                os.fspath(path),
                map_location="cpu",
                weights_only=not unsafe_pickle,
                mmap=mmap,
            )
    except pickle.UnpicklingError as e:
        if not unsafe_pickle and "Weights only load failed" in str(e):
            raise _corrupt_or_refused(path, kind, shown, e) from None
        raise InputFileError(f"{shown}: corrupt torch file ({_first_line(e)})") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        text = str(e)
        if not unsafe_pickle and "weights_only" in text and "Weights only load failed" in text:
            raise _corrupt_or_refused(path, kind, shown, e) from None
        raise InputFileError(f"{shown}: cannot read torch file ({_first_line(e)})") from None
    except Exception as e:
        if unsafe_pickle:
            raise InputFileError(
                f"{shown}: loading with --unsafe-pickle failed: {type(e).__name__}: "
                f"{_first_line(e)}"
            ) from None
        # the restricted unpickler fails on garbage with IndexError, KeyError, ...
        raise InputFileError(
            f"{shown}: corrupt torch file ({type(e).__name__}: {_first_line(e)})"
        ) from None


def _corrupt_or_refused(
    path: str | os.PathLike[str], kind: str, shown: str, err: Exception
) -> InputFileError | UnsupportedValueError:
    """torch.load(weights_only=True) says "Weights only load failed" both for a pickle that
    needs code and for bytes that are no pickle at all. A pickle stream that does not parse
    (pickletools reads opcodes, runs nothing) is a corrupt file, not an unsafe one."""
    problem = _malformed_pickle(path, kind)
    if problem is not None:
        return InputFileError(f"{shown}: corrupt torch file (its pickle is malformed: {problem})")
    return _refusal(shown, err)


LEGACY_PICKLES = 5  # magic number, protocol, sys info, the object, the storage keys


def _malformed_pickle(path: str | os.PathLike[str], kind: str) -> str | None:
    """Why the pickle stream(s) of a torch file do not parse, or None when they do."""
    try:
        if kind == TORCH_ZIP:
            with zipfile.ZipFile(path) as z:
                names = [n for n in z.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
                if not names:
                    return "no data.pkl record"
                data = z.read(names[0])
            f: Any = io.BytesIO(data)
            count = 1
        else:
            f = open(path, "rb")  # noqa: SIM115 (closed below)
            count = LEGACY_PICKLES
        with f:
            for _ in range(count):
                for _op in pickletools.genops(f):
                    pass
    except Exception as e:  # ValueError (bad opcode, truncated), zipfile errors...
        return _first_line(e)
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def save(obj: Any, path: str | os.PathLike[str]) -> None:
    torch.save(obj, os.fspath(path))
