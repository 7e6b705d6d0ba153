"""The value tree: a safe, documented JSON encoding of nested Python checkpoint state.

A node is one JSON value:

- ``null``, ``true``, ``false``, a JSON string, an integer, or a finite float (a number token
  with '.', 'e' or 'E') stand for themselves;
- every other value is a JSON array whose first item is a tag (see ``TAGS`` and
  docs/format.md): containers (``dict``, ``odict``, ``list``, ``tuple``, ``set``,
  ``frozenset``), special scalars (``float`` for nan/inf, ``bytes``, ``complex``), and leaves
  supplied by the state layer (tensors, arrays, dtypes) through ``Hooks``.

Dict nodes keep insertion order and allow any scalar or tuple key (int keys in optimizer state,
'' or '/' or unicode in user dicts). Nothing here ever unpickles.
"""

from __future__ import annotations

import base64
import binascii
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..errors import CorruptObjectError, UnsupportedValueError

KeyPath = tuple[Any, ...]
Node = Any

CONTAINER_TAGS = ("dict", "odict", "list", "tuple", "set", "frozenset")
SCALAR_TAGS = ("float", "bytes", "complex")


def path_str(path: KeyPath) -> str:
    """A key path as people read it: keys joined by '/', '<root>' for the empty path."""
    if not path:
        return "<root>"
    return "/".join(_key_str(k) for k in path)


def _key_str(key: Any) -> str:
    if isinstance(key, str):
        return key
    if type(key) is int:
        return str(key)
    return repr(key)


class Hooks:
    """Leaf handlers supplied by the layer above (tensors and other typed leaves)."""

    def encode_leaf(self, value: Any, path: KeyPath) -> Node | None:
        """A node for ``value``, or None when ``value`` is not a leaf this hook knows."""
        return None

    def encode_opaque(self, value: Any, path: KeyPath) -> Node | None:
        """A node for a value nothing else could encode (an opt-in pickle), or None."""
        return None

    def decode_leaf(self, node: list[Any], path: KeyPath) -> Any:
        raise CorruptObjectError(f"unknown value tag {node[0]!r} at {path_str(path)}")


def _float_node(x: float) -> Node:
    if math.isnan(x):
        return ["float", "nan"]
    if math.isinf(x):
        return ["float", "inf" if x > 0 else "-inf"]
    return x


def encode(value: Any, hooks: Hooks, path: KeyPath = ()) -> Node:
    """Encode ``value``; raise UnsupportedValueError naming the key path of what cannot be."""
    t = type(value)
    if value is None or t is bool:
        return value
    if t is str:
        if not value.isascii():
            _check_utf8(value, path)
        return value
    if t is int:
        return value
    if t is float:
        return _float_node(value)
    leaf = hooks.encode_leaf(value, path)
    if leaf is not None:
        return leaf
    if t is dict or t is OrderedDict:
        items = []
        for k, v in value.items():
            items.append([_encode_key(k, hooks, path), encode(v, hooks, (*path, k))])
        node: list[Any] = ["dict" if t is dict else "odict", items]
        meta = getattr(value, "_metadata", None)
        if meta is not None:
            node.append(encode(meta, hooks, (*path, "<_metadata>")))
        return node
    if t is list or t is tuple:
        return [t.__name__, [encode(v, hooks, (*path, i)) for i, v in enumerate(value)]]
    if t is set or t is frozenset:
        try:
            members = sorted(value, key=repr)
        except TypeError:
            members = list(value)
        return [t.__name__, [encode(v, hooks, (*path, i)) for i, v in enumerate(members)]]
    if t is bytes or t is bytearray:
        return ["bytes", base64.b64encode(bytes(value)).decode("ascii")]
    if t is complex:
        return ["complex", _float_node(value.real), _float_node(value.imag)]
    opaque = hooks.encode_opaque(value, path)
    if opaque is not None:
        return opaque
    raise UnsupportedValueError(
        f"cannot store a value of type {t.__module__}.{t.__qualname__} at key path "
        f"{path_str(path)!r}: only tensors, arrays, containers and plain scalars are stored "
        "safely (pass allow_pickle=True to store it as an opaque pickle)",
        key_path=path_str(path),
    )


