"""``registry serve`` writes in a process of its own; its failures are answered, never lost.

The API process sends each signed instruction to its writer process and answers when the writer
has committed. These tests kill one side or the other with SIGKILL and check what a client and
the ledger see: a writer that dies is replaced for the next request, and a writer whose API
process died does not outlive it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from registry.client import sign_instruction
from registry.config import Settings
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from tests.load import ServerProcess, check_registry
from tests.world import World, build_world, issue_jcm


def _children(pid: int) -> list[int]:
    """Child processes started by multiprocessing's spawn (not its resource tracker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
            except FileNotFoundError:
                continue
            if b"spawn_main" in command:
                found.append(int(child))
    return found


def _writer_of(server: ServerProcess) -> int:
    assert server.proc is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = _children(server.proc.pid)
        if children:
            (writer,) = children
            return writer
        time.sleep(0.05)
    raise AssertionError("registry serve started no writer process")


def _gone(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            # A dead child of a dead parent may linger as a zombie until it is reaped.
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return True
        except (ProcessLookupError, FileNotFoundError):
            return True
        time.sleep(0.05)
    return False


@contextmanager
def _serving(
    settings: Settings, admin_key: SigningKey, tmp_path: Path
) -> Iterator[tuple[ServerProcess, World]]:
    """``registry serve`` on the test's database, with the usual parties and accounts."""
    server = ServerProcess(settings, tmp_path / "server.log")
    server.start()
    world = build_world(server.url, admin_key)
    try:
        yield server, world
    finally:
        world.http.http.close()
        server.stop()


def test_a_writer_process_that_dies_is_replaced(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    with _serving(settings, admin_key, tmp_path) as (server, world):
        batch = issue_jcm(world, "KH004-MR1", 1000)
        first = _writer_of(server)
        os.kill(first, signal.SIGKILL)
        assert _gone(first, within=10)
        time.sleep(0.5)  # the API process notices the closed pipe
        moved = world.submit("kh-water", "credits.transfer", {
            "account": "KH-WATER-1", "batch": batch, "quantity": 5, "to_account": "JP-BUYER-1"})
        assert moved["result"]["quantity"] == 5
        assert _writer_of(server) != first
        assert world.active("JP-BUYER-1") == 5
        check_registry(world, registry, [], tmp_path)


def test_a_writer_process_does_not_outlive_its_api_process(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    with _serving(settings, admin_key, tmp_path) as (server, _world):
        writer = _writer_of(server)
        server.kill()
        assert _gone(writer, within=30), "the writer process outlived its API process"


BURST = 600
"""Requests sent at once: more than both directions of the pipe to the writer hold."""


def test_a_burst_of_requests_is_answered_and_the_server_stays_up(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    # Every request of a burst reaches the API process's hand-off in one turn of its event
    # loop. Were that hand-off to wait for the pipe, the writer process (sending answers
    # nobody reads) and the API process (sending instructions nobody reads) would wait for
    # each other for ever, reads included.
    sockets: list[socket.socket] = []
    with _serving(settings, admin_key, tmp_path) as (server, world):
        batch = issue_jcm(world, "KH004-MR1", 10_000)
        body = {"account": "KH-WATER-1", "batch": batch, "quantity": 1,
                "to_account": "JP-BUYER-1"}
        requests = []
        for i in range(BURST):
            data = json.dumps(sign_instruction(
                world.keys["kh-water"], actor="kh-water", type="credits.transfer", body=body,
            )).encode()
            requests.append(
                f"POST /v1/transfers HTTP/1.1\r\nHost: registry\r\n"
                f"Content-Type: application/json\r\nIdempotency-Key: burst-{i}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode() + data
            )
        sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in requests]
        time.sleep(0.5)  # every connection accepted before the first request goes out
        for sock, request in zip(sockets, requests, strict=True):
            sock.sendall(request)
        statuses: dict[int, bytes] = {}
        deadline = time.monotonic() + 90
        while len(statuses) < BURST and time.monotonic() < deadline:
            pending = [s for i, s in enumerate(sockets) if i not in statuses]
            readable, _, _ = select.select(pending, [], [], 1)
            for sock in readable:
                statuses[sockets.index(sock)] = sock.recv(65536).split(b"\r\n", 1)[0]
        assert len(statuses) == BURST, f"{BURST - len(statuses)} requests got no answer"
        assert set(statuses.values()) == {b"HTTP/1.1 200 OK"}, set(statuses.values())
        assert httpx.get(f"{server.url}/v1/checkpoint", timeout=10).status_code == 200
        assert world.active("JP-BUYER-1") == BURST
        check_registry(world, registry, [], tmp_path)
        for sock in sockets:
            sock.close()
