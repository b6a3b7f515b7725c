"""The export bundle: one self-contained file an auditor needs to check the whole registry offline.

This module owns the bundle format (``kh-carbon-registry-export``, version 1), its pydantic
models (``BUNDLE_MODELS``, from which ``schemas/export-*.json`` are generated), and a streaming
writer and reader. A bundle is JSON Lines, UTF-8, one JSON object per line, in four sections
that always come in this order::

    {"format": "kh-carbon-registry-export", "version": 1, "origin": ..., "tree_size": N,
     "exported_at": ..., "registry_keys": [...]}                         header, line 1
    {"type": "entry", "seq": 0, "envelope": "<base64 of the exact envelope bytes>"}   N lines
    {"type": "checkpoint", "size": s, "note": "<signed note>"}       in increasing size
    {"type": "party_key", "party_id", "key_id", "public_key", "valid_from_seq",
     "valid_until_seq"}

Entries are the DSSE envelopes exactly as stored: the Merkle leaves are the hashes of those
bytes, so nothing is re-serialised. Checkpoints are the signed notes the registry published.
Party keys and the header's registry keys are a convenience index: the verifier trusts only the
key pinned on its command line and the key history the ledger itself records, and reports any
disagreement with these lines.

Memory is flat whatever the size: the writer writes line by line, and the reader yields lines
from its own file handles, so a verifier can walk the entries and, in step with them, the
checkpoints further down the same file. Nothing here knows the database or the rules.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from registry.errors import LedgerError, MalformedError
from registry.ledger.canonical import MAX_SAFE_INTEGER
from registry.ledger.keys import b64decode_exact, b64decode_strict, b64encode

FORMAT: Final = "kh-carbon-registry-export"
VERSION: Final = 1

Seq = Annotated[StrictInt, Field(ge=0, le=MAX_SAFE_INTEGER)]
B64Key = Annotated[StrictStr, Field(description="raw 32-byte Ed25519 public key, standard base64")]
KeyId = Annotated[
    StrictStr,
    Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex SHA-256 of the raw public key"),
]


class BundleFormatError(MalformedError):
    """The file is not an export bundle this verifier can read (wrong format or version)."""

    code = "bad_bundle"


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BundleRegistryKey(_Line):
    """A key the registry signed entries and checkpoints with, and over which entries."""

    key_id: KeyId
    algorithm: Literal["ed25519"] = "ed25519"
    public_key: B64Key
    note_verifier: StrictStr = Field(description="C2SP signed-note verifier key for checkpoints")
    valid_from_seq: Seq
    valid_until_seq: Seq | None = None


class BundleHeader(_Line):
    """Line 1 of a bundle: what it is, which log, how many entries, and the registry's keys."""

    model_config = ConfigDict(title="ExportHeader")
    format: Literal["kh-carbon-registry-export"]
    version: Literal[1]
    origin: StrictStr = Field(min_length=1, description="the checkpoint origin line of the log")
    tree_size: Seq = Field(description="number of entry lines that follow")
    exported_at: StrictStr = Field(description="RFC 3339 UTC time the export was taken")
    registry_keys: list[BundleRegistryKey]


class BundleEntry(_Line):
    """One ledger entry: its DSSE envelope's exact bytes, base64-encoded."""

    model_config = ConfigDict(title="ExportEntry")
    type: Literal["entry"]
    seq: Seq
    envelope: StrictStr = Field(description="standard base64 of the stored envelope bytes")


class BundleCheckpoint(_Line):
    """A checkpoint the registry signed: a C2SP signed note over origin, size and root."""

    model_config = ConfigDict(title="ExportCheckpoint")
    type: Literal["checkpoint"]
    size: Seq
    note: StrictStr


