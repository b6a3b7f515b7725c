"""The SQLite file moved or deleted under ``registry serve`` (an operator putting a backup
back with ``mv``, a clean-up script): SQLite itself would write on, without an error, into the
file it has open, and what it acknowledged there would be gone at the next start. Every write
is refused 503 ``database_moved`` instead, reads go on (from the connections the server
holds: it opens none to whatever is now at the path), and once the file is back the same
request retried with its key is carried out once. SQLite only: PostgreSQL's files are its
server's."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from registry.client import new_nonce
from registry.config import Settings
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from tests.load import ServerProcess, ack_of, check_registry, error_code
from tests.load.test_writer_process import _gone, _spawned
from tests.world import build_world, expect_error, issue_jcm


def _checkpoint(database: Path) -> None:
    """Move the write-ahead log into the database file, so that a copy of the file holds it
    all."""
    with closing(sqlite3.connect(database)) as connection:
        assert connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0


def test_writes_are_refused_while_the_database_file_is_not_the_one_opened(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the file moved here is SQLite's; PostgreSQL's are its server's")
    database = Path(settings.database_url.removeprefix("sqlite:///"))
    aside = database.with_name("moved-aside.db")
    server = ServerProcess(settings, tmp_path / "server.log")
    server.start()
    world = build_world(server.url, admin_key)
    try:
        batch = issue_jcm(world, "KH004-MR1", 1000)  # KH-WATER-1 holds 800
        holder = world.as_("kh-water")
        signed = holder.sign("credits.transfer", {
            "account": "KH-WATER-1", "batch": batch, "quantity": 5, "to_account": "JP-BUYER-1"})
        key = new_nonce()
        size = world.tree_size()

        database.rename(aside)
        error = expect_error(holder.post_signed(signed, idempotency_key=key), 503,
                             "database_moved")
        assert "no longer the one this server opened" in error["message"]
        assert world.tree_size() == size  # reads go on, from the file the server has open

        aside.rename(database)
        answer = holder.post_signed(signed, idempotency_key=key)
        assert answer.status_code == 200, answer.text
        ack = ack_of(answer, key=key, signed=signed)
        assert not ack.replayed
        assert world.active("KH-WATER-1") == 795

        # Replaced by a copy (a backup put back with mv): refused as well, also by a writer
        # process started again while the copy is there, which keeps to the first file and
        # never opens the copy (it would share the first file's log, found by name).
        _checkpoint(database)  # the copy holds it all
        database.rename(aside)
        database.write_bytes(aside.read_bytes())  # a copy put in its place is another file
        again = holder.sign("credits.transfer", {
            "account": "KH-WATER-1", "batch": batch, "quantity": 1, "to_account": "JP-BUYER-1"})
        expect_error(holder.post_signed(again), 503, "database_moved")
        (writer,) = _spawned(server)
        os.kill(writer, signal.SIGKILL)
        assert _gone(writer, within=10)
        time.sleep(0.5)  # the API process notices the closed connection
        # The writer started again cannot open its file while the copy stands in its place.
        again_key = new_nonce()
        refused = holder.post_signed(again, idempotency_key=again_key)
        assert (refused.status_code, error_code(refused)) in (
            (503, "database_moved"), (500, "internal_error")), refused.text
        database.unlink()
        aside.rename(database)
        # The server tries again to start a writer, less and less often (1 s, 2 s, 4 s, ...).
        deadline = time.monotonic() + 30
        while (answer := holder.post_signed(again, idempotency_key=again_key)).status_code != 200:
            assert time.monotonic() < deadline, answer.text
            assert error_code(answer) in ("database_moved", "internal_error"), answer.text
            time.sleep(0.5)
        acks = [ack, ack_of(answer, key=again_key, signed=again)]
        assert world.active("KH-WATER-1") == 794

        check_registry(world, registry, acks, tmp_path)
        # (A writer process that cannot start logs why, with its traceback, by design.)
        log = server.log_path.read_text()
        assert "ERROR:    registry.store.db: the database file " in log
        assert "is no longer the one this server opened" in log
    finally:
        world.http.http.close()
        server.stop()
