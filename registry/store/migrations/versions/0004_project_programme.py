"""Each project says its programme: JCM (reports project-wide) or REDD+ (reports by forest unit).

Before, a project was REDD+ only once it had a forest unit, so a REDD+ project that reported
before its first unit was registered was issued as JCM, with no leakage, buffer or reference
level. Projects already registered take the programme their units gave them.

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
    # A default fills the rows already there (SQLite adds a NOT NULL column only with one, and
    # rebuilding the table instead would break the forest units' foreign keys to it).
    op.add_column(
        "project", sa.Column("programme", sa.String(8), nullable=False, server_default="JCM")
    )
    op.execute(
        "UPDATE project SET programme = 'REDD+' WHERE EXISTS "
        "(SELECT 1 FROM forest_unit WHERE forest_unit.project_id = project.id)"
    )
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("project", "programme", server_default=None)  # every insert names it


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
