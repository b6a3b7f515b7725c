"""RFC 8785 canonical bytes under our integers-only profile, and strict parsing back."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.errors import CanonicalEncodingError, MalformedError
from registry.ledger.canonical import (
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    _careful_check,
    _quick_check,
    canonical_bytes,
    check_canonical_value,
    encode_checked,
    parse_canonical,
)

# --- known answers from RFC 8785 ----------------------------------------------------------


def test_rfc8785_sorting_example() -> None:
    # RFC 8785 §3.2.3: keys sort by their UTF-16 code units, not by code point or UTF-8.
    value = {
        "\u20ac": "Euro Sign",
        "\r": "Carriage Return",
        "\ufb33": "Hebrew Letter Dalet With Dagesh",
        "1": "One",
        "\U0001f600": "Emoji: Grinning Face",
        "\u0080": "Control",
        "\u00f6": "Latin Small Letter O With Diaeresis",
    }
    expected = (
        '{"\\r":"Carriage Return","1":"One","\u0080":"Control",'
        '"\u00f6":"Latin Small Letter O With Diaeresis","\u20ac":"Euro Sign",'
        '"\U0001f600":"Emoji: Grinning Face","\ufb33":"Hebrew Letter Dalet With Dagesh"}'
    ).encode()
    assert canonical_bytes(value) == expected


def test_rfc8785_string_and_literals_example() -> None:
    # RFC 8785 §3.2.2 example without its "numbers" member (floats are refused here):
    # non-ASCII stays UTF-8, control characters use \uXXXX lowercase or the short escapes.
    value = {
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        '{"literals":[null,true,false],"string":"\u20ac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    ).encode()
    assert canonical_bytes(value) == expected


def test_no_whitespace_and_nested_sorting() -> None:
    assert canonical_bytes({"b": [1, {"z": None, "a": -2}], "a": "x"}) == (
        b'{"a":"x","b":[1,{"a":-2,"z":null}]}'
    )


# --- refusals, each naming the JSON path ----------------------------------------------------


def test_float_refused_with_its_path() -> None:
    with pytest.raises(CanonicalEncodingError, match=r"\$\.payload\.quantity") as info:
        canonical_bytes({"payload": {"quantity": 1.5}})
    assert info.value.details == {"path": "$.payload.quantity"}
    assert info.value.code == "non_canonical_value"


@pytest.mark.parametrize("number", [1.0, 0.0, float("nan"), float("inf"), -1e30])
def test_every_float_refused_even_integral(number: float) -> None:
    with pytest.raises(CanonicalEncodingError, match=r"floats are not allowed.*\$\.a\[2\]"):
        canonical_bytes({"a": [1, 2, number]})


def test_odd_keys_are_quoted_in_path() -> None:
    with pytest.raises(CanonicalEncodingError, match=r'\$\.blocks\[0\]\["start serial"\]'):
        canonical_bytes({"blocks": [{"start serial": 0.5}]})


def test_non_string_key_refused() -> None:
    with pytest.raises(CanonicalEncodingError, match=r"keys must be strings.*at \$\.payload"):
        canonical_bytes({"payload": {1: "one"}})


@pytest.mark.parametrize("n", [MAX_SAFE_INTEGER + 1, -MAX_SAFE_INTEGER - 1, 10**30])
def test_integers_beyond_double_precision_refused(n: int) -> None:
    with pytest.raises(CanonicalEncodingError, match=rf"\$\.q\b.*got {n}"):
        canonical_bytes({"q": n})


def test_largest_safe_integers_accepted() -> None:
    assert canonical_bytes([MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER]) == (
        b"[9007199254740991,-9007199254740991]"
    )


@pytest.mark.parametrize("bad", [{1, 2}, b"bytes", Decimal("1"), object()])
def test_unsupported_types_refused(bad: Any) -> None:
    with pytest.raises(CanonicalEncodingError, match=r"cannot be encoded.*\$\.x"):
        canonical_bytes({"x": bad})


def test_lone_surrogate_refused() -> None:
    with pytest.raises(CanonicalEncodingError, match=r"lone surrogate"):
        canonical_bytes({"x": "\ud800"})


def test_too_deep_and_cyclic_values_refused() -> None:
    deep: Any = 0
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(CanonicalEncodingError, match="deeper than"):
        canonical_bytes(deep)
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    with pytest.raises(CanonicalEncodingError, match="deeper than"):
        canonical_bytes(cyclic)


def test_check_canonical_value_uses_given_root() -> None:
    with pytest.raises(CanonicalEncodingError, match=r"\$\.payload\.q"):
        check_canonical_value({"q": 0.1}, path="$.payload")


def test_tuples_encode_as_arrays() -> None:
    assert canonical_bytes({"a": (1, 2)}) == b'{"a":[1,2]}'


# --- strict parsing -----------------------------------------------------------------------


def test_parse_round_trip() -> None:
    data = b'{"a":[1,true,null,"\xe2\x82\xac"],"b":{}}'
    assert parse_canonical(data) == {"a": [1, True, None, "\u20ac"], "b": {}}


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"a": 1}', "not in RFC 8785 canonical form"),
        (b'{"b":1,"a":2}', "not in RFC 8785 canonical form"),
        (b'{"a":1}\n', "not in RFC 8785 canonical form"),
        (b'{"a":"\\u0041"}', "not in RFC 8785 canonical form"),
        (b'{"a":"\\/"}', "not in RFC 8785 canonical form"),
        (b"-0", "not in RFC 8785 canonical form"),
        (b'{"a":1,"a":1}', "duplicate object key 'a'"),
        (b'{"a":1,"a":2}', "duplicate object key 'a'"),
        (b'{"a":"\\ud800"}', "outside the canonical profile"),
        (b'{"\\u00e9":1}', "not in RFC 8785 canonical form"),
        (b'{"a":1.0}', "floats are not allowed"),
        (b'{"a":1e2}', "floats are not allowed"),
        (b'{"a":NaN}', "NaN is not JSON"),
        (b'{"a":9007199254740992}', "outside the canonical profile"),
        (b"\xef\xbb\xbf{}", "not JSON"),
        (b'{"a":"\xff"}', "not UTF-8 at byte 6"),
        (b'{"a":', "not JSON"),
        (b"", "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON|deeper than"),
    ],
)
def test_parse_refuses_anything_not_canonical(data: bytes, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        parse_canonical(data)


def test_parse_refuses_str_input() -> None:
    with pytest.raises(MalformedError, match="expected bytes"):
        parse_canonical("{}")  # type: ignore[arg-type]


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_parse_inverts_encode(value: Any) -> None:
    data = canonical_bytes(value)
    assert parse_canonical(data) == value
    assert canonical_bytes(parse_canonical(data)) == data


@given(json_values)
def test_a_parsed_value_reencodes_to_its_canonical_bytes(value: Any) -> None:
    data = canonical_bytes({"outer": [value]})
    inner = parse_canonical(data)["outer"][0]
    assert encode_checked(inner) == canonical_bytes(value)


_any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=6)
any_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | _any_text
    | st.sampled_from([b"x", True, 2**53, -(2**53), 2**53 - 1]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(_any_text | st.integers(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(any_values)
def test_the_quick_check_never_accepts_what_the_careful_one_refuses(value: Any) -> None:
    """The check every signed value goes through: its quick pass (no paths) either defers to
    the careful one or gives its very answer."""
    quick = _quick_check(value)
    try:
        careful: bool | None = _careful_check(value, "$")
    except CanonicalEncodingError:
        careful = None
    if quick is not None:
        assert careful == quick


def test_the_quick_check_defers_at_the_depth_limit() -> None:
    deep: Any = 0
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert check_canonical_value(deep) is False  # at the limit: still accepted
    with pytest.raises(CanonicalEncodingError, match="deeper than"):
        check_canonical_value([deep])
