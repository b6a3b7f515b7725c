"""Rows a write transaction inserts at its end, one statement per table, instead of one each.

Some rows are never read back by the transaction that writes them: the ledger entries
themselves (the ledger's tail is kept in memory), the block events of a movement, the answer
kept for an ``Idempotency-Key``. A transaction that carries out many use
cases keeps them in its session and :func:`flush` inserts them, in order, just before the
checkpoint is signed. Each row belongs to a ledger entry (its ``seq``): when a savepoint rolls
back the entries from some ``seq`` on, :func:`forget` drops their rows too. A write transaction
that would commit with rows still kept refuses to (``registry.store.db``), so none is lost.
Until then the rows are in no table: a use case that reads one of these tables while writing
must also look at :func:`kept` (as the idempotency answer and the nonce checks do), or it misses
what earlier use cases of the same transaction wrote.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table
from sqlmodel import Session

from registry.store.statements import Statement, insert_rows

_KEY = "registry.write_behind"


def _kept(session: Session) -> dict[Table, list[dict[str, Any]]]:
    kept: dict[Table, list[dict[str, Any]]] = session.info.setdefault(_KEY, {})
    return kept


def defer(session: Session, table: Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows`` (each with a ``seq``) into ``table`` when the transaction flushes."""
    _kept(session).setdefault(table, []).extend(dict(row) for row in rows)


def kept(session: Session, table: Table) -> list[dict[str, Any]]:
    """The rows of ``table`` this transaction has deferred and not yet written."""
    return list(_kept(session).get(table, ()))


def forget(session: Session, from_seq: int) -> None:
    """Drop the deferred rows of entries ``from_seq`` and later (their savepoint rolled back)."""
    for table, rows in _kept(session).items():
        _kept(session)[table] = [row for row in rows if row["seq"] < from_seq]


def flush(session: Session) -> None:
    """Write every deferred row: one statement per table."""
    tables = session.info.pop(_KEY, {})
    for table, rows in tables.items():
        if rows:
            _inserts(table, tuple(rows[0])).execute_many(session, rows)


@functools.cache
def _inserts(table: Table, columns: tuple[str, ...]) -> Statement:
    return insert_rows(table, columns)


def pending(session: Session) -> int:
    """How many deferred rows are not written yet."""
    return sum(len(rows) for rows in session.info.get(_KEY, {}).values())
