"""Migrations bring a registry's existing state along, on both engines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from alembic import command
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, text

from registry.store.db import (
    alembic_config,
    known_revisions,
    make_engine,
    migrate,
    newest_revision,
)

BOUNDARY = ('{"type":"Polygon","coordinates":[[[105.8,13.6],[105.9,13.6],[105.9,13.7],'
            '[105.8,13.7],[105.8,13.6]]]}')

T = TypeVar("T")


def upgraded(
    db_url: str, revision: str, fill: Callable[[Connection], None],
    read: Callable[[Connection], T],
) -> T:
    """What ``read`` finds once a database at ``revision``, filled by ``fill``, is brought to
    the newest revision as a start brings it (``migrate``); a start after that finds nothing
    to do."""
    engine = make_engine(db_url)
    cfg = alembic_config()
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, revision)
            fill(connection)
        migrate(engine)
        migrate(engine)
        with engine.connect() as connection:
            assert MigrationContext.configure(connection).get_current_heads() == (
                newest_revision(),
            )
            return read(connection)
    finally:
        engine.dispose()


def test_a_registry_of_0003_is_brought_along(db_url: str) -> None:
    """0004: projects registered before it name no programme (NULL: the rule of then, REDD+
    once it has a forest unit, as their signed registrations say). 0005: every forest unit
    gets its boundary's bounding box."""

    def fill(connection: Connection) -> None:
        connection.execute(text(
            "INSERT INTO party (id, name, role, country, created_seq) "
            "VALUES ('lrqa', 'LRQA', 'third_party_entity', 'GB', 1)"))
        for project in ("KH004", "KH005"):
            connection.execute(text(
                "INSERT INTO project (id, title, partner_country, methodology, sector, "
                "participants, third_party_entity, crediting_period_start, "
                "crediting_period_end, status, registered_seq) VALUES (:id, 't', 'KH', "
                "'KH_AM001', 's', '[]', 'lrqa', '2020-01-01', '2030-12-31', 'registered', 2)"
            ), {"id": project})
        # More units than the migration reads at once (100), so it pages through them.
        connection.execute(text(
            "INSERT INTO forest_unit (id, project_id, name, boundary, area_ha, "
            "jurisdiction, reference_level, leakage_rate_bp, buffer_rate_bp, "
            "buffer_account, shortfall, registered_seq) VALUES (:id, 'KH005', 'u', "
            ":boundary, 1, 'j', 1, 0, 0, :buffer, 0, 3)"),
            [{"id": unit, "boundary": BOUNDARY, "buffer": f"BUF-{unit}"}
             for unit in ("KH005-FU1", *(f"KH005-FU1{i:03}" for i in range(250)))])

    def read(connection: Connection) -> tuple[list[tuple[object, ...]], ...]:
        rows = connection.execute(text("SELECT id, programme FROM project ORDER BY id")).all()
        bounds = connection.execute(
            text("SELECT DISTINCT west, south, east, north FROM forest_unit")).all()
        return [tuple(r) for r in rows], [tuple(b) for b in bounds]

    rows, bounds = upgraded(db_url, "0003", fill, read)
    assert rows == [("KH004", None), ("KH005", None)]
    assert bounds == [(105.8, 13.6, 105.9, 13.7)]


def test_a_registry_of_0007_gets_the_totals_of_its_batches(db_url: str) -> None:
    """0008: each batch's retired and cancelled totals, summed once from its blocks."""
    blocks = [(1, 100, "active"), (101, 150, "retired"), (151, 160, "cancelled"),
              (161, 200, "retired"), (201, 1000, "active")]

    def fill(connection: Connection) -> None:
        connection.execute(text(
            "INSERT INTO party (id, name, role, country, created_seq) "
            "VALUES ('kh-water', 'W', 'participant', 'KH', 1)"))
        connection.execute(text(
            "INSERT INTO account (id, holder, kind, name, created_seq) "
            "VALUES ('A', 'kh-water', 'holding', 'a', 2)"))
        for batch, quantity in (("B-1", 1000), ("B-2", 5)):
            connection.execute(text(
                "INSERT INTO batch (id, project_id, report_id, programme, vintage, number, "
                "quantity, issued_seq) VALUES (:id, 'KH004', :id, 'JCM', 2024, 1, :q, 1)"
            ), {"id": batch, "q": quantity})
        connection.execute(
            text('INSERT INTO block (batch_id, start, "end", account_id, status) '
                 "VALUES (:b, :s, :e, 'A', :status)"),
            [{"b": "B-2", "s": 1, "e": 5, "status": "active"},
             *({"b": "B-1", "s": s, "e": e, "status": status} for s, e, status in blocks)])

    def read(connection: Connection) -> list[tuple[object, ...]]:
        query = text("SELECT id, retired, cancelled FROM batch ORDER BY id")
        return [tuple(t) for t in connection.execute(query).all()]

    totals = upgraded(db_url, "0007", fill, read)
    assert totals == [("B-1", 90, 10), ("B-2", 0, 0)]


def test_a_registry_of_0009_gets_its_retirement_times_as_its_entries_have_them(
    db_url: str,
) -> None:
    """0010: retirement times written by ``isoformat`` are rewritten as entry times are."""
    times = {"RET-5": "2026-03-01T08:00:00.250000+00:00", "RET-6": "2026-03-01T08:00:01+00:00",
             "RET-7": "2026-03-01T08:00:02.000001Z"}

    def fill(connection: Connection) -> None:
        connection.execute(
            text("INSERT INTO retirement (id, seq, account_id, batch_id, blocks, quantity, "
                 "beneficiary, purpose, jurisdiction, reason, time) VALUES (:id, :seq, 'A', "
                 "'B-1', '1-1', 1, 'b', 'voluntary', 'JP', 'r', :time)"),
            [{"id": rid, "seq": int(rid[4:]), "time": t} for rid, t in times.items()])

    def read(connection: Connection) -> list[tuple[object, ...]]:
        query = text("SELECT id, time FROM retirement ORDER BY seq")
        return [tuple(t) for t in connection.execute(query).all()]

    assert upgraded(db_url, "0009", fill, read) == [
        ("RET-5", "2026-03-01T08:00:00.250000Z"), ("RET-6", "2026-03-01T08:00:01.000000Z"),
        ("RET-7", "2026-03-01T08:00:02.000001Z")]


def test_the_revisions_read_from_file_names_are_alembics() -> None:
    """Starts and read-only commands check a schema's revision without alembic, against the
    revisions read from the migrations' file names: they must be alembic's, in its order, the
    newest its head, every revision its file's four digits, one after another."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(reversed(list(script.walk_revisions())))
    assert known_revisions() == tuple(r.revision for r in revisions)
    assert newest_revision() == script.get_current_head()
    for number, revision in enumerate(revisions, start=1):
        assert revision.revision == f"{number:04d}"
        assert Path(revision.path).name.startswith(f"{number:04d}_")
        assert revision.down_revision == (None if number == 1 else f"{number - 1:04d}")
