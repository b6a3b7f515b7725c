"""The public list of retirements is read in ledger order: index it in that order.

Without an index on ``seq``, every page of ``GET /v1/retirements`` sorted the whole table (the
first page of 100,000 retirements took 40 ms on PostgreSQL, most of it the sort), and
retirements are the registry's fastest-growing public record.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_retirement_seq", "retirement", ["seq"])


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
