"""Queries and block bookkeeping on the registry's state tables; session first, keyword-only.

The one place where serial blocks are split and moved in the database. It follows the ranges
the domain computed (``registry.domain.serials``): it never decides which serials move.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from sqlmodel import Session, SQLModel, col, select

from registry.domain.serials import SerialRange
from registry.errors import NotFoundError
from registry.store.tables import AccountRow, BlockEventRow, BlockRow

T = TypeVar("T", bound=SQLModel)


def get_or_404(session: Session, model: type[T], key: object, what: str) -> T:
    row = session.get(model, key)
    if row is None:
        raise NotFoundError(f"no {what} {key!r}", details={what.replace(" ", "_"): key})
    return row


def account(session: Session, account_id: str) -> AccountRow:
    return get_or_404(session, AccountRow, account_id, "account")


def held_blocks(
    session: Session, *, account_id: str, batch_id: str | None = None, status: str = "active"
) -> list[BlockRow]:
    """Blocks an account holds in ``status``, optionally in one batch, lowest serials first."""
    query = select(BlockRow).where(BlockRow.account_id == account_id, BlockRow.status == status)
    if batch_id is not None:
        query = query.where(BlockRow.batch_id == batch_id)
    return list(session.exec(query.order_by(col(BlockRow.batch_id), col(BlockRow.start))).all())


def add_block(
    session: Session, *, batch_id: str, serials: SerialRange, account_id: str, status: str
) -> None:
    session.add(
        BlockRow(
            batch_id=batch_id,
            start=serials.start,
            end=serials.end,
            account_id=account_id,
            status=status,
        )
    )


def record_event(
    session: Session,
    *,
    seq: int,
    kind: str,
    batch_id: str,
    serials: SerialRange,
    from_account: str | None,
    to_account: str,
    status: str,
) -> None:
    session.add(
        BlockEventRow(
            seq=seq,
            kind=kind,
            batch_id=batch_id,
            start=serials.start,
            end=serials.end,
            from_account=from_account,
            to_account=to_account,
            status=status,
        )
    )


def move_serials(
    session: Session,
    *,
    rows: Sequence[BlockRow],
    taken: Sequence[SerialRange],
    to_account: str,
    status: str,
    seq: int,
    kind: str,
) -> None:
    """Move the ``taken`` serials out of ``rows`` (one batch) to ``to_account`` in ``status``.

    Each affected row keeps its first piece in place (its start, the unique key, is unchanged)
    and the other pieces become new rows, so a block split costs O(pieces), never O(tonnes).
    """
    for row in rows:
        held = SerialRange(row.start, row.end)
        moving = sorted(t for t in taken if held.overlaps(t))
        if not moving:
            continue
        pieces: list[tuple[SerialRange, bool]] = []
        cursor = held.start
        for t in moving:
            if t.start > cursor:
                pieces.append((SerialRange(cursor, t.start - 1), False))
            pieces.append((t, True))
            cursor = t.end + 1
        if cursor <= held.end:
            pieces.append((SerialRange(cursor, held.end), False))
        source_account, source_status = row.account_id, row.status
        for i, (piece, moves) in enumerate(pieces):
            account_id = to_account if moves else source_account
            piece_status = status if moves else source_status
            if i == 0:
                row.end, row.account_id, row.status = piece.end, account_id, piece_status
                session.add(row)
            else:
                add_block(
                    session,
                    batch_id=row.batch_id,
                    serials=piece,
                    account_id=account_id,
                    status=piece_status,
                )
            if moves:
                record_event(
                    session,
                    seq=seq,
                    kind=kind,
                    batch_id=row.batch_id,
                    serials=piece,
                    from_account=source_account,
                    to_account=to_account,
                    status=status,
                )
