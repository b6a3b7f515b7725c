"""The C-encoder fast path writes exactly what the rfc8785 package writes, under our profile."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import MalformedError
from registry.ledger.canonical import (
    MAX_SAFE_INTEGER,
    _fast_dumps,
    _parse_carefully,
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


# Any JSON a bundle could hold: floats, integers of any size, NaN, and strings that look like
# the numbers the fast parse must leave to the profile's own.
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
    | st.sampled_from([":1.5", ",2e3", "[1234567890123456", "-0", "x\u2028"])
    | st.integers(-(10**17), 10**17)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                  max_size=4),
    max_leaves=20,
)


def _parsed(parse: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "accepted", parse(data)
    except MalformedError:
        return "refused", None


@settings(max_examples=600)
@given(json_values, st.booleans(), st.booleans())
def test_the_fast_parse_accepts_exactly_what_the_careful_parse_accepts(
    value: Any, sort_keys: bool, ascii_only: bool
) -> None:
    data = json.dumps(value, sort_keys=sort_keys, separators=(",", ":"),
                      ensure_ascii=ascii_only).encode()
    assert _parsed(parse_canonical, data) == _parsed(_parse_carefully, data)


@pytest.mark.parametrize("data", [b"1.5", b"[1e5]", b"[0,-2E1]", b'{"a":1.0}',
                                  b'{"a":9007199254740992}', b'{"a":-12345678901234567}',
                                  b"NaN", b'{"a":-0}', b'{"a":1,"a":1}'])
def test_numbers_outside_the_profile_are_refused(data: bytes) -> None:
    with pytest.raises(MalformedError):
        parse_canonical(data)


@pytest.mark.parametrize("data", [b'{"a":"x:1.5"}', b'{"a":"[1234567890123456"}',
                                  b'{"a":900719925474099}', b'[9007199254740991]', b'"1.5"'])
def test_lookalikes_and_the_largest_integers_are_accepted(data: bytes) -> None:
    assert canonical_bytes(parse_canonical(data)) == data
