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
from registry.ledger.checkpoint import Checkpoint, NoteVerifier, open_checkpoint_signers
from registry.ledger.dsse import PAYLOAD_TYPE, Envelope, pae, verify_signatures
from registry.ledger.entry import Entry
from registry.ledger.keys import PublicKey, b64decode_exact, b64decode_strict, loaded_public_key

#: Instruction kinds whose bodies bring new party keys, and where.
_KEY_FIELDS = {"party.register": "public_keys", "party.key_add": "public_key"}

#: How the registry spells an entry envelope with one signature (``Envelope.to_bytes``), cut
#: where the payload, the keyid and the signature go.
_ENVELOPE_HEAD = b'{"payload":"'
_ENVELOPE_MIDDLE = b'","payloadType":"%s","signatures":[{"keyid":"' % PAYLOAD_TYPE.encode()
_ENVELOPE_SIG = b'","sig":"'
_ENVELOPE_TAIL = b'"}]}'

#: The members of an instruction entry's payload, and how two of their keys are spelt.
_PAYLOAD_KEYS = frozenset({"effects", "instruction", "signature"})
_INSTRUCTION_KEY = b'"instruction":'
_SIGNATURE_KEY = b',"signature":'


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
        message = instruction_signed_bytes(instruction, from_entry=from_entry)
    except RegistryError:
        return False
    return _signs(signature, message, public_key)


def _signs(signature: Any, message: bytes, public_key: bytes) -> bool:
    """Whether ``signature`` (base64) is ``public_key``'s over ``message``."""
    try:
        sig = b64decode_strict(signature, what="instruction signature")
        loaded_public_key(public_key).verify(sig, message)
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
    failed; ``signers`` are the registry keys (key ids) whose signatures verified, empty unless
    every signature by a known registry key verified. Whether they are the keys in force at the
    entry's seq is the log auditor's question (``registry.ledger.registry_keys``)."""

    entry: Entry | None
    failure: tuple[str, str] | None
    signers: tuple[str, ...]
    signature: SignatureCheck | None

    @property
    def trusted(self) -> bool:
        """Whether the registry signatures verified (by keys the caller trusts)."""
        return bool(self.signers)


@dataclass(frozen=True, slots=True)
class OpenedCheckpoint:
    """One checkpoint line: its stated ``size``, the opened checkpoint and the registry keys
    (key ids) whose signatures on it verified, or a failure."""

    line: int
    size: int
    checkpoint: Checkpoint | None
    failure: tuple[str, str] | None
    signers: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Context:
    """What every job needs: the registry keys entries and checkpoints may be signed with (by
    key id) and the origin."""

    registry_keys: Mapping[str, PublicKey]
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

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # A worker's results cross to the main process as plain tuples, the entries rebuilt
        # there without validating again (the worker validated them): pickling the pydantic
        # entries and the dataclasses took more time than the rest of the main process's work
        # on an entry.
        return _rebuilt, (
            [(_entry_fields(o.entry), o.failure, o.signers, o.signature) for o in self.entries],
            [
                (c.line, c.size, _checkpoint_fields(c.checkpoint), c.failure, c.signers)
                for c in self.checkpoints
            ],
        )


_ENTRY_FIELDS: set[str] = set(Entry.model_fields)
"""Every field of an entry is set: one set shared by the rebuilt entries, which never change."""


def _entry_fields(entry: Entry | None) -> tuple[Any, ...] | None:
    if entry is None:
        return None
    return (entry.v, entry.seq, entry.time, entry.kind, entry.actor, entry.payload, entry.prev)


def _checkpoint_fields(cp: Checkpoint | None) -> tuple[Any, ...] | None:
    return None if cp is None else (cp.origin, cp.size, cp.root, cp.extensions)


def _rebuilt(entries: list[tuple[Any, ...]], checkpoints: list[tuple[Any, ...]]) -> JobResult:
    opened = []
    for fields, failure, signers, check in entries:
        entry = None
        if fields is not None:
            v, seq, time, kind, actor, payload, prev = fields
            entry = Entry.model_construct(
                _ENTRY_FIELDS, v=v, seq=seq, time=time, kind=kind, actor=actor,
                payload=payload, prev=prev,
            )
        opened.append(OpenedEntry(entry, failure, signers, check))
    return JobResult(
        opened,
        [
            OpenedCheckpoint(line, size, None if cp is None else Checkpoint(*cp), failure, signers)
            for line, size, cp, failure, signers in checkpoints
        ],
    )


def open_envelope(data: bytes, keys: Mapping[str, PublicKey]) -> OpenedEntry:
    """Verify one envelope's registry signature and parse its entry, never raising."""
    return _open_envelope(data, keys)[0]