def _check_utf8(text: str, path: KeyPath) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise UnsupportedValueError(
            f"cannot store the string at key path {path_str(path)!r}: it is not valid Unicode "
            f"({e.reason} at index {e.start})",
            key_path=path_str(path),
        ) from None


def _encode_key(key: Any, hooks: Hooks, path: KeyPath) -> Node:
    t = type(key)
    if key is None or t in (bool, str, int, float, bytes, complex):
        return encode(key, hooks, path)
    if t is tuple:
        return ["tuple", [_encode_key(k, hooks, path) for k in key]]
    raise UnsupportedValueError(
        f"cannot store a dict key of type {t.__qualname__} under key path {path_str(path)!r}",
        key_path=path_str(path),
    )


def _float_from(node: Node, path: KeyPath) -> float:
    if isinstance(node, list) and len(node) == 2 and node[0] == "float":
        special = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
        if node[1] in special:
            return special[node[1]]
    if type(node) in (int, float):
        return float(node)
    raise CorruptObjectError(f"bad float node at {path_str(path)}: {node!r}")


Select = Callable[[KeyPath], bool]


class _Absent:
    """Marks a subtree that a partial selection left out."""


ABSENT: Any = _Absent()


def decode(node: Node, hooks: Hooks, path: KeyPath = (), select: Select | None = None) -> Any:
    """Rebuild the value for ``node``. With ``select``, leaves whose path it rejects are left
    out: dicts drop their keys, sequences drop their elements, and an emptied container is
    itself left out (``ABSENT``). A malformed tree raises CorruptObjectError."""
    try:
        return _decode(node, hooks, path, select)
    except (TypeError, IndexError, ValueError, KeyError, binascii.Error) as e:
        raise CorruptObjectError(f"malformed value tree under {path_str(path)}: {e}") from e


def _decode(node: Node, hooks: Hooks, path: KeyPath, select: Select | None) -> Any:
    if node is None or type(node) in (bool, str, int, float):
        if select is not None and not select(path):
            return ABSENT
        return node
    if not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise CorruptObjectError(f"malformed value node at {path_str(path)}: {node!r:.80}")
    tag = node[0]
    if tag in ("dict", "odict"):
        out: dict[Any, Any] = {} if tag == "dict" else OrderedDict()
        for pair in node[1]:
            key = _decode_key(pair[0], path)
            v = _decode(pair[1], hooks, (*path, key), select)
            if v is not ABSENT:
                out[key] = v
        if len(node) > 2:
            meta = _decode(node[2], hooks, (*path, "<_metadata>"), None)
            if isinstance(out, OrderedDict):
                out._metadata = meta  # type: ignore[attr-defined]
        if select is not None and not out and (node[1] or not select(path)):
            return ABSENT
        return out
    if tag in ("list", "tuple", "set", "frozenset"):
        items = [_decode(v, hooks, (*path, i), select) for i, v in enumerate(node[1])]
        kept = [v for v in items if v is not ABSENT]
        if select is not None and not kept and (node[1] or not select(path)):
            return ABSENT
        return {"list": list, "tuple": tuple, "set": set, "frozenset": frozenset}[tag](kept)
    if select is not None and not select(path):
        return ABSENT
    if tag == "float":
        return _float_from(node, path)
    if tag == "bytes":
        return base64.b64decode(node[1], validate=True)
    if tag == "complex":
        return complex(_float_from(node[1], path), _float_from(node[2], path))
    return hooks.decode_leaf(node, path)


def _decode_key(node: Node, path: KeyPath) -> Any:
    if isinstance(node, list) and node and node[0] == "tuple":
        return tuple(_decode_key(k, path) for k in node[1])
    return decode(node, Hooks(), path)


def walk_leaves(node: Node, path: KeyPath = ()) -> Any:
    """Yield (path, node) for every leaf node (scalars and tagged leaves), in order."""
    if isinstance(node, list) and node and isinstance(node[0], str):
        tag = node[0]
        if tag in ("dict", "odict"):
            for pair in node[1]:
                yield from walk_leaves(pair[1], (*path, _decode_key(pair[0], path)))
            return
        if tag in ("list", "tuple", "set", "frozenset"):
            for i, v in enumerate(node[1]):
                yield from walk_leaves(v, (*path, i))
            return
    yield path, node
