"""Reads list records in the same order on every engine, whatever the database's collation.

SQLite compares text byte by byte; PostgreSQL by the database's collation, which on many
servers is a locale's (en_US.UTF-8) that passes over hyphens: there ``KH-JCM-KH0041-...``
sorts before ``KH-JCM-KH004-...``. Run against a PostgreSQL database made with such a
collation (``LOCALE_PROVIDER icu ICU_LOCALE 'und-u-ka-shifted'``) this shows the difference.
"""

from __future__ import annotations

import pytest

from tests.world import ADMIN, World, issue_jcm, submit_report, verify_report


def _register_project(world: World, project_id: str) -> None:
    world.submit(ADMIN, "project.register", {
        "project_id": project_id, "title": f"Project {project_id}", "partner_country": "KH",
        "methodology": "KH_AM001", "sector": "Energy efficiency", "programme": "JCM",
        "participants": ["kh-water", "kh-gov"], "third_party_entity": "lrqa",
        "crediting_period_start": "2023-06-09", "crediting_period_end": "2030-12-31",
    })


def test_holdings_list_batches_in_the_byte_order_of_their_ids(world: World) -> None:
    _register_project(world, "KH0041")
    submit_report(world, "KH0041-MR1", 10, project="KH0041")
    verify_report(world, "KH0041-MR1", 10)
    world.submit(ADMIN, "credits.issue", {
        "report_id": "KH0041-MR1", "vintage": 2024,
        "allocations": [{"account": "KH-WATER-1", "quantity": 10}],
    })
    issue_jcm(world)  # KH-JCM-KH004-2024-00001, issued after the other
    batches = [batch for batch, *_ in world.blocks("KH-WATER-1")]
    assert batches == ["KH-JCM-KH004-2024-00001", "KH-JCM-KH0041-2024-00001"]
    # Paged one block at a time, by the `next` cursor, the same order.
    paged, after = [], None
    while True:
        page = world.holdings("KH-WATER-1", limit=1, **({} if after is None else {"after": after}))
        paged += [b["batch"] for b in page["blocks"]["data"]]
        after = page["blocks"]["next"]
        if after is None:
            break
    assert paged == batches


def test_block_batch_ids_compare_as_bytes_whatever_the_database_collation(db_url: str) -> None:
    """The test database's own collation may be "C" already: check the column's, which is what
    keeps holdings in byte order on a database whose default is a locale's."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite compares text as bytes")
    from sqlalchemy import text

    from registry.store.db import make_engine, migrate

    engine = make_engine(db_url)
    try:
        migrate(engine)
        with engine.connect() as c:
            collation = c.execute(text(
                "SELECT collation_name FROM information_schema.columns WHERE table_name = 'block'"
                " AND column_name = 'batch_id' AND table_schema = current_schema()"
            )).scalar_one()
    finally:
        engine.dispose()
    assert collation == "C"
