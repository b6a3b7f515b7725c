"""A database that takes no writes: a PostgreSQL standby, a file system remounted read-only.

After a failover that left the registry on a replica, or an ext4 file system remounted
read-only after an error, every write fails in the database. The registry answers it 503
`database_read_only` (nothing was written, and a retry is safe), goes on answering reads, and
the same request retried with its key once the database takes writes is carried out once.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import event

from registry.api.paths import INSTRUCTION_PATHS
from registry.service.context import Registry
from registry.store.db import is_postgres, make_engine
from tests.helpers import start_server
from tests.world import World, issue_jcm


def _taking_no_writes(registry: Registry) -> Registry:
    """``registry`` served from the same database, which now takes no writes: on PostgreSQL
    every transaction read-only by default, as a standby's are and as an administrator makes a
    database's with ``ALTER DATABASE ... SET default_transaction_read_only`` (a connection
    that had served a read used to begin its writes READ WRITE, past that default); on SQLite
    every connection query-only, which SQLite refuses writes to as it does a read-only file."""
    url = registry.engine.url
    if is_postgres(registry.engine):
        options = f"{url.query.get('options', '')} -cdefault_transaction_read_only=on".strip()
        engine = make_engine(url.update_query_dict({"options": options}).render_as_string(
            hide_password=False))
    else:
        engine = make_engine(url.render_as_string(hide_password=False))

        @event.listens_for(engine, "connect")
        def _query_only(connection: sqlite3.Connection, _record: Any) -> None:
            connection.execute("PRAGMA query_only = 1")

    return Registry(engine=engine, signer=registry.signer, origin=registry.origin,
                    clock=registry.clock)


def test_a_database_that_takes_no_writes_is_a_503_and_the_retry_goes_through_once(
    registry: Registry, world: World
) -> None:
    batch = issue_jcm(world)
    body = {"account": "KH-WATER-1", "batch": batch, "quantity": 5, "to_account": "JP-BUYER-1"}
    signed = world.as_("kh-water").sign("credits.transfer", body)
    path = INSTRUCTION_PATHS["credits.transfer"]
    key = {"Idempotency-Key": "transfer-during-failover"}
    before = world.snapshot()
    read_only = _taking_no_writes(registry)
    try:
        with start_server(read_only) as live:
            refused = live.client.post(path, json=signed, headers=key)
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == "database_read_only"
            assert error["message"].startswith("the registry's database takes no writes (")
            assert "Nothing was written" in error["message"]
            assert "a retry with the same Idempotency-Key is safe" in error["message"]
            # Reads go on, and show nothing changed.
            assert live.client.get("/v1/checkpoint").text == world.checkpoint()
            assert world.snapshot() == before
            # The connection serves on.
            again = live.client.post(path, json=signed, headers=key)
            assert (again.status_code, again.json()["error"]["code"]) == (
                503, "database_read_only")
    finally:
        read_only.engine.dispose()
    # The database takes writes again: the retry is carried out, once.
    done = world.http.http.post(path, json=signed, headers=key)
    assert done.status_code == 200, done.text
    assert world.http.http.post(path, json=signed, headers=key).json() == done.json()
    assert world.active("JP-BUYER-1") == 5
    assert world.tree_size() == done.json()["seq"] + 1
