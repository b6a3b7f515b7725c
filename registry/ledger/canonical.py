"""Canonical bytes: the one encoding of a value that the ledger signs, stores and hashes.

This module owns the rule "what is signed is RFC 8785 (JCS) canonical JSON, integers only".
Every signed record in the registry (entries, envelopes, holder instructions) goes through
``canonical_bytes`` on the way out and ``parse_canonical`` on the way in, so the server and the
offline auditor agree on every byte.

Our profile of RFC 8785 is stricter than the RFC:

* no floats anywhere (quantities are whole tonnes; a float is always a bug here);
* integers must lie within ±(2**53 - 1), the range an IEEE 754 double carries exactly, which is
  all RFC 8785 can represent faithfully;
* object keys are strings; values are ``None``, ``bool``, ``int``, ``str``, ``list``/``tuple``
  and ``dict`` only;
* on parse, the bytes must be *exactly* the canonical encoding of what they parse to (no
  whitespace, sorted keys, no duplicate keys, no ``-0``, no escapes RFC 8785 does not use).
"""

from __future__ import annotations

import json
import re
from typing import Any, NoReturn

import orjson
import rfc8785

from registry.errors import CanonicalEncodingError, MalformedError

MAX_SAFE_INTEGER = 2**53 - 1
"""Largest magnitude of an integer we write: RFC 8785 numbers are IEEE 754 doubles."""

