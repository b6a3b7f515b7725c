"""Test factories: a deterministic clock, a real uvicorn server on a free loopback port, and
plain web servers on loopback for what answers where the registry should."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import uvicorn

from registry.api.app import create_app
from registry.api.server import NoDelayH11Protocol
from registry.service.context import Registry


class StepClock:
    """A clock that starts at a given instant (default: now) and moves one second per reading."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        current = self.now
        self.now += timedelta(seconds=1)
        return current


@dataclass
class LiveServer:
    url: str
    client: httpx.Client


class _TestServer(uvicorn.Server):
    """uvicorn's server, stopped as soon as a test is done with it.

    uvicorn looks for a stop request once every 0.1 s, and once stopping it waits another 0.1 s
    before it looks, again every 0.1 s, whether its connections are done. A test's server
    usually has nothing in flight by then (its client is closed first), and those pauses took
    100-200 ms of every test that serves the registry: about a minute of the suite. This one
    stops the same way, looking every 5 ms (its lifespan is off: nothing else to end).
    `registry serve`'s own graceful stop is tested on the real command (tests/load/test_crash.py).
    """

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        # uvicorn's loop (a tick every 0.1 s keeps the Date header current), woken at once.
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.1)

    def stop(self) -> None:
        """Ask the server to stop, from any thread."""
        self.should_exit = True
        if self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # its loop has already ended
                self._loop.call_soon_threadsafe(self._wake.set)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's steps: no new connection, the idle ones closed, and what is in flight
        # finished (a streamed answer holds a read open: cut off, it would block the test's
        # DROP SCHEMA); after 5 s, as uvicorn after its graceful timeout, the rest is cut off.
        for server in self.servers:
            server.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        deadline = time.monotonic() + 5
        while self.server_state.connections or self.server_state.tasks:
            if time.monotonic() > deadline:
                for task in self.server_state.tasks:
                    task.cancel()
                break
            await asyncio.sleep(0.005)
        for server in self.servers:
            with contextlib.suppress(TimeoutError):  # from 3.12 it waits for every connection
                await asyncio.wait_for(server.wait_closed(), 1)


@contextmanager
def start_server(registry: Registry) -> Iterator[LiveServer]:
    """Serve ``registry`` with uvicorn in a thread, as a user's client would reach it.

    The socket is bound here and handed to uvicorn: a port found free and bound later could be
    taken in between by another test process (the suite runs on several).
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    # The protocol `registry serve` runs: with Nagle's algorithm on, every answer waits ~40 ms
    # for the client's delayed ACK, and the suite spends most of its time waiting.
    config = uvicorn.Config(
        create_app(registry), host="127.0.0.1", port=port, log_level="warning", lifespan="off",
        http=NoDelayH11Protocol,
    )
    server = _TestServer(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield LiveServer(url=url, client=client)
    finally:
        server.stop()
        thread.join(timeout=10)
        listener.close()


@contextmanager
def loopback_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Serve ``handler`` on a loopback port while the block runs; yields its base URL."""
    front = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{front.server_address[1]}"
    finally:
        front.shutdown()
        front.server_close()


def web_page(status: int, page: bytes) -> type[BaseHTTPRequestHandler]:
    """A handler answering every GET and POST with ``page`` as HTML and ``status``: what
    answers where the registry should (a proxy's error page, a captive portal)."""

    class Page(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        do_GET = do_POST = _answer

        def log_message(self, *args: object) -> None:
            pass

    return Page
