"""A retirement's time is written as its ledger entry's: UTC, ``Z``, six digits of fraction.

Retirements recorded before were written with Python's ``isoformat``: ``+00:00`` instead of
``Z``, and no fraction at all when the microsecond was 0, so one field of the public reads came
in two shapes, neither the ledger's. Each such time is rewritten, the same instant.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

PAGE = 1000


def _entry_time(text: str) -> str:
    t = datetime.fromisoformat(text).astimezone(UTC)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond:06d}Z"


def upgrade() -> None:
    bind = op.get_bind()
    last = -1
    while rows := bind.execute(
        sa.text("SELECT seq, id, time FROM retirement WHERE seq > :last ORDER BY seq LIMIT :n"),
        {"last": last, "n": PAGE},
    ).all():
        changed = [
            {"id": rid, "time": _entry_time(time)} for _, rid, time in rows if time[-1:] != "Z"
        ]
        if changed:
            bind.execute(sa.text("UPDATE retirement SET time = :time WHERE id = :id"), changed)
        last = rows[-1][0]


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
