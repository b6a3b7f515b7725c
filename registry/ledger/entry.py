"""The ledger entry: one state change, its canonical bytes, and its signed envelope.

This module owns the entry format fixed in DESIGN.md::

    {"v": 1, "seq", "time", "kind", "actor", "payload", "prev"}

An entry is encoded with ``canonical_bytes`` and sealed in a DSSE envelope signed by the
registry key (``seal_entry``). The envelope's exact bytes are what the ledger stores and what the
Merkle tree hashes: ``leaf = SHA-256(0x00 || envelope bytes)`` (``leaf_hash`` in
``registry.ledger.merkle``). ``prev`` of entry ``n`` is the lowercase hex leaf hash of entry
``n - 1``, and ``None`` only for entry 0; ``check_chain`` checks that link.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from registry.errors import CanonicalEncodingError, ChainError, MalformedError
from registry.ledger.canonical import (
    MAX_SAFE_INTEGER,
    canonical_bytes,
    encode_checked,
    parse_canonical,
)
from registry.ledger.dsse import PAYLOAD_TYPE, sign_envelope, verify_envelope
from registry.ledger.keys import PublicKey, SigningKey

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""Entry timestamps: RFC 3339, UTC, always microseconds, always ``Z``."""

_TIME_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_KIND = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")
_LEAF_HEX = re.compile(r"[0-9a-f]{64}")
_FROM_CANONICAL = "payload parsed from canonical bytes"


