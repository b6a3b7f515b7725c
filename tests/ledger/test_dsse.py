"""DSSE v1 envelopes: PAE known answers, canonical bytes, verification and tampering."""

from __future__ import annotations

import base64
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from registry.errors import BadSignatureError, MalformedError, UnknownKeyError
from registry.ledger.dsse import (
    PAYLOAD_TYPE,
    Envelope,
    EnvelopeSignature,
    pae,
    sign_envelope,
    verify_envelope,
)
from registry.ledger.keys import SigningKey, make_keyring

# RFC 8032 TEST 1 key, used by the DSSE test vectors (secure-systems-lab/dsse testvectors/).
SEED_A = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
IN_TOTO_TYPE = "application/vnd.in-toto+json"
IN_TOTO_BODY = b'{"_type":"https://in-toto.io/Statement/v1"}'


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.from_seed(bytes(range(32)))


@pytest.fixture
def envelope_bytes(key: SigningKey) -> bytes:
    return sign_envelope(b'{"n":1}', key).to_bytes()


# --- PAE ----------------------------------------------------------------------------------


def test_pae_protocol_example() -> None:
    # secure-systems-lab/dsse protocol.md, "Test Vectors".
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_pae_counts_utf8_bytes_not_characters() -> None:
    payload_type = "application/vnd.ex\u00e4mple+json"
    assert len(payload_type) == 28
    assert pae(payload_type, b"{}") == b"DSSEv1 29 application/vnd.ex\xc3\xa4mple+json 2 {}"


def test_pae_of_empty_body_keeps_trailing_space() -> None:
    assert pae(IN_TOTO_TYPE, b"") == b"DSSEv1 28 application/vnd.in-toto+json 0 "


def test_ed25519_envelope_known_answer() -> None:
    # DSSE test vector "single-signature": Ed25519 is deterministic, so our PAE and signing
    # must reproduce the published signature exactly.
    env = sign_envelope(IN_TOTO_BODY, SigningKey.from_seed(SEED_A), IN_TOTO_TYPE)
    assert base64.b64encode(env.signatures[0].sig).decode() == (
        "2WAfaHm5jluo0w+0rk8uVkluELJYWjSmU9x7EUzx+AyteDGJ4/nqyJXfmAUVFIAoQafWm7AxBZNw5M9ixNHiCA=="
    )


# --- encoding -----------------------------------------------------------------------------


def test_envelope_bytes_are_canonical_json(key: SigningKey) -> None:
    env = sign_envelope(b"hi", key)
    sig_b64 = base64.b64encode(env.signatures[0].sig).decode()
    assert (
        env.to_bytes()
        == (
            '{"payload":"aGk=","payloadType":"application/vnd.kh-carbon-registry.entry+json",'
            f'"signatures":[{{"keyid":"{key.public_key.key_id}","sig":"{sig_b64}"}}]}}'
        ).encode()
    )
    assert env.payload_type == PAYLOAD_TYPE
    assert env.signatures == (EnvelopeSignature(key.public_key.key_id, env.signatures[0].sig),)


def test_from_bytes_round_trip(envelope_bytes: bytes) -> None:
    assert Envelope.from_bytes(envelope_bytes).to_bytes() == envelope_bytes


