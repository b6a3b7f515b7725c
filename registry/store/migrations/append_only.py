"""DDL that makes a table append-only at the database, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from alembic import op


def refuse_update_and_delete(table: str) -> None:
    """Install triggers so that UPDATE, DELETE (and on PostgreSQL TRUNCATE) of ``table`` fail."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for action in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
                f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {action} refused'); END"
            )
    elif dialect == "postgresql":
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION registry_refuse_change()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION registry_refuse_change()"
        )
    else:  # pragma: no cover - only the two engines are supported
        raise RuntimeError(f"unsupported database dialect {dialect!r}")


def create_refuse_function() -> None:
    """PostgreSQL needs one trigger function; SQLite raises inline."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE FUNCTION registry_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP; END $$"
        )
