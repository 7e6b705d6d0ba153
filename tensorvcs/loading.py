"""``load_into``: put a checked-out state dict into a module, with the report users need.

Strict mode refuses (before touching the module) when any key is missing, unexpected or of
another shape; non-strict mode loads what matches and returns the report. ``required`` globs
must each match at least one loaded key — the guard against a non-strict load that silently
loaded nothing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import LoadError


@dataclass
class LoadReport:
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 10) -> str:
        parts = []
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected)):
            if keys:
                shown = ", ".join(keys[:limit]) + (" ..." if len(keys) > limit else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        if self.mismatched:
            shown = ", ".join(
                f"{k} (checkpoint {list(a)} vs module {list(b)})"
                for k, a, b in self.mismatched[:limit]
            )
            parts.append(f"{len(self.mismatched)} shape mismatch(es): {shown}")
        return "; ".join(parts) or "all keys match"


def apply_rename(state: Mapping[str, Any], rename: Mapping[str, str] | None) -> dict[str, Any]:
    """Replace key prefixes: ``{"module.": ""}`` strips DDP's prefix."""
    if not rename:
        return dict(state)
    out = {}
    for k, v in state.items():
        for old, new in rename.items():
            if k.startswith(old):
                k = new + k[len(old) :]
                break
        out[k] = v
    return out


def load_state(
    module: torch.nn.Module,
    state: Mapping[str, Any],
    *,
    strict: bool,
    required: Iterable[str] | None,
    source: str,
) -> LoadReport:
    own = module.state_dict()
    report = LoadReport()
    usable = {}
    for k, v in state.items():
        if k not in own:
            report.unexpected.append(k)
        elif isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape):
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            usable[k] = v
    report.missing = [k for k in own if k not in state]
    if strict and not report.ok:
        raise LoadError(
            f"strict load of {source} into {type(module).__name__} failed: {report.describe()}"
        )
    for pattern in required or []:
        if not any(fnmatch.fnmatchcase(k, pattern) for k in usable):
            raise LoadError(
                f"load of {source}: required pattern {pattern!r} matched no loaded key "
                f"({report.describe()})"
            )
    module.load_state_dict(usable, strict=False)
    report.loaded = list(usable)
    return report
