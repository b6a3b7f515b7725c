"""The C-encoder fast path writes exactly what the rfc8785 package writes, under our profile."""

from __future__ import annotations

from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.ledger.canonical import (
    MAX_SAFE_INTEGER,
    _fast_dumps,
    _stdlib_dumps,
    canonical_bytes,
    parse_canonical,
)

texts = st.text(st.characters(codec="utf-8"), max_size=12)
bmp_low_keys = st.text(st.characters(max_codepoint=0xD7FF, codec="utf-8"), max_size=8)
ints = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
scalars = st.none() | st.booleans() | ints | texts


def values(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=20,
    )


@settings(max_examples=400)
@given(values(bmp_low_keys))
def test_fast_path_equals_rfc8785(value: Any) -> None:
    assert _fast_dumps(value) == rfc8785.dumps(value)


@settings(max_examples=300)
@given(values(texts))
def test_canonical_bytes_round_trip_any_keys(value: Any) -> None:
    data = canonical_bytes(value)
    assert data == rfc8785.dumps(value)
    assert parse_canonical(data) == value


def test_keys_beyond_the_bmp_sort_by_utf16() -> None:
    # U+1F600 (a surrogate pair in UTF-16) sorts before U+FF01 in RFC 8785, after it in Python.
    value = {"\U0001f600": 1, "\uff01": 2}
    assert canonical_bytes(value) == rfc8785.dumps(value)
    assert canonical_bytes(value).index("\U0001f600".encode()) < canonical_bytes(value).index(
        "\uff01".encode()
    )
    assert parse_canonical(canonical_bytes(value)) == value


# Anything at all a caller could hand the encoder: lone surrogates, integers of any size,
# non-string keys, tuples, subclasses of int (bool), nesting deeper than orjson goes.
any_texts = st.text(max_size=8)
any_scalars = st.none() | st.booleans() | st.integers() | any_texts
any_keys = any_texts | st.integers(-5, 5)


def _outcome(encode: Any, value: Any) -> bytes | str:
    try:
        data: bytes = encode(value)
    except Exception as e:
        return type(e).__name__
    return data


@settings(max_examples=500)
@given(
    st.recursive(
        any_scalars,
        lambda inner: st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(any_keys, inner, max_size=4),
        max_leaves=20,
    )
)
def test_orjson_writes_or_refuses_exactly_what_the_standard_library_does(value: Any) -> None:
    assert _outcome(_fast_dumps, value) == _outcome(_stdlib_dumps, value)


def test_nesting_deeper_than_orjson_goes_is_still_encoded() -> None:
    value: Any = 1
    for _ in range(300):
        value = [value]
    assert _fast_dumps(value) == _stdlib_dumps(value) == b"[" * 300 + b"1" + b"]" * 300