MAX_DEPTH = 128
"""Deepest nesting of arrays and objects we encode; also stops a self-referencing value."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _child_path(path: str, key: str) -> str:
    # `$.payload.quantity` for plain keys, `$["odd key"]` for anything else, so a path can always
    # be read back unambiguously.
    if _IDENTIFIER.fullmatch(key):
        return f"{path}.{key}"
    return f"{path}[{json.dumps(key, ensure_ascii=False)}]"


def check_canonical_value(value: Any, *, path: str = "$") -> bool:
    """Raise ``CanonicalEncodingError`` naming the JSON path of the first value we refuse.

    ``path`` is the path of ``value`` itself, so a model can check one field and still report
    ``$.payload.quantity``. Returns whether some object key needs RFC 8785's UTF-16 key order
    (see :func:`_sorts_like_utf16`).
    """
    utf16_keys = _quick_check(value)
    if utf16_keys is not None:
        return utf16_keys
    return _careful_check(value, path)


def _quick_check(value: Any) -> bool | None:
    """:func:`check_canonical_value` for a value it accepts, without building paths: whether
    a key needs UTF-16 order, or ``None`` at the first doubt (then the careful check decides
    and names the path). Every value is signed or hashed on its way out, so this is the common
    case, and building a path for every key cost as much as the encoding itself."""
    utf16_keys = False
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            if not item.isascii() and not _encodes(item):
                return None
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                return None
        elif kind is dict:
            if depth >= MAX_DEPTH:
                return None
            for key, child in item.items():
                if type(key) is not str:
                    return None
                if not key.isascii():
                    if not _encodes(key):
                        return None
                    utf16_keys = utf16_keys or not _sorts_like_utf16(key)
                stack.append((child, depth + 1))
        elif kind is list or kind is tuple:
            if depth >= MAX_DEPTH:
                return None
            stack.extend((child, depth + 1) for child in item)
        elif item is not None and kind is not bool:
            return None  # floats, subclasses, anything else: the careful check names it
    return utf16_keys


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _careful_check(value: Any, path: str) -> bool:
    utf16_keys = False
    # An explicit stack and a depth limit rather than recursion: a deeply nested (or cyclic)
    # value gets a clear error instead of a RecursionError half-way through.
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise CanonicalEncodingError(
                f"value nests deeper than {MAX_DEPTH} levels at {where}", details={"path": where}
            )
        if item is None or isinstance(item, bool):
            continue
        if isinstance(item, int):
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise CanonicalEncodingError(
                    f"integer at {where} is outside ±(2**53-1) and cannot be encoded exactly, "
                    f"got {item}",
                    details={"path": where},
                )
            continue
        if isinstance(item, float):
            raise CanonicalEncodingError(
                f"floats are not allowed in canonical JSON; got {item!r} at {where}",
                details={"path": where},
            )
        if isinstance(item, str):
            _check_str(item, where)
            continue
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise CanonicalEncodingError(
                        f"object keys must be strings; got {type(key).__name__} key {key!r} "
                        f"at {where}",
                        details={"path": where},
                    )
                child_where = _child_path(where, key)
                _check_str(key, child_where)
                utf16_keys = utf16_keys or not _sorts_like_utf16(key)
                stack.append((child, child_where, depth + 1))
            continue
        if isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
            continue
        raise CanonicalEncodingError(
            f"{type(item).__name__} cannot be encoded as canonical JSON (at {where})",
            details={"path": where},
        )
    return utf16_keys


def _sorts_like_utf16(key: str) -> bool:
    """True when ``key`` sorts the same by code points as by UTF-16 code units.

    RFC 8785 sorts object keys by UTF-16 code units; Python by code points. The two orders
    differ only between characters at or above U+E000 and characters outside the BMP, so a key
    made only of characters below U+D800 sorts the same either way.
    """
    return key.isascii() or max(map(ord, key)) < 0xD800


_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_DATACLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_SUBCLASS
)
"""Sorted keys; dataclasses, datetimes and subclasses of str, int, dict and list are declined
and go to the standard library. (orjson would write an Enum, a UUID or a float its own way:
none reaches it, since every caller passes values checked to hold only JSON's own types,
integers within the profile, or values parsed from canonical bytes.)"""


def _fast_dumps(value: Any) -> bytes:
    """RFC 8785 bytes by a C encoder, for values whose keys all sort like UTF-16.

    Under our profile (no floats, strings valid Unicode) orjson and the standard library write
    exactly what RFC 8785 does: same escapes (``\\b \\f \\n \\r \\t``, ``\\"``, ``\\\\`` and
    lowercase ``\\u00xx`` for other controls), everything else as literal UTF-8, integers in
    decimal, keys in code-point order (UTF-8 byte order is code-point order). orjson does it
    about ten times faster: a transfer's payload in 0.5 against 7 us. What it declines (a lone
    surrogate, a non-string key, an integer beyond 64 bits, nesting past 255) goes to the
    standard library, which writes it or raises as it always did. The test suite checks both
    against the ``rfc8785`` package, and against each other, on random values.
    """
    try:
        return orjson.dumps(value, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        return _stdlib_dumps(value)


def _stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _check_str(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CanonicalEncodingError(
            f"string at {where} is not valid Unicode (lone surrogate)", details={"path": where}
        ) from e


def canonical_bytes(value: Any, *, path: str = "$") -> bytes:
    """The RFC 8785 encoding of ``value`` under our integers-only profile.

    This is the only function that turns a value into bytes that get signed or hashed. A refusal
    names the JSON path of the value it refuses, starting from ``path``.
    """
    if not check_canonical_value(value, path=path):
        return _fast_dumps(value)
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, RecursionError) as e:
        # Types and ranges are prechecked; what remains is nesting too deep for rfc8785.
        raise CanonicalEncodingError(f"cannot encode value as canonical JSON: {e}") from e


def _refuse_float(text: str) -> NoReturn:
    raise MalformedError(f"floats are not allowed in canonical JSON; got {text}")


def _refuse_constant(text: str) -> NoReturn:
    raise MalformedError(f"{text} is not JSON")


def _safe_int(text: str) -> int:
    value = int(text)
    if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        raise MalformedError(
            f"JSON value outside the canonical profile: integer {text} is outside ±(2**53-1)"
        )
    return value


def object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object (as ``json.loads``'s ``object_pairs_hook``); one naming a member twice is
    :class:`MalformedError`, where Python's parser would keep the last of the two."""
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedError(f"duplicate object key {key!r}")
        obj[key] = value
    return obj


def read_json(text: str | bytes) -> Any:
    """Any JSON ``text``, as ``json.loads`` reads it, but JSON nested deeper than the parser
    goes is a ``ValueError`` like any other text that is not JSON, not a ``RecursionError``."""
    try:
        return json.loads(text)
    except RecursionError as e:
        raise ValueError("JSON nested too deep to read") from e


