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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx

from registry.client import sign_instruction
from registry.config import Settings
from registry.ledger.keys import SigningKey
from registry.service import writer_process
from registry.service.context import Registry
from tests.load import ServerProcess, check_registry
from tests.world import World, build_world, expect_error, issue_jcm


def _children(pid: int) -> list[int]:
    """Child processes started by multiprocessing's spawn (not its resource tracker), oldest
    first: under ``registry serve`` the writer process, then any uvicorn workers."""
    found: list[tuple[int, int]] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                command = Path(f"/proc/{child}/cmdline").read_bytes()
                started = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[19])
            except (FileNotFoundError, ProcessLookupError):
                continue
            if b"spawn_main" in command:
                found.append((started, int(child)))
    return [child for _, child in sorted(found)]


def _spawned(server: ServerProcess) -> list[int]:
    """The server's writer process, then its uvicorn workers if it has more than one (each
    worker is an API process; with one, the server's own process is the API process)."""
    assert server.proc is not None
    expected = 1 + (server.workers if server.workers > 1 else 0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        children = _children(server.proc.pid)
        if len(children) == expected:
            return children
        time.sleep(0.05)
    raise AssertionError(f"registry serve has {_children(server.proc.pid)} for {expected}")


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
    settings: Settings, admin_key: SigningKey, tmp_path: Path, *, workers: int = 1,
    env: dict[str, str] | None = None,
) -> Iterator[tuple[ServerProcess, World]]:
    """``registry serve`` on the test's database, with the usual parties and accounts."""
    server = ServerProcess(settings, tmp_path / "server.log", workers=workers, env=env or {})
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
        (first,) = _spawned(server)
        os.kill(first, signal.SIGKILL)
        assert _gone(first, within=10)
        time.sleep(0.5)  # the API process notices the closed connection
        moved = world.submit("kh-water", "credits.transfer", {
            "account": "KH-WATER-1", "batch": batch, "quantity": 5, "to_account": "JP-BUYER-1"})
        assert moved["result"]["quantity"] == 5
        assert _spawned(server) != [first]
        assert world.active("JP-BUYER-1") == 5
        check_registry(world, registry, [], tmp_path)


