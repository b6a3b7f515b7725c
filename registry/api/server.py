"""The ASGI entry point uvicorn imports: one registry per worker process, from the environment."""

from __future__ import annotations

import asyncio
import gc
import os
import socket

from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from registry.api.app import create_app
from registry.config import Settings
from registry.logs import log_to_stderr
from registry.service.setup import open_registry
from registry.service.writer_process import ADDRESS_ENV, WriterHost, WriterProcess


def app_from_env() -> FastAPI:
    """Build the app from ``REGISTRY_*`` settings; the schema was migrated before workers start,
    and the writer process every worker shares was started too (its socket in
    ``REGISTRY_WRITER_SOCKET``).

    Everything loaded so far (modules, models, routes: most of the process's objects) lives as
    long as the process, so it is moved out of the garbage collector's sight. Otherwise every
    full collection walks all of it while requests wait: under load that was a pause every few
    dozen transfers, and it set the p99 latency (about 150 ms at 32 clients, 60 ms without).
    """
    log_to_stderr()  # in each worker process too
    address = os.environ.get(ADDRESS_ENV)
    host = None
    if address is None:  # not under `registry serve` (uvicorn run directly): a writer of its own
        host = WriterHost()
        host.start()
        address = host.address
    settings = Settings()
    writer = WriterProcess(address, host=host, answer_within=settings.answer_timeout)
    app = create_app(open_registry(settings, migrate_schema=False), writer=writer)
    gc.collect()
    gc.freeze()
    return app


_STOPPING = "registry_stopping"
"""Set on uvicorn's ``ServerState`` (one per worker) once its stop has begun."""


class NoDelayH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with Nagle's algorithm off on every accepted connection, and
    no connection kept open by a worker that is stopping.

    With ``--workers N`` uvicorn binds the listening socket itself without ``TCP_NODELAY``, and
    a keep-alive client then waits ~40 ms on every response for the delayed ACK.

    A stopping uvicorn worker closes its listening socket and then asks each of its connections
    to close after the response in progress. A connection it had accepted just before, whose
    protocol was not yet made, is not among them: it was served keep-alive until the graceful
    timeout, and its request then in progress was cut off with a 500. Clients of another worker
    that stops first reconnect at that very moment, so with two workers a stop under load met
    this often. Such a connection now closes as soon as it is made, before it reads a request:
    its client sees the connection close and sends again, to the next server.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        if getattr(self.server_state, _STOPPING, False) or _stopped_listening(transport):
            self.shutdown()

    def shutdown(self) -> None:
        setattr(self.server_state, _STOPPING, True)
        super().shutdown()


def _stopped_listening(transport: asyncio.BaseTransport) -> bool:
    """Whether the server that accepted ``transport`` has closed its listening socket: a stop
    that began while this worker had no connection asked none to close, so the flag above is
    not set. (asyncio keeps the accepting server on the transport, not in its public API.)"""
    server = getattr(transport, "_server", None)
    return server is not None and not server.is_serving()
