"""The value tree: nested plain Python state to canonical JSON and back, exactly."""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensorvcs as tv
from tensorvcs import CorruptObjectError, UnsupportedValueError
from tensorvcs.format import jsonenc, values


def round_trip(value: Any) -> Any:
    node = values.encode(value, values.Hooks())
    data = jsonenc.dumps(node)
    return values.decode(jsonenc.loads(data), values.Hooks())


def assert_same(a: Any, b: Any) -> None:
    """Equal values of exactly the same types, all the way down (nan == nan, -0.0 != 0.0)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (
            a == b and math.copysign(1, a) == math.copysign(1, b)
        ), (a, b)
    elif isinstance(a, complex):
        assert_same(a.real, b.real)
        assert_same(a.imag, b.imag)
    elif isinstance(a, dict):
        assert len(a) == len(b)
        for (ka, va), (kb, vb) in zip(a.items(), b.items(), strict=True):
            assert_same(ka, kb)
            assert_same(va, vb)
        assert_same(getattr(a, "_metadata", None), getattr(b, "_metadata", None))
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b, (a, b)


floats = st.floats(allow_nan=True, allow_infinity=True)
texts = st.text(max_size=12) | st.sampled_from(
    ["", "/", ".", "..", "a/b", "\\", "\x00\n\t", "é€😀"]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | floats
    | texts
    | st.binary(max_size=16)
    | st.complex_numbers(allow_nan=True, allow_infinity=True)
)
# set members: hashable, and equal to themselves (no nan)
hashables = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | texts
    | st.binary(max_size=8)
)
dict_keys = (
    st.text(max_size=8)
    | st.sampled_from(["", "/", ".", "a.b", "a/b", "\\", "\x01", "ключ"])
    | st.integers()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=False)
    | st.binary(max_size=4)
    | st.tuples(st.integers(), st.text(max_size=3))
)


def _odict(items: list[tuple[Any, Any]], meta: Any) -> OrderedDict[Any, Any]:
    d: OrderedDict[Any, Any] = OrderedDict(items)
    if meta is not None:
        d._metadata = meta  # type: ignore[attr-defined]
    return d


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (
        st.dictionaries(dict_keys, children, max_size=5)
        | st.builds(
            _odict,
            st.lists(st.tuples(dict_keys, children), max_size=5),
            st.none() | st.dictionaries(st.text(max_size=4), st.dictionaries(st.text(), scalars)),
        )
        | st.lists(children, max_size=5)
        | st.lists(children, max_size=5).map(tuple)
        | st.sets(hashables, max_size=5)
        | st.frozensets(hashables, max_size=5)
    )


state_values = st.recursive(scalars, _containers, max_leaves=30)


@settings(max_examples=150, deadline=None)
@given(state_values)
def test_round_trip_is_exact(value: Any) -> None:
    assert_same(round_trip(value), value)


@settings(max_examples=60, deadline=None)
@given(state_values)
def test_encoding_is_deterministic(value: Any) -> None:
    a = jsonenc.dumps(values.encode(value, values.Hooks()))
    b = jsonenc.dumps(values.encode(round_trip(value), values.Hooks()))
    assert a == b


def stable_id(value: Any) -> str:
    """repr, with the elements of sets in sorted order: a test id that does not depend on
    PYTHONHASHSEED (pytest-xdist's workers must collect the same ids)."""
    if isinstance(value, set | frozenset):
        inner = ", ".join(sorted(stable_id(v) for v in value))
        return f"{type(value).__name__}({{{inner}}})" if value else f"{type(value).__name__}()"
    return repr(value)


@pytest.mark.parametrize(
    "value",
    [
        (1, 2),
        [1, 2],
        {"a": (1, [2, (3,)])},
        True,
        1,
        1.0,
        -0.0,
        0.0,
        float("nan"),
        float("inf"),
        float("-inf"),
        2**100,
        1e300,
        5e-324,
        "",
        b"\x00\xff",
        complex(1, -0.0),
        complex(float("nan"), float("inf")),
        {1: "int key", "1": "str key", 1.5: "float", None: "none", (1, "a"): "tuple"},
        {True: "bool key"},
        {"": {"": ""}},
        {"a/b": {"c.d": {"\\": 1}}},
        set(),
        frozenset({1, "a", None}),
        {frozenset({1}), frozenset()},
        [],
        (),
        {},
        OrderedDict(),
    ],
    ids=stable_id,
)
def test_round_trip_examples(value: Any) -> None:
    assert_same(round_trip(value), value)


def test_bool_int_float_stay_apart() -> None:
    out = round_trip([True, 1, 1.0, False, 0, 0.0, -0.0])
    assert [type(x) for x in out] == [bool, int, float, bool, int, float, float]
    assert math.copysign(1, out[6]) == -1


def test_tuple_and_list_stay_apart() -> None:
    out = round_trip({"t": (1, 2), "l": [1, 2], "nested": ([(), []],)})
    assert type(out["t"]) is tuple and type(out["l"]) is list
    assert type(out["nested"]) is tuple
    assert type(out["nested"][0]) is list
    assert type(out["nested"][0][0]) is tuple


def test_ordered_dict_keeps_type_order_and_metadata() -> None:
    sd: OrderedDict[str, Any] = OrderedDict([("b", 1), ("a", 2), ("c", 3)])
    sd._metadata = OrderedDict([("", {"version": 1}), ("layer", {"version": 2})])  # type: ignore[attr-defined]
    out = round_trip({"model": sd})
    assert type(out) is dict
    m = out["model"]
    assert type(m) is OrderedDict
    assert list(m.items()) == [("b", 1), ("a", 2), ("c", 3)]
    assert m._metadata == {"": {"version": 1}, "layer": {"version": 2}}
    assert type(m._metadata) is OrderedDict


def test_dict_keeps_insertion_order() -> None:
    d = {"z": 1, 3: 2, "a": 3, "": 4, -1: 5}
    assert list(round_trip(d)) == ["z", 3, "a", "", -1]


def test_strings_are_not_mistaken_for_tags() -> None:
    value = {"dict": ["dict", []], "float": "nan", "tensor": ["tensor", 0], "list": ("list",)}
    assert_same(round_trip(value), value)


def test_path_str() -> None:
    assert values.path_str(()) == "<root>"
    assert values.path_str(("opt", "state", 3, "foo")) == "opt/state/3/foo"


class _Opaque:
    pass


def test_unsupported_value_names_its_key_path() -> None:
    state = {"model": {"w": 1.0}, "opt": {"state": {3: {"foo": _Opaque()}}}}
    with pytest.raises(UnsupportedValueError) as ei:
        values.encode(state, values.Hooks())
    assert ei.value.key_path == "opt/state/3/foo"
    assert "'opt/state/3/foo'" in str(ei.value)
    assert "_Opaque" in str(ei.value)
    assert "allow_pickle" in str(ei.value)


@pytest.mark.parametrize(
    ("state", "path"),
    [
        (_Opaque(), "<root>"),
        ({"a": [1, 2, _Opaque()]}, "a/2"),
        ({"a": ({"b": _Opaque()},)}, "a/0/b"),
        ({"": {"x/y": _Opaque()}}, "/x/y"),
        ({"s": {1, 2}, "f": frozenset(), "o": OrderedDict(k=object())}, "o/k"),
        ({"gen": (x for x in [])}, "gen"),
        ({"fn": len}, "fn"),
    ],
)
def test_unsupported_value_key_paths(state: Any, path: str) -> None:
    with pytest.raises(UnsupportedValueError) as ei:
        values.encode(state, values.Hooks())
    assert ei.value.key_path == path
    assert repr(path) in str(ei.value)


def test_dict_subclasses_are_not_silently_flattened() -> None:
    from collections import defaultdict

    with pytest.raises(UnsupportedValueError) as ei:
        values.encode({"d": defaultdict(int)}, values.Hooks())
    assert ei.value.key_path == "d"


def test_unsupported_dict_key_names_the_dict() -> None:
    with pytest.raises(UnsupportedValueError) as ei:
        values.encode({"a": {"b": {_Opaque(): 1}}}, values.Hooks())
    assert ei.value.key_path == "a/b"
    assert "key" in str(ei.value)


@pytest.mark.parametrize(
    "node",
    [
        ["tensor", 0],
        ["nosuchtag"],
        [],
        [1, 2],
        {"a": 1},
        ["float", "NaNa"],
        ["complex", "x", 1.0],
    ],
    ids=repr,
)
def test_malformed_nodes_are_corrupt(node: Any) -> None:
    with pytest.raises(CorruptObjectError):
        values.decode(["dict", [["k", node]]], values.Hooks())


def test_non_standard_json_constants_are_refused() -> None:
    with pytest.raises(ValueError):
        jsonenc.loads(b"[NaN]")
    with pytest.raises(ValueError):
        jsonenc.dumps([float("nan")])


def test_a_string_that_is_not_unicode_is_refused_with_its_key_path(repo: tv.Repo) -> None:
    with pytest.raises(tv.UnsupportedValueError, match=r"key path 'meta/name'.*not valid Unicode"):
        repo.commit({"meta": {"name": "bad \ud800 surrogate"}}, "x")
    assert list(repo.objects.ids()) == []
