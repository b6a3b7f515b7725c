"""Which key signs the ledger when: the registry key's history, from genesis through rotations.

Genesis names the registry's first key, and that key signs entry 0. A rotation
(``registry.key_rotate``) names the next key: the entry is signed by the key in force *and* by the
new key (two DSSE signatures), so the old key authorises the change and the new key proves it is
held and vouches, through the entry's ``prev`` chain, for every entry before it. From the entry
after the rotation on, only the new key signs.

A key's period is half-open, as a party key's is: ``valid_from_seq`` is the first entry it signs
as the registry's key, ``valid_until_seq`` the first it no longer signs (``None`` while it signs).
A checkpoint of size ``n`` must be signed by the key that signed entry ``n - 1``, the last it
covers. The registry also co-signs the checkpoint that covers a rotation with the new key, so a
client that already holds the new key can check it; no check requires that co-signature (the
rotation entry's own carries the new key's word).

An auditor may pin any key of the history: each key vouches for the history before it (by its
rotation signature) and for the key after it (by signing the next rotation). Pin the key the
registry publishes now: a key retired because it leaked can still sign a history of its own up
to its retirement, which the current key does not vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, StrictStr, ValidationError

from registry.errors import BadSignatureError, MalformedError, RegistryError
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.dsse import Envelope, verify_signatures
from registry.ledger.entry import Entry
from registry.ledger.keys import PublicKey

GENESIS_KIND: Final = "registry.genesis"
ROTATION_KIND: Final = "registry.key_rotate"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class RegistryKeyRecord(_Strict):
    """How genesis and a rotation name a registry key."""

    key_id: StrictStr
    algorithm: Literal["ed25519"]
    public_key: StrictStr
    note_verifier: StrictStr

    def key(self, origin: str) -> PublicKey:
        """The key this record names, checked: its ``key_id`` and its note verifier (under
        ``origin``) must be this very key's. Raises ``MalformedError``."""
        key = PublicKey.from_b64(self.public_key)
        if key.key_id != self.key_id:
            raise MalformedError(
                f"registry key_id {self.key_id} is not the SHA-256 of its key ({key.key_id})"
            )
        verifier = NoteVerifier.parse(self.note_verifier)
        if verifier.key != key or verifier.name != origin:
            raise MalformedError(
                f"note verifier {verifier.describe()} is not the registry key under "
                f"the origin {origin!r}"
            )
        return key

    @classmethod
    def of(cls, key: PublicKey, origin: str) -> RegistryKeyRecord:
        return cls(
            key_id=key.key_id,
            algorithm="ed25519",
            public_key=key.to_b64(),
            note_verifier=NoteVerifier(name=origin, key=key).verifier_string(),
        )


class Rotation(_Strict):
    """A rotation entry's payload: the key that signs from the next entry on, and the key it
    replaces (the one in force, which signs this entry with it). Both are named in full, so the
    entry alone, with its two signatures, says which key hands over to which."""

    registry_key: RegistryKeyRecord
    replaces: RegistryKeyRecord

    def keys(self, origin: str) -> tuple[PublicKey, PublicKey]:
        """``(replaced, new)``, each checked as :meth:`RegistryKeyRecord.key` checks it."""
        return self.replaces.key(origin), self.registry_key.key(origin)


def rotation_payload(old: PublicKey, new: PublicKey, origin: str) -> dict[str, Any]:
    return Rotation(
        registry_key=RegistryKeyRecord.of(new, origin), replaces=RegistryKeyRecord.of(old, origin)
    ).model_dump()


@dataclass(frozen=True, slots=True)
class KeyPeriod:
    """A registry key and the entries it signs: ``[valid_from_seq, valid_until_seq)``."""

    key: PublicKey
    valid_from_seq: int
    valid_until_seq: int | None = None


