"""Ledger entries: validation, canonical bytes, sealed envelopes (golden) and the chain."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from registry.errors import (
    BadSignatureError,
    CanonicalEncodingError,
    ChainError,
    MalformedError,
    UnknownKeyError,
)
from registry.ledger.dsse import Envelope, sign_envelope
from registry.ledger.entry import (
    Entry,
    check_chain,
    format_time,
    open_entry,
    parse_time,
    seal_entry,
)
from registry.ledger.keys import SigningKey, make_keyring

# RFC 8032 TEST 2 seed: a fixed registry key so the golden envelope below is stable.
SEED = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")
GOLDEN_ENTRY_BYTES = (
    b'{"actor":"registry","kind":"credits.issue","payload":{"account":"KH-GOV-0001",'
    b'"batch":"KH-JCM-KH001-2025-00001","end":1000,"start":1},"prev":null,"seq":0,'
    b'"time":"2025-04-01T09:30:00.000000Z","v":1}'
)
# SHA-256 of the sealed envelope of GOLDEN_ENTRY_BYTES under SEED. If this changes, the format
# of every stored entry has changed: auditors' hashes would no longer match.
GOLDEN_ENVELOPE_SHA256 = "9f3b1fb034c7cc69c2dc5e41f5c328f0b0d10fee21ac37baf3f952e5b35067a0"


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.from_seed(SEED)


def make_entry(**overrides: Any) -> Entry:
    fields: dict[str, Any] = {
        "v": 1,
        "seq": 0,
        "time": "2025-04-01T09:30:00.000000Z",
        "kind": "credits.issue",
        "actor": "registry",
        "payload": {
            "batch": "KH-JCM-KH001-2025-00001",
            "start": 1,
            "end": 1000,
            "account": "KH-GOV-0001",
        },
        "prev": None,
    }
    fields.update(overrides)
    return Entry(**fields)


def leaf(envelope: bytes) -> bytes:
    # RFC 6962 leaf hash, computed here independently of registry.ledger.merkle.
    return hashlib.sha256(b"\x00" + envelope).digest()


# --- time ---------------------------------------------------------------------------------


def test_format_time_converts_to_utc_with_microseconds() -> None:
    plus7 = timezone(timedelta(hours=7))  # Phnom Penh
    assert format_time(datetime(2025, 4, 1, 16, 30, tzinfo=plus7)) == "2025-04-01T09:30:00.000000Z"
    assert format_time(datetime(5, 1, 2, 3, 4, 5, 60, tzinfo=UTC)) == "0005-01-02T03:04:05.000060Z"


def test_format_time_refuses_naive() -> None:
    with pytest.raises(CanonicalEncodingError, match="timezone-aware"):
        format_time(datetime(2025, 4, 1, 9, 30))


def test_parse_time_inverts_format() -> None:
    now = datetime(2025, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert parse_time(format_time(now)) == now


# --- validation ---------------------------------------------------------------------------


def test_valid_entry_fields() -> None:
    entry = make_entry(seq=5, prev="ab" * 32, kind="credits.transfer_part")
    assert entry.seq == 5
    assert entry.timestamp == datetime(2025, 4, 1, 9, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"seq": 0, "prev": "ab" * 32}, "entry 0 has no predecessor"),
        ({"seq": 1, "prev": None}, "entry 1 must name the previous leaf hash"),
        ({"seq": -1}, "greater than or equal to 0"),
        ({"seq": 2**53}, "less than or equal to"),
        ({"seq": True}, "valid integer"),
        ({"seq": "1"}, "valid integer"),
        ({"v": 2}, "Input should be 1"),
        ({"v": True}, "v must be the integer 1"),
        ({"v": 1.0}, "v must be the integer 1"),
        ({"time": "2025-04-01T09:30:00Z"}, "YYYY-MM-DDTHH:MM:SS.ffffffZ"),
        ({"time": "2025-04-01T09:30:00.000000+00:00"}, "YYYY-MM-DDTHH:MM:SS.ffffffZ"),
        ({"time": "2025-04-01t09:30:00.000000z"}, "YYYY-MM-DDTHH:MM:SS.ffffffZ"),
        ({"time": "2025-13-01T09:30:00.000000Z"}, "month must be in 1..12|does not match"),
        ({"time": "2025-04-01T09:30:60.000000Z"}, "unconverted data|second must be|not match"),
        ({"kind": "Credits.Transfer"}, "lowercase dotted identifier"),
        ({"kind": "credits..transfer"}, "lowercase dotted identifier"),
        ({"kind": "credits.transfer "}, "lowercase dotted identifier"),
        ({"kind": ""}, "lowercase dotted identifier"),
        ({"actor": ""}, "non-empty party id"),
        ({"actor": " acct-1"}, "non-empty party id"),
        ({"prev": "AB" * 32, "seq": 1}, "64 lowercase hex"),
        ({"prev": "ab" * 31, "seq": 1}, "64 lowercase hex"),
        ({"extra": 1}, "Extra inputs are not permitted"),
        ({"payload": [1]}, "valid dictionary"),
    ],
)
def test_invalid_entries_refused(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        make_entry(**overrides)


def test_float_in_payload_names_its_path() -> None:
    with pytest.raises(CanonicalEncodingError, match=r"\$\.payload\.quantity"):
        make_entry(payload={"quantity": 10.0})
    with pytest.raises(CanonicalEncodingError, match=r"\$\.payload\.blocks\[1\]\.end"):
        make_entry(payload={"blocks": [{"end": 1}, {"end": 2**60}]})


def test_entry_is_frozen_and_owns_its_payload() -> None:
    payload: dict[str, Any] = {"blocks": [{"start": 1, "end": 2}], "pair": (1, 2)}
    entry = make_entry(payload=payload)
    payload["blocks"][0]["end"] = 999
    assert entry.payload == {"blocks": [{"start": 1, "end": 2}], "pair": [1, 2]}
    with pytest.raises(ValidationError, match="frozen"):
        entry.seq = 3  # type: ignore[misc]


# --- bytes --------------------------------------------------------------------------------


def test_to_bytes_is_the_golden_canonical_form() -> None:
    assert make_entry().to_bytes() == GOLDEN_ENTRY_BYTES


def test_from_bytes_round_trip() -> None:
    entry = make_entry(seq=7, prev="0f" * 32, payload={"pair": (1, 2), "nested": {"b": 1, "a": 2}})
    assert Entry.from_bytes(entry.to_bytes()) == entry


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (GOLDEN_ENTRY_BYTES.replace(b'"v":1', b'"v":1.0'), "floats are not allowed"),
        (GOLDEN_ENTRY_BYTES.replace(b'"actor":', b'"actor" :'), "canonical form"),
        (GOLDEN_ENTRY_BYTES.replace(b'"v":1', b'"v":true'), "not a valid ledger entry"),
        (GOLDEN_ENTRY_BYTES.replace(b'"prev":null,', b""), "not a valid ledger entry"),
        (GOLDEN_ENTRY_BYTES.replace(b'"seq":0', b'"seq":"0"'), "not a valid ledger entry"),
        (GOLDEN_ENTRY_BYTES.replace(b'"v":1}', b'"v":1,"w":2}'), "Extra inputs"),
        (b"[]", "an entry is a JSON object"),
    ],
)
def test_from_bytes_refuses(data: bytes, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        Entry.from_bytes(data)


# --- sealing ------------------------------------------------------------------------------


def test_sealed_envelope_is_golden(key: SigningKey) -> None:
    envelope = seal_entry(make_entry(), key)
    assert hashlib.sha256(envelope).hexdigest() == GOLDEN_ENVELOPE_SHA256
    assert Envelope.from_bytes(envelope).payload == GOLDEN_ENTRY_BYTES


def test_open_entry_round_trip(key: SigningKey) -> None:
    entry = make_entry()
    assert open_entry(seal_entry(entry, key), make_keyring(key.public_key)) == entry


def test_every_byte_of_a_sealed_entry_is_protected(key: SigningKey) -> None:
    envelope = seal_entry(make_entry(payload={"n": 1}, kind="x"), key)
    keyid = key.public_key.key_id.encode()
    keyid_at = range(envelope.index(keyid), envelope.index(keyid) + len(keyid))
    keys = make_keyring(key.public_key)
    for i in range(len(envelope)):
        tampered = bytearray(envelope)
        tampered[i] ^= 0x01
        with pytest.raises((MalformedError, BadSignatureError)) as info:
            open_entry(bytes(tampered), keys)
        if i in keyid_at:
            assert type(info.value) is UnknownKeyError


def test_resealed_by_foreign_key_is_unknown(key: SigningKey) -> None:
    envelope = seal_entry(make_entry(), key)
    forged = seal_entry(
        Entry.from_bytes(Envelope.from_bytes(envelope).payload), SigningKey.generate()
    )
    with pytest.raises(UnknownKeyError, match="no signature by a trusted key"):
        open_entry(forged, make_keyring(key.public_key))


def test_signed_payload_that_is_not_an_entry(key: SigningKey) -> None:
    envelope = sign_envelope(b'{"v":1}', key).to_bytes()
    with pytest.raises(MalformedError, match="not a valid ledger entry"):
        open_entry(envelope, make_keyring(key.public_key))


def test_entry_signed_as_another_payload_type(key: SigningKey) -> None:
    envelope = sign_envelope(GOLDEN_ENTRY_BYTES, key, "application/json").to_bytes()
    with pytest.raises(MalformedError, match="payloadType"):
        open_entry(envelope, make_keyring(key.public_key))


# --- chain --------------------------------------------------------------------------------


def test_chain_of_sealed_entries(key: SigningKey) -> None:
    first = make_entry()
    first_env = seal_entry(first, key)
    second = make_entry(seq=1, prev=leaf(first_env).hex(), kind="credits.transfer")
    check_chain(None, 0, first)
    check_chain(leaf(first_env), 1, second)


def test_chain_gap_is_reported() -> None:
    entry = make_entry(seq=4, prev="00" * 32)
    with pytest.raises(ChainError, match="expected entry seq 3, got 4") as info:
        check_chain(bytes(32), 3, entry)
    assert info.value.details == {"expected": 3, "actual": 4}
    assert info.value.code == "broken_chain"


def test_chain_wrong_prev_is_reported() -> None:
    entry = make_entry(seq=1, prev="00" * 32)
    with pytest.raises(ChainError, match=f"prev should be {'11' * 32}, got {'00' * 32}") as info:
        check_chain(b"\x11" * 32, 1, entry)
    assert info.value.details["expected"] == "11" * 32
    assert info.value.details["actual"] == "00" * 32


def test_chain_first_entry_must_not_follow_a_leaf() -> None:
    with pytest.raises(ChainError, match="prev should be"):
        check_chain(b"\x11" * 32, 0, make_entry())
