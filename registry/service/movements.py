"""Transfer, retirement and cancellation: the holder moves credits it holds, by its own signature.

Partial quantities split blocks, lowest serials first unless the instruction names a range.
Retired and cancelled serials sit in the registry's retirement and cancellation accounts with
that status, and no instruction can move them again: only ``active`` blocks are ever taken.
A forest unit's buffer pool leaves only by cancellation (a reversal, or its administrator's).
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from registry.domain.instructions import Cancel, Movement, Retire, Transfer
from registry.domain.serials import SerialRange, take_lowest, take_range
from registry.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from registry.ledger.entry import format_time
from registry.service.instructions import Acting
from registry.store.credits_repo import (
    Account,
    account,
    accounts,
    accounts_read,
    batch_exists,
    held_blocks,
    held_blocks_read,
    move_serials,
)
from registry.store.statements import Read
from registry.store.tables import RetirementRow

Effects = dict[str, Any]

RETIREMENT_ACCOUNT = "RETIREMENT"
CANCELLATION_ACCOUNT = "CANCELLATION"

#: The accounts each movement may take credits from. Buffer credits insure a forest unit against
#: reversals: they may be cancelled, but never transferred or retired for someone's claim.
_MOVABLE_FROM: dict[str, frozenset[str]] = {
    Transfer.TYPE: frozenset({"holding"}),
    Retire.TYPE: frozenset({"holding"}),
    Cancel.TYPE: frozenset({"holding", "buffer"}),
}


def reads(body: Movement) -> list[Read]:
    """The reads a movement of ``body`` makes first, to send ahead (``statements.read_ahead``):
    its accounts and the blocks its source holds in the batch."""
    ids = [body.to_account, body.account] if isinstance(body, Transfer) else [body.account]
    return [accounts_read(ids), held_blocks_read(account_id=body.account, batch_id=body.batch)]


def _source(acting: Acting[Any], source: Account) -> Account:
    if source.holder != acting.party.id:
        raise PermissionDeniedError(
            f"account {source.id} is held by {source.holder}, not {acting.party.id}",
            details={"account": source.id, "holder": source.holder, "actor": acting.party.id},
        )
    kind = acting.instruction.type
    if source.kind not in _MOVABLE_FROM[kind]:
        raise InvalidRequestError(
            f"credits in {source.kind} account {source.id} cannot move by {kind}",
            details={"account": source.id, "kind": source.kind},
        )
    return source


def _move(
    session: Session,
    acting: Acting[Any],
    body: Movement,
    *,
    to_account: str,
    status: str,
    source: Account | None = None,
) -> list[SerialRange]:
    """Take the credits ``body`` names from its account and move them; returns the ranges.

    ``source`` is the account ``body.account`` if the caller has read it already.
    """
    if (body.quantity is None) == (body.range is None):
        raise InvalidRequestError("give exactly one of quantity or range")
    source = _source(acting, source or account(session, body.account))
    rows = held_blocks(session, account_id=source.id, batch_id=body.batch)
    if not rows and not batch_exists(session, body.batch):
        raise NotFoundError(f"no batch {body.batch!r}", details={"batch": body.batch})
    held = [SerialRange(r.start, r.end) for r in rows]
    if body.range is not None:
        taken, _ = take_range(held, SerialRange(body.range.start, body.range.end))
    else:
        assert body.quantity is not None
        taken, _ = take_lowest(held, body.quantity)
    move_serials(
        session,
        rows=rows,
        taken=taken,
        to_account=to_account,
        status=status,
        seq=acting.seq,
        kind=acting.instruction.type,
        read=held_blocks_read(account_id=source.id, batch_id=body.batch),
    )
    return taken


def _ranges(taken: list[SerialRange]) -> list[dict[str, int]]:
    return [{"start": r.start, "end": r.end} for r in taken]


def transfer(session: Session, acting: Acting[Transfer]) -> Effects:
    b = acting.body
    if b.to_account == b.account:
        raise InvalidRequestError("source and destination accounts are the same")
    found = accounts(session, [b.to_account, b.account])
    destination = found[b.to_account]
    if destination.kind != "holding":
        raise InvalidRequestError(
            f"{b.to_account} is a {destination.kind} account; transfers go to holding accounts "
            "(use a retirement or cancellation instead)"
        )
    taken = _move(
        session, acting, b, to_account=destination.id, status="active", source=found[b.account]
    )
    return {
        "batch": b.batch,
        "from": b.account,
        "to": b.to_account,
        "quantity": sum(r.quantity for r in taken),
        "blocks": _ranges(taken),
    }


def retire(session: Session, acting: Acting[Retire]) -> Effects:
    b = acting.body
    taken = _move(session, acting, b, to_account=RETIREMENT_ACCOUNT, status="retired")
    quantity = sum(r.quantity for r in taken)
    retirement_id = f"RET-{acting.seq}"
    session.add(
        RetirementRow(
            id=retirement_id,
            seq=acting.seq,
            account_id=b.account,
            batch_id=b.batch,
            blocks=",".join(f"{r.start}-{r.end}" for r in taken),
            quantity=quantity,
            beneficiary=b.beneficiary,
            purpose=b.purpose,
            jurisdiction=b.jurisdiction,
            reason=b.reason,
            time=format_time(acting.now),
        )
    )
    return {
        "retirement_id": retirement_id,
        "batch": b.batch,
        "from": b.account,
        "quantity": quantity,
        "blocks": _ranges(taken),
    }


def cancel(session: Session, acting: Acting[Cancel]) -> Effects:
    b = acting.body
    taken = _move(session, acting, b, to_account=CANCELLATION_ACCOUNT, status="cancelled")
    return {
        "batch": b.batch,
        "from": b.account,
        "quantity": sum(r.quantity for r in taken),
        "blocks": _ranges(taken),
    }
