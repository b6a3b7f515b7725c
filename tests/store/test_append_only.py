"""The ledger tables refuse UPDATE and DELETE at the database, on both engines."""

from __future__ import annotations

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from registry.service.context import Registry
from registry.store.db import alembic_config, read_session, write_transaction
from tests.factories import append_notes


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger_entry SET kind = 'forged' WHERE seq = 1",
        "DELETE FROM ledger_entry WHERE seq = 2",
        "UPDATE tree_node SET hash = hash WHERE level = 0",
        "DELETE FROM tree_node",
        "UPDATE checkpoint SET note = 'x'",
        "DELETE FROM checkpoint WHERE size = 1",
    ],
)
def test_ledger_tables_refuse_rewrites(registry: Registry, statement: str) -> None:
    append_notes(registry, 3)
    with read_session(registry.engine) as s:
        before = s.execute(text("SELECT seq, envelope FROM ledger_entry ORDER BY seq")).all()
    with pytest.raises(DBAPIError, match="append-only"), write_transaction(registry.engine) as s:
        s.execute(text(statement))
    with read_session(registry.engine) as s:
        after = s.execute(text("SELECT seq, envelope FROM ledger_entry ORDER BY seq")).all()
        assert s.execute(text("SELECT count(*) FROM checkpoint")).scalar_one() == 4
    assert after == before


def test_truncate_is_refused_on_postgres(registry: Registry) -> None:
    if registry.engine.dialect.name != "postgresql":
        pytest.skip("TRUNCATE exists only on PostgreSQL")
    with pytest.raises(DBAPIError, match="append-only"), write_transaction(registry.engine) as s:
        s.execute(text("TRUNCATE ledger_entry"))


def test_schema_comes_from_migrations(registry: Registry) -> None:
    with read_session(registry.engine) as s:
        version = s.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert version == head