def _open_envelope(data: bytes, keys: Mapping[str, PublicKey]) -> tuple[OpenedEntry, bytes | None]:
    """:func:`open_envelope`, and the entry's bytes when it parsed.

    An envelope as the registry writes it, signed by a key in ``keys`` that verifies, is
    opened without the general parse; anything else (including every failure) goes through
    :func:`_open_envelope_carefully`, which says what is wrong.
    """
    written = _written_envelope(data)
    if written is not None:
        payload, keyid, sig = written
        key = keys.get(keyid)
        if key is not None and _verifies(key, sig, pae(PAYLOAD_TYPE, payload)):
            try:
                entry = Entry.from_bytes(payload)
            except RegistryError as e:
                return OpenedEntry(None, (e.code, e.message), (), None), None
            return OpenedEntry(entry, None, (keyid,), None), payload
    return _open_envelope_carefully(data, keys)


def _written_envelope(data: bytes) -> tuple[bytes, str, bytes] | None:
    """``(payload, keyid, signature)`` of an entry envelope with one signature, spelt exactly as
    ``Envelope.to_bytes`` spells it; ``None`` for any other bytes.

    Such bytes are canonical JSON (keys in order, no spaces, and strings that need no escapes:
    canonical base64 and an alphanumeric keyid), so ``Envelope.from_bytes`` would accept them
    and return these very parts with the entry payload type. Cutting them out with a few byte
    searches spares every entry a JSON parse and a re-encoding of the envelope.
    """
    if not data.startswith(_ENVELOPE_HEAD) or not data.endswith(_ENVELOPE_TAIL):
        return None
    middle = data.find(_ENVELOPE_MIDDLE, len(_ENVELOPE_HEAD))
    if middle < 0:
        return None
    keyid_start = middle + len(_ENVELOPE_MIDDLE)
    keyid_end = data.find(_ENVELOPE_SIG, keyid_start)
    if keyid_end < 0:
        return None
    keyid = data[keyid_start:keyid_end]
    payload = b64decode_exact(data[len(_ENVELOPE_HEAD) : middle])
    sig = b64decode_exact(data[keyid_end + len(_ENVELOPE_SIG) : -len(_ENVELOPE_TAIL)])
    if not keyid.isalnum() or payload is None or not sig:
        return None
    return payload, keyid.decode("ascii"), sig


