"""The registry's state: parties, keys, accounts, projects, forest units, reports, credits.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _str(name: str, length: int, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.String(length), nullable=bool(kw.pop("nullable", False)), **kw)


def _int(name: str, **kw: Any) -> sa.Column[Any]:
    return sa.Column(name, sa.BigInteger, nullable=bool(kw.pop("nullable", False)), **kw)


def upgrade() -> None:
    op.create_table(
        "party",
        _str("id", 64, primary_key=True),
        _str("name", 500),
        _str("role", 32),
        _str("country", 2, nullable=True),
        _int("created_seq"),
    )
    op.create_table(
        "party_key",
        _str("key_id", 64, primary_key=True),
        sa.Column("party_id", sa.String(64), sa.ForeignKey("party.id"), nullable=False),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        _int("added_seq"),
        _int("revoked_seq", nullable=True),
    )
    op.create_index("ix_party_key_party", "party_key", ["party_id"])
    op.create_table(
        "account",
        _str("id", 32, primary_key=True),
        sa.Column("holder", sa.String(64), sa.ForeignKey("party.id"), nullable=False),
        _str("kind", 16),
        _str("name", 500),
        _str("unit_id", 32, nullable=True),
        _int("created_seq"),
    )
    op.create_table(
        "project",
        _str("id", 32, primary_key=True),
        _str("title", 500),
        _str("partner_country", 2),
        _str("methodology", 16),
        _str("sector", 500),
        sa.Column("participants", sa.Text, nullable=False),
        sa.Column("third_party_entity", sa.String(64), sa.ForeignKey("party.id"), nullable=False),
        _str("crediting_period_start", 10),
        _str("crediting_period_end", 10),
        _str("status", 16),
        _int("registered_seq"),
    )
    op.create_table(
        "forest_unit",
        _str("id", 32, primary_key=True),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("project.id"), nullable=False),
        _str("name", 500),
        sa.Column("boundary", sa.Text, nullable=False),
        _int("area_ha"),
        _str("jurisdiction", 500),
        _int("reference_level"),
        sa.Column("leakage_rate_bp", sa.Integer, nullable=False),
        sa.Column("buffer_rate_bp", sa.Integer, nullable=False),
        _str("buffer_account", 32),
        _int("shortfall"),
        _int("registered_seq"),
    )
    op.create_table(
        "monitoring_report",
        _str("id", 32, primary_key=True),
        sa.Column("project_id", sa.String(32), sa.ForeignKey("project.id"), nullable=False),
        _str("forest_unit_id", 32, nullable=True),
        _str("period_start", 10),
        _str("period_end", 10),
        _int("reductions"),
        _str("document_sha256", 64),
        _str("status", 16),
        _int("verified_reductions", nullable=True),
        _str("verifier", 64, nullable=True),
        _str("statement_sha256", 64, nullable=True),
        _int("submitted_seq"),
        _int("verified_seq", nullable=True),
    )
    op.create_table(
        "batch",
        _str("id", 64, primary_key=True),
        _str("project_id", 32),
        _str("report_id", 32, unique=True),
        _str("programme", 8),
        sa.Column("vintage", sa.Integer, nullable=False),
        sa.Column("number", sa.Integer, nullable=False),
        _int("quantity"),
        _int("issued_seq"),
    )
    op.create_table(
        "block",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("batch_id", sa.String(64), sa.ForeignKey("batch.id"), nullable=False),
        _int("start"),
        _int("end"),
        sa.Column("account_id", sa.String(32), sa.ForeignKey("account.id"), nullable=False),
        _str("status", 16),
        sa.UniqueConstraint("batch_id", "start", name="uq_block_batch_start"),
    )
    op.create_index("ix_block_holding", "block", ["account_id", "batch_id", "status"])
    op.create_table(
        "block_event",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        _int("seq"),
        _str("kind", 64),
        _str("batch_id", 64),
        _int("start"),
        _int("end"),
        _str("from_account", 32, nullable=True),
        _str("to_account", 32),
        _str("status", 16),
    )
    op.create_index("ix_block_event_batch", "block_event", ["batch_id", "start"])
    op.create_table(
        "retirement",
        _str("id", 32, primary_key=True),
        _int("seq"),
        _str("account_id", 32),
        _str("batch_id", 64),
        sa.Column("blocks", sa.Text, nullable=False),
        _int("quantity"),
        _str("beneficiary", 500),
        _str("purpose", 16),
        _str("jurisdiction", 2),
        _str("reason", 500),
        _str("time", 32),
    )
    op.create_table(
        "reversal",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        _str("unit_id", 32),
        _int("lost"),
        _int("cancelled"),
        _int("shortfall"),
        _str("document_sha256", 64),
        _str("reason", 500),
    )
    op.create_table(
        "used_nonce",
        _str("party_id", 64, primary_key=True),
        _str("nonce", 128, primary_key=True),
        _int("seq"),
    )
    op.create_table(
        "idempotency",
        _str("key", 128, primary_key=True),
        _str("request_hash", 64),
        sa.Column("status_code", sa.Integer, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        _int("seq"),
    )


def downgrade() -> None:
    raise NotImplementedError("registry state is never dropped by a migration")
