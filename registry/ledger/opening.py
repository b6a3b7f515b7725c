"""Opening envelopes and checkpoints in bulk: the part of verification that runs on every core.

This module owns the work a verifier can do without the replayed state, so it can run in worker
processes over chunks of a bundle: check each envelope's registry signature and parse its entry
(canonical bytes, entry shape), check each checkpoint note's signature and parse it, and check
each instruction's Ed25519 signature against the key its ``key_id`` names whenever that key's
bytes are known. Whether that key belonged to the actor at that seq is a question of state, which
the replay (``registry.ledger.replay``) answers in order; a ``key_id`` is the SHA-256 of the raw
key, so a result computed here is reused there only for the very key the replay settles on.

It imports only the ledger's encoding modules, so a spawned worker starts quickly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from registry.errors import BadSignatureError, MalformedError, RegistryError
from registry.ledger.canonical import canonical_bytes, encode_checked
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, open_checkpoint
from registry.ledger.dsse import PAYLOAD_TYPE, Envelope, verify_signatures
from registry.ledger.entry import Entry
from registry.ledger.keys import PublicKey, b64decode_strict

#: Instruction kinds whose bodies bring new party keys, and where.
_KEY_FIELDS = {"party.register": "public_keys", "party.key_add": "public_key"}


def instruction_signed_bytes(instruction: Any, *, from_entry: bool = False) -> bytes:
    """What a party signs: the canonical bytes of the instruction object exactly as sent.

    ``from_entry``: ``instruction`` is part of an :class:`Entry`'s payload, which is always in
    the canonical profile (parsed from canonical bytes, or checked when the entry was made), so
    it is re-encoded without the type walk. Any other value gets the full check.
    """
    return encode_checked(instruction) if from_entry else canonical_bytes(instruction)


def check_instruction_signature(
    instruction: Any, signature: Any, public_key: bytes, *, from_entry: bool = False
) -> bool:
    """Whether ``signature`` (base64) is ``public_key``'s over the instruction's canonical bytes.

    ``from_entry`` as for :func:`instruction_signed_bytes`.
    """
    try:
        sig = b64decode_strict(signature, what="instruction signature")
        message = instruction_signed_bytes(instruction, from_entry=from_entry)
        PublicKey(public_key).verify(sig, message)
    except (BadSignatureError, MalformedError):
        return False
    except RegistryError:
        return False
    return True


class SignatureCheck(NamedTuple):
    """The result of checking an instruction signature with the key ``key_id`` names."""

    key_id: str
    ok: bool


@dataclass(frozen=True, slots=True)
class OpenedEntry:
    """One envelope, opened: ``entry`` is set whenever the bytes parse (even if the registry
    signature failed, so the replay can go on); ``failure`` is ``(code, message)`` if anything
    failed; ``trusted`` says the registry signature verified."""

    entry: Entry | None
    failure: tuple[str, str] | None
    trusted: bool
    signature: SignatureCheck | None


@dataclass(frozen=True, slots=True)
class OpenedCheckpoint:
    """One checkpoint line: its stated ``size``, the opened checkpoint, or a failure."""

    line: int
    size: int
    checkpoint: Checkpoint | None
    failure: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class Context:
    """What every job needs: the trusted registry keys, the pinned note verifier, the origin."""

    registry_keys: Mapping[str, PublicKey]
    verifier: NoteVerifier
    origin: str


@dataclass(frozen=True, slots=True)
class Job:
    """A chunk of work: envelopes (``None`` for an unreadable line), checkpoint lines
    ``(line, size, note)``, and party keys known so far (``key_id`` -> raw bytes)."""

    context: Context
    envelopes: Sequence[bytes | None]
    checkpoints: Sequence[tuple[int, int, str]]
    party_keys: Mapping[str, bytes]


@dataclass(frozen=True, slots=True)
class JobResult:
    entries: list[OpenedEntry]
    checkpoints: list[OpenedCheckpoint]


def open_envelope(data: bytes, keys: Mapping[str, PublicKey]) -> OpenedEntry:
    """Verify one envelope's registry signature and parse its entry, never raising."""
    try:
        envelope = Envelope.from_bytes(data)
        if envelope.payload_type != PAYLOAD_TYPE:
            raise MalformedError(
                f"envelope payloadType is {envelope.payload_type!r}, expected {PAYLOAD_TYPE!r}"
            )
    except RegistryError as e:
        return OpenedEntry(None, (e.code, e.message), False, None)
    failure: tuple[str, str] | None = None
    try:
        verify_signatures(envelope, keys)
    except RegistryError as e:
        failure = (e.code, e.message)
    try:
        entry = Entry.from_bytes(envelope.payload)
    except RegistryError as e:
        return OpenedEntry(None, failure or (e.code, e.message), False, None)
    return OpenedEntry(entry, failure, failure is None, None)


def _new_keys(entry: Entry) -> list[str]:
    """Base64 public keys an entry introduces (not yet checked to be valid keys)."""
    payload = entry.payload
    if entry.kind == "registry.genesis":
        admin = payload.get("administrator")
        key = admin.get("public_key") if isinstance(admin, dict) else None
        return [key] if isinstance(key, str) else []
    field = _KEY_FIELDS.get(entry.kind)
    instruction = payload.get("instruction")
    body = instruction.get("body") if isinstance(instruction, dict) else None
    if field is None or not isinstance(body, dict):
        return []
    value = body.get(field)
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, str)]


def _instruction_check(entry: Entry, keys: Mapping[str, bytes]) -> SignatureCheck | None:
    instruction = entry.payload.get("instruction")
    signature = entry.payload.get("signature")
    if not isinstance(instruction, dict):
        return None
    key_id = instruction.get("key_id")
    raw = keys.get(key_id) if isinstance(key_id, str) else None
    if raw is None or not isinstance(key_id, str):
        return None
    ok = check_instruction_signature(instruction, signature, raw, from_entry=True)
    return SignatureCheck(key_id, ok)


def run_job(job: Job) -> JobResult:
    """Open every envelope and checkpoint of ``job``; runs in a worker process or in-line."""
    ctx = job.context
    opened = [
        open_envelope(data, ctx.registry_keys)
        if data is not None
        else OpenedEntry(None, ("malformed", "the entry line cannot be read"), False, None)
        for data in job.envelopes
    ]
    keys = dict(job.party_keys)
    for item in opened:
        if item.entry is not None:
            for text in _new_keys(item.entry):
                try:
                    key = PublicKey.from_b64(text)
                except RegistryError:
                    continue
                keys.setdefault(key.key_id, key.raw)
    entries = [
        OpenedEntry(o.entry, o.failure, o.trusted, _instruction_check(o.entry, keys))
        if o.entry is not None and o.entry.kind != "registry.genesis"
        else o
        for o in opened
    ]
    checkpoints = []
    for line, size, note in job.checkpoints:
        try:
            cp = open_checkpoint(note, origin=ctx.origin, verifiers=[ctx.verifier])
        except RegistryError as e:
            checkpoints.append(OpenedCheckpoint(line, size, None, (e.code, e.message)))
            continue
        checkpoints.append(OpenedCheckpoint(line, size, cp, None))
    return JobResult(entries, checkpoints)
