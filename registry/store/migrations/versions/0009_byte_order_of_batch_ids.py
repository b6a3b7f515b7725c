"""Blocks are ordered by the bytes of their batch ids on PostgreSQL too, as on SQLite.

An account's holdings are listed (and paged with ``after``) by batch id, then serial. SQLite
compares text byte by byte; PostgreSQL by the database's collation, and many servers' default
(en_US.UTF-8) passes over hyphens, so ``KH-JCM-KH0041-...`` came before ``KH-JCM-KH004-...``
there and after it on SQLite: the same holdings in another order. The column now compares as
"C" (bytes), and its indexes, which keep that order for the reads, are rebuilt so.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite's text is in byte order already
        op.alter_column(
            "block", "batch_id", type_=sa.String(64, collation="C"),
            existing_type=sa.String(64), existing_nullable=False,
        )


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
