"""The optional native loops (tensorvcs/_native.c): which are in use, and the switch.

``native`` is the C module when it was built (setup.py builds it where a C compiler works)
and this host stores elements little-endian, else None; callers then use their numpy path,
which gives the same bytes (byte planes) and the same statistics within float rounding.
``TVCS_NATIVE=0`` in the environment turns it off (tests run both paths)."""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("TVCS_NATIVE", "1") == "0" or sys.byteorder != "little":
        return None
    try:
        return importlib.import_module("tensorvcs._native")
    except ImportError:
        return None


native: ModuleType | None = _load()


def describe() -> str:
    """One line for ``tvcs --version`` and bench reports."""
    if native is not None:
        return "native loops: on"
    if os.environ.get("TVCS_NATIVE", "1") == "0":
        return "native loops: off (TVCS_NATIVE=0)"
    return "native loops: not built (numpy fallback)"