def _verifies(key: PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except BadSignatureError:
        return False
    return True


def _open_envelope_carefully(
    data: bytes, keys: Mapping[str, PublicKey]
) -> tuple[OpenedEntry, bytes | None]:
    """:func:`_open_envelope` for any bytes: parse and check everything, name every failure."""
    try:
        envelope = Envelope.from_bytes(data)
        if envelope.payload_type != PAYLOAD_TYPE:
            raise MalformedError(
                f"envelope payloadType is {envelope.payload_type!r}, expected {PAYLOAD_TYPE!r}"
            )
    except RegistryError as e:
        return OpenedEntry(None, (e.code, e.message), (), None), None
    failure: tuple[str, str] | None = None
    signers: tuple[str, ...] = ()
    try:
        verify_signatures(envelope, keys)
        signers = tuple(s.keyid for s in envelope.signatures if s.keyid in keys)
    except RegistryError as e:
        failure = (e.code, e.message)
    try:
        entry = Entry.from_bytes(envelope.payload)
    except RegistryError as e:
        return OpenedEntry(None, failure or (e.code, e.message), (), None), None
    return OpenedEntry(entry, failure, signers, None), envelope.payload


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


def _instruction_check(
    entry: Entry, keys: Mapping[str, bytes], payload: bytes
) -> SignatureCheck | None:
    """The check of ``entry``'s instruction signature, if ``keys`` holds the key it names;
    ``payload`` is the entry's canonical bytes."""
    instruction = entry.payload.get("instruction")
    signature = entry.payload.get("signature")
    if not isinstance(instruction, dict):
        return None
    key_id = instruction.get("key_id")
    raw = keys.get(key_id) if isinstance(key_id, str) else None
    if raw is None or not isinstance(key_id, str):
        return None
    message = _instruction_bytes_in(payload, entry)
    if message is None:
        ok = check_instruction_signature(instruction, signature, raw, from_entry=True)
    else:
        ok = _signs(signature, message, raw)
    return SignatureCheck(key_id, ok)


def _instruction_bytes_in(payload: bytes, entry: Entry) -> bytes | None:
    """``instruction_signed_bytes`` of ``entry``'s instruction, cut out of ``payload`` (the
    canonical bytes ``entry`` was parsed from) instead of encoded again; ``None`` when the cut
    could be ambiguous.

    Canonical JSON encodes a member exactly as it encodes that value alone, so the instruction's
    signed bytes lie verbatim in the entry's. In ``{..."payload":{"effects":...,"instruction":
    I,"signature":S},"prev":...}`` the bytes ``"instruction":`` can only be a key (inside a
    string its quotes would be escaped), so when they occur once, ``I`` starts right after them;
    and ``I`` ends at the last ``,"signature":``, since nothing after the payload's own
    signature key (a string, then ``prev``, ``seq``, ``time``, ``v``) holds an object.
    """
    if entry.payload.keys() != _PAYLOAD_KEYS or type(entry.payload["signature"]) is not str:
        return None
    if payload.count(_INSTRUCTION_KEY) != 1:
        return None
    start = payload.index(_INSTRUCTION_KEY) + len(_INSTRUCTION_KEY)
    return payload[start : payload.rindex(_SIGNATURE_KEY)]


def run_job(job: Job) -> JobResult:
    """Open every envelope and checkpoint of ``job``; runs in a worker process or in-line."""
    ctx = job.context
    keys = dict(job.party_keys)
    entries = []
    for data in job.envelopes:
        if data is None:
            entries.append(
                OpenedEntry(None, ("malformed", "the entry line cannot be read"), (), None)
            )
            continue
        opened, payload = _open_envelope(data, ctx.registry_keys)
        entry = opened.entry
        if entry is not None and payload is not None and entry.kind != "registry.genesis":
            # Keys this entry or a later one adds are not yet known here; no instruction may
            # use them before they are added, so the replay never asks for such a check.
            check = _instruction_check(entry, keys, payload)
            opened = OpenedEntry(entry, opened.failure, opened.signers, check)
        entries.append(opened)
        if entry is not None:
            for text in _new_keys(entry):
                try:
                    key = PublicKey.from_b64(text)
                except RegistryError:
                    continue
                keys.setdefault(key.key_id, key.raw)
    checkpoints = []
    verifiers = [NoteVerifier(name=ctx.origin, key=k) for k in ctx.registry_keys.values()]
    for line, size, note in job.checkpoints:
        try:
            cp, signers = open_checkpoint_signers(note, origin=ctx.origin, verifiers=verifiers)
        except RegistryError as e:
            checkpoints.append(OpenedCheckpoint(line, size, None, (e.code, e.message)))
            continue
        checkpoints.append(OpenedCheckpoint(line, size, cp, None, signers))
    return JobResult(entries, checkpoints)
