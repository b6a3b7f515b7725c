"""C2SP signed notes and tlog checkpoints: known answers, parsing, cosigning and tampering."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import (
    BadSignatureError,
    CheckpointError,
    ForkError,
    MalformedError,
    RegistryError,
)
from registry.ledger.checkpoint import (
    EM_DASH,
    MAX_SIGNATURES,
    Checkpoint,
    NoteVerifier,
    _open_as_signed,
    _open_carefully,
    add_signature,
    check_consistent_sizes,
    note_key_id,
    open_checkpoint,
    sign_checkpoint,
    sign_note,
    split_note,
    verify_note,
)
from registry.ledger.keys import SigningKey

ORIGIN = "registry.example.kh/ledger"
ROOT = hashlib.sha256(b"root").digest()
ROOT_B64 = base64.b64encode(ROOT).decode()
FF_URLSAFE = base64.urlsafe_b64encode(b"\xff" * 32).decode()

# golang.org/x/mod/sumdb/note documentation example (the reference implementation).
GO_SKEY_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT + "\n"
    "\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvq"
    "fqdngotpRZb6KE6RyyBwJnAM=\n"
)


@pytest.fixture
def registry_key() -> SigningKey:
    return SigningKey.from_seed(b"\x07" * 32)


@pytest.fixture
def registry(registry_key: SigningKey) -> NoteVerifier:
    return NoteVerifier(name=ORIGIN, key=registry_key.public_key)


@pytest.fixture
def note(registry_key: SigningKey) -> str:
    return sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), name=ORIGIN, key=registry_key)


# --- known answers ------------------------------------------------------------------------


def test_go_reference_note_is_reproduced() -> None:
    key = SigningKey.from_seed(GO_SKEY_SEED)
    assert sign_note(GO_TEXT, name="PeterNeumann", key=key) == GO_NOTE
    verifier = NoteVerifier.parse(GO_VKEY)
    assert verifier.key == key.public_key
    assert verifier.key_id.hex() == "c74f20a3"
    assert verifier.verifier_string() == GO_VKEY
    assert verify_note(GO_NOTE, [verifier]) == (GO_TEXT, [verifier])


def test_note_key_id_matches_independent_computation(registry_key: SigningKey) -> None:
    raw = registry_key.public_key.raw
    expected = hashlib.sha256(ORIGIN.encode() + b"\x0a" + b"\x01" + raw).digest()[:4]
    assert note_key_id(ORIGIN, registry_key.public_key) == expected
    verifier = NoteVerifier(name=ORIGIN, key=registry_key.public_key)
    key_b64 = base64.b64encode(b"\x01" + raw).decode()
    assert verifier.verifier_string() == f"{ORIGIN}+{expected.hex()}+{key_b64}"
    assert NoteVerifier.parse(verifier.verifier_string()) == verifier


def test_checkpoint_body_and_note_layout(registry_key: SigningKey, note: str) -> None:
    body = f"{ORIGIN}\n5\n{ROOT_B64}\n"
    assert Checkpoint(ORIGIN, 5, ROOT).body() == body
    assert note.startswith(body + "\n" + EM_DASH + " " + ORIGIN + " ")
    sig = base64.b64decode(note.rsplit(" ", 1)[1])
    assert sig[:4] == note_key_id(ORIGIN, registry_key.public_key)
    registry_key.public_key.verify(sig[4:], body.encode())


# --- opening checkpoints ------------------------------------------------------------------


def test_open_checkpoint(note: str, registry: NoteVerifier) -> None:
    assert open_checkpoint(note, origin=ORIGIN, verifiers=[registry]) == Checkpoint(ORIGIN, 5, ROOT)


def test_wrong_origin(note: str, registry: NoteVerifier) -> None:
    with pytest.raises(CheckpointError, match=re.escape(f"origin is '{ORIGIN}', expected")):
        open_checkpoint(note, origin="other.example/log", verifiers=[registry])


def _signed_body(body: str, key: SigningKey) -> str:
    return sign_note(body, name=ORIGIN, key=key)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (f"{ORIGIN}\n05\n{ROOT_B64}\n", "size must be a decimal"),
        (f"{ORIGIN}\n-1\n{ROOT_B64}\n", "size must be a decimal"),
        (f"{ORIGIN}\n1.0\n{ROOT_B64}\n", "size must be a decimal"),
        (f"{ORIGIN}\n\u0661\n{ROOT_B64}\n", "size must be a decimal"),
        (f"{ORIGIN}\n{2**64}\n{ROOT_B64}\n", "size must be a decimal"),
        (f"{ORIGIN}\n5\n{FF_URLSAFE}\n", "root hash is not"),
        (f"{ORIGIN}\n5\n{ROOT_B64[:-1]}\n", "root hash is not"),
        (f"{ORIGIN}\n5\n{base64.b64encode(ROOT[:31]).decode()}\n", "32 bytes, got 31"),
        (f"{ORIGIN}\n5\n", "needs 3 lines, got 2"),
    ],
)
def test_malformed_bodies_even_when_signed(
    body: str, match: str, registry_key: SigningKey, registry: NoteVerifier
) -> None:
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(_signed_body(body, registry_key), origin=ORIGIN, verifiers=[registry])


def test_extension_lines_are_accepted_and_kept(
    registry_key: SigningKey, registry: NoteVerifier
) -> None:
    body = Checkpoint(ORIGIN, 5, ROOT).body() + "ext one\next two\n"
    cp = open_checkpoint(_signed_body(body, registry_key), origin=ORIGIN, verifiers=[registry])
    assert cp.extensions == ("ext one", "ext two")
    assert cp.body() == body


def test_empty_tree_checkpoint(registry_key: SigningKey, registry: NoteVerifier) -> None:
    cp = Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest())
    note = sign_checkpoint(cp, name=ORIGIN, key=registry_key)
    assert open_checkpoint(note, origin=ORIGIN, verifiers=[registry]) == cp


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"origin": "", "size": 1, "root": ROOT}, "origin must be a non-empty"),
        ({"origin": "a\nb", "size": 1, "root": ROOT}, "origin must be one line"),
        ({"origin": ORIGIN, "size": -1, "root": ROOT}, "size must be an integer >= 0"),
        ({"origin": ORIGIN, "size": True, "root": ROOT}, "size must be an integer >= 0"),
        ({"origin": ORIGIN, "size": 1, "root": ROOT[:31]}, "root must be 32 bytes"),
        ({"origin": ORIGIN, "size": 1, "root": ROOT, "extensions": ("",)}, "extension lines"),
    ],
)
def test_checkpoint_invariants(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        Checkpoint(**kwargs)  # type: ignore[arg-type]


# --- signatures ---------------------------------------------------------------------------


def test_signed_by_another_key_is_rejected(registry: NoteVerifier) -> None:
    impostor = SigningKey.generate()
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), name=ORIGIN, key=impostor)
    with pytest.raises(CheckpointError, match="no signature by the registry key"):
        open_checkpoint(note, origin=ORIGIN, verifiers=[registry])


def test_unknown_extra_cosignature_is_ignored(note: str, registry: NoteVerifier) -> None:
    cosigned = add_signature(note, name="witness.example/w1", key=SigningKey.generate())
    cosigned = add_signature(cosigned, name=ORIGIN, key=SigningKey.generate())  # same name
    assert len(split_note(cosigned)[1]) == 3
    assert open_checkpoint(cosigned, origin=ORIGIN, verifiers=[registry]).size == 5


def test_known_witness_cosignature(note: str, registry: NoteVerifier) -> None:
    witness_key = SigningKey.generate()
    witness = NoteVerifier(name="witness.example/w1", key=witness_key.public_key)
    cosigned = add_signature(note, name=witness.name, key=witness_key)
    _, verified = verify_note(cosigned, [registry, witness])
    assert verified == [registry, witness]
    assert open_checkpoint(cosigned, origin=ORIGIN, verifiers=[registry, witness]).size == 5
    # Without the witness's signature the registry's alone still suffices.
    assert open_checkpoint(note, origin=ORIGIN, verifiers=[registry, witness]).size == 5


def test_witness_alone_is_not_enough(registry: NoteVerifier) -> None:
    witness_key = SigningKey.generate()
    witness = NoteVerifier(name="witness.example/w1", key=witness_key.public_key)
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), name=witness.name, key=witness_key)
    with pytest.raises(CheckpointError, match=f"no signature by the registry key {ORIGIN}+"):
        open_checkpoint(note, origin=ORIGIN, verifiers=[registry, witness])


def test_bad_signature_by_a_known_witness_rejects(note: str, registry: NoteVerifier) -> None:
    witness_key = SigningKey.generate()
    witness = NoteVerifier(name="witness.example/w1", key=witness_key.public_key)
    other_text = Checkpoint(ORIGIN, 6, ROOT).body()
    foreign_line = sign_note(other_text, name=witness.name, key=witness_key).split("\n\n")[1]
    with pytest.raises(BadSignatureError, match=re.escape("by witness.example/w1+")):
        open_checkpoint(note + foreign_line, origin=ORIGIN, verifiers=[registry, witness])


@pytest.mark.parametrize(
    ("old", "new"),
    [("\n5\n", "\n6\n"), (ORIGIN + "\n", "registry.example.kh/ledgex\n")],
)
def test_edited_body_is_rejected(note: str, registry: NoteVerifier, old: str, new: str) -> None:
    edited = note.replace(old, new, 1)
    assert edited != note
    with pytest.raises(BadSignatureError, match=f"signature by {ORIGIN}.* does not verify"):
        open_checkpoint(edited, origin=ORIGIN, verifiers=[registry])


def test_edited_root_is_rejected(note: str, registry: NoteVerifier) -> None:
    root_b64 = base64.b64encode(ROOT).decode()
    edited = note.replace(root_b64, base64.b64encode(hashlib.sha256(b"x").digest()).decode())
    with pytest.raises(BadSignatureError, match="does not verify"):
        open_checkpoint(edited, origin=ORIGIN, verifiers=[registry])


def test_every_character_change_is_rejected(note: str, registry: NoteVerifier) -> None:
    body_end = note.index("\n\n")
    for i, ch in enumerate(note):
        tampered = note[:i] + chr(ord(ch) ^ 0x01) + note[i + 1 :]
        with pytest.raises((CheckpointError, BadSignatureError)) as info:
            open_checkpoint(tampered, origin=ORIGIN, verifiers=[registry])
        if i < body_end and ch != "\n":
            # Any printable change to the signed text breaks the registry's signature.
            assert type(info.value) is BadSignatureError, (i, info.value)


@given(st.data())
def test_any_character_replacement_is_rejected(data: st.DataObject) -> None:
    key = SigningKey.from_seed(b"\x07" * 32)
    verifier = NoteVerifier(name=ORIGIN, key=key.public_key)
    note = sign_checkpoint(Checkpoint(ORIGIN, 5, ROOT), name=ORIGIN, key=key)
    i = data.draw(st.integers(min_value=0, max_value=len(note) - 1))
    ch = data.draw(st.characters(codec="utf-8").filter(lambda c: c != note[i]))
    with pytest.raises((CheckpointError, BadSignatureError)):
        open_checkpoint(note[:i] + ch + note[i + 1 :], origin=ORIGIN, verifiers=[verifier])


# --- note syntax --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mangle", "match"),
    [
        (lambda n: n.replace("\n\n", "\n"), "no blank line"),
        (lambda n: n[:-1], "must end with a newline after its last signature"),
        (lambda n: n.replace(EM_DASH, "-"), "is not '\u2014 <name> <base64>'"),
        (lambda n: n.replace(EM_DASH + " ", EM_DASH + "  "), "is not '\u2014 <name> <base64>'"),
        (lambda n: n + "\n", "no signature lines"),
        (lambda n: n + "cosigned\n", "is not '\u2014 <name> <base64>'"),
        (lambda n: n.replace("/ledger ", "/led+ger "), "must not contain spaces or '\\+'"),
        (lambda n: n.replace("\n5\n", "\n5\t\n"), "control character"),
        (lambda n: n[: n.rindex(" ") + 1] + "AAAA\n", "too short"),
        (lambda n: n[:-2] + "_\n", "not valid standard base64"),
        (lambda n: n + (n.split("\n\n")[1]) * MAX_SIGNATURES, "more than 100"),
    ],
)
def test_malformed_notes(note: str, registry: NoteVerifier, mangle: object, match: str) -> None:
    with pytest.raises(CheckpointError, match=match):
        open_checkpoint(mangle(note), origin=ORIGIN, verifiers=[registry])  # type: ignore[operator]


def test_lone_surrogate_note(registry: NoteVerifier) -> None:
    with pytest.raises(CheckpointError, match="not valid UTF-8"):
        open_checkpoint("a\ud800\n\n", origin=ORIGIN, verifiers=[registry])


def test_no_verifiers_fails_closed(note: str) -> None:
    with pytest.raises(CheckpointError, match="no note verifiers given"):
        open_checkpoint(note, origin=ORIGIN, verifiers=[])
    with pytest.raises(CheckpointError, match="no note verifiers given"):
        verify_note(note, [])


def test_sign_note_checks_text_and_name(registry_key: SigningKey) -> None:
    with pytest.raises(CheckpointError, match="must end with a newline"):
        sign_note("no newline", name=ORIGIN, key=registry_key)
    with pytest.raises(CheckpointError, match="must not contain spaces"):
        sign_note("text\n", name="bad name", key=registry_key)


# --- verifier strings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "does not match"),
        ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "8 lowercase hex"),
        ("PeterNeumann+c74f20a3+AhpjyQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "type 02"),
        ("PeterNeumann+c74f20a3+ARpc", "0x01 followed by a 32-byte"),
        ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "spaces"),
        ("PeterNeumann+c74f20a3", "<name>\\+<keyid>\\+<key>"),
    ],
)
def test_verifier_string_parse_is_strict(text: str, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        NoteVerifier.parse(text)


# --- consistency of sizes -----------------------------------------------------------------


def test_check_consistent_sizes() -> None:
    older = Checkpoint(ORIGIN, 5, ROOT)
    check_consistent_sizes(older, Checkpoint(ORIGIN, 9, hashlib.sha256(b"r9").digest()))
    check_consistent_sizes(older, Checkpoint(ORIGIN, 5, ROOT))
    with pytest.raises(ForkError, match="two checkpoints of size 5 with different roots"):
        check_consistent_sizes(older, Checkpoint(ORIGIN, 5, hashlib.sha256(b"x").digest()))
    with pytest.raises(CheckpointError, match="went backwards from 5 to 4") as info:
        check_consistent_sizes(older, Checkpoint(ORIGIN, 4, ROOT))
    assert not isinstance(info.value, ForkError)
    with pytest.raises(CheckpointError, match="different logs"):
        check_consistent_sizes(older, Checkpoint("other.example/log", 6, ROOT))


def test_note_text_may_contain_blank_lines(
    registry_key: SigningKey, registry: NoteVerifier
) -> None:
    # c2sp.org/signed-note: the text is separated from the signatures by the *last* blank line.
    text = (
        "Ognuno sta solo sul cuor della terra\n"
        "trafitto da un raggio di sole:\n"
        "\n"
        "ed è subito sera.\n"
    )
    note = sign_note(text, name=ORIGIN, key=registry_key)
    assert verify_note(note, [registry]) == (text, [registry])


# --- the fast path for notes spelt as the registry signs them --------------------------------

KEY = SigningKey.from_seed(b"\x07" * 32)
PINNED = NoteVerifier(name=ORIGIN, key=KEY.public_key)
OTHER = SigningKey.from_seed(bytes(range(1, 33)))


def _opened_carefully(note: str) -> Checkpoint | str:
    try:
        return _open_carefully(note, ORIGIN, [PINNED])
    except RegistryError as e:
        return e.code


def test_a_checkpoint_as_the_registry_signs_it_takes_the_fast_path() -> None:
    cp = Checkpoint(origin=ORIGIN, size=1234, root=bytes(range(32)))
    note = sign_checkpoint(cp, name=ORIGIN, key=KEY)
    assert _open_as_signed(note, ORIGIN, PINNED) == cp == _opened_carefully(note)
    assert open_checkpoint(note, origin=ORIGIN, verifiers=[PINNED]) == cp


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
    fast = _open_as_signed(note, ORIGIN, PINNED)
    assert fast is None or fast == _opened_carefully(note)


def test_a_size_line_too_long_to_be_a_number_is_refused_not_a_crash() -> None:
    good = sign_checkpoint(Checkpoint(origin=ORIGIN, size=7, root=bytes(32)), name=ORIGIN,
                           key=KEY)
    forged = good.replace("\n7\n", "\n" + "9" * 5000 + "\n")
    assert _open_as_signed(forged, ORIGIN, PINNED) is None
    assert _opened_carefully(forged) == "bad_signature"
    signed_by_the_registry = sign_note(forged[: forged.index("\n\n") + 1], name=ORIGIN, key=KEY)
    assert _open_as_signed(signed_by_the_registry, ORIGIN, PINNED) is None
    assert _opened_carefully(signed_by_the_registry) == "bad_checkpoint"


def test_what_the_fast_path_does_not_foresee_goes_to_the_careful_one() -> None:
    note = f"a\ud800\n1\n{ROOT_B64}\n\n{EM_DASH} {ORIGIN} {ROOT_B64}\n"
    assert _open_as_signed(note, "a\ud800", PINNED) is None
    assert _open_as_signed(b"not a str", ORIGIN, PINNED) is None  # type: ignore[arg-type]
