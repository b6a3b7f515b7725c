"""REDD+ reversals: carbon lost from a forest unit is made good from its buffer pool.

The lost tonnes are cancelled from the unit's buffer pool, lowest serials of the oldest batch
first. If the pool holds fewer, everything in it is cancelled and the shortfall is recorded on
the unit and in the ledger entry, for the administrators to report; it is never hidden.
"""

from __future__ import annotations

from itertools import groupby
from typing import Any

from sqlmodel import Session

from registry.domain.instructions import RecordReversal
from registry.domain.redd import compute_reversal, unit_shortfall_after
from registry.domain.serials import SerialRange, take_lowest
from registry.service.instructions import Acting
from registry.service.movements import CANCELLATION_ACCOUNT
from registry.store.credits_repo import get_or_404, held_blocks, move_serials
from registry.store.tables import ForestUnitRow, ReversalRow

Effects = dict[str, Any]


def record_reversal(session: Session, acting: Acting[RecordReversal]) -> Effects:
    acting.require_role("administrator")
    b = acting.body
    unit = get_or_404(session, ForestUnitRow, b.unit_id, "forest unit")
    rows = held_blocks(session, account_id=unit.buffer_account)
    pool = sum(r.end - r.start + 1 for r in rows)
    outcome = compute_reversal(lost=b.lost, pool=pool)
    shortfall = unit_shortfall_after(
        unit_id=unit.id, shortfall=unit.shortfall, added=outcome.shortfall
    )
    remaining = outcome.cancelled
    cancelled: list[dict[str, Any]] = []
    for batch_id, group in groupby(rows, key=lambda r: r.batch_id):
        if remaining == 0:
            break
        batch_rows = list(group)
        held = [SerialRange(r.start, r.end) for r in batch_rows]
        taken, _ = take_lowest(held, min(remaining, sum(h.quantity for h in held)))
        move_serials(
            session,
            rows=batch_rows,
            taken=taken,
            to_account=CANCELLATION_ACCOUNT,
            status="cancelled",
            seq=acting.seq,
            kind=RecordReversal.TYPE,
        )
        remaining -= sum(t.quantity for t in taken)
        cancelled.extend({"batch": batch_id, "start": t.start, "end": t.end} for t in taken)
    unit.shortfall = shortfall
    session.add(unit)
    session.add(
        ReversalRow(
            seq=acting.seq,
            unit_id=unit.id,
            lost=b.lost,
            cancelled=outcome.cancelled,
            shortfall=outcome.shortfall,
            document_sha256=b.document_sha256,
            reason=b.reason,
        )
    )
    return {
        "unit_id": unit.id,
        "lost": b.lost,
        "pool_before": pool,
        "cancelled": outcome.cancelled,
        "shortfall": outcome.shortfall,
        "blocks": cancelled,
    }
