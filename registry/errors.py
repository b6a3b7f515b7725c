"""The one root of every error the registry raises on purpose.

Each subclass carries a stable machine ``code`` (what clients and scripts match on) and the HTTP
status the API answers with. The domain and the ledger raise these; the API turns them into
``{"error": {"code", "message", "details"}}`` in exactly one handler, and the CLI turns them into
an exit code in exactly one place.
"""

from __future__ import annotations

from typing import Any, ClassVar

MAX_MESSAGE = 2000
"""Most characters of an error's message: a message quoting a request's value is cut there."""


def first_line(error: BaseException) -> str:
    """The first line of what ``error`` says (a database driver's own error under it, not the
    SQL that follows); its type's name if it says nothing."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


class RegistryError(Exception):
    """Root of every deliberate failure; ``message`` is for people, ``code`` for machines."""

    code: ClassVar[str] = "registry_error"
    http_status: ClassVar[int] = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        if len(message) > MAX_MESSAGE:  # one that quotes what it refuses, say 16 MiB of it
            # At most MAX_MESSAGE with the note, so a message cut once is never cut again.
            note = f"... ({len(message)} characters in all)"
            message = message[: MAX_MESSAGE - len(note)] + note
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}


class RegistryBusyError(RegistryError):
    """The ledger's lock was not free in time; nothing was done, and a retry is safe."""

    code = "registry_busy"
    http_status = 503


class StorageFailedError(RegistryError):
    """The database could not write: its disk is full, or failed. The write was not
    acknowledged; once the database can write again, a retry with the same key is safe."""

    code = "storage_failed"
    http_status = 503


class DatabaseReadOnlyError(StorageFailedError):
    """The database takes no writes: a file system remounted read-only (as ext4 does after an
    error), or a PostgreSQL standby (a failover that left the registry on a replica). Nothing
    was written; once it takes writes again, a retry with the same key is safe."""

    code = "database_read_only"


class DatabaseMovedError(RegistryError):
    """The SQLite file the server opened is no longer at its path (moved, replaced or deleted
    while the server ran): writes are refused, so none is acknowledged into a file no one will
    read again."""

    code = "database_moved"
    http_status = 503


class RegistryKeyReplacedError(RegistryError):
    """This server signs with a registry key the ledger has rotated away from: nothing it
    would sign could be verified, so it writes nothing until restarted with the current key."""

    code = "registry_key_replaced"
    http_status = 503


class DatabaseUnavailableError(RegistryError):
    """The connection to the database was lost in the middle of a write (the database
    restarted, failed over, or ended the session): whether it was carried out is not known,
    and a retry with the same key is safe."""

    code = "database_unavailable"
    http_status = 503


# --- the signed log -------------------------------------------------------------------------


class LedgerError(RegistryError):
    """Something about the signed log itself is wrong."""

    code = "ledger_error"
    http_status = 500


class CanonicalEncodingError(LedgerError):
    """A value cannot be written as RFC 8785 canonical JSON under our rules (e.g. a float)."""

    code = "non_canonical_value"
    http_status = 422


class BadSignatureError(LedgerError):
    """A signature does not verify, or is missing, or was made by a key we do not trust."""

    code = "bad_signature"
    http_status = 401


class UnknownKeyError(BadSignatureError):
    """A signature names a key id the verifier does not hold."""

    code = "unknown_key"


class MalformedError(LedgerError):
    """Bytes that should hold an envelope, entry, note or proof cannot be parsed."""

    code = "malformed"
    http_status = 422


class ProofError(LedgerError):
    """An inclusion or consistency proof does not verify, or cannot be built for these sizes."""

    code = "invalid_proof"
    http_status = 422


class ChainError(LedgerError):
    """Entries do not form one chain: a gap in ``seq``, or ``prev`` is not the last leaf hash."""

    code = "broken_chain"


class CheckpointError(LedgerError):
    """A checkpoint is malformed, unsigned, or inconsistent with an earlier one."""

    code = "bad_checkpoint"


class ForkError(CheckpointError):
    """Two checkpoints for one tree that cannot both be true: the log was rewritten."""

    code = "fork_detected"


class KeyFileError(LedgerError):
    """A private key file cannot be read: wrong passphrase, not a PEM key, or not Ed25519."""

    code = "bad_key_file"


class VerificationFailedError(LedgerError):
    """A verification found failures; ``details["failures"]`` lists every one of them."""

    code = "verification_failed"
    http_status = 422


# --- requests -------------------------------------------------------------------------------


class InvalidRequestError(RegistryError):
    """The request is understood but its values break a rule."""

    code = "invalid_request"
    http_status = 422


class NotFoundError(RegistryError):
    code = "not_found"
    http_status = 404


class ConflictError(RegistryError):
    code = "conflict"
    http_status = 409


class AuthenticationError(RegistryError):
    code = "unauthenticated"
    http_status = 401


class PermissionDeniedError(RegistryError):
    code = "forbidden"
    http_status = 403


class ConfigurationError(RegistryError):
    """The registry is not set up the way this command needs (no key, no database, bad setting)."""

    code = "configuration_error"
    http_status = 500


# --- credits, serials and forest boundaries (raised by registry.domain) -----------------------


class InvalidQuantityError(InvalidRequestError):
    """A quantity or rate is not a whole number in its allowed range (bools and floats refused)."""

    code = "invalid_quantity"


class SerialRangeError(InvalidRequestError):
    """A serial range is malformed (start < 1, end < start, beyond the largest serial)."""

    code = "invalid_serial_range"


class InvalidSerialIdError(InvalidRequestError):
    """A batch id, unit serial or block string does not follow the registry's serial format."""

    code = "invalid_serial_id"


class DuplicateSerialError(SerialRangeError):
    """Two ranges share a serial: a double-counting hazard, and a broken invariant in state."""

    code = "duplicate_serial"


class InsufficientCreditsError(ConflictError):
    """The holder's active credits in the batch are fewer than the quantity asked for."""

    code = "insufficient_credits"
    http_status = 409


class SerialsNotHeldError(InsufficientCreditsError):
    """An explicit serial range asked for is not entirely held by the account."""

    code = "serials_not_held"


class InvalidGeometryError(InvalidRequestError):
    """A forest boundary is not a valid GeoJSON Polygon/MultiPolygon in WGS84 lon/lat."""

    code = "invalid_geometry"


class OverlapError(ConflictError):
    """A forest boundary overlaps an existing unit by more than the tolerance (double counting)."""

    code = "boundary_overlap"
    http_status = 409


# --- signed instructions ------------------------------------------------------------------------


class InstructionExpiredError(AuthenticationError):
    """The instruction's ``expires`` has passed (or lies too far ahead to be accepted)."""

    code = "instruction_expired"


class WrongRegistryError(InvalidRequestError):
    """The instruction names another registry: it was signed for that one, not this one."""

    code = "wrong_registry"


class KeyRevokedError(AuthenticationError):
    code = "key_revoked"


class ReplayError(ConflictError):
    """The instruction's nonce was already used by this party: a replay."""

    code = "nonce_reused"


class IdempotencyConflictError(ConflictError):
    """The ``Idempotency-Key`` was used before for a different request."""

    code = "idempotency_key_reused"


class StateError(ConflictError):
    """The request is valid but the registry's state does not allow it now."""

    code = "invalid_state"
