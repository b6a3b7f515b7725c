"""The SQLite file moved or deleted under ``registry serve`` (an operator putting a backup
back with ``mv``, a clean-up script): SQLite itself would write on, without an error, into the
file it has open, and what it acknowledged there would be gone at the next start. Every write
is refused 503 ``database_moved`` instead, reads go on, and once the file is back the same
request retried with its key is carried out once. SQLite only: PostgreSQL's files are its
server's."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry.client import new_nonce
from registry.config import Settings
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from tests.load import ServerProcess, ack_of, check_registry
from tests.world import build_world, expect_error, issue_jcm


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

        # Deleted: refused as well (the file it has open would vanish at the next start).
        database.rename(aside)
        database.write_bytes(aside.read_bytes())  # a copy put in its place is another file
        again = holder.sign("credits.transfer", {
            "account": "KH-WATER-1", "batch": batch, "quantity": 1, "to_account": "JP-BUYER-1"})
        expect_error(holder.post_signed(again), 503, "database_moved")
        database.unlink()
        aside.rename(database)

        check_registry(world, registry, [ack], tmp_path)
        assert "is no longer the one this server opened" in server.log_path.read_text()
        assert server.errors_logged() == [], "\n".join(server.errors_logged()[:20])
    finally:
        world.http.http.close()
        server.stop()
