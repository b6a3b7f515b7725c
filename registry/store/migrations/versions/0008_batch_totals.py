"""Batches keep their retired and cancelled totals, so a read of a batch sums none of its blocks.

A batch's page summed every block of the batch by status: a batch sold in small lots splits
into 10^5 blocks, and a page of 100 such batches read 10^7 rows. The totals are now kept by the
movement that retires or cancels serials; here they are set from the blocks already there.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

STATUSES = ("retired", "cancelled")


def upgrade() -> None:
    # A default fills the rows already there (SQLite adds a NOT NULL column only with one).
    for status in STATUSES:
        op.add_column("batch", sa.Column(status, sa.BigInteger, nullable=False, server_default="0"))
    block = sa.table(
        "block", sa.column("batch_id"), sa.column("start"), sa.column("end"), sa.column("status")
    )
    batch = sa.table("batch", sa.column("id"), *(sa.column(s) for s in STATUSES))
    for status in STATUSES:
        total = (
            sa.select(sa.func.coalesce(sa.func.sum(block.c.end - block.c.start + 1), 0))
            .where(block.c.batch_id == batch.c.id, block.c.status == status)
            .scalar_subquery()
        )
        op.execute(batch.update().values({status: total}))
    if op.get_bind().dialect.name == "postgresql":
        for status in STATUSES:
            op.alter_column("batch", status, server_default=None)  # every insert names it


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
