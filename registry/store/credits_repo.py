"""Queries and block bookkeeping on the registry's state tables; session first, keyword-only.

The one place where serial blocks are split and moved in the database. It follows the ranges
the domain computed (``registry.domain.serials``): it never decides which serials move.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import bindparam, func, insert, select, update
from sqlmodel import Session, SQLModel

from registry.domain.serials import SerialRange
from registry.errors import NotFoundError
from registry.store import write_behind
from registry.store.statements import Read, Statement, insert_rows, keep
from registry.store.tables import AccountRow, BatchRow, BlockEventRow, BlockRow, core, table

T = TypeVar("T", bound=SQLModel)


def get_or_404(session: Session, model: type[T], key: object, what: str) -> T:
    row = session.get(model, key)
    if row is None:
        raise NotFoundError(f"no {what} {key!r}", details={what.replace(" ", "_"): key})
    return row


@dataclass(frozen=True)
class Account:
    """What the use cases check of an account: its holder and its kind."""

    id: str
    holder: str
    kind: str


_ACCOUNT = table(AccountRow)
#: One or two accounts (a use case names at most a source and a destination).
_TWO_ACCOUNTS = Statement(
    select(_ACCOUNT.c.id, _ACCOUNT.c.holder, _ACCOUNT.c.kind).where(
        _ACCOUNT.c.id.in_([bindparam("first"), bindparam("second")])
    )
)
_BATCH_BY_ID = select(table(BatchRow).c.id).where(table(BatchRow).c.id == bindparam("id"))


def accounts_read(account_ids: Sequence[str]) -> Read:
    """The read :func:`accounts` makes, to send ahead (``statements.read_ahead``)."""
    if not 1 <= len(account_ids) <= 2:
        raise ValueError(f"accounts() reads one or two accounts, not {len(account_ids)}")
    return _TWO_ACCOUNTS, {"first": account_ids[0], "second": account_ids[-1]}


def accounts(session: Session, account_ids: Sequence[str]) -> dict[str, Account]:
    """One or two accounts, in one read; a 404 names the first that does not exist."""
    query, params = accounts_read(account_ids)
    found = {row.id: Account(*row) for row in query.rows(session, params)}
    for account_id in account_ids:
        if account_id not in found:
            raise NotFoundError(f"no account {account_id!r}", details={"account": account_id})
    return found


def account(session: Session, account_id: str) -> Account:
    """The account ``account_id``, or a 404."""
    return accounts(session, [account_id])[account_id]


def batch_exists(session: Session, batch_id: str) -> bool:
    return core(session).execute(_BATCH_BY_ID, {"id": batch_id}).first() is not None


@dataclass(frozen=True)
class HeldBlock:
    """A stored block of serials (a row of ``block``), named by its unique key (batch, start):
    a piece split off earlier in the same transaction has no id known here."""

    batch_id: str
    start: int
    end: int
    account_id: str
    status: str


_BLOCK = table(BlockRow)
_EVENT = table(BlockEventRow)
_HELD_QUERY = (
    select(_BLOCK.c.batch_id, _BLOCK.c.start, _BLOCK.c.end, _BLOCK.c.account_id, _BLOCK.c.status)
    .where(_BLOCK.c.account_id == bindparam("account"), _BLOCK.c.status == bindparam("status"))
    .order_by(_BLOCK.c.batch_id, _BLOCK.c.start)
)
# Both read the index (account, status, batch, start) in order: see migration 0003.
_HELD = Statement(_HELD_QUERY)
_HELD_IN_BATCH = Statement(_HELD_QUERY.where(_BLOCK.c.batch_id == bindparam("batch")))


def held_blocks_read(
    *, account_id: str, batch_id: str | None = None, status: str = "active"
) -> Read:
    """The read :func:`held_blocks` makes, to send ahead (``statements.read_ahead``)."""
    if batch_id is None:
        return _HELD, {"account": account_id, "status": status}
    return _HELD_IN_BATCH, {"account": account_id, "status": status, "batch": batch_id}


def held_blocks(
    session: Session, *, account_id: str, batch_id: str | None = None, status: str = "active"
) -> list[HeldBlock]:
    """Blocks an account holds in ``status``, optionally in one batch, lowest serials first."""
    query, params = held_blocks_read(account_id=account_id, batch_id=batch_id, status=status)
    return [HeldBlock(*row) for row in query.rows(session, params)]


def add_block(
    session: Session, *, batch_id: str, serials: SerialRange, account_id: str, status: str
) -> None:
    core(session).execute(
        insert(_BLOCK),
        [
            {
                "batch_id": batch_id,
                "start": serials.start,
                "end": serials.end,
                "account_id": account_id,
                "status": status,
            }
        ],
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
    event = {
        "seq": seq,
        "kind": kind,
        "batch_id": batch_id,
        "start": serials.start,
        "end": serials.end,
        "from_account": from_account,
        "to_account": to_account,
        "status": status,
    }
    write_behind.defer(session, _EVENT, [event])


def active_quantity(session: Session, account_id: str) -> int:
    """Credits ``account_id`` holds, active, in all batches (a buffer pool's size)."""
    total = session.execute(
        select(func.coalesce(func.sum(_BLOCK.c.end - _BLOCK.c.start + 1), 0)).where(
            _BLOCK.c.account_id == account_id, _BLOCK.c.status == "active"
        )
    ).scalar_one()
    return int(total)


def active_quantities(session: Session, account_ids: Sequence[str]) -> dict[str, int]:
    """:func:`active_quantity` of each of ``account_ids`` holding any, in one statement."""
    if not account_ids:
        return {}
    found = session.execute(
        select(_BLOCK.c.account_id, func.sum(_BLOCK.c.end - _BLOCK.c.start + 1))
        .where(_BLOCK.c.account_id.in_(account_ids), _BLOCK.c.status == "active")
        .group_by(_BLOCK.c.account_id)
    ).all()
    return {account: int(total) for account, total in found}


def move_serials(
    session: Session,
    *,
    rows: Sequence[HeldBlock],
    taken: Sequence[SerialRange],
    to_account: str,
    status: str,
    seq: int,
    kind: str,
    read: Read | None = None,
) -> None:
    """Move the ``taken`` serials out of ``rows`` (one batch) to ``to_account`` in ``status``.

    Each affected row keeps its first piece in place (its start, the unique key, is unchanged)
    and the other pieces become new rows, so a block split costs O(pieces), never O(tonnes).

    ``read``, if given, is the ``held_blocks_read`` whose whole answer ``rows`` are (an
    account's active blocks in the batch): what the account holds afterwards is then known
    without reading it again, and kept as that read's answer (``statements.keep``), so the
    next movement from the account in the same transaction reads it without a round trip.
    """
    updates: list[dict[str, object]] = []
    new_blocks: list[dict[str, object]] = []
    now: list[HeldBlock] = []
    for row in rows:
        held = SerialRange(row.start, row.end)
        moving = sorted(t for t in taken if held.overlaps(t))
        if not moving:
            now.append(row)
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
        for i, (piece, moves) in enumerate(pieces):
            account_id = to_account if moves else row.account_id
            piece_status = status if moves else row.status
            now.append(
                HeldBlock(
                    batch_id=row.batch_id,
                    start=piece.start,
                    end=piece.end,
                    account_id=account_id,
                    status=piece_status,
                )
            )
            if i == 0:
                updates.append(
                    {
                        "row_batch": row.batch_id,
                        "row_start": row.start,
                        "to_end": piece.end,
                        "to_account": account_id,
                        "to_status": piece_status,
                    }
                )
            else:
                new_blocks.append(
                    {
                        "batch_id": row.batch_id,
                        "start": piece.start,
                        "end": piece.end,
                        "account_id": account_id,
                        "status": piece_status,
                    }
                )
            if moves:
                record_event(
                    session,
                    seq=seq,
                    kind=kind,
                    batch_id=row.batch_id,
                    serials=piece,
                    from_account=row.account_id,
                    to_account=to_account,
                    status=status,
                )
    # Sent with the next statement, the next use case's reads or the ledger's writes at the end
    # of the transaction: a round trip saved on PostgreSQL (see Statement.execute_soon).
    _MOVE_BLOCK.execute_soon(session, updates)
    _NEW_BLOCK.execute_soon(session, new_blocks)
    if status in _BATCH_TOTALS and taken:
        moved = sum(t.quantity for t in taken)
        _BATCH_TOTALS[status].execute_soon(session, [{"batch": rows[0].batch_id, "moved": moved}])
    if read is not None:
        account_id, status_held = read[1]["account"], read[1]["status"]
        still = [b for b in now if (b.account_id, b.status) == (account_id, status_held)]
        keep(session, read, [(b.batch_id, b.start, b.end, b.account_id, b.status) for b in still])


# By the block's unique key, not its id: a piece split off earlier in the same transaction
# has no id known here (its insert returns nothing), but its batch and start are known.
_MOVE_BLOCK = Statement(
    update(_BLOCK)
    .where(_BLOCK.c.batch_id == bindparam("row_batch"), _BLOCK.c.start == bindparam("row_start"))
    .values(
        end=bindparam("to_end"), account_id=bindparam("to_account"), status=bindparam("to_status")
    )
)
_NEW_BLOCK = insert_rows(_BLOCK, ("batch_id", "start", "end", "account_id", "status"))
_BATCH = table(BatchRow)
#: A batch's total of each final status, raised by the serials a movement puts in that status
#: (retired and cancelled serials never move again, so the totals only grow).
_BATCH_TOTALS = {
    status: Statement(
        update(_BATCH)
        .where(_BATCH.c.id == bindparam("batch"))
        .values({status: _BATCH.c[status] + bindparam("moved")})
    )
    for status in ("retired", "cancelled")
}