_PROFILE_DECODER = json.JSONDecoder(
    parse_float=_refuse_float, parse_int=_safe_int, parse_constant=_refuse_constant
)
"""``json.loads`` with these hooks builds a decoder (and its scanner) on every call: 2.3 of
the 7.7 µs it took to parse an entry's payload."""


def parse_canonical(data: bytes) -> Any:
    """Parse ``data`` as JSON and insist it is byte for byte the canonical encoding of itself.

    Accepting only canonical bytes means one value has one encoding: what an auditor hashes is
    what the registry signed, and no two different byte strings can carry the same record.
    """
    if not isinstance(data, bytes):
        raise MalformedError(f"expected bytes, got {type(data).__name__}")
    if data.isascii():
        # The common case, fast: every key of ASCII bytes that encode back to themselves sorts
        # the same by code points as by UTF-16 units, so the C parser and encoder decide it.
        # Floats, unsafe integers and constants are still refused while parsing; a duplicate
        # key, an escape RFC 8785 does not use or a lone surrogate cannot encode back to the
        # same bytes, and goes to the careful parse below, which names what is wrong.
        try:
            value = _PROFILE_DECODER.decode(data.decode("ascii"))
            if _fast_dumps(value) == data:
                return _within_depth(value, data)
        except (ValueError, RecursionError, UnicodeEncodeError):
            pass
    return _within_depth(_parse_carefully(data), data)


def _within_depth(value: Any, data: bytes) -> Any:
    """``value``, unless it nests deeper than :data:`MAX_DEPTH`, which ``canonical_bytes``
    never writes (and which a worker process could not even hand back). Counting brackets
    bounds the depth from above, so only a value with many of them is walked."""
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return value
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if type(item) is dict else item if type(item) is list else ()
        for child in children:
            if type(child) is dict or type(child) is list:
                if depth >= MAX_DEPTH:
                    raise MalformedError(f"JSON nested deeper than {MAX_DEPTH} levels")
                stack.append((child, depth + 1))
    return value


def _parse_carefully(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedError(f"not UTF-8 at byte {e.start}") from e
    utf16_keys = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal utf16_keys
        utf16_keys = utf16_keys or not all(_sorts_like_utf16(k) for k, _ in items)
        return object_without_duplicates(items)

    try:
        value = json.loads(
            text,
            parse_float=_refuse_float,
            parse_int=_safe_int,
            parse_constant=_refuse_constant,
            object_pairs_hook=pairs,
        )
    except (ValueError, RecursionError) as e:
        # json.JSONDecodeError and int-digit limits are ValueErrors.
        raise MalformedError(f"not JSON: {e}") from e
    # The parse already refused floats, unsafe integers and duplicate keys; what is left to
    # check is the form, by encoding again (lone surrogates cannot be encoded: not canonical).
    try:
        again = rfc8785.dumps(value) if utf16_keys else _fast_dumps(value)
    except (UnicodeEncodeError, rfc8785.CanonicalizationError, RecursionError) as e:
        raise MalformedError(f"JSON value outside the canonical profile: {e}") from e
    if again != data:
        at = next(
            (i for i, (a, b) in enumerate(zip(again, data, strict=False)) if a != b),
            min(len(again), len(data)),
        )
        raise MalformedError(
            f"JSON is not in RFC 8785 canonical form (first difference at byte {at})",
            details={"offset": at},
        )
    return value


def encode_checked(value: Any) -> bytes:
    """The canonical bytes of a value whose numbers are already known to be in the profile.

    For a part of what :func:`parse_canonical` returned, or a record built by typed code from
    checked parts (an entry whose payload was checked, an envelope of base64 strings): no
    floats, integers within ±(2**53-1). The type walk of :func:`canonical_bytes` is skipped;
    ASCII output is already in RFC 8785 key order, and anything else (non-ASCII keys, a lone
    surrogate) takes the full path, which also names what it refuses.
    """
    try:
        data = _fast_dumps(value)
    except UnicodeEncodeError:
        return canonical_bytes(value)
    return data if data.isascii() else canonical_bytes(value)
