"""The verifier's fast paths open exactly what the careful paths open, and nothing else."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from registry.ledger.canonical import MAX_SAFE_INTEGER
from registry.ledger.dsse import PAYLOAD_TYPE, Envelope, EnvelopeSignature, sign_envelope
from registry.ledger.entry import Entry, seal_entry
from registry.ledger.keys import SigningKey, make_keyring
from registry.ledger.opening import (
    _instruction_bytes_in,
    _open_envelope_carefully,
    instruction_signed_bytes,
    open_envelope,
)

KEY = SigningKey.from_seed(bytes(range(32)))
KEYS = make_keyring(KEY.public_key)
PREV = "ab" * 32

texts = st.text(st.characters(codec="utf-8"), max_size=10)
ints = st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
# Keys that collide with the ones the cut looks for, so that ambiguity is exercised.
keys = st.sampled_from(["instruction", "signature", "effects", "body", "a"]) | texts
json_values = st.recursive(
    st.none() | st.booleans() | ints | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=12,
)


def _entry(payload: dict[str, Any]) -> Entry:
    return Entry(v=1, seq=1, time="2026-01-01T00:00:00.000000Z", kind="credits.transfer",
                 actor="p", payload=payload, prev=PREV)


def _sealed(payload: dict[str, Any]) -> bytes:
    return seal_entry(_entry(payload), KEY)


@settings(max_examples=200)
@given(json_values, json_values, texts | json_values)
def test_instruction_cut_from_entry_bytes_is_its_signed_bytes(
    instruction: Any, effects: Any, signature: Any
) -> None:
    payload = {"effects": effects, "instruction": instruction, "signature": signature}
    entry = _entry(payload)
    cut = _instruction_bytes_in(entry.to_bytes(), entry)
    assert cut is None or cut == instruction_signed_bytes(instruction, from_entry=True)


def test_instruction_cut_is_taken_for_a_usual_entry() -> None:
    instruction = {"type": "credits.transfer", "body": {"quantity": 1, "note": "\u00e9"}}
    entry = _entry({"effects": {"batch": "B"}, "instruction": instruction, "signature": "AA=="})
    assert _instruction_bytes_in(entry.to_bytes(), entry) == instruction_signed_bytes(instruction)


def _opened_alike(data: bytes) -> None:
    assert open_envelope(data, KEYS) == _open_envelope_carefully(data, KEYS)[0]


@settings(max_examples=300)
@given(st.data())
def test_any_damaged_envelope_opens_as_the_careful_path_opens_it(data: st.DataObject) -> None:
    envelope = _sealed({"effects": {}, "instruction": {"type": "t"}, "signature": "AA=="})
    at = data.draw(st.integers(0, len(envelope) - 1))
    replacement = data.draw(st.binary(max_size=3))
    _opened_alike(envelope[:at] + replacement + envelope[at + 1 :])


def test_envelopes_the_fast_path_must_leave_to_the_careful_one() -> None:
    payload = _entry({"effects": {}, "instruction": {}, "signature": ""}).to_bytes()
    other = SigningKey.from_seed(bytes(32))
    good = seal_entry(_entry({"effects": {}, "instruction": {}, "signature": ""}), KEY)
    signed = sign_envelope(payload, KEY)
    cosigned = Envelope(PAYLOAD_TYPE, payload, (
        *signed.signatures, EnvelopeSignature(other.public_key.key_id, other.sign(b"x")),
    )).to_bytes()
    for data in (
        good,
        sign_envelope(payload, other).to_bytes(),  # a key that is not trusted
        sign_envelope(b"[1]", KEY).to_bytes(),  # a payload that is not an entry
        sign_envelope(payload, KEY, "text/plain").to_bytes(),  # another payload type
        good.replace(b'"sig":"', b'"sig":"AAAA'),  # a signature that does not verify
        good.replace(b'{"payload"', b'{ "payload"'),  # not canonical
        cosigned,
    ):
        _opened_alike(data)
    assert open_envelope(good, KEYS).trusted
