"""A failure nothing else answers is a 500 ``internal_error`` in the registry's error shape, and
the client's connection serves on: the next request on it is answered, not cut off."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import h11
from sqlalchemy import text

from registry.service.context import Registry
from registry.store.db import is_postgres, write_transaction
from tests.helpers import LiveServer


def _exchange(conn: h11.Connection, sock: socket.socket, path: str) -> tuple[int, bytes]:
    """GET ``path`` on the open connection; its status and body (status 0: the server closed)."""
    sock.sendall(conn.send(h11.Request(method="GET", target=path, headers=[("Host", "x")])))
    sock.sendall(conn.send(h11.EndOfMessage()))
    status, body = 0, b""
    while True:
        event: Any = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        if isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += bytes(event.data)
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, body


def test_an_unexpected_failure_is_a_500_and_the_connection_serves_on(
    server: LiveServer, registry: Registry
) -> None:
    # A database damaged under the server (a tool dropped a table): a read meets what no
    # rule of the registry foresees.
    with write_transaction(registry.engine) as session:
        cascade = " CASCADE" if is_postgres(registry.engine) else ""
        session.execute(text(f"DROP TABLE reversal{cascade}"))
    url = urlsplit(server.url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        conn = h11.Connection(h11.CLIENT)
        status, body = _exchange(conn, sock, "/v1/reversals")
        assert status == 500
        assert body == (b'{"error":{"code":"internal_error","message":"the registry failed; a '
                        b'retry with the same Idempotency-Key is safe","details":{}}}')
        conn.start_next_cycle()
        status, body = _exchange(conn, sock, "/v1/checkpoint")
        assert status == 200, "the connection was closed after the 500"
        assert body.startswith(b"test.carbon-registry.example/ledger\n")