def _envelope_json(payload: str = "aGk=", sigs: str = '[{"keyid":"k","sig":"AA=="}]') -> bytes:
    return f'{{"payload":"{payload}","payloadType":"t","signatures":{sigs}}}'.encode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'{"payload": "aGk=","payloadType":"t","signatures":[]}', "canonical form"),
        (_envelope_json(payload="aGk"), "payload is not valid standard base64"),
        (_envelope_json(payload="aGl="), "payload is not canonical"),
        (_envelope_json(sigs='[{"keyid":"k","sig":"-_8="}]'), r"signatures\[0\].sig is not valid"),
        (_envelope_json(sigs='[{"sig":"AA=="}]'), r"missing \['keyid'\]"),
        (_envelope_json(sigs='[{"keyid":"k","sig":"AA==","x":1}]'), r"unexpected \['x'\]"),
        (_envelope_json(sigs='[{"keyid":"","sig":"AA=="}]'), "keyid must be a non-empty"),
        (_envelope_json(sigs='[{"keyid":"k","sig":""}]'), "must be non-empty bytes"),
        (_envelope_json(sigs="[]"), "at least one signature"),
        (_envelope_json(sigs="{}"), "signatures must be a list"),
        (_envelope_json(sigs="[1]"), r"signatures\[0\] must be an object"),
        (
            _envelope_json(sigs='[{"keyid":"k","sig":"AA=="},{"keyid":"k","sig":"AQ=="}]'),
            "two signatures name keyid k",
        ),
        (b'{"payload":"","payloadType":"","signatures":[{"keyid":"k","sig":"AA=="}]}', "payloadT"),
        (b'{"payload":"","payloadType":1,"signatures":[]}', "payloadType must be a string"),
        (b'{"payload":"","signatures":[]}', r"missing \['payloadType'\]"),
        (b"[]", "an envelope is a JSON object"),
        (b"", "not JSON"),
    ],
)
def test_from_bytes_is_strict(data: bytes, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        Envelope.from_bytes(data)


# --- verification -------------------------------------------------------------------------


def test_verify_returns_payload(key: SigningKey, envelope_bytes: bytes) -> None:
    assert verify_envelope(envelope_bytes, make_keyring(key.public_key)) == b'{"n":1}'


def test_wrong_payload_type_is_malformed(key: SigningKey) -> None:
    data = sign_envelope(b"{}", key, "application/vnd.other+json").to_bytes()
    with pytest.raises(
        MalformedError, match=re.escape("payloadType is 'application/vnd.other+json'")
    ):
        verify_envelope(data, make_keyring(key.public_key))
    assert verify_envelope(data, make_keyring(key.public_key), "application/vnd.other+json")


def test_foreign_key_is_unknown(key: SigningKey) -> None:
    foreign = SigningKey.generate()
    data = sign_envelope(b'{"n":1}', foreign).to_bytes()
    with pytest.raises(UnknownKeyError, match=foreign.public_key.key_id) as info:
        verify_envelope(data, make_keyring(key.public_key))
    assert info.value.code == "unknown_key"


def test_no_trusted_keys_fails_closed(envelope_bytes: bytes) -> None:
    with pytest.raises(UnknownKeyError, match="no trusted keys given"):
        verify_envelope(envelope_bytes, {})


def test_trusted_keyid_with_wrong_key_is_bad_signature(key: SigningKey) -> None:
    # An attacker signs with their own key but claims the registry's keyid.
    forged = sign_envelope(b'{"n":1}', SigningKey.generate())
    claimed = Envelope(
        payload_type=forged.payload_type,
        payload=forged.payload,
        signatures=(EnvelopeSignature(key.public_key.key_id, forged.signatures[0].sig),),
    )
    with pytest.raises(BadSignatureError, match=f"by key {key.public_key.key_id} does not") as e:
        verify_envelope(claimed.to_bytes(), make_keyring(key.public_key))
    assert type(e.value) is BadSignatureError
    assert e.value.details == {"keyid": key.public_key.key_id}


def _with_signatures(env: Envelope, *extra: EnvelopeSignature) -> bytes:
    return Envelope(env.payload_type, env.payload, env.signatures + extra).to_bytes()


def test_unknown_cosignature_is_ignored(key: SigningKey) -> None:
    env = sign_envelope(b'{"n":1}', key)
    cosigner = sign_envelope(b'{"n":1}', SigningKey.generate()).signatures[0]
    data = _with_signatures(env, cosigner)
    assert verify_envelope(data, make_keyring(key.public_key)) == b'{"n":1}'


def test_any_failing_trusted_signature_rejects(key: SigningKey) -> None:
    other = SigningKey.generate()
    env = sign_envelope(b'{"n":1}', key)
    bad = EnvelopeSignature(other.public_key.key_id, other.sign(b"something else"))
    with pytest.raises(BadSignatureError, match=other.public_key.key_id):
        verify_envelope(_with_signatures(env, bad), make_keyring(key.public_key, other.public_key))


def _regions(data: bytes) -> dict[str, range]:
    """Byte ranges of the payload, payloadType, keyid and sig string values."""
    regions = {}
    for name in ("payload", "payloadType", "keyid", "sig"):
        start = data.index(f'"{name}":"'.encode()) + len(name) + 4
        regions[name] = range(start, data.index(b'"', start))
    return regions


def test_every_single_byte_change_is_rejected_precisely(
    key: SigningKey, envelope_bytes: bytes
) -> None:
    keys = make_keyring(key.public_key)
    regions = _regions(envelope_bytes)
    for i in range(len(envelope_bytes)):
        tampered = bytearray(envelope_bytes)
        tampered[i] ^= 0x01
        with pytest.raises((MalformedError, BadSignatureError)) as info:
            verify_envelope(bytes(tampered), keys)
        err = info.value
        if i in regions["keyid"]:
            # Hex digits flip to other printable characters: a key we do not hold.
            assert type(err) is UnknownKeyError, i
        elif i in regions["payload"] or i in regions["sig"]:
            # Either the base64 no longer decodes canonically, or the signature fails.
            assert type(err) in (MalformedError, BadSignatureError), (i, err)
            if type(err) is BadSignatureError:
                assert key.public_key.key_id in err.message
        else:
            assert type(err) is MalformedError, (i, err)


@given(st.data())
def test_any_byte_replacement_is_rejected(data: st.DataObject) -> None:
    key = SigningKey.from_seed(bytes(range(32)))
    envelope = sign_envelope(b'{"n":1}', key).to_bytes()
    i = data.draw(st.integers(min_value=0, max_value=len(envelope) - 1))
    new = data.draw(st.integers(min_value=0, max_value=255).filter(lambda b: b != envelope[i]))
    tampered = envelope[:i] + bytes([new]) + envelope[i + 1 :]
    with pytest.raises((MalformedError, BadSignatureError)):
        verify_envelope(tampered, make_keyring(key.public_key))


def test_resigned_with_foreign_key_is_unknown(key: SigningKey, envelope_bytes: bytes) -> None:
    original = Envelope.from_bytes(envelope_bytes)
    resigned = sign_envelope(original.payload, SigningKey.generate()).to_bytes()
    with pytest.raises(UnknownKeyError, match="no signature by a trusted key"):
        verify_envelope(resigned, make_keyring(key.public_key))
