"""PostgreSQL ends the registry's sessions under load, as a database restart, a failover or an
administrator does: a write or a read caught in it is answered 503 ``database_unavailable``,
never a 500 nor a connection reset; a write's retry with the same key goes through, once; and
the books hold.

The sessions ended are the server's own, found by the ``application_name`` its database URL
gives; the test's other registries, on the same PostgreSQL, are not touched. PostgreSQL only:
SQLite has no connection to lose.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from registry.client import RegistryClient, new_nonce
from registry.config import Settings
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from tests.conftest import POSTGRES_URL
from tests.load import Ack, ServerProcess, ack_of, check_registry, error_code
from tests.world import build_world, issue_jcm

CLIENTS = 3
END_SESSIONS = ("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :a")


def test_sessions_ended_under_load_are_answered_503_and_retried_once(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("SQLite has no connection to lose")
    assert POSTGRES_URL is not None
    name = f"registry-{new_nonce()[:12]}"
    url = settings.database_url
    ours = settings.model_copy(
        update={"database_url": f"{url}{'&' if '?' in url else '?'}application_name={name}"})
    server = ServerProcess(ours, tmp_path / "server.log")
    server.start()
    world = build_world(server.url, admin_key)
    origin = world.origin
    admin = create_engine(POSTGRES_URL)
    stop = threading.Event()
    acks: list[Ack] = []
    problems: list[str] = []
    lost = [0]  # answers 503 database_unavailable

    def move(index: int) -> None:
        # The origin given, not asked of a registry whose sessions may be ending just then.
        client = RegistryClient.connect(server.url, actor="kh-water", key=world.keys["kh-water"],
                                        registry=origin)
        try:
            while not stop.is_set():
                signed = client.sign("credits.transfer", {
                    "account": "KH-WATER-1", "batch": batch, "quantity": 1,
                    "to_account": "JP-BUYER-1"})
                key = new_nonce()
                for _ in range(50):
                    try:
                        response = client.post_signed(signed, idempotency_key=key)
                    except httpx.TransportError as e:
                        problems.append(f"client {index}: {type(e).__name__}: {e}")
                        return
                    if response.status_code != 503:
                        break
                    if error_code(response) != "database_unavailable":
                        problems.append(f"client {index}: 503 {response.text[:300]}")
                        return
                    assert "retry with the same Idempotency-Key is safe" in response.text
                    lost[0] += 1
                    time.sleep(0.05)
                if response.status_code != 200:
                    problems.append(f"client {index}: {response.status_code} {response.text}")
                    return
                acks.append(ack_of(response, key=key, signed=signed))
        except Exception as e:  # a client gone quietly would leave the test checking less
            problems.append(f"client {index}: {type(e).__name__}: {e}")
        finally:
            client.http.close()

    read_lost = [0]  # reads answered 503 database_unavailable

    def read() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.get(f"/v1/batches/{batch}")
                except httpx.TransportError as e:
                    problems.append(f"reader: {type(e).__name__}: {e}")
                    return
                if response.status_code == 503 and error_code(response) == "database_unavailable":
                    read_lost[0] += 1
                elif response.status_code != 200:
                    problems.append(f"reader: {response.status_code} {response.text[:300]}")
                    return

    try:
        batch = issue_jcm(world, "KH004-MR1", 100_000)
        threads = [threading.Thread(target=move, args=(i,), daemon=True) for i in range(CLIENTS)]
        threads.append(threading.Thread(target=read, daemon=True))
        for t in threads:
            t.start()
        ended = 0
        for _ in range(100):  # until writes were caught in it, within bounds
            time.sleep(0.2)
            with admin.begin() as connection:
                ended += connection.execute(text(END_SESSIONS), {"a": name}).scalar_one()
            if lost[0] >= 2 or problems:
                break
        time.sleep(0.5)  # the clients go on once the sessions are back
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "clients still running"
        print(f"\ndatabase lost: {ended} sessions ended, {lost[0]} writes and {read_lost[0]} "
              f"reads answered 503, {len(acks)} acknowledged")
        assert not problems, "\n".join(problems[:10])
        assert ended > 0 and lost[0] >= 1, (ended, lost[0])

        held = world.holdings("KH-WATER-1")
        assert held["total_active"] == 80_000 - len(acks)
        check_registry(world, registry, acks, tmp_path)
        assert server.errors_logged() == [], "\n".join(server.errors_logged()[:20])
        assert ("ERROR:    registry.store.db: the connection to the database was lost"
                in server.log_path.read_text())
    finally:
        stop.set()
        world.http.http.close()
        admin.dispose()
        server.stop()
