"""Each project says its programme: JCM (reports project-wide) or REDD+ (reports by forest unit).

Before, a project was REDD+ only once it had a forest unit, so a REDD+ project that reported
before its first unit was registered was issued as JCM, with no leakage, buffer or reference
level. Projects registered before this keep that rule (their signed registrations name no
programme, and the ledger's replay must give the same answers as the registry): their
``programme`` is NULL. Every project registered from now on names its programme.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("project", sa.Column("programme", sa.String(8), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
