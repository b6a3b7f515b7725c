"""Ed25519 keys: the registry's signing key, holders' keys, and how we name and store them.

This module owns the key formats of the ledger: a public key is its 32 raw bytes (RFC 8032),
written as standard base64; its ``key_id`` is the lowercase hex SHA-256 of those bytes (the
``keyid`` of DSSE signatures); private keys rest on disk as passphrase-encrypted PKCS#8 PEM.
Verification raises ``BadSignatureError`` and returns ``None`` on success, as pyca does.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
from dataclasses import dataclass, field

import pybase64
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from nacl.bindings import crypto_core_ed25519_is_valid_point

from registry.errors import BadSignatureError, KeyFileError, MalformedError

PUBLIC_KEY_SIZE = 32
SEED_SIZE = 32
SIGNATURE_SIZE = 64


SIMD_BASE64_FROM = 192
"""Bytes from which pybase64 (SIMD) beats the standard library's base64, whose call is the
cheaper below: an envelope or an entry's payload (1 to 2 KB) decodes eight times faster,
a signature or a key not at all."""


def b64encode(data: bytes) -> str:
    """Standard base64 (RFC 4648 §4) with padding: the one spelling we write."""
    if len(data) >= SIMD_BASE64_FROM:
        return pybase64.b64encode_as_string(data)
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: str, *, what: str) -> bytes:
    """Decode standard padded base64, refusing any other spelling of the same bytes.

    Refusing non-canonical base64 (URL-safe alphabet, missing padding, stray bits in the last
    character) keeps one record to one byte string. Raises ``MalformedError`` naming ``what``.
    """
    if not isinstance(text, str):
        raise MalformedError(f"{what} must be a base64 string, got {type(text).__name__}")
    raw = b64decode_exact(text.encode("ascii")) if text.isascii() else None
    if raw is not None:
        return raw
    try:  # refused: only to say how
        base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError) as e:
        raise MalformedError(f"{what} is not valid standard base64: {text[:100]!r}") from e
    raise MalformedError(f"{what} is not canonical standard base64: {text[:100]!r}")


def b64decode_exact(text: bytes) -> bytes | None:
    """The bytes ``text`` is the canonical standard base64 of, else ``None``: what
    :func:`b64decode_strict` accepts, without saying why it refuses (for the verifier's fast
    paths, whose callers then take the careful path to say what is wrong)."""
    # Whatever a decoder lets through, only bytes that encode back to ``text`` are kept: so
    # any correct decoder gives the same answer here, and the fast one is used where it is.
    try:
        if len(text) >= SIMD_BASE64_FROM:
            raw = pybase64.b64decode(text, validate=True)
            again = pybase64.b64encode(raw)
        else:
            raw = binascii.a2b_base64(text, strict_mode=True)
            again = binascii.b2a_base64(raw, newline=False)
    except ValueError:  # binascii.Error is one
        return None
    return raw if again == text else None


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key, checked at construction: 32 bytes encoding a point of the curve's
    prime-order group.

    Other points load as keys too, and some make a signature worthless: for a point of small
    order (the all-zero encoding is one) a fixed signature that needs no private key verifies
    over about one message in four, so whoever registered such a key could be impersonated by
    anyone, or deny what was signed with it. libsodium (through PyNaCl) checks the point.
    """

    raw: bytes
    _key: Ed25519PublicKey = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != PUBLIC_KEY_SIZE:
            size = len(self.raw) if isinstance(self.raw, (bytes, bytearray)) else "?"
            raise MalformedError(
                f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes, got {size} "
                f"({type(self.raw).__name__})"
            )
        try:
            key = Ed25519PublicKey.from_public_bytes(self.raw)
        except ValueError as e:
            raise MalformedError(f"not an Ed25519 public key: {self.raw.hex()}") from e
        if not crypto_core_ed25519_is_valid_point(self.raw):
            raise MalformedError(
                f"not a usable Ed25519 public key: {self.raw.hex()} is not a point of the "
                "prime-order group (a weak key, against which a signature proves nothing)"
            )
        object.__setattr__(self, "_key", key)

    def __reduce__(self) -> tuple[type[PublicKey], tuple[bytes]]:
        # Pickle as the raw bytes (the loaded pyca key cannot be pickled), so keys can travel
        # to the verifier's worker processes.
        return (PublicKey, (self.raw,))

    @property
    def key_id(self) -> str:
        """Lowercase hex SHA-256 of the raw key: how envelopes and keyrings name this key."""
        return hashlib.sha256(self.raw).hexdigest()

    def to_b64(self) -> str:
        return b64encode(self.raw)

    @classmethod
    def from_b64(cls, text: str) -> PublicKey:
        return cls(b64decode_strict(text, what="public key"))

    def verify(self, signature: bytes, message: bytes) -> None:
        """Return ``None`` if ``signature`` is this key's over ``message``; raise otherwise."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature as e:
            raise BadSignatureError(
                f"signature does not verify under key {self.key_id}",
                details={"keyid": self.key_id},
            ) from e


@functools.lru_cache(maxsize=4096)
def loaded_public_key(raw: bytes) -> PublicKey:
    """``PublicKey(raw)``, kept: a few parties' keys sign most instructions, both when the
    registry takes them and when a verifier replays them, and loading one into the crypto
    library costs about as much as the rest of a key check. (A key is immutable; one that does
    not load raises ``MalformedError`` and is not kept.)"""
    return PublicKey(raw)


Keyring = dict[str, PublicKey]
"""Trusted public keys by ``key_id``: what a verifier is configured with."""


def make_keyring(*keys: PublicKey) -> Keyring:
    """A keyring holding ``keys`` under their own ``key_id`` (the only correct mapping)."""
    return {key.key_id: key for key in keys}


class SigningKey:
    """An Ed25519 private key. Its repr never shows secret material."""

    __slots__ = ("_key", "_public")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        if not isinstance(key, Ed25519PrivateKey):
            raise TypeError(f"expected an Ed25519PrivateKey, got {type(key).__name__}")
        self._key = key
        self._public = PublicKey(
            key.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        )

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.public_key.key_id!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """The key whose RFC 8032 seed is ``seed`` (32 bytes). For tests and test vectors."""
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise MalformedError(f"an Ed25519 seed is {SEED_SIZE} bytes, got {seed!r}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def public_key(self) -> PublicKey:
        return self._public

    def sign(self, message: bytes) -> bytes:
        """A 64-byte Ed25519 signature over ``message`` (deterministic, RFC 8032)."""
        return self._key.sign(message)

    def to_pem(self, passphrase: bytes) -> bytes:
        """PKCS#8 PEM encrypted under ``passphrase``: the way a key file is written."""
        if not isinstance(passphrase, bytes) or not passphrase:
            raise KeyFileError(
                "refusing to write a key file with an empty passphrase "
                "(use to_pem_unencrypted_unsafe if you really mean it)"
            )
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase),
        )

    def to_pem_unencrypted_unsafe(self) -> bytes:
        """PKCS#8 PEM in the clear. Anyone who reads the file can sign as this key."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None) -> SigningKey:
        """Load a PKCS#8 PEM Ed25519 key; any failure is a ``KeyFileError`` saying which."""
        if not isinstance(data, bytes):
            raise KeyFileError(f"a key file is read as bytes, got {type(data).__name__}")
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except TypeError as e:
            # pyca signals a passphrase/encryption mismatch with TypeError.
            if passphrase is None:
                raise KeyFileError("the key file is encrypted; a passphrase is required") from e
            raise KeyFileError("the key file is not encrypted, but a passphrase was given") from e
        except (ValueError, UnsupportedAlgorithm) as e:
            if passphrase is not None:
                raise KeyFileError(
                    "cannot load the key file: wrong passphrase, or not a PEM private key"
                ) from e
            raise KeyFileError("cannot load the key file: not a PEM private key") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(
                f"the key file holds a {type(key).__name__}, not an Ed25519 private key"
            )
        return cls(key)
