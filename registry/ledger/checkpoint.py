"""Checkpoints: the registry's signed statement "the ledger has N entries and this Merkle root".

This module owns two C2SP formats:

* **signed notes** (c2sp.org/signed-note) with Ed25519 signatures (type ``0x01``): a text ending
  in a newline, a blank line, then one or more lines ``— <name> <base64(keyid4 || sig64)>``,
  where ``keyid4 = SHA-256(name || 0x0A || 0x01 || pubkey)[:4]`` and the signature covers the
  text bytes. Several signers (the registry, witnesses, another registry) may sign one note;
  signatures by keys a verifier does not know are ignored, as the spec requires.
* **checkpoint bodies** (c2sp.org/tlog-checkpoint): ``<origin>\\n<size>\\n<base64 root>\\n``,
  optionally followed by extension lines, which we accept and keep but never emit ourselves.

``open_checkpoint`` is what a client or auditor calls: it verifies the note, insists on a valid
signature by the registry key, parses the body, and checks the origin.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from registry.errors import (
    BadSignatureError,
    CheckpointError,
    ForkError,
    MalformedError,
    RegistryError,
)
from registry.ledger.keys import (
    SIGNATURE_SIZE,
    PublicKey,
    SigningKey,
    b64decode_exact,
    b64decode_strict,
    b64encode,
)

ED25519_SIGNATURE_TYPE = 0x01
"""Signed-note signature type byte for Ed25519 (c2sp.org/signed-note)."""

EM_DASH = "\u2014"
MAX_SIGNATURES = 100
"""Signatures accepted on one note (the spec asks for a limit of at least 16)."""

HASH_SIZE = 32
MAX_TREE_SIZE = 2**64 - 1
_MAX_SIZE_DIGITS = len(str(MAX_TREE_SIZE))
"""A longer size line is no size, and is never converted (Python refuses more than 4,300
digits, and would spend time on fewer)."""

_SIZE = re.compile(r"0|[1-9][0-9]*")
_HEX8 = re.compile(r"[0-9a-f]{8}")
_SPACE = re.compile(r"\s")
_CONTROL = re.compile(r"[\x00-\x1f]")
_CONTROL_BUT_NEWLINE = re.compile(r"[\x00-\x09\x0b-\x1f]")
# The same characters as UTF-8 bytes (where a byte below 0x20 is always that ASCII character),
# for a quick test that a note holds none before the search that finds which.
_CONTROL_BYTES_BUT_NEWLINE = bytes(c for c in range(0x20) if c != 0x0A)


def _check_key_name(name: str, error: type[RegistryError]) -> None:
    if not isinstance(name, str) or not name:
        raise error(f"a note key name must be a non-empty string, got {name!r}")
    problem = _key_name_problem(name)
    if problem is not None:
        raise error(problem)


@functools.lru_cache(maxsize=64)
def _key_name_problem(name: str) -> str | None:
    # Every note a verifier reads is signed under the same few names: judge each once.
    if "+" in name or _SPACE.search(name):
        return f"a note key name must not contain spaces or '+', got {name!r}"
    if _CONTROL.search(name):
        return f"a note key name must not contain control characters, got {name!r}"
    return None


def note_key_id(name: str, public_key: PublicKey) -> bytes:
    """The 4-byte signed-note key ID of an Ed25519 key under ``name``."""
    return _note_key_id(name, public_key.raw)


@functools.lru_cache(maxsize=64)
def _note_key_id(name: str, raw_key: bytes) -> bytes:
    # A verifier checks every checkpoint against the same few keys: hash each pair once.
    _check_key_name(name, MalformedError)
    data = name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + raw_key
    return hashlib.sha256(data).digest()[:4]


@dataclass(frozen=True, slots=True)
class NoteVerifier:
    """A trusted note key: a name and an Ed25519 public key (together, one identity)."""

    name: str
    key: PublicKey

    def __post_init__(self) -> None:
        _check_key_name(self.name, MalformedError)
        if not isinstance(self.key, PublicKey):
            raise MalformedError(f"expected a PublicKey, got {type(self.key).__name__}")

    @property
    def key_id(self) -> bytes:
        return _note_key_id(self.name, self.key.raw)

    def verifier_string(self) -> str:
        """``<name>+<8 hex keyid>+<base64(0x01 || pubkey)>``, the form notes tooling exchanges."""
        key = b64encode(bytes([ED25519_SIGNATURE_TYPE]) + self.key.raw)
        return f"{self.name}+{self.key_id.hex()}+{key}"

    @classmethod
    def parse(cls, verifier_string: str) -> NoteVerifier:
        """Parse a verifier string, checking its key ID against the key; ``MalformedError``."""
        if not isinstance(verifier_string, str):
            raise MalformedError("a note verifier key is a string")
        # The name has no '+', the key ID has none; base64 may, so split twice only.
        parts = verifier_string.split("+", 2)
        if len(parts) != 3:
            raise MalformedError(
                f"a note verifier key is <name>+<keyid>+<key>, got {verifier_string!r}"
            )
        name, hex_id, key_b64 = parts
        if not _HEX8.fullmatch(hex_id):
            raise MalformedError(f"note verifier key ID must be 8 lowercase hex digits: {hex_id!r}")
        key = b64decode_strict(key_b64, what="note verifier key")
        if len(key) != 1 + 32 or key[0] != ED25519_SIGNATURE_TYPE:
            raise MalformedError(
                "note verifier key must be 0x01 followed by a 32-byte Ed25519 key "
                f"(got {len(key)} bytes, type {key[:1].hex() or 'none'})"
            )
        verifier = cls(name=name, key=PublicKey(key[1:]))
        if verifier.key_id.hex() != hex_id:
            raise MalformedError(
                f"note verifier key ID {hex_id} does not match its key "
                f"(computed {verifier.key_id.hex()})"
            )
        return verifier

    def describe(self) -> str:
        return f"{self.name}+{self.key_id.hex()}"


# --- signed notes ---------------------------------------------------------------------------


def _check_note_chars(text: str, what: str) -> None:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CheckpointError(f"{what} is not valid UTF-8") from e
    if len(data.translate(None, _CONTROL_BYTES_BUT_NEWLINE)) == len(data):
        return
    bad = _CONTROL_BUT_NEWLINE.search(text)
    if bad is not None:
        raise CheckpointError(f"{what} contains control character {bad.group()!r}")


def _signature_line(text: str, *, name: str, key: SigningKey) -> str:
    _check_key_name(name, CheckpointError)
    key_id = note_key_id(name, key.public_key)
    sig = key.sign(text.encode("utf-8"))
    return f"{EM_DASH} {name} {b64encode(key_id + sig)}\n"


def sign_note(text: str, *, name: str, key: SigningKey) -> str:
    """A signed note of ``text`` (which must end in a newline) with one Ed25519 signature."""
    _check_note_chars(text, "note text")
    if not text.endswith("\n"):
        raise CheckpointError("note text must end with a newline")
    return f"{text}\n{_signature_line(text, name=name, key=key)}"


def add_signature(note: str, *, name: str, key: SigningKey) -> str:
    """``note`` with one more signature line over the same text (co-signing).

    Existing signatures are kept as they are and not checked here.
    """
    text, _ = split_note(note)
    return note + _signature_line(text, name=name, key=key)


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_id: bytes
    signature: bytes


def split_note(note: str) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and signature lines, checking only their shape."""
    if not isinstance(note, str):
        raise CheckpointError(f"a signed note is text, got {type(note).__name__}")
    _check_note_chars(note, "signed note")
    # The text may contain blank lines; the last blank line separates it from the signatures.
    cut = note.rfind("\n\n")
    if cut < 0:
        raise CheckpointError("signed note has no blank line before its signatures")
    text, block = note[: cut + 1], note[cut + 2 :]
    if not block:
        raise CheckpointError("signed note has no signature lines after its last blank line")
    if not block.endswith("\n"):
        raise CheckpointError("signed note must end with a newline after its last signature")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(
            f"signed note has {len(lines)} signatures, more than {MAX_SIGNATURES}"
        )
    signatures = []
    for n, line in enumerate(lines, start=1):
        parts = line.split(" ")
        if len(parts) != 3 or parts[0] != EM_DASH:
            raise CheckpointError(
                f"signature line {n} is not '{EM_DASH} <name> <base64>': {line!r}"
            )
        _, name, sig_b64 = parts
        _check_key_name(name, CheckpointError)
        try:
            raw = b64decode_strict(sig_b64, what=f"signature line {n}")
        except MalformedError as e:
            raise CheckpointError(e.message) from e
        if len(raw) < 5:
            raise CheckpointError(f"signature line {n} is too short to hold a key ID and signature")
        signatures.append(NoteSignature(name=name, key_id=raw[:4], signature=raw[4:]))
    return text, signatures