class BundlePartyKey(_Line):
    """A party's public key and the entries over which the ledger says it was valid.

    ``valid_from_seq`` is the entry that added it; ``valid_until_seq`` the entry that revoked it
    (instructions in that entry and later may not use it), or null while it is valid.
    """

    model_config = ConfigDict(title="ExportPartyKey")
    type: Literal["party_key"]
    party_id: StrictStr
    key_id: KeyId
    public_key: B64Key
    valid_from_seq: Seq
    valid_until_seq: Seq | None = None


BUNDLE_MODELS: dict[str, type[BaseModel]] = {
    "header": BundleHeader,
    "entry": BundleEntry,
    "checkpoint": BundleCheckpoint,
    "party-key": BundlePartyKey,
}
"""Schema name -> model; ``registry.schemas`` publishes them as ``schemas/export-<name>.json``."""

_SECTION_ORDER: Final = {"entry": 0, "checkpoint": 1, "party_key": 2}
_ENTRY_PREFIX: Final = b'{"type":"entry"'
_WRITTEN_ENTRY_HEAD: Final = b'{"type":"entry","seq":'
_WRITTEN_ENTRY_MIDDLE: Final = b',"envelope":"'
_WRITTEN_ENTRY_TAIL: Final = b'"}'
_CHECKPOINT_PREFIX: Final = b'{"type":"checkpoint",'


# --- writing ----------------------------------------------------------------------------------


class BundleWriter:
    """Writes a bundle line by line to a binary stream, refusing lines out of section order."""

    def __init__(self, out: IO[bytes], header: BundleHeader) -> None:
        self._out = out
        self._section = 0
        self.entries = 0
        self.checkpoints = 0
        self.party_keys = 0
        self._tree_size = header.tree_size
        self._write(header)

    def _write(self, line: BaseModel) -> None:
        self._out.write(line.model_dump_json().encode("utf-8") + b"\n")

    def _enter(self, kind: str) -> None:
        rank = _SECTION_ORDER[kind]
        if rank < self._section:
            raise LedgerError(f"a {kind} line cannot follow the next section of a bundle")
        if rank > 0 and self.entries != self._tree_size:
            raise LedgerError(
                f"the header promises {self._tree_size} entries, {self.entries} were written"
            )
        self._section = rank

    def entry(self, seq: int, envelope: bytes) -> None:
        self._enter("entry")
        if seq != self.entries:
            raise LedgerError(
                f"entry lines must run 0..n-1; expected seq {self.entries}, got {seq}"
            )
        if self.entries >= self._tree_size:
            raise LedgerError(f"the header promises {self._tree_size} entries; got more")
        self._write(BundleEntry(type="entry", seq=seq, envelope=b64encode(envelope)))
        self.entries += 1

    def checkpoint(self, size: int, note: str) -> None:
        self._enter("checkpoint")
        self._write(BundleCheckpoint(type="checkpoint", size=size, note=note))
        self.checkpoints += 1

    def party_key(self, key: BundlePartyKey) -> None:
        self._enter("party_key")
        self._write(key)
        self.party_keys += 1

    def close(self) -> None:
        """Check the promised entries were all written (a bundle with none is fine)."""
        if self.entries != self._tree_size:
            raise LedgerError(
                f"the header promises {self._tree_size} entries, {self.entries} were written"
            )


#: What a file system without hard links (FAT, some network and FUSE mounts) answers a link.
_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EMLINK}
)


