"""Test factories: a deterministic clock, a real uvicorn server on a free loopback port, and
plain web servers on loopback for what answers where the registry should."""

from __future__ import annotations

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
    server = uvicorn.Server(config)
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
        server.should_exit = True
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
