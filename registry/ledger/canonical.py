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


def check_canonical_value(value: Any, *, path: str = "$") -> None:
    """Raise ``CanonicalEncodingError`` naming the JSON path of the first value we refuse.

    ``path`` is the path of ``value`` itself, so a model can check one field and still report
    ``$.payload.quantity``.
    """
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
                stack.append((child, child_where, depth + 1))
            continue
        if isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(item))
            continue
        raise CanonicalEncodingError(
            f"{type(item).__name__} cannot be encoded as canonical JSON (at {where})",
            details={"path": where},
        )


def _check_str(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CanonicalEncodingError(
            f"string at {where} is not valid Unicode (lone surrogate)", details={"path": where}
        ) from e


def canonical_bytes(value: Any) -> bytes:
    """The RFC 8785 encoding of ``value`` under our integers-only profile.

    This is the only function that turns a value into bytes that get signed or hashed.
    """
    check_canonical_value(value)
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, RecursionError) as e:
        # Types and ranges are prechecked; what remains is nesting too deep for rfc8785.
        raise CanonicalEncodingError(f"cannot encode value as canonical JSON: {e}") from e


def _refuse_float(text: str) -> NoReturn:
    raise MalformedError(f"floats are not allowed in canonical JSON; got {text}")


def _refuse_constant(text: str) -> NoReturn:
    raise MalformedError(f"{text} is not JSON")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedError(f"duplicate object key {key!r}")
        obj[key] = value
    return obj


def parse_canonical(data: bytes) -> Any:
    """Parse ``data`` as JSON and insist it is byte for byte the canonical encoding of itself.

    Accepting only canonical bytes means one value has one encoding: what an auditor hashes is
    what the registry signed, and no two different byte strings can carry the same record.
    """
    if not isinstance(data, bytes):
        raise MalformedError(f"expected bytes, got {type(data).__name__}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MalformedError(f"not UTF-8 at byte {e.start}") from e
    try:
        value = json.loads(
            text,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
            object_pairs_hook=_object_without_duplicates,
        )
    except (ValueError, RecursionError) as e:
        # json.JSONDecodeError and int-digit limits are ValueErrors.
        raise MalformedError(f"not JSON: {e}") from e
    try:
        again = canonical_bytes(value)
    except CanonicalEncodingError as e:
        raise MalformedError(f"JSON value outside the canonical profile: {e.message}") from e
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
