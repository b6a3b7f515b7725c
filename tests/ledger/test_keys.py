"""Ed25519 keys: known answers, key ids, base64, signatures and key files."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from registry.errors import BadSignatureError, KeyFileError, LedgerError, MalformedError
from registry.ledger.keys import (
    SIMD_BASE64_FROM,
    PublicKey,
    SigningKey,
    b64decode_exact,
    b64decode_strict,
    b64encode,
    make_keyring,
)

# RFC 8032 §7.1, TEST 1 (empty message).
RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIG = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555"
    "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.from_seed(RFC8032_SEED)


def test_rfc8032_known_answer(key: SigningKey) -> None:
    assert key.public_key.raw == RFC8032_PUBLIC
    assert key.sign(b"") == RFC8032_SIG
    key.public_key.verify(RFC8032_SIG, b"")


def test_key_id_is_hex_sha256_of_raw(key: SigningKey) -> None:
    assert key.public_key.key_id == hashlib.sha256(RFC8032_PUBLIC).hexdigest()
    assert key.public_key.key_id == key.public_key.key_id.lower()
    assert len(key.public_key.key_id) == 64


def test_public_key_base64_round_trip(key: SigningKey) -> None:
    text = key.public_key.to_b64()
    assert text == base64.b64encode(RFC8032_PUBLIC).decode()
    assert text == "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
    assert PublicKey.from_b64(text) == key.public_key


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=", "not valid standard base64"),
        ("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo", "not valid standard base64"),
        ("11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURp=", "not canonical"),
        ("AAAA", "32 bytes, got 3"),
        ("é", "not valid standard base64"),
    ],
)
def test_public_key_from_b64_is_strict(text: str, match: str) -> None:
    with pytest.raises(MalformedError, match=match):
        PublicKey.from_b64(text)


@pytest.mark.parametrize("raw", [b"", b"\x00" * 31, b"\x00" * 33, bytearray(32)])
def test_public_key_checks_size_and_type(raw: bytes) -> None:
    with pytest.raises(MalformedError, match="an Ed25519 public key is 32 bytes"):
        PublicKey(raw)


#: Points of small order, each a 32-byte encoding pyca loads as a public key: y = 0 (order 4),
#: y = 1 (the identity), y = p - 1 (order 2).
WEAK_KEYS = [bytes(32), b"\x01" + bytes(31), b"\xec" + b"\xff" * 30 + b"\x7f"]


@pytest.mark.parametrize("raw", WEAK_KEYS, ids=["order 4", "identity", "order 2"])
def test_a_weak_public_key_is_refused(raw: bytes) -> None:
    """Against such a key, a signature made without any private key (R the identity, S = 0)
    verifies over many messages: whoever registered it could be impersonated by anyone."""
    loaded = Ed25519PublicKey.from_public_bytes(raw)
    forged = b"\x01" + bytes(31) + bytes(32)
    verified = 0
    for n in range(40):
        try:
            loaded.verify(forged, b"transfer %d t" % n)
            verified += 1
        except InvalidSignature:
            pass
    assert verified > 0
    with pytest.raises(MalformedError, match="not a usable Ed25519 public key"):
        PublicKey(raw)
    with pytest.raises(MalformedError, match="not a usable Ed25519 public key"):
        PublicKey.from_b64(base64.b64encode(raw).decode())


def test_public_key_is_frozen_and_hashable(key: SigningKey) -> None:
    pub = key.public_key
    with pytest.raises(AttributeError):
        pub.raw = b"\x00" * 32  # type: ignore[misc]
    assert {pub: 1}[PublicKey(RFC8032_PUBLIC)] == 1


def test_verify_refuses_other_message_key_or_garbage(key: SigningKey) -> None:
    sig = key.sign(b"transfer 10 t")
    key.public_key.verify(sig, b"transfer 10 t")
    with pytest.raises(BadSignatureError, match=key.public_key.key_id):
        key.public_key.verify(sig, b"transfer 11 t")
    other = SigningKey.generate().public_key
    with pytest.raises(BadSignatureError, match="does not verify") as info:
        other.verify(sig, b"transfer 10 t")
    assert info.value.details == {"keyid": other.key_id}
    with pytest.raises(BadSignatureError):
        key.public_key.verify(sig[:-1], b"transfer 10 t")
    with pytest.raises(BadSignatureError):
        key.public_key.verify(b"", b"transfer 10 t")


def test_signing_key_repr_hides_secret(key: SigningKey) -> None:
    text = repr(key)
    assert key.public_key.key_id in text
    assert RFC8032_SEED.hex() not in text


def test_from_seed_checks_length() -> None:
    with pytest.raises(MalformedError, match="seed is 32 bytes"):
        SigningKey.from_seed(b"\x01" * 31)


def test_generated_keys_differ() -> None:
    assert SigningKey.generate().public_key != SigningKey.generate().public_key


def test_make_keyring_maps_key_ids(key: SigningKey) -> None:
    other = SigningKey.generate().public_key
    ring = make_keyring(key.public_key, other)
    assert ring == {key.public_key.key_id: key.public_key, other.key_id: other}


# --- key files ------------------------------------------------------------------------------


def test_encrypted_pem_round_trip(key: SigningKey) -> None:
    pem = key.to_pem(b"correct horse")
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    loaded = SigningKey.from_pem(pem, b"correct horse")
    assert loaded.public_key == key.public_key
    assert loaded.sign(b"x") == key.sign(b"x")


def test_unencrypted_pem_round_trip(key: SigningKey) -> None:
    pem = key.to_pem_unencrypted_unsafe()
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert SigningKey.from_pem(pem, None).public_key == key.public_key


def test_wrong_passphrase_is_a_key_file_error(key: SigningKey) -> None:
    pem = key.to_pem(b"correct horse")
    with pytest.raises(KeyFileError, match="wrong passphrase") as info:
        SigningKey.from_pem(pem, b"battery staple")
    assert info.value.code == "bad_key_file"
    assert isinstance(info.value, LedgerError)


def test_missing_passphrase_for_encrypted_file(key: SigningKey) -> None:
    with pytest.raises(KeyFileError, match="passphrase is required"):
        SigningKey.from_pem(key.to_pem(b"pw"), None)


def test_passphrase_for_unencrypted_file(key: SigningKey) -> None:
    with pytest.raises(KeyFileError, match="not encrypted, but a passphrase was given"):
        SigningKey.from_pem(key.to_pem_unencrypted_unsafe(), b"pw")


@pytest.mark.parametrize("passphrase", [None, b"pw"])
def test_garbage_key_file(passphrase: bytes | None) -> None:
    with pytest.raises(KeyFileError, match="not a PEM private key"):
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n", passphrase)


def test_key_file_as_str_refused(key: SigningKey) -> None:
    pem = key.to_pem_unencrypted_unsafe().decode()
    with pytest.raises(KeyFileError, match="read as bytes"):
        SigningKey.from_pem(pem, None)  # type: ignore[arg-type]


def test_non_ed25519_key_file_refused() -> None:
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(KeyFileError, match="not an Ed25519 private key"):
        SigningKey.from_pem(pem, None)


def test_empty_passphrase_refused(key: SigningKey) -> None:
    with pytest.raises(KeyFileError, match="empty passphrase"):
        key.to_pem(b"")


def _canonical_b64(text: bytes) -> bytes | None:
    """The definition: standard alphabet and padding, and the bytes written back are ``text``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return None
    return raw if base64.b64encode(raw) == text else None


