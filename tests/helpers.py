"""Test factories: a deterministic clock and a real uvicorn server on a free loopback port."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import uvicorn

from registry.api.app import create_app
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
    config = uvicorn.Config(
        create_app(registry), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
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
