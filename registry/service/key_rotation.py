"""Rotating the registry's own signing key: ``registry rotate-key``.

The operator runs it on the registry's host with the current key. It writes a new key file,
then appends one ``registry.key_rotate`` entry signed by both keys and a checkpoint signed by
both (see ``registry.ledger.registry_keys`` for what an auditor checks), in one transaction.
From the next entry on, only the new key signs: a server still running with the old key
refuses every write (503 ``registry_key_replaced``) until it is restarted with the new key file,
and a server started with the old key is refused at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from registry.errors import DatabaseUnavailableError, StorageFailedError, first_line
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.keys import PublicKey, SigningKey
from registry.service.context import Registry
from registry.service.ledger import LedgerTail
from registry.service.setup import write_key_file
from registry.store import ledger_repo
from registry.store.db import read_session, write_transaction


@dataclass(frozen=True)
class Rotated:
    """What a rotation did: the entry that made it, and the keys before and after."""

    seq: int
    old: PublicKey
    new: PublicKey
    note_verifier: str


def rotate_registry_key(
    registry: Registry, *, new_key_file: Path, passphrase: bytes | None
) -> Rotated:
    """Make a new registry key, write it to ``new_key_file`` (encrypted with ``passphrase``;
    ``None`` writes it unencrypted) and rotate the ledger to it.

    The key file is written first and removed again if the rotation is not committed, so a
    committed rotation always leaves its key behind, and a refused one leaves nothing.
    """
    new = SigningKey.generate()
    write_key_file(new_key_file, new, passphrase=passphrase)
    try:
        with write_transaction(registry.engine) as session:
            tail = LedgerTail.read(session)
            appended = tail.rotate(session, registry, new)
            tail.publish(session, registry)
    except (DatabaseUnavailableError, StorageFailedError) as e:
        # The commit may have reached the database: the new key stays, or a ledger that
        # rotated to it would have no key to sign with.
        raise type(e)(
            "the database failed as the rotation was committed, and whether it was is not "
            f"known: the new key is kept at {new_key_file}. GET /v1/keys says which registry "
            f"key is in force ({first_line(e)})",
            details=e.details,
        ) from e
    except BaseException:
        # An interrupt (Ctrl-C, SIGTERM) may land once the database has committed: the key
        # goes only if the ledger certainly does not name it.
        if not _maybe_in_force(registry, new.public_key):
            new_key_file.unlink(missing_ok=True)
        raise
    return Rotated(
        seq=appended.entry.seq,
        old=registry.signer.public_key,
        new=new.public_key,
        note_verifier=NoteVerifier(name=registry.origin, key=new.public_key).verifier_string(),
    )


def _maybe_in_force(registry: Registry, key: PublicKey) -> bool:
    """Whether the ledger may name ``key`` as a registry key (``True`` if that cannot be read)."""
    try:
        with read_session(registry.engine) as session:
            return any(k.key_id == key.key_id for k in ledger_repo.registry_keys(session))
    except Exception:
        return True