def _copy_new(source: Path, path: Path) -> None:
    """Copy ``source`` to a file created at ``path`` (never one already there, a symlink
    included), readable by its owner only and fsynced; if the copy fails, it is removed."""
    data = source.read_bytes()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(path: Path, *, private: bool = False) -> Iterator[IO[bytes]]:
    """A temporary file beside ``path`` to write: once the block ends well, it is fsynced and
    renamed over ``path`` (its directory fsynced too); if it fails, it is removed.

    So a failed or interrupted write (an export, the monitor's state) never leaves a half file
    under the real name, and a crash right after never loses the new one.

    ``private`` (a key): the file is readable by its owner only from the moment it exists, and
    it never replaces anything at ``path``, a symlink included (:class:`FileExistsError`).
    """
    if path.is_dir():  # said now, not by the rename once all is written (a long export)
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file to write", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode: int | None = path.stat().st_mode & 0o7777  # a file replaced keeps its mode
    except FileNotFoundError:
        mode = None
    # Not mkstemp, whose files are 0600: a new file gets the mode open() would give it.
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            if mode is not None and not private:
                os.fchmod(out.fileno(), mode)
            yield out
            out.flush()
            os.fsync(out.fileno())
        if private:
            try:
                os.link(tmp, path)  # unlike a rename, refuses to replace what is there
            except FileExistsError:
                raise
            except OSError as e:
                if e.errno not in _NO_HARD_LINKS:
                    raise
                _copy_new(tmp, path)
            Path(tmp).unlink()
        else:
            os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    except OSError as e:
        if e.errno != errno.EINVAL:  # a file system that cannot sync a directory (some FUSE)
            raise
    finally:
        os.close(directory)


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryLine:
    """An entry line: ``envelope`` holds the exact bytes, or ``problem`` says why it cannot."""

    line: int
    seq: int | None
    envelope: bytes | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class CheckpointLine:
    line: int
    size: int
    note: str


@dataclass(frozen=True, slots=True)
class PartyKeyLine:
    line: int
    key: BundlePartyKey


@dataclass(frozen=True, slots=True)
class LineProblem:
    """A line after the entries that is not where it should be or cannot be read."""

    line: int
    message: str


TailLine = CheckpointLine | PartyKeyLine | LineProblem


def _line_type(raw: bytes) -> str | None:
    """The ``type`` of a line, or ``None`` when it is not a JSON object with a string type."""
    if raw.startswith(_ENTRY_PREFIX):
        return "entry"  # the writer's own spelling: skipping a million entries stays cheap
    try:
        value: Any = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, or nested past what the parser goes
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    return kind if isinstance(kind, str) else None


def _written_entry(raw: bytes) -> tuple[int, bytes] | None:
    """``(seq, envelope bytes)`` of an entry line spelt exactly as :class:`BundleWriter` writes
    it, or ``None`` for any other spelling, which the careful parse then judges.

    A line of that spelling is one ``BundleEntry`` accepts, with these very values: ``seq`` is a
    decimal without leading zeros within ``Seq``'s range, and the envelope is canonical base64,
    which holds no character JSON would escape. Entry lines are nearly the whole bundle, so this
    spares each of them a JSON parse and a pydantic model.
    """
    if not raw.startswith(_WRITTEN_ENTRY_HEAD) or not raw.endswith(_WRITTEN_ENTRY_TAIL):
        return None
    cut = raw.find(_WRITTEN_ENTRY_MIDDLE, len(_WRITTEN_ENTRY_HEAD))
    if cut < 0:
        return None
    digits = raw[len(_WRITTEN_ENTRY_HEAD) : cut]
    leading_zero = digits.startswith(b"0") and digits != b"0"
    if not digits.isdigit() or leading_zero or len(digits) > len(str(MAX_SAFE_INTEGER)):
        return None
    seq = int(digits)
    envelope = b64decode_exact(raw[cut + len(_WRITTEN_ENTRY_MIDDLE) : -len(_WRITTEN_ENTRY_TAIL)])
    if seq > MAX_SAFE_INTEGER or envelope is None:
        return None
    return seq, envelope


def _written_checkpoint(raw: bytes) -> BundleCheckpoint | None:
    """The checkpoint on a line that starts as :class:`BundleWriter` writes checkpoints and
    validates as one, else ``None`` (the careful parse then judges the line).

    It spares ``_line_type`` its JSON parse: pydantic's parser keeps the last of duplicate keys,
    as ``json.loads`` does, and refuses everything ``json.loads`` refuses that a checkpoint
    line could hold, so a line that validates here has the type ``checkpoint`` there too.
    """
    if not raw.startswith(_CHECKPOINT_PREFIX):
        return None
    try:
        return BundleCheckpoint.model_validate_json(raw)
    except ValidationError:
        return None