class KeySchedule:
    """The registry key history as a log's entries establish it, fed in order.

    :meth:`check` says whether an entry was signed as it must be; :meth:`observe` then takes in
    what the entry establishes (genesis's key, a rotation's). Both return a problem as
    ``(code, message)`` or ``None``; a rotation with a problem establishes nothing, so what
    follows it is checked against the key it failed to replace.
    """

    def __init__(self, origin: str | None) -> None:
        self.origin = origin
        self.periods: list[KeyPeriod] = []
        self._signer_of_last: PublicKey | None = None
        self._headless = False

    @classmethod
    def resume(cls, origin: str, key: PublicKey, from_seq: int) -> KeySchedule:
        """A schedule picked up at entry ``from_seq``, where ``key`` is in force (a monitor's
        memory of the ledger), without the history before."""
        schedule = cls(origin)
        schedule.periods.append(KeyPeriod(key, from_seq))
        return schedule

    @property
    def current(self) -> PublicKey | None:
        """The key that signs the next entry (``None`` before genesis)."""
        return self.periods[-1].key if self.periods else None

    @property
    def signer_of_last(self) -> PublicKey | None:
        """The key that signed the last entry taken in: the key its checkpoint must carry."""
        return self._signer_of_last

    def key_ids(self) -> set[str]:
        return {p.key.key_id for p in self.periods}

    def check(self, entry: Entry, signers: tuple[str, ...]) -> tuple[str, str] | None:
        """Whether ``signers`` (the registry keys whose signatures on the entry verified) are
        as they must be: the key in force alone, or for a rotation the key in force and the new
        key (which :meth:`observe` checks)."""
        expected = self.current
        if expected is None:
            if entry.kind != GENESIS_KIND:
                # A ledger that does not begin with a genesis fails for that (the replay says
                # so); said here once, not for every entry.
                if self._headless:
                    return None
                self._headless = True
                return (
                    "unknown_key",
                    "the ledger does not begin with a genesis, so no entry's registry key can "
                    "be checked against its key history",
                )
            named = _genesis_key(entry, self.origin)
            if isinstance(named, tuple):
                return named
            expected = named
        rotation = entry.kind == ROTATION_KIND and self.periods
        if expected.key_id in signers and (len(signers) == 1 or rotation):
            return None
        return (
            "wrong_key",
            f"the entry is signed by registry key(s) {', '.join(signers) or 'none'}, but the "
            f"key in force at seq {entry.seq} is {expected.key_id}, and it alone signs "
            "(with the new key, for a rotation)",
        )

    def observe(self, entry: Entry, envelope: bytes) -> tuple[str, str] | None:
        """Take in the entry just checked: genesis establishes its key, a rotation the next."""
        if entry.kind == GENESIS_KIND and not self.periods:
            named = _genesis_key(entry, self.origin)
            if isinstance(named, tuple):
                return named
            self.periods.append(KeyPeriod(named, entry.seq))
            self._signer_of_last = named
            return None
        self._signer_of_last = self.current
        if entry.kind != ROTATION_KIND or self.current is None:
            return None
        return self._rotate(entry, envelope, self.current)

    def _rotate(self, entry: Entry, envelope: bytes, old: PublicKey) -> tuple[str, str] | None:
        try:
            replaced, new = Rotation.model_validate(entry.payload).keys(self.origin or "")
        except (ValidationError, MalformedError) as e:
            return ("malformed", f"the key rotation's payload is not valid: {e}")
        if replaced != old:
            return (
                "wrong_key",
                f"the rotation replaces {replaced.key_id}, but the key in force is "
                f"{old.key_id}",
            )
        if new.key_id in self.key_ids():
            return ("wrong_key", f"the rotation brings back registry key {new.key_id}")
        try:
            check_cosigned(envelope, old, new)
        except RegistryError as e:
            return ("bad_signature", e.message)
        last = self.periods[-1]
        self.periods[-1] = KeyPeriod(last.key, last.valid_from_seq, entry.seq + 1)
        self.periods.append(KeyPeriod(new, entry.seq + 1))
        return None


def named_by_genesis(envelope: bytes, origin: str) -> PublicKey | None:
    """The registry key a genesis envelope names, read before its signature is checked (the
    key that must sign it); ``None`` if the bytes are no genesis naming a valid key."""
    try:
        entry = Entry.from_bytes(Envelope.from_bytes(envelope).payload)
    except RegistryError:
        return None
    if entry.kind != GENESIS_KIND:
        return None
    named = _genesis_key(entry, origin)
    return None if isinstance(named, tuple) else named


def _genesis_key(entry: Entry, origin: str | None) -> PublicKey | tuple[str, str]:
    try:
        record = RegistryKeyRecord.model_validate(entry.payload.get("registry_key"))
        named_origin = entry.payload.get("origin")
        return record.key(origin if origin is not None else str(named_origin))
    except (ValidationError, MalformedError) as e:
        return ("malformed", f"genesis names no valid registry key: {e}")


def check_cosigned(envelope: bytes, old: PublicKey, new: PublicKey) -> None:
    """Raise unless the rotation envelope carries exactly two signatures, the replaced key's and
    the new key's, both verifying (``BadSignatureError`` names what is wrong)."""
    parsed = Envelope.from_bytes(envelope)
    ids = sorted(s.keyid for s in parsed.signatures)
    if ids != sorted((old.key_id, new.key_id)):
        raise BadSignatureError(
            "a key rotation must be signed by the key it replaces and by the new key, and "
            f"only by them; it is signed by {', '.join(ids)}"
        )
    try:
        verify_signatures(parsed, {old.key_id: old, new.key_id: new})
    except RegistryError as e:
        raise BadSignatureError(f"the key rotation's signatures: {e.message}") from e



