"""Holdings are read by account and status, lowest serials first: index them in that order.

The first holding index (account, batch, status) left SQLite free to answer "blocks this account
holds in this batch, ordered by serial" by walking every block of the batch through the unique
(batch, start) index instead, to avoid a sort. A batch that has been split into many blocks then
made every transfer from it cost O(blocks in the batch). With (account, status, batch, start) the
read is one index range on either engine, already in serial order.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_block_holding_ordered", "block", ["account_id", "status", "batch_id", "start"]
    )
    op.drop_index("ix_block_holding", table_name="block")


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
