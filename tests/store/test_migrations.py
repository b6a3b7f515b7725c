"""Migrations bring a registry's existing state along, on both engines."""

from __future__ import annotations

from alembic import command
from sqlalchemy import text

from registry.store.db import alembic_config, make_engine

BOUNDARY = ('{"type":"Polygon","coordinates":[[[105.8,13.6],[105.9,13.6],[105.9,13.7],'
            '[105.8,13.7],[105.8,13.6]]]}')


def test_a_registry_of_0003_is_brought_along(db_url: str) -> None:
    """0004: projects registered before it name no programme (NULL: the rule of then, REDD+
    once it has a forest unit, as their signed registrations say). 0005: every forest unit
    gets its boundary's bounding box."""
    engine = make_engine(db_url)
    cfg = alembic_config()
    try:
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "0003")
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
            connection.execute(text(
                "INSERT INTO forest_unit (id, project_id, name, boundary, area_ha, "
                "jurisdiction, reference_level, leakage_rate_bp, buffer_rate_bp, "
                "buffer_account, shortfall, registered_seq) VALUES ('KH005-FU1', 'KH005', 'u', "
                ":boundary, 1, 'j', 1, 0, 0, 'BUF-KH005-FU1', 0, 3)"), {"boundary": BOUNDARY})
        with engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")
            rows = connection.execute(
                text("SELECT id, programme FROM project ORDER BY id")).all()
            bounds = connection.execute(
                text("SELECT west, south, east, north FROM forest_unit")).one()
        assert [tuple(r) for r in rows] == [("KH004", None), ("KH005", None)]
        assert tuple(bounds) == (105.8, 13.6, 105.9, 13.7)
    finally:
        engine.dispose()