def _transfers(server: ServerProcess, world: World, batch: str, n: int) -> list[int]:
    """``n`` transfers of one tonne from 8 clients at once, each on its own connection (so
    the workers share them out); the HTTP status of each."""
    body = {"account": "KH-WATER-1", "batch": batch, "quantity": 1, "to_account": "JP-BUYER-1"}

    def one(i: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            signed = sign_instruction(world.keys["kh-water"], registry=world.origin,
                                      actor="kh-water", type="credits.transfer", body=body)
            response = http.post("/v1/transfers", json=signed,
                                 headers={"Idempotency-Key": f"t-{batch}-{i}-{time.time_ns()}"})
            return response.status_code

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def test_workers_share_one_writer_process_which_is_replaced_when_it_dies(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    with _serving(settings, admin_key, tmp_path, workers=2) as (server, world):
        writer, *workers = _spawned(server)
        assert len(workers) == 2
        # Each worker is an API process without a writer of its own.
        assert all(_children(worker) == [] for worker in workers)
        batch = issue_jcm(world, "KH004-MR1", 1000)
        assert _transfers(server, world, batch, 40) == [200] * 40
        os.kill(writer, signal.SIGKILL)
        assert _gone(writer, within=10)
        time.sleep(0.5)  # both workers notice the closed connection
        assert _transfers(server, world, batch, 24) == [200] * 24
        now = _spawned(server)  # the workers, and a new writer in place of the one killed
        assert writer not in now and set(workers) <= set(now)
        assert world.active("JP-BUYER-1") == 64
        # The server's log says so, spelt as uvicorn spells its lines, and names who speaks.
        assert ("ERROR:    registry.service.writer_process: the writer process stopped (exit "
                f"code -{signal.SIGKILL.value}); starting another") in server.log_path.read_text()
        check_registry(world, registry, [], tmp_path)


def test_a_writer_process_that_dies_before_any_write_is_replaced(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    server = ServerProcess(settings, tmp_path / "server.log")
    server.start()
    try:
        (first,) = _spawned(server)
        os.kill(first, signal.SIGKILL)
        assert _gone(first, within=10)
        time.sleep(0.5)
        world = build_world(server.url, admin_key)  # parties and accounts: the first writes
        try:
            assert world.active("KH-WATER-1") == 0
            assert _spawned(server) != [first]
            check_registry(world, registry, [], tmp_path)
        finally:
            world.http.http.close()
    finally:
        server.stop()
    assert not server.errors_logged() or all(
        "writer process stopped" in line for line in server.errors_logged()
    ), server.log_tail()


def test_while_no_writer_process_can_start_writes_are_refused_then_carried_out(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    with _serving(settings, admin_key, tmp_path) as (server, world):
        batch = issue_jcm(world, "KH004-MR1", 1000)
        body = {"account": "KH-WATER-1", "batch": batch, "quantity": 5,
                "to_account": "JP-BUYER-1"}
        signed = [sign_instruction(world.keys["kh-water"], registry=world.origin,
                                   actor="kh-water", type="credits.transfer", body=body)
                  for _ in range(4)]

        def post(i: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                return http.post("/v1/transfers", json=signed[i],
                                 headers={"Idempotency-Key": f"no-writer-{i}"})

        hidden = settings.key_file.with_suffix(".away")
        settings.key_file.rename(hidden)  # a new writer process cannot open the registry
        try:
            (writer,) = _spawned(server)
            os.kill(writer, signal.SIGKILL)
            assert _gone(writer, within=10)
            time.sleep(0.5)  # the API process notices; its next write connects anew
            started = time.monotonic()
            with ThreadPoolExecutor(4) as pool:
                refused = list(pool.map(post, range(4)))
            # Answered, all four, not left waiting in turn: a 500 that says a retry is safe,
            # sooner than a writer's greeting is waited for (the server turns them away).
            assert [r.status_code for r in refused] == [500] * 4, [r.text for r in refused]
            assert all("retry" in r.json()["error"]["message"] for r in refused)
            assert time.monotonic() - started < writer_process.READY_TIMEOUT - 3
        finally:
            hidden.rename(settings.key_file)
        deadline = time.monotonic() + 90
        while True:  # the server tries again, less and less often, until a writer starts
            retried = [post(i) for i in range(4)]
            if all(r.status_code == 200 for r in retried) or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert [r.status_code for r in retried] == [200] * 4, [r.text for r in retried]
        assert world.active("JP-BUYER-1") == 20  # each once
        check_registry(world, registry, [], tmp_path)


def test_a_frozen_writer_process_is_answered_in_bounded_time_and_the_retry_is_carried_out_once(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    """A writer process stopped (SIGSTOP: frozen, not gone) never closes its connection, so
    only a deadline answers the request waiting on it: 504, outcome unknown, retry safe."""
    with _serving(settings, admin_key, tmp_path, env={"REGISTRY_WRITE_TIMEOUT": "2"}) as (
        server, world
    ):
        batch = issue_jcm(world, "KH004-MR1", 1000)
        signed = sign_instruction(
            world.keys["kh-water"], registry=world.origin, actor="kh-water",
            type="credits.transfer",
            body={"account": "KH-WATER-1", "batch": batch, "quantity": 5,
                  "to_account": "JP-BUYER-1"})

        def post() -> httpx.Response:
            with httpx.Client(base_url=server.url, timeout=60) as http:
                return http.post("/v1/transfers", json=signed,
                                 headers={"Idempotency-Key": "frozen-writer"})

        (writer,) = _spawned(server)
        os.kill(writer, signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = post()
            waited = time.monotonic() - started
            error = expect_error(answer, 504, "write_timeout")
            assert "retry with the same Idempotency-Key is safe" in error["message"]
            assert 2 <= waited < 10, waited
            assert world.active("JP-BUYER-1") == 0  # reads are answered meanwhile
            # Once: `registry serve` and the app it serves both set the log up, in one process.
            assert server.log_path.read_text().count(
                "ERROR:    registry.service.writer_process: the writer process did not answer "
                "within 2 s") == 1
        finally:
            os.kill(writer, signal.SIGCONT)
        # Resumed, the writer carries out what it was sent; the retry gets that answer.
        retried = post()
        assert retried.status_code == 200, retried.text
        assert retried.headers.get("Idempotent-Replayed") == "true"
        assert retried.json()["result"]["quantity"] == 5
        assert world.active("JP-BUYER-1") == 5  # once
        check_registry(world, registry, [], tmp_path)


def test_a_writer_process_does_not_outlive_its_api_process(
    settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path
) -> None:
    with _serving(settings, admin_key, tmp_path) as (server, _world):
        (writer,) = _spawned(server)
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
                world.keys["kh-water"], registry=world.origin, actor="kh-water",
                type="credits.transfer", body=body,
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
