"""A disk that fills under ``registry serve``: every write is then answered 503
``storage_failed`` and changes nothing, reads go on, and once space is freed the same requests,
retried with their keys, are carried out once, without a restart; the ledger verifies.

The disk is filled the way a test without privileges can: the server's file-size limit
(``RLIMIT_FSIZE``) is set, while it runs, just above its database files, so the next pages it
writes are refused by the kernel (EFBIG), as a full disk refuses them (ENOSPC); SQLite answers
either with an error of its own (SQLITE_IOERR, SQLITE_FULL), which the registry maps alike.
Then the limit is lifted, as an operator frees space. SQLite only: a PostgreSQL database's
files are its server's, out of the registry's reach.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

import pytest

from registry.client import new_nonce
from registry.config import Settings
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from tests.load import Ack, ServerProcess, ack_of, check_registry
from tests.load.test_writer_process import _spawned
from tests.world import build_world, expect_error, issue_jcm


def _limit_file_size(server: ServerProcess, size: int | None) -> None:
    """Let the server's processes write no file past ``size`` bytes (``None``: no limit)."""
    assert server.proc is not None
    for pid in (server.proc.pid, *_spawned(server)):  # its API process and its writer
        _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        soft = hard if size is None else size
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_refuses_every_write_cleanly_and_a_retry_goes_through_once_space_is_freed(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the files filled here are SQLite's; PostgreSQL's are its server's")
    server = ServerProcess(settings, tmp_path / "server.log")
    server.start()
    world = build_world(server.url, admin_key)
    try:
        batch = issue_jcm(world, "KH004-MR1", 100_000)  # KH-WATER-1 holds 80 000
        holder = world.as_("kh-water")
        files = list(Path(settings.database_url.removeprefix("sqlite:///")).parent.glob("*.db*"))
        _limit_file_size(server, max(f.stat().st_size for f in files) + 64 * 1024)

        acks: list[Ack] = []
        refused: list[tuple[str, dict[str, Any]]] = []
        while len(refused) < 5:
            assert len(acks) < 500, "the database never filled its disk"
            signed = holder.sign("credits.transfer", {
                "account": "KH-WATER-1", "batch": batch, "quantity": 1,
                "to_account": "JP-BUYER-1"})
            key = new_nonce()
            response = holder.post_signed(signed, idempotency_key=key)
            if response.status_code == 200 and not refused:
                acks.append(ack_of(response, key=key, signed=signed))
                continue
            # Once the disk is full, every write is refused, each with the same clear answer.
            error = expect_error(response, 503, "storage_failed")
            assert "could not write" in error["message"], error
            assert "retry with the same Idempotency-Key is safe" in error["message"], error
            refused.append((key, signed))
        # Nothing refused was recorded, and reads are answered all along.
        size = world.tree_size()
        assert world.active("KH-WATER-1") == 80_000 - len(acks)
        assert world.active("JP-BUYER-1") == len(acks)

        _limit_file_size(server, None)  # the operator frees space: no restart
        for key, signed in refused:
            response = holder.post_signed(signed, idempotency_key=key)
            assert response.status_code == 200, response.text
            ack = ack_of(response, key=key, signed=signed)
            assert not ack.replayed, "a refused write was recorded after all"
            acks.append(ack)
        assert world.tree_size() == size + len(refused)
        assert world.active("KH-WATER-1") == 80_000 - len(acks)

        check_registry(world, registry, acks, tmp_path)
        log = server.log_path.read_text()
        assert "ERROR:    registry.store.db: the database could not write: disk I/O error" in log
        # A state of the machine, said in one line each: no traceback, no 500.
        assert server.errors_logged() == [], "\n".join(server.errors_logged()[:20])
    finally:
        world.http.http.close()
        server.stop()
