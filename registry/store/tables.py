"""The database tables, as sqlmodel classes.

The ledger tables (``ledger_entry``, ``tree_node``, ``checkpoint``) are append-only: the
migration installs triggers that refuse UPDATE and DELETE on them, so even a bug or an operator
with SQL access cannot rewrite history without it showing in the Merkle tree. Tables are created
only by the alembic migrations in ``registry/store/migrations``; these classes describe them for
queries and must match.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
)
from sqlmodel import Field, Session, SQLModel


class LedgerEntry(SQLModel, table=True):
    """One signed entry: the exact DSSE envelope bytes, never a re-serialisation."""

    __tablename__ = "ledger_entry"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    leaf_hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    envelope: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class TreeNode(SQLModel, table=True):
    """The hash of a complete (perfect) Merkle subtree: leaves ``[idx << level, (idx+1) << level)``.

    Keeping these makes every proof O(log n) reads instead of reading every leaf.
    """

    __tablename__ = "tree_node"

    level: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    idx: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    hash: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class CheckpointRow(SQLModel, table=True):
    """A signed checkpoint (C2SP signed note) the registry published for a tree size."""

    __tablename__ = "checkpoint"

    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    root: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    note: str = Field(sa_column=Column(Text, nullable=False))


class RegistryKeyRow(SQLModel, table=True):
    """A public key the registry signs with, and from which entry on it was valid."""

    __tablename__ = "registry_key"

    key_id: str = Field(sa_column=Column(String(64), primary_key=True))
    public_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    valid_from_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    valid_until_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


APPEND_ONLY_TABLES = ("ledger_entry", "tree_node", "checkpoint")


# --- the registry's state: derived from the ledger, kept for queries ---------------------------
# These rows change (blocks split, reports move from submitted to issued), but only inside the
# same transaction that appends the ledger entry recording why; an auditor can rebuild them all
# by replaying the ledger and compare (`registry verify --against`).


class PartyRow(SQLModel, table=True):
    __tablename__ = "party"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    name: str = Field(sa_column=Column(String(500), nullable=False))
    role: str = Field(sa_column=Column(String(32), nullable=False))
    country: str | None = Field(default=None, sa_column=Column(String(2), nullable=True))
    created_seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class PartyKeyRow(SQLModel, table=True):
    __tablename__ = "party_key"

    key_id: str = Field(sa_column=Column(String(64), primary_key=True))
    party_id: str = Field(sa_column=Column(String(64), ForeignKey("party.id"), nullable=False))
    public_key: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    added_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    revoked_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class AccountRow(SQLModel, table=True):
    __tablename__ = "account"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    holder: str = Field(sa_column=Column(String(64), ForeignKey("party.id"), nullable=False))
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    name: str = Field(sa_column=Column(String(500), nullable=False))
    unit_id: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    created_seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class ProjectRow(SQLModel, table=True):
    __tablename__ = "project"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    title: str = Field(sa_column=Column(String(500), nullable=False))
    partner_country: str = Field(sa_column=Column(String(2), nullable=False))
    methodology: str = Field(sa_column=Column(String(16), nullable=False))
    sector: str = Field(sa_column=Column(String(500), nullable=False))
    # JCM or REDD+; None for a project registered before projects named it (see rules.py)
    programme: str | None = Field(default=None, sa_column=Column(String(8), nullable=True))
    participants: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of party ids
    third_party_entity: str = Field(
        sa_column=Column(String(64), ForeignKey("party.id"), nullable=False)
    )
    crediting_period_start: str = Field(sa_column=Column(String(10), nullable=False))
    crediting_period_end: str = Field(sa_column=Column(String(10), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    registered_seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class ForestUnitRow(SQLModel, table=True):
    __tablename__ = "forest_unit"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    project_id: str = Field(sa_column=Column(String(32), ForeignKey("project.id"), nullable=False))
    name: str = Field(sa_column=Column(String(500), nullable=False))
    boundary: str = Field(sa_column=Column(Text, nullable=False))  # normalised GeoJSON text
    area_ha: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The boundary's bounding box (degrees): which units a new one could overlap.
    west: float = Field(sa_column=Column(Float, nullable=False))
    south: float = Field(sa_column=Column(Float, nullable=False))
    east: float = Field(sa_column=Column(Float, nullable=False))
    north: float = Field(sa_column=Column(Float, nullable=False))
    jurisdiction: str = Field(sa_column=Column(String(500), nullable=False))
    reference_level: int = Field(sa_column=Column(BigInteger, nullable=False))
    leakage_rate_bp: int = Field(sa_column=Column(Integer, nullable=False))
    buffer_rate_bp: int = Field(sa_column=Column(Integer, nullable=False))
    buffer_account: str = Field(sa_column=Column(String(32), nullable=False))
    shortfall: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    registered_seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class ReportRow(SQLModel, table=True):
    __tablename__ = "monitoring_report"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    project_id: str = Field(sa_column=Column(String(32), ForeignKey("project.id"), nullable=False))
    forest_unit_id: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    period_start: str = Field(sa_column=Column(String(10), nullable=False))
    period_end: str = Field(sa_column=Column(String(10), nullable=False))
    reductions: int = Field(sa_column=Column(BigInteger, nullable=False))
    document_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    verified_reductions: int | None = Field(
        default=None, sa_column=Column(BigInteger, nullable=True)
    )
    verifier: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    statement_sha256: str | None = Field(default=None, sa_column=Column(String(64), nullable=True))
    submitted_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    verified_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class BatchRow(SQLModel, table=True):
    __tablename__ = "batch"

    id: str = Field(sa_column=Column(String(64), primary_key=True))
    project_id: str = Field(sa_column=Column(String(32), nullable=False))
    report_id: str = Field(sa_column=Column(String(32), nullable=False, unique=True))
    programme: str = Field(sa_column=Column(String(8), nullable=False))
    vintage: int = Field(sa_column=Column(Integer, nullable=False))
    number: int = Field(sa_column=Column(Integer, nullable=False))
    quantity: int = Field(sa_column=Column(BigInteger, nullable=False))
    issued_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Tonnes retired and cancelled so far, kept by the movement that retires or cancels them, so
    # a read of the batch sums none of its blocks (a batch sold in small lots has 10^5 of them).
    retired: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    cancelled: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))


class BlockRow(SQLModel, table=True):
    """Serials ``start..end`` (inclusive) of one batch, held by one account, in one status."""

    __tablename__ = "block"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    batch_id: str = Field(sa_column=Column(String(64), ForeignKey("batch.id"), nullable=False))
    start: int = Field(sa_column=Column(BigInteger, nullable=False))
    end: int = Field(sa_column=Column(BigInteger, nullable=False))
    account_id: str = Field(sa_column=Column(String(32), ForeignKey("account.id"), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))


class BlockEventRow(SQLModel, table=True):
    """A movement of serials by a ledger entry: the index behind a serial's life story."""

    __tablename__ = "block_event"

    id: int | None = Field(default=None, sa_column=Column(Integer, primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    kind: str = Field(sa_column=Column(String(64), nullable=False))
    batch_id: str = Field(sa_column=Column(String(64), nullable=False))
    start: int = Field(sa_column=Column(BigInteger, nullable=False))
    end: int = Field(sa_column=Column(BigInteger, nullable=False))
    from_account: str | None = Field(default=None, sa_column=Column(String(32), nullable=True))
    to_account: str = Field(sa_column=Column(String(32), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))


class RetirementRow(SQLModel, table=True):
    __tablename__ = "retirement"

    id: str = Field(sa_column=Column(String(32), primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    account_id: str = Field(sa_column=Column(String(32), nullable=False))
    batch_id: str = Field(sa_column=Column(String(64), nullable=False))
    blocks: str = Field(sa_column=Column(Text, nullable=False))  # "start-end,start-end,..."
    quantity: int = Field(sa_column=Column(BigInteger, nullable=False))
    beneficiary: str = Field(sa_column=Column(String(500), nullable=False))
    purpose: str = Field(sa_column=Column(String(16), nullable=False))
    jurisdiction: str = Field(sa_column=Column(String(2), nullable=False))
    reason: str = Field(sa_column=Column(String(500), nullable=False))
    time: str = Field(sa_column=Column(String(32), nullable=False))


class ReversalRow(SQLModel, table=True):
    __tablename__ = "reversal"

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    unit_id: str = Field(sa_column=Column(String(32), nullable=False))
    lost: int = Field(sa_column=Column(BigInteger, nullable=False))
    cancelled: int = Field(sa_column=Column(BigInteger, nullable=False))
    shortfall: int = Field(sa_column=Column(BigInteger, nullable=False))
    document_sha256: str = Field(sa_column=Column(String(64), nullable=False))
    reason: str = Field(sa_column=Column(String(500), nullable=False))


class NonceRow(SQLModel, table=True):
    """Every instruction nonce ever accepted, per party: a replay is refused for ever."""

    __tablename__ = "used_nonce"

    party_id: str = Field(sa_column=Column(String(64), primary_key=True))
    nonce: str = Field(sa_column=Column(String(128), primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class IdempotencyRow(SQLModel, table=True):
    """The first answer to an ``Idempotency-Key``, returned again to a retry of the same body."""

    __tablename__ = "idempotency"

    key: str = Field(sa_column=Column(String(128), primary_key=True))
    request_hash: str = Field(sa_column=Column(String(64), nullable=False))
    status_code: int = Field(sa_column=Column(Integer, nullable=False))
    response: str = Field(sa_column=Column(Text, nullable=False))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))


def table(model: type[SQLModel]) -> Table:
    """The Core table behind ``model``: for statements on the hot path that need no ORM."""
    return cast(Table, model.__table__)  # type: ignore[attr-defined]


_CONNECTION = "registry.core_connection"


def core(session: Session) -> Connection:
    """The session's connection, for Core statements in the session's transaction.

    Objects added to the session but not yet written are flushed first, so a Core statement
    sees them (and a foreign key to them holds).

    The connection is kept for the innermost transaction it was handed out in: a transfer asks
    for it about ten times, and the session's own lookup with the check for pending objects
    cost 2.2 µs a call, the kept one 0.5 µs. A savepoint the session has begun is only emitted
    when it hands out the connection, so any other transaction, a savepoint begun or ended
    since, asks the session again.
    """
    session.flush()  # nothing to do, and cheap, when nothing was added or changed
    current = session.get_nested_transaction() or session.get_transaction()
    kept = session.info.get(_CONNECTION)
    if current is not None and kept is not None and kept[0] is current:
        connection: Connection = kept[1]
        return connection
    connection = session.connection()
    # A transaction the session began just now, to hand out the connection, is the key (not
    # None, which every later transaction of the session would match).
    current = session.get_nested_transaction() or session.get_transaction()
    session.info[_CONNECTION] = (current, connection)
    return connection