def _first_error(e: ValidationError) -> str:
    err = e.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in err["loc"]) or "line"
    return f"{where}: {err['msg']}"


class BundleReader:
    """Reads a bundle from ``path``; each iterator has its own file handle, so they can advance
    in step (entries and, further down the file, checkpoints) with flat memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            with path.open("rb") as f:
                first = f.readline()
        except OSError as e:
            raise BundleFormatError(f"cannot read the bundle {path}: {e.strerror}") from e
        self.header = self._parse_header(first)

    def _parse_header(self, raw: bytes) -> BundleHeader:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError) as e:
            raise BundleFormatError(
                f"{self.path} is not an export bundle: line 1 is not JSON"
            ) from e
        if not isinstance(value, dict) or value.get("format") != FORMAT:
            raise BundleFormatError(
                f'{self.path} is not an export bundle: line 1 lacks "format": "{FORMAT}"'
            )
        if value.get("version") != VERSION:
            raise BundleFormatError(
                f"bundle version {value.get('version')!r} is not supported; this verifier "
                f"reads version {VERSION}"
            )
        try:
            return BundleHeader.model_validate_json(raw)
        except ValidationError as e:
            raise BundleFormatError(f"the bundle header is not valid: {_first_error(e)}") from e

    def _lines(self) -> Iterator[tuple[int, bytes]]:
        """``(line number, bytes without the newline)`` after the header."""
        with self.path.open("rb") as f:
            f.readline()
            for number, raw in enumerate(f, start=2):
                yield number, raw.rstrip(b"\n")

    def entries(self) -> Iterator[EntryLine]:
        """The entry lines, in file order, up to the first checkpoint or party key line."""
        for number, raw in self._lines():
            written = _written_entry(raw)
            if written is not None:
                yield EntryLine(number, *written)
                continue
            kind = _line_type(raw)
            if kind in ("checkpoint", "party_key"):
                return
            if kind != "entry":
                yield EntryLine(number, None, None, f"line {number} is not an entry line")
                continue
            try:
                line = BundleEntry.model_validate_json(raw)
                envelope = b64decode_strict(line.envelope, what=f"envelope on line {number}")
            except ValidationError as e:
                yield EntryLine(number, None, None, f"line {number}: {_first_error(e)}")
                continue
            except MalformedError as e:
                yield EntryLine(number, line.seq, None, e.message)
                continue
            yield EntryLine(number, line.seq, envelope)

    def tail(self) -> Iterator[TailLine]:
        """Everything after the entries: checkpoints, then party keys, and any misplaced line."""
        started = False
        section = 1
        for number, raw in self._lines():
            checkpoint = _written_checkpoint(raw)
            kind = "checkpoint" if checkpoint is not None else _line_type(raw)
            if not started:
                if kind not in ("checkpoint", "party_key"):
                    continue
                started = True
            if kind not in ("checkpoint", "party_key"):
                what = "an entry line" if kind == "entry" else "not a bundle line"
                yield LineProblem(number, f"line {number} is {what}, after the entries ended")
                continue
            rank = _SECTION_ORDER[kind]
            if rank < section:
                yield LineProblem(number, f"line {number}: a checkpoint after the party keys")
                continue
            section = rank
            try:
                if kind == "checkpoint":
                    cp = checkpoint or BundleCheckpoint.model_validate_json(raw)
                    yield CheckpointLine(number, cp.size, cp.note)
                else:
                    yield PartyKeyLine(number, BundlePartyKey.model_validate_json(raw))
            except ValidationError as e:
                yield LineProblem(number, f"line {number} ({kind}): {_first_error(e)}")
