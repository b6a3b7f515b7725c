"""The database tables, as sqlmodel classes.

The ledger tables (``ledger_entry``, ``tree_node``, ``checkpoint``) are append-only: the
migration installs triggers that refuse UPDATE and DELETE on them, so even a bug or an operator
with SQL access cannot rewrite history without it showing in the Merkle tree. Tables are created
only by the alembic migrations in ``registry/store/migrations``; these classes describe them for
queries and must match.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Integer, LargeBinary, String, Text
from sqlmodel import Field, SQLModel


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
