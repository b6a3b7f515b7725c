"""Small builders the tests share."""

from __future__ import annotations

from registry.service.context import Registry
from registry.service.ledger import append_entry
from registry.store.db import write_transaction


def append_notes(registry: Registry, count: int) -> None:
    """Append ``count`` simple entries, each in its own transaction, as real use cases do."""
    for i in range(count):
        with write_transaction(registry.engine) as session:
            append_entry(session, registry, kind="test.note", actor="registry", payload={"n": i})


def drop_append_only_triggers(registry: Registry) -> None:
    """Remove the database's append-only guard, as an attacker with DDL rights could."""
    from sqlalchemy import text

    from registry.store.tables import APPEND_ONLY_TABLES

    with write_transaction(registry.engine) as session:
        for table in APPEND_ONLY_TABLES:
            if registry.engine.dialect.name == "sqlite":
                session.execute(text(f"DROP TRIGGER {table}_no_update"))
                session.execute(text(f"DROP TRIGGER {table}_no_delete"))
            else:
                session.execute(text(f"DROP TRIGGER {table}_append_only ON {table}"))
