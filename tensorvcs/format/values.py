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
SEQUENCE_TAGS = ("list", "tuple", "set", "frozenset")
_SPECIAL_FLOATS = ("nan", "inf", "-inf")

# The deepest nesting of containers (and of tuple dict keys) a writer stores and a reader
# accepts (docs/format.md, "Validation limits"). It bounds every recursive walk of a tree.
MAX_DEPTH = 100
_CONTAINERS = (dict, OrderedDict, list, tuple, set, frozenset)


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
    if len(path) >= MAX_DEPTH and t in _CONTAINERS:
        raise UnsupportedValueError(
            f"cannot store the value at key path {path_str(path[:8])}/...: containers nest "
            f"more than {MAX_DEPTH} deep",
            key_path=path_str(path),
        )
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


def _encode_key(key: Any, hooks: Hooks, path: KeyPath, depth: int = 0) -> Node:
    t = type(key)
    if key is None or t in (bool, str, int, float, bytes, complex):
        return encode(key, hooks, path)
    if t is tuple:
        if depth >= MAX_DEPTH:
            raise UnsupportedValueError(
                f"cannot store a dict key under key path {path_str(path)!r}: its tuples nest "
                f"more than {MAX_DEPTH} deep",
                key_path=path_str(path),
            )
        return ["tuple", [_encode_key(k, hooks, path, depth + 1) for k in key]]
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
        return _decode(node, hooks, path, select, 0)
    except (TypeError, IndexError, ValueError, KeyError, OverflowError, binascii.Error) as e:
        raise CorruptObjectError(f"malformed value tree under {path_str(path)}: {e}") from e
    except RecursionError:
        raise CorruptObjectError(
            f"malformed value tree under {path_str(path)}: nested too deeply"
        ) from None


def _too_deep(path: KeyPath) -> CorruptObjectError:
    return CorruptObjectError(
        f"malformed value tree at {path_str(path[:8])}/...: containers nest more than "
        f"{MAX_DEPTH} deep"
    )


def _decode(node: Node, hooks: Hooks, path: KeyPath, select: Select | None, depth: int) -> Any:
    if node is None or type(node) in (bool, str, int, float):
        if select is not None and not select(path):
            return ABSENT
        return node
    if not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise CorruptObjectError(f"malformed value node at {path_str(path)}: {node!r:.80}")
    tag = node[0]
    if tag in CONTAINER_TAGS and depth >= MAX_DEPTH:
        raise _too_deep(path)
    if tag in ("dict", "odict"):
        out: dict[Any, Any] = {} if tag == "dict" else OrderedDict()
        for pair in node[1]:
            key = _decode_key(pair[0], path)
            v = _decode(pair[1], hooks, (*path, key), select, depth + 1)
            if v is not ABSENT:
                out[key] = v
        if len(node) > 2:
            meta = _decode(node[2], hooks, (*path, "<_metadata>"), None, depth + 1)
            if isinstance(out, OrderedDict):
                out._metadata = meta  # type: ignore[attr-defined]
        if select is not None and not out and (node[1] or not select(path)):
            return ABSENT
        return out
    if tag in SEQUENCE_TAGS:
        items = [_decode(v, hooks, (*path, i), select, depth + 1) for i, v in enumerate(node[1])]
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


def _decode_key(node: Node, path: KeyPath, depth: int = 0) -> Any:
    if isinstance(node, list) and node and node[0] == "tuple":
        if depth >= MAX_DEPTH:
            raise _too_deep(path)
        return tuple(_decode_key(k, path, depth + 1) for k in node[1])
    return decode(node, Hooks(), path)


def _malformed(node: Any) -> CorruptObjectError:
    return CorruptObjectError(f"malformed container node {node!r:.80}")


def walk_leaves(node: Node, path: KeyPath = ()) -> Any:
    """Yield (path, node) for every leaf node (scalars and tagged leaves), in order. Iterative:
    a tree of any depth is walked without recursion; a malformed container node raises
    CorruptObjectError."""
    stack: list[Any] = [iter([(path, node)])]
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            continue
        p, n = nxt
        if isinstance(n, list) and n and isinstance(n[0], str) and n[0] in CONTAINER_TAGS:
            if len(n) < 2 or not isinstance(n[1], list):
                raise _malformed(n)
            if n[0] in ("dict", "odict"):
                stack.append(_dict_children(n[1], p))
            else:
                stack.append(_seq_children(n[1], p))
            continue
        yield p, n


def _seq_children(items: list[Any], path: KeyPath) -> Any:
    for i, v in enumerate(items):
        yield (*path, i), v


def _dict_children(pairs: list[Any], path: KeyPath) -> Any:
    for pair in pairs:
        if not isinstance(pair, list) or len(pair) != 2:
            raise _malformed(pair)
        yield (*path, _decode_key(pair[0], path)), pair[1]