def verify_note(note: str, verifiers: Sequence[NoteVerifier]) -> tuple[str, list[NoteVerifier]]:
    """Verify ``note`` against ``verifiers``; return its text and which of them signed it.

    Signatures by keys not among ``verifiers`` (name and key ID both) are ignored. A signature by
    a known key that fails raises ``BadSignatureError``; no valid known signature at all raises
    ``CheckpointError``.
    """
    text, signatures = split_note(note)
    verified = _verified_signers(text, signatures, verifiers)
    if not verified:
        raise CheckpointError(
            "no signature on the note is by a trusted key "
            f"(trusted: {_describe(verifiers)}; signed by: {_describe_sigs(signatures)})"
        )
    return text, verified


def _verified_signers(
    text: str, signatures: Sequence[NoteSignature], verifiers: Sequence[NoteVerifier]
) -> list[NoteVerifier]:
    if not verifiers:
        raise CheckpointError("no note verifiers given; refusing to accept any note")
    message = text.encode("utf-8")
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[NoteVerifier] = []
    for sig in signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            continue  # the spec: ignore unknown keys, even if they share a name or an ID
        try:
            verifier.key.verify(sig.signature, message)
        except BadSignatureError as e:
            # The spec lets a client accept the note anyway; a bad signature by a key we trust
            # is a sign of tampering, so we reject.
            raise BadSignatureError(
                f"note signature by {verifier.describe()} does not verify",
                details={"name": verifier.name, "keyid": verifier.key_id.hex()},
            ) from e
        if verifier not in verified:
            verified.append(verifier)
    return verified


