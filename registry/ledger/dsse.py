"""DSSE v1 envelopes: how a ledger entry is signed and carried as bytes.

This module owns the envelope format (secure-systems-lab/dsse, protocol v1.0.0 and the JSON
envelope). A signature is Ed25519 over ``PAE(payloadType, payload)``; the envelope is written as
RFC 8785 canonical JSON with standard padded base64, and those exact bytes are what the ledger
stores and what auditors hash.

Deliberate strictness beyond DSSE:

* ``from_bytes`` accepts only the canonical encoding (DSSE says verifiers MUST accept URL-safe
  base64 too; we do not, because an envelope has exactly one byte string, and that byte string
  is a Merkle leaf);
* every signature carries a non-empty ``keyid`` and no two signatures share one;
* ``verify_envelope`` fails if *any* signature by a trusted key fails, not only when none passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from registry.errors import BadSignatureError, MalformedError, UnknownKeyError
from registry.ledger.canonical import encode_checked, parse_canonical
from registry.ledger.keys import PublicKey, SigningKey, b64decode_strict, b64encode

PAYLOAD_TYPE = "application/vnd.kh-carbon-registry.entry+json"
"""The DSSE payloadType of a ledger entry; the payload is the entry's canonical JSON."""

_ENVELOPE_FIELDS = frozenset({"payload", "payloadType", "signatures"})
_SIGNATURE_FIELDS = frozenset({"keyid", "sig"})


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE pre-authentication encoding: the exact bytes a signature covers.

    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, LEN being the byte length in ASCII
    decimal. Binding the type into the signed bytes stops a payload being replayed as another kind.
    """
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


class EnvelopeSignature(NamedTuple):
    """One ``(keyid, sig)`` pair of an envelope."""

    keyid: str
    sig: bytes


@dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE envelope, checked at construction; ``to_bytes`` is its one byte encoding."""

    payload_type: str
    payload: bytes
    signatures: tuple[EnvelopeSignature, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.payload_type, str) or not self.payload_type:
            raise MalformedError(
                f"payloadType must be a non-empty string, got {self.payload_type!r}"
            )
        if not isinstance(self.payload, bytes):
            raise MalformedError(f"payload must be bytes, got {type(self.payload).__name__}")
        sigs = tuple(EnvelopeSignature(*pair) for pair in self.signatures)
        if not sigs:
            raise MalformedError("an envelope needs at least one signature")
        seen: set[str] = set()
        for keyid, sig in sigs:
            if not isinstance(keyid, str) or not keyid:
                raise MalformedError(f"signature keyid must be a non-empty string, got {keyid!r}")
            if not isinstance(sig, bytes) or not sig:
                raise MalformedError(f"signature by {keyid} must be non-empty bytes")
            if keyid in seen:
                raise MalformedError(f"two signatures name keyid {keyid}")
            seen.add(keyid)
        object.__setattr__(self, "signatures", sigs)

    def to_json_value(self) -> dict[str, Any]:
        return {
            "payload": b64encode(self.payload),
            "payloadType": self.payload_type,
            "signatures": [{"keyid": k, "sig": b64encode(s)} for k, s in self.signatures],
        }

    def to_bytes(self) -> bytes:
        """The canonical JSON envelope: the bytes stored and hashed into the Merkle tree.

        It holds no numbers, only strings (base64, the payload type, key ids) in a list of
        objects: nothing for the type walk to find.
        """
        return encode_checked(self.to_json_value())

    @classmethod
    def from_bytes(cls, data: bytes) -> Envelope:
        """Parse an envelope, accepting only bytes equal to ``to_bytes()`` of the result."""
        value = parse_canonical(data)
        if not isinstance(value, dict):
            raise MalformedError(f"an envelope is a JSON object, got {type(value).__name__}")
        _exact_fields(value, _ENVELOPE_FIELDS, "envelope")
        payload_type = value["payloadType"]
        if not isinstance(payload_type, str):
            raise MalformedError("envelope payloadType must be a string")
        payload = b64decode_strict(value["payload"], what="envelope payload")
        raw_sigs = value["signatures"]
        if not isinstance(raw_sigs, list):
            raise MalformedError("envelope signatures must be a list")
        sigs = []
        for i, raw in enumerate(raw_sigs):
            if not isinstance(raw, dict):
                raise MalformedError(f"envelope signatures[{i}] must be an object")
            _exact_fields(raw, _SIGNATURE_FIELDS, f"envelope signatures[{i}]")
            sig = b64decode_strict(raw["sig"], what=f"envelope signatures[{i}].sig")
            sigs.append(EnvelopeSignature(raw["keyid"], sig))
        return cls(payload_type=payload_type, payload=payload, signatures=tuple(sigs))


def _exact_fields(obj: dict[str, Any], expected: frozenset[str], what: str) -> None:
    if obj.keys() != expected:
        missing = sorted(expected - obj.keys())
        extra = sorted(obj.keys() - expected)
        raise MalformedError(f"{what} fields are wrong: missing {missing}, unexpected {extra}")


def sign_envelope(
    payload: bytes,
    key: SigningKey,
    payload_type: str = PAYLOAD_TYPE,
    *,
    cosigners: Sequence[SigningKey] = (),
) -> Envelope:
    """Sign ``payload`` as ``payload_type`` with ``key`` (then each of ``cosigners``, in order);
    each keyid is its key's ``key_id``."""
    message = pae(payload_type, payload)
    return Envelope(
        payload_type=payload_type,
        payload=payload,
        signatures=tuple(
            EnvelopeSignature(k.public_key.key_id, k.sign(message)) for k in (key, *cosigners)
        ),
    )


def verify_envelope(
    data: bytes, keys: Mapping[str, PublicKey], payload_type: str = PAYLOAD_TYPE
) -> bytes:
    """Verify envelope bytes against trusted ``keys`` (by key_id) and return the payload.

    Succeeds only if at least one signature is by a trusted key and every signature by a trusted
    key verifies. Signatures by keys not in ``keys`` are ignored (they may be co-signers the
    caller does not track). Raises ``MalformedError`` (bytes or payload type), ``UnknownKeyError``
    (no signature by a trusted key; also when ``keys`` is empty), ``BadSignatureError`` naming
    the keyid whose signature failed.
    """
    envelope = Envelope.from_bytes(data)
    if envelope.payload_type != payload_type:
        raise MalformedError(
            f"envelope payloadType is {envelope.payload_type!r}, expected {payload_type!r}"
        )
    verify_signatures(envelope, keys)
    return envelope.payload


def verify_signatures(envelope: Envelope, keys: Mapping[str, PublicKey]) -> None:
    """The signature half of ``verify_envelope``, for an envelope already parsed."""
    if not keys:
        raise UnknownKeyError("no trusted keys given; refusing to accept any signature")
    message = pae(envelope.payload_type, envelope.payload)
    trusted = [(keyid, sig) for keyid, sig in envelope.signatures if keyid in keys]
    if not trusted:
        raise UnknownKeyError(
            f"no signature by a trusted key; envelope is signed by {_ids(envelope.signatures)}",
            details={"keyids": [s.keyid for s in envelope.signatures]},
        )
    for keyid, sig in trusted:
        try:
            keys[keyid].verify(sig, message)
        except BadSignatureError as e:
            raise BadSignatureError(
                f"envelope signature by key {keyid} does not verify", details={"keyid": keyid}
            ) from e


def _ids(signatures: Iterable[EnvelopeSignature]) -> str:
    return ", ".join(s.keyid for s in signatures)