# -- validation of stored trees ------------------------------------------------------------
LeafCheck = Callable[[list[Any], KeyPath], str | None]


def _no_leaves(node: list[Any], path: KeyPath) -> str | None:
    return f"unknown value tag {node[0]!r}"


def as_float(value: Any) -> float | None:
    """``value`` as a float when it is a number (int or float, not bool), else None; None too
    for an integer that overflows a float (``float(2**1024 - 1)`` raises, though it is below
    2**1024). NaN and infinities stay as they are."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        return float(value)
    except OverflowError:
        return None


def finite_float(node: Any) -> float | None:
    """The finite float a stored JSON number stands for (``as_float``), or None."""
    f = as_float(node)
    return f if f is not None and math.isfinite(f) else None


def _float_problem(node: Any) -> str | None:
    if type(node) is int:
        return None if finite_float(node) is not None else "an integer too large for a float"
    if type(node) is float:
        return None if math.isfinite(node) else "a non-finite float written as a number"
    if isinstance(node, list) and len(node) == 2 and node[0] == "float":
        return None if node[1] in _SPECIAL_FLOATS else f"bad float node {node!r:.60}"
    return f"bad float node {node!r:.60}"


def _scalar_problem(node: list[Any]) -> str | None:
    """The problem of a tagged scalar node (float, bytes, complex), or None."""
    tag = node[0]
    if tag == "float":
        return _float_problem(node)
    if tag == "bytes":
        if len(node) != 2 or not isinstance(node[1], str):
            return f"bad bytes node {node!r:.60}"
        try:
            base64.b64decode(node[1], validate=True)
        except (binascii.Error, ValueError):
            return "a bytes node that is not base64"
        return None
    if len(node) != 3:  # complex
        return f"bad complex node {node!r:.60}"
    return _float_problem(node[1]) or _float_problem(node[2])


def _key_problem(node: Any) -> str | None:
    """The problem of a dict key node (scalars and tuples of them; iterative), or None."""
    stack = [(node, 0)]
    while stack:
        n, depth = stack.pop()
        if n is None or type(n) in (bool, str, int):
            continue
        if type(n) is float:
            if not math.isfinite(n):
                return "a non-finite float written as a number"
            continue
        if not isinstance(n, list) or not n or not isinstance(n[0], str):
            return f"bad dict key {n!r:.60}"
        if n[0] == "tuple":
            if len(n) != 2 or not isinstance(n[1], list):
                return f"bad tuple key {n!r:.60}"
            if depth >= MAX_DEPTH:
                return f"a tuple key nested more than {MAX_DEPTH} deep"
            stack.extend((k, depth + 1) for k in n[1])
        elif n[0] in SCALAR_TAGS:
            problem = _scalar_problem(n)
            if problem:
                return problem
        else:
            return f"bad dict key {n!r:.60}"
    return None


def check_tree(node: Node, leaf_check: LeafCheck = _no_leaves, path: KeyPath = ()) -> None:
    """Validate a stored value tree completely, without recursion: every node well-formed,
    containers nested at most MAX_DEPTH deep, tagged leaves accepted by ``leaf_check``
    (which returns a problem, or None). Raises CorruptObjectError naming the key path."""
    stack: list[tuple[Any, KeyPath, int]] = [(node, path, 0)]
    while stack:
        n, p, depth = stack.pop()
        problem = None
        if n is None or type(n) in (bool, str, int):
            continue
        if type(n) is float:
            if math.isfinite(n):
                continue
            problem = "a non-finite float written as a number"
        elif not isinstance(n, list) or not n or not isinstance(n[0], str):
            problem = f"malformed value node {n!r:.80}"
        elif n[0] in CONTAINER_TAGS:
            tag = n[0]
            arity_ok = len(n) == 2 or (tag == "odict" and len(n) == 3)
            if not arity_ok or not isinstance(n[1], list):
                problem = f"malformed {tag} node"
            elif depth >= MAX_DEPTH:
                problem = f"containers nested more than {MAX_DEPTH} deep"
            elif tag in ("dict", "odict"):
                children = []
                for pair in n[1]:
                    if not isinstance(pair, list) or len(pair) != 2:
                        problem = f"malformed {tag} item {pair!r:.60}"
                        break
                    problem = _key_problem(pair[0])
                    if problem:
                        break
                    children.append((pair[1], (*p, _decode_key(pair[0], p)), depth + 1))
                if len(n) == 3 and not problem:
                    children.append((n[2], (*p, "<_metadata>"), depth + 1))
                stack.extend(reversed(children))
            else:
                stack.extend(reversed([(v, (*p, i), depth + 1) for i, v in enumerate(n[1])]))
        elif n[0] in SCALAR_TAGS:
            problem = _scalar_problem(n)
        else:
            problem = leaf_check(n, p)
        if problem:
            where = path_str(p)
            raise CorruptObjectError(
                f"malformed value tree at key path {where!r}: {problem}", key_path=where
            )