def _describe(verifiers: Sequence[NoteVerifier]) -> str:
    return ", ".join(v.describe() for v in verifiers)


def _describe_sigs(signatures: Sequence[NoteSignature]) -> str:
    return ", ".join(f"{s.name}+{s.key_id.hex()}" for s in signatures)


# --- checkpoints ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: ``size`` leaves under ``root`` in the log named ``origin``."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin:
            raise CheckpointError(f"checkpoint origin must be a non-empty string: {self.origin!r}")
        if _CONTROL.search(self.origin):
            raise CheckpointError(f"checkpoint origin must be one line: {self.origin!r}")
        if type(self.size) is not int or not 0 <= self.size <= MAX_TREE_SIZE:
            raise CheckpointError(f"checkpoint size must be an integer >= 0, got {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise CheckpointError(f"checkpoint root must be {HASH_SIZE} bytes, got {self.root!r}")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for ext in self.extensions:
            if not isinstance(ext, str) or not ext or "\n" in ext:
                raise CheckpointError(f"checkpoint extension lines must be non-empty: {ext!r}")

    def body(self) -> str:
        """The note text: origin, size, base64 root, each on its own line."""
        lines = [self.origin, str(self.size), b64encode(self.root), *self.extensions]
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def from_body(cls, text: str) -> Checkpoint:
        """Parse a checkpoint body; ``CheckpointError`` naming the line that is wrong."""
        if not text.endswith("\n"):
            raise CheckpointError("checkpoint body must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointError(f"checkpoint body needs 3 lines, got {len(lines)}")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise CheckpointError("checkpoint origin line is empty")
        fits = len(size_text) <= _MAX_SIZE_DIGITS
        size = int(size_text) if fits and _SIZE.fullmatch(size_text) else -1
        if not 0 <= size <= MAX_TREE_SIZE:
            raise CheckpointError(
                f"checkpoint size must be a decimal integer without leading zeros: {size_text!r}"
            )
        try:
            root = b64decode_strict(root_text, what="checkpoint root hash")
        except MalformedError as e:
            raise CheckpointError(e.message) from e
        if len(root) != HASH_SIZE:
            raise CheckpointError(
                f"checkpoint root hash must be {HASH_SIZE} bytes, got {len(root)}: {root_text!r}"
            )
        if "" in extensions:
            raise CheckpointError("checkpoint extension lines must be non-empty")
        return cls(origin=origin, size=size, root=root, extensions=tuple(extensions))


def sign_checkpoint(cp: Checkpoint, *, name: str, key: SigningKey) -> str:
    """The checkpoint as a signed note with one signature by ``key`` under ``name``."""
    return sign_note(cp.body(), name=name, key=key)


def open_checkpoint(note: str, *, origin: str, verifiers: Sequence[NoteVerifier]) -> Checkpoint:
    """Verify a checkpoint note and return the checkpoint it states.

    ``verifiers[0]`` is the registry's own key: its valid signature is required. The others are
    optional co-signers (witnesses, peers); their signatures must verify if present. Signatures
    by any other key are ignored.
    """
    if not verifiers:
        raise CheckpointError("no note verifiers given; the first must be the registry key")
    registry = verifiers[0]
    written = _open_as_signed(note, origin, registry)
    if written is not None:
        return written
    return _open_carefully(note, origin, verifiers)


def open_checkpoint_signers(
    note: str, *, origin: str, verifiers: Sequence[NoteVerifier]
) -> tuple[Checkpoint, frozenset[str]]:
    """Verify a checkpoint note signed by one or more of ``verifiers`` (the registry's keys over
    its history, under ``origin``) and return it with the key ids (``PublicKey.key_id``) of
    those whose signatures verified; which of them had to sign it is the caller's question.
    Raises as :func:`open_checkpoint` does, and when none of them signed it."""
    if not verifiers:
        raise CheckpointError("no note verifiers given; refusing to accept any note")
    for verifier in verifiers:
        written = _open_as_signed(note, origin, verifier)
        if written is not None:
            return written, frozenset((verifier.key.key_id,))
    text, signatures = split_note(note)
    verified = _verified_signers(text, signatures, verifiers)
    if not verified:
        raise CheckpointError(
            f"checkpoint has no signature by the registry key(s) {_describe(verifiers)} "
            f"(signed by: {_describe_sigs(signatures)})"
        )
    cp = Checkpoint.from_body(text)
    if cp.origin != origin:
        raise CheckpointError(
            f"checkpoint origin is {cp.origin!r}, expected {origin!r}",
            details={"expected": origin, "actual": cp.origin},
        )
    return cp, frozenset(v.key.key_id for v in verified)


def _open_as_signed(note: str, origin: str, registry: NoteVerifier) -> Checkpoint | None:
    """The checkpoint in ``note`` if it is spelt as the registry signs checkpoints (``origin``,
    size and root, a blank line, one signature line by ``registry``) and that signature
    verifies; ``None`` for anything else, which :func:`_open_carefully` then judges.

    Such a note is one ``_open_carefully`` accepts and reads as this very checkpoint: its parts
    are the origin and the registry's name, a size as ``from_body`` reads it, and exact base64;
    nothing else is in it (one split by newlines finds every line), and no co-signature that
    would have to verify. It spares a verifier, which opens one checkpoint for each of the
    registry's transactions, the general split of a note and the parse of a body.
    """
    if not isinstance(note, str):
        return None
    lines = note.split("\n")
    if len(lines) != 6 or lines[0] != origin or lines[3] or lines[5]:
        return None
    size_text, root_text, signed = lines[1], lines[2], lines[4]
    prefix = f"{EM_DASH} {registry.name} "
    if not (
        len(size_text) <= _MAX_SIZE_DIGITS
        and _SIZE.fullmatch(size_text)
        and root_text.isascii()
        and signed.startswith(prefix)
        and signed[len(prefix) :].isascii()
    ):
        return None
    size = int(size_text)
    root = b64decode_exact(root_text.encode("ascii"))
    blob = b64decode_exact(signed[len(prefix) :].encode("ascii"))
    if (
        size > MAX_TREE_SIZE
        or root is None
        or len(root) != HASH_SIZE
        or blob is None
        or len(blob) != 4 + SIGNATURE_SIZE
        or blob[:4] != registry.key_id
    ):
        return None
    text = note[: len(note) - len(signed) - 2]
    try:
        registry.key.verify(blob[4:], text.encode("utf-8"))
        return Checkpoint(origin=origin, size=size, root=root)
    except (RegistryError, UnicodeEncodeError):  # a lone surrogate in the origin
        return None


def _open_carefully(note: str, origin: str, verifiers: Sequence[NoteVerifier]) -> Checkpoint:
    """:func:`open_checkpoint` for any note: split it, check every signature, parse the body,
    and say what is wrong."""
    registry = verifiers[0]
    text, signatures = split_note(note)
    if registry not in _verified_signers(text, signatures, verifiers):
        raise CheckpointError(
            f"checkpoint has no signature by the registry key {registry.describe()} "
            f"(signed by: {_describe_sigs(signatures)})",
            details={"registry_key": registry.describe()},
        )
    cp = Checkpoint.from_body(text)
    if cp.origin != origin:
        raise CheckpointError(
            f"checkpoint origin is {cp.origin!r}, expected {origin!r}",
            details={"expected": origin, "actual": cp.origin},
        )
    return cp


def check_consistent_sizes(older: Checkpoint, newer: Checkpoint) -> None:
    """The checks two checkpoints need before a consistency proof: same log, no shrinking.

    The same size with a different root is a fork (``ForkError``): the log was rewritten.
    """
    if older.origin != newer.origin:
        raise CheckpointError(
            f"checkpoints are for different logs: {older.origin!r} and {newer.origin!r}"
        )
    if newer.size < older.size:
        raise CheckpointError(
            f"checkpoint size went backwards from {older.size} to {newer.size}",
            details={"older": older.size, "newer": newer.size},
        )
    if newer.size == older.size and newer.root != older.root:
        raise ForkError(
            f"two checkpoints of size {older.size} with different roots: "
            f"{older.root.hex()} and {newer.root.hex()}",
            details={"size": older.size, "roots": [older.root.hex(), newer.root.hex()]},
        )
