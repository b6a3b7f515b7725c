"""The public lists are read in the order the ledger made their records: index that order.

Parties, accounts, projects and forest units are listed by the seq of the entry that made each
(the id within one entry), reports by the seq that submitted them and batches by the seq that
issued them. Without an index on that order, every page sorted the whole table: a cost that
grows with the registry, paid by every page a client reads.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

#: (index, table, columns): each list's order.
_ORDERS = (
    ("ix_party_created", "party", ["created_seq", "id"]),
    ("ix_account_created", "account", ["created_seq", "id"]),
    ("ix_project_registered", "project", ["registered_seq", "id"]),
    ("ix_forest_unit_registered", "forest_unit", ["registered_seq", "id"]),
    ("ix_monitoring_report_submitted", "monitoring_report", ["submitted_seq"]),
    ("ix_batch_issued", "batch", ["issued_seq"]),
)


def upgrade() -> None:
    for name, table, columns in _ORDERS:
        op.create_index(name, table, columns)


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