@st.composite
def _long_base64(draw: st.DrawFn) -> bytes:
    """Base64 long enough for the SIMD decoder (envelopes, payloads), often spoilt by one
    change: a character swapped for one in or out of the alphabet, one inserted, or the end
    cut."""
    text = bytearray(base64.b64encode(draw(st.binary(min_size=SIMD_BASE64_FROM, max_size=700))))
    spoil = draw(st.sampled_from(["none", "swap", "insert", "cut"]))
    at = draw(st.integers(0, len(text) - 1))
    char = draw(st.sampled_from(b"ABQRab01+/=\n -_\"\x00\xff"))
    if spoil == "swap":
        text[at] = char
    elif spoil == "insert":
        text.insert(at, char)
    elif spoil == "cut":
        del text[at:]
    return bytes(text)


@settings(max_examples=400)
@given(
    st.one_of(
        st.binary(max_size=24).map(base64.b64encode),
        st.text(alphabet="ABQRab01+/=\n-_\"", max_size=12).map(str.encode),
        _long_base64(),
    )
)
def test_base64_decoders_accept_exactly_canonical_standard_base64(text: bytes) -> None:
    expected = _canonical_b64(text)
    assert b64decode_exact(text) == expected
    try:
        strict: bytes | None = b64decode_strict(text.decode("latin-1"), what="x")
    except MalformedError:
        strict = None
    assert strict == expected


@pytest.mark.parametrize(
    ("text", "says"),
    [("QQ", "not valid"), ("QQ=", "not valid"), ("QR==", "not canonical"), ("é", "not valid")],
)
def test_strict_base64_says_why_it_refuses(text: str, says: str) -> None:
    with pytest.raises(MalformedError, match=f"key is {says} standard base64"):
        b64decode_strict(text, what="key")


@settings(max_examples=200)
@given(st.binary(max_size=3 * SIMD_BASE64_FROM))
def test_base64_encoder_writes_the_standard_spelling_at_every_size(data: bytes) -> None:
    assert b64encode(data) == base64.b64encode(data).decode("ascii")
    assert b64decode_exact(b64encode(data).encode("ascii")) == data
