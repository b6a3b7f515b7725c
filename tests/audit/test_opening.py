"""The verifier's fast paths open exactly what the careful paths open, and nothing else."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from registry.ledger.canonical import MAX_SAFE_INTEGER
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, sign_checkpoint, sign_note
from registry.ledger.dsse import PAYLOAD_TYPE, Envelope, EnvelopeSignature, sign_envelope
from registry.ledger.entry import Entry, seal_entry
from registry.ledger.keys import SigningKey, make_keyring
from registry.ledger.opening import (
    Context,
    Job,
    _instruction_bytes_in,
    _open_envelope_carefully,
    instruction_signed_bytes,
    open_envelope,
    run_job,
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


ORIGIN = "test.example/ledger"
PINNED = NoteVerifier(name=ORIGIN, key=KEY.public_key)
CONTEXT = Context(registry_keys=KEYS, origin=ORIGIN)
def test_a_job_result_crosses_to_the_main_process_unchanged() -> None:
    """What a worker sends back (pickled as plain tuples) is what it opened, failures too."""
    good = seal_entry(_entry({"effects": {}, "instruction": {"a": 1}, "signature": "AA=="}), KEY)
    cp = Checkpoint(origin=ORIGIN, size=1, root=bytes(32))
    job = Job(CONTEXT, [good, b"not an envelope", None],
              [(4, 1, sign_checkpoint(cp, name=ORIGIN, key=KEY)), (5, 2, "not a note")], {})
    result = run_job(job)
    assert [o.entry is not None for o in result.entries] == [True, False, False]
    assert [c.checkpoint is not None for c in result.checkpoints] == [True, False]
    back = pickle.loads(pickle.dumps(result))
    assert back == result
    assert back.entries[0].entry == Entry.from_bytes(back.entries[0].entry.to_bytes())


def test_a_size_line_too_long_to_be_a_number_is_a_failure_not_a_crash() -> None:
    good = sign_checkpoint(Checkpoint(origin=ORIGIN, size=7, root=bytes(32)), name=ORIGIN,
                           key=KEY)
    forged = good.replace("\n7\n", "\n" + "9" * 5000 + "\n")
    signed_by_the_registry = sign_note(forged[: forged.index("\n\n") + 1], name=ORIGIN, key=KEY)
    result = run_job(Job(CONTEXT, [], [(2, 7, forged), (3, 7, signed_by_the_registry)], {}))
    assert [c.failure and c.failure[0] for c in result.checkpoints] == [
        "bad_signature", "bad_checkpoint"]
