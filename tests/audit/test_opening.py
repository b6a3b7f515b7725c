"""The verifier's fast paths open exactly what the careful paths open, and nothing else."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import RegistryError
from registry.ledger.canonical import MAX_SAFE_INTEGER
from registry.ledger.checkpoint import (
    Checkpoint,
    NoteVerifier,
    add_signature,
    open_checkpoint,
    sign_checkpoint,
    sign_note,
)
from registry.ledger.dsse import PAYLOAD_TYPE, Envelope, EnvelopeSignature, sign_envelope
from registry.ledger.entry import Entry, seal_entry
from registry.ledger.keys import SigningKey, make_keyring
from registry.ledger.opening import (
    Context,
    Job,
    _instruction_bytes_in,
    _open_envelope_carefully,
    _open_written_checkpoint,
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
CONTEXT = Context(registry_keys=KEYS, verifier=PINNED, origin=ORIGIN)
OTHER = SigningKey.from_seed(bytes(range(1, 33)))


def _opened_carefully(note: str) -> Checkpoint | str:
    try:
        return open_checkpoint(note, origin=ORIGIN, verifiers=[PINNED])
    except RegistryError as e:
        return e.code


def test_a_checkpoint_as_the_registry_signs_it_takes_the_fast_path() -> None:
    cp = Checkpoint(origin=ORIGIN, size=1234, root=bytes(range(32)))
    note = sign_checkpoint(cp, name=ORIGIN, key=KEY)
    assert _open_written_checkpoint(note, CONTEXT) == cp == _opened_carefully(note)


def _notes() -> list[str]:
    """Notes the fast path must open as the careful path does, or leave to it."""
    cp = Checkpoint(origin=ORIGIN, size=7, root=bytes(32))
    good = sign_checkpoint(cp, name=ORIGIN, key=KEY)
    text = good[: good.index("\n\n") + 1]
    return [
        good,
        sign_checkpoint(Checkpoint(origin=ORIGIN, size=0, root=bytes(32)), name=ORIGIN, key=KEY),
        add_signature(good, name="witness.example", key=OTHER),  # co-signed
        sign_checkpoint(Checkpoint(origin=ORIGIN, size=7, root=bytes(32), extensions=("x",)),
                        name=ORIGIN, key=KEY),
        sign_checkpoint(cp, name=ORIGIN, key=OTHER),  # the right name, another key
        sign_checkpoint(cp, name="other.example", key=KEY),  # another name
        sign_checkpoint(Checkpoint(origin="other.example", size=7, root=bytes(32)),
                        name=ORIGIN, key=KEY),
        good.replace("\n7\n", "\n07\n"),  # a leading zero, signature now wrong
        good.replace(text, text.replace("\n7\n", "\n8\n")),
        good[:-1],
        good + "\n",
        good.replace(" ", "  ", 1),
        good.replace("\n\n", "\n\n\n"),
    ]


@settings(max_examples=300)
@given(st.sampled_from(_notes()), st.integers(0, 300), st.sampled_from(["", "\n", " ", "=", "A",
                                                                           "\u2014", "\r", "0"]),
       st.sampled_from(["keep", "insert", "replace", "delete"]))
def test_any_checkpoint_note_opens_as_the_careful_path_opens_it(
    note: str, at: int, char: str, how: str
) -> None:
    at %= len(note)
    if how == "insert":
        note = note[:at] + char + note[at:]
    elif how == "replace":
        note = note[:at] + char + note[at + 1 :]
    elif how == "delete":
        note = note[:at] + note[at + 1 :]
    fast = _open_written_checkpoint(note, CONTEXT)
    assert fast is None or fast == _opened_carefully(note)


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


def test_a_size_line_too_long_to_be_a_number_is_refused_not_a_crash() -> None:
    cp = Checkpoint(origin=ORIGIN, size=7, root=bytes(32))
    good = sign_checkpoint(cp, name=ORIGIN, key=KEY)
    forged = good.replace("\n7\n", "\n" + "9" * 5000 + "\n")
    assert _open_written_checkpoint(forged, CONTEXT) is None
    assert _opened_carefully(forged) == "bad_signature"
    text = forged[: forged.index("\n\n") + 1]
    signed_by_the_registry = sign_note(text, name=ORIGIN, key=KEY)
    assert _open_written_checkpoint(signed_by_the_registry, CONTEXT) is None
    assert _opened_carefully(signed_by_the_registry) == "bad_checkpoint"
    result = run_job(Job(CONTEXT, [], [(2, 7, forged), (3, 7, signed_by_the_registry)], {}))
    assert [c.failure and c.failure[0] for c in result.checkpoints] == [
        "bad_signature", "bad_checkpoint"]