def format_time(dt: datetime) -> str:
    """``dt`` as an entry timestamp, ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, converted to UTC.

    A naive datetime is refused: the ledger never guesses a time zone.
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise CanonicalEncodingError(f"entry times must be timezone-aware, got naive {dt!r}")
    utc = dt.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond:06d}Z"
    )


def parse_time(text: str) -> datetime:
    """The aware UTC datetime of an entry timestamp; ``ValueError`` unless exactly our form."""
    if not isinstance(text, str) or not _TIME_SHAPE.fullmatch(text):
        raise ValueError(f"time must look like YYYY-MM-DDTHH:MM:SS.ffffffZ, got {text!r}")
    # The shape is checked above; fromisoformat reads it (with its offset) far faster than
    # strptime, and still refuses impossible dates such as February 30.
    return datetime.fromisoformat(text[:-1] + "+00:00")


def parse_expiry(text: object) -> datetime | None:
    """An instruction's ``expires`` as a client wrote it (RFC 3339 with an offset, fractional
    seconds or not); ``None`` if it names no instant."""
    try:
        value = datetime.fromisoformat(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if value.tzinfo is not None else None


class Entry(BaseModel):
    """One ledger entry, validated at construction. ``to_bytes`` is what gets signed.

    Invalid field values raise pydantic's ``ValidationError`` (a bug in the caller), except a
    payload that cannot be canonical JSON, which raises ``CanonicalEncodingError`` naming the path
    (e.g. ``$.payload.quantity``). ``from_bytes`` turns every failure into ``MalformedError``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1]
    seq: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    time: str = Field(
        json_schema_extra={"pattern": f"^{_TIME_SHAPE.pattern}$"},
        description="RFC 3339 UTC, always microseconds and Z",
    )
    kind: str = Field(json_schema_extra={"pattern": f"^{_KIND.pattern}$"})
    actor: str = Field(
        json_schema_extra={"minLength": 1, "pattern": r"^\S([\s\S]*\S)?$"},
        description="a party id, or registry (genesis, key rotation); no edge spaces",
    )
    payload: dict[str, Any]
    prev: str | None = Field(
        json_schema_extra={"anyOf": [{"pattern": f"^{_LEAF_HEX.pattern}$", "type": "string"},
                                     {"type": "null"}]},
        description="lowercase hex leaf hash of the entry before; null only for entry 0",
    )

    @field_validator("v", mode="before")
    @classmethod
    def _v_is_the_integer_one(cls, value: Any) -> Any:
        # Literal[1] alone lets True and 1.0 through, which would encode differently.
        if type(value) is not int:
            raise ValueError(f"v must be the integer 1, got {value!r}")
        return value

    @field_validator("time")
    @classmethod
    def _time_form(cls, value: str) -> str:
        parse_time(value)
        return value

    @field_validator("kind")
    @classmethod
    def _kind_form(cls, value: str) -> str:
        if not _KIND.fullmatch(value):
            raise ValueError(
                f"kind must be a lowercase dotted identifier like 'credits.transfer', got {value!r}"
            )
        return value

    @field_validator("actor")
    @classmethod
    def _actor_form(cls, value: str) -> str:
        if not value or value != value.strip():
            raise ValueError(
                f"actor must be a non-empty party id without edge spaces, got {value!r}"
            )
        return value

    @field_validator("payload")
    @classmethod
    def _payload_canonical(cls, value: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if info.context is not None and info.context.get(_FROM_CANONICAL) is True:
            # Only ``from_bytes`` sets this: it just parsed the payload out of bytes that
            # ``parse_canonical`` proved canonical, and nobody else holds that object, so
            # checking and copying it again would only double the cost of opening an entry.
            return value
        # Keep our own copy in JSON shape (tuples become lists), so later mutation of the
        # caller's dict cannot change the entry and from_bytes(to_bytes()) == the entry.
        copy: dict[str, Any] = json.loads(canonical_bytes(value, path="$.payload"))
        return copy

    @field_validator("prev")
    @classmethod
    def _prev_form(cls, value: str | None) -> str | None:
        if value is not None and not _LEAF_HEX.fullmatch(value):
            raise ValueError(f"prev must be 64 lowercase hex digits (a leaf hash), got {value!r}")
        return value

    @model_validator(mode="after")
    def _prev_only_absent_at_zero(self) -> Entry:
        if self.seq == 0 and self.prev is not None:
            raise ValueError(f"entry 0 has no predecessor, but prev is {self.prev!r}")
        if self.seq != 0 and self.prev is None:
            raise ValueError(f"entry {self.seq} must name the previous leaf hash in prev")
        return self

    @property
    def timestamp(self) -> datetime:
        return parse_time(self.time)

    def to_json_value(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "actor": self.actor,
            "payload": self.payload,
            "prev": self.prev,
        }

    def to_bytes(self) -> bytes:
        """The entry's canonical JSON: the DSSE payload.

        Its payload was checked when the entry was made and its other fields are typed, so
        the type walk is not done again.
        """
        return encode_checked(self.to_json_value())

    @classmethod
    def from_bytes(cls, data: bytes) -> Entry:
        """Parse canonical entry bytes; anything else is ``MalformedError``."""
        value = parse_canonical(data)
        if not isinstance(value, dict):
            raise MalformedError(f"an entry is a JSON object, got {type(value).__name__}")
        try:
            return cls.model_validate(value, context={_FROM_CANONICAL: True})
        except ValidationError as e:
            raise MalformedError(
                f"not a valid ledger entry: {e}",
                details={"errors": e.errors(include_url=False, include_context=False)},
            ) from e


def seal_entry(entry: Entry, key: SigningKey, *, cosigner: SigningKey | None = None) -> bytes:
    """The DSSE envelope bytes of ``entry`` signed by ``key``: the bytes the ledger stores.
    A key rotation is also signed by the new key, its ``cosigner``."""
    cosigners = () if cosigner is None else (cosigner,)
    return sign_envelope(entry.to_bytes(), key, PAYLOAD_TYPE, cosigners=cosigners).to_bytes()


def open_entry(envelope_bytes: bytes, keys: Mapping[str, PublicKey]) -> Entry:
    """Verify an entry envelope against trusted ``keys`` and parse the entry inside.

    Raises what ``verify_envelope`` raises, then ``MalformedError`` if the payload is not an
    entry.
    """
    return Entry.from_bytes(verify_envelope(envelope_bytes, keys, PAYLOAD_TYPE))


def check_chain(prev_leaf: bytes | None, expected_seq: int, entry: Entry) -> None:
    """Raise ``ChainError`` unless ``entry`` is number ``expected_seq`` and links to ``prev_leaf``.

    ``prev_leaf`` is the leaf hash of the entry before (``None`` before entry 0).
    """
    if entry.seq != expected_seq:
        raise ChainError(
            f"expected entry seq {expected_seq}, got {entry.seq}",
            details={"expected": expected_seq, "actual": entry.seq},
        )
    expected_prev = None if prev_leaf is None else prev_leaf.hex()
    if entry.prev != expected_prev:
        raise ChainError(
            f"entry {entry.seq}: prev should be {expected_prev}, got {entry.prev}",
            details={"expected": expected_prev, "actual": entry.prev, "seq": entry.seq},
        )


def envelope_time(envelope_bytes: bytes) -> str:
    """The ``time`` of the entry in an envelope the registry itself stored (no verification)."""
    envelope = json.loads(envelope_bytes)
    time: str = json.loads(base64.b64decode(envelope["payload"]))["time"]
    return time
