"""Exporting the registry as a bundle an auditor can verify offline (``registry export``).

This module owns reading a consistent snapshot of the ledger out of the database into the bundle
format of :mod:`registry.ledger.bundle`: every entry envelope, every checkpoint, the registry's
keys and every party key with its validity range. It streams, page by page, so exporting a
million entries takes the memory of one page. The snapshot is the tree size read first: entries
and checkpoints beyond it (appended while the export runs) and key revocations after it are left
out, so the bundle is exactly the registry as of that size, on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from registry.ledger.bundle import (
    BundleHeader,
    BundlePartyKey,
    BundleRegistryKey,
    BundleWriter,
    atomic_output,
)
from registry.ledger.checkpoint import NoteVerifier
from registry.ledger.entry import envelope_time, format_time
from registry.ledger.keys import PublicKey, b64encode
from registry.service.context import Registry, utc_now
from registry.service.setup import genesis_origin
from registry.store import ledger_repo
from registry.store.db import read_session
from registry.store.tables import LedgerEntry, PartyKeyRow

PAGE = 1000


@dataclass(frozen=True)
class ExportResult:
    path: Path
    tree_size: int
    checkpoints: int
    party_keys: int
    bytes: int


def _entries(session: Session, size: int) -> Iterator[tuple[int, bytes]]:
    start = 0
    while start < size:
        rows = session.exec(
            select(LedgerEntry.seq, LedgerEntry.envelope)
            .where(col(LedgerEntry.seq) >= start, col(LedgerEntry.seq) < size)
            .order_by(col(LedgerEntry.seq))
            .limit(PAGE)
        ).all()
        if not rows:
            return
        for seq, envelope in rows:
            yield int(seq), bytes(envelope)
        start = int(rows[-1][0]) + 1


def _checkpoints(session: Session, size: int) -> Iterator[tuple[int, str]]:
    start = 0
    while True:
        rows = ledger_repo.checkpoints_between(session, start, PAGE)
        for row in rows:
            if row.size > size:
                return
            yield row.size, row.note
        if len(rows) < PAGE:
            return
        start = rows[-1].size + 1


def _party_keys(session: Session, size: int) -> Iterator[BundlePartyKey]:
    start = ""
    while True:
        rows = session.exec(
            select(PartyKeyRow)
            .where(col(PartyKeyRow.key_id) > start, col(PartyKeyRow.added_seq) < size)
            .order_by(col(PartyKeyRow.key_id))
            .limit(PAGE)
        ).all()
        for row in rows:
            revoked = (
                row.revoked_seq if row.revoked_seq is not None and row.revoked_seq < size else None
            )
            yield BundlePartyKey(
                type="party_key",
                party_id=row.party_id,
                key_id=row.key_id,
                public_key=b64encode(bytes(row.public_key)),
                valid_from_seq=row.added_seq,
                valid_until_seq=revoked,
            )
        if len(rows) < PAGE:
            return
        start = rows[-1].key_id


def _registry_keys(session: Session, origin: str, size: int) -> list[BundleRegistryKey]:
    """The keys the first ``size`` entries establish, each over the entries it signs: a key
    a rotation among them establishes is listed even if no entry after it is exported."""
    keys = []
    for row in ledger_repo.registry_keys(session):
        if size == 0 or row.valid_from_seq > size:
            continue
        until = (
            row.valid_until_seq
            if row.valid_until_seq is not None and row.valid_until_seq <= size
            else None
        )
        key = PublicKey(bytes(row.public_key))
        keys.append(
            BundleRegistryKey(
                key_id=row.key_id,
                public_key=key.to_b64(),
                note_verifier=NoteVerifier(name=origin, key=key).verifier_string(),
                valid_from_seq=row.valid_from_seq,
                valid_until_seq=until,
            )
        )
    return keys


def export_bundle(
    source: Registry | Engine,
    out: Path,
    *,
    progress: Callable[[int], None] | None = None,
    now: Callable[[], datetime] = utc_now,
) -> ExportResult:
    """Write the whole registry, as of its current tree size, to the bundle ``out``.

    ``source`` is a running registry or just its database engine (exporting needs no private
    key). ``progress`` is called with the number of entries written so far. The file appears
    under its name only once complete.
    """
    engine = source.engine if isinstance(source, Registry) else source
    with read_session(engine) as session:
        end = ledger_repo.head(session)
        size = end.size
        origin = source.origin if isinstance(source, Registry) else genesis_origin(session)
        exported_at = format_time(now())
        if end.last_envelope is not None:
            # Never before the last entry, even with this machine's clock behind the
            # registry's: an auditor checks that the registry exported what it had written.
            exported_at = max(exported_at, envelope_time(end.last_envelope))
        header = BundleHeader(
            format="kh-carbon-registry-export",
            version=1,
            origin=origin,
            tree_size=size,
            exported_at=exported_at,
            registry_keys=_registry_keys(session, origin, size),
        )
        with atomic_output(out) as stream:
            writer = BundleWriter(stream, header)
            for seq, envelope in _entries(session, size):
                writer.entry(seq, envelope)
                if progress is not None and (seq + 1) % PAGE == 0:
                    progress(seq + 1)
            for cp_size, note in _checkpoints(session, size):
                writer.checkpoint(cp_size, note)
            for key in _party_keys(session, size):
                writer.party_key(key)
            writer.close()
            written = stream.tell()
    if progress is not None:
        progress(size)
    return ExportResult(
        path=out,
        tree_size=size,
        checkpoints=writer.checkpoints,
        party_keys=writer.party_keys,
        bytes=written,
    )
