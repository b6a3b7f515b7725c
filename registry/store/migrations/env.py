"""Alembic environment: runs migrations on the connection the registry hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

from registry.store import tables  # noqa: F401  (registers the tables on the metadata)

connection: Connection | None = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the registry always passes its own connection
    raise RuntimeError("run migrations through registry.store.db.migrate()")

context.configure(connection=connection, target_metadata=SQLModel.metadata)
with context.begin_transaction():
    context.run_migrations()
