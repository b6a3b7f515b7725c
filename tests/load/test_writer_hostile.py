"""The writer process under hostile or careless API processes and environments: every request
is answered, and one API process that stops reading holds up nobody else."""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from registry.api.app import MAX_BODY_BYTES
from registry.config import Settings
from registry.service.context import Registry
from registry.service.writer_process import (
    MAX_UNSENT,
    WriterHost,
    WriterProcess,
    WriterUnavailable,
    _frame,
    _Peers,
)
from registry.store.db import LEDGER_LOCK_KEY, make_engine
from tests.conftest import ORIGIN
from tests.load import ServerProcess
from tests.load.test_writer_process import _gone, _spawned
from tests.service.test_writer_pipe import _connect, _writer_side


def _read_until_eof(sock: socket.socket, within: float) -> tuple[int, bool]:
    """Bytes read, and whether the end of the stream was seen within ``within`` seconds."""
    deadline = time.monotonic() + within
    read = 0
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(1 << 20)
        except TimeoutError:
            return read, False
        if not data:
            return read, True
        read += len(data)
    return read, False


# --- an API process that stops reading is given up, and told so at once ----------------------


def test_an_api_process_that_stops_reading_is_given_up_and_sees_its_connection_close(
    tmp_path: Path,
) -> None:
    """Answers an API process leaves unread pile up to MAX_UNSENT; the next answer gives it
    up, and it must see its connection end then (its waiting requests get a 500 that says a
    retry is safe), even while the writer waits for work with nothing else to do."""
    with _writer_side(tmp_path) as (peers, address, control):
        api = _connect(address)
        for request_id in (0, 1):
            api.sendall(_frame((request_id, "credits.transfer", {}, f"k{request_id}")))
        taken = peers.take(16)
        peer = taken[0][0]
        # A batch's answers that the API process does not read: past MAX_UNSENT...
        peers.answer(peer, [(0, None, ("", "", "x" * (MAX_UNSENT + (1 << 20)), {}))])
        # ...and the next: it is given up.
        peers.answer(peer, [(1, None, ("", "", "y", {}))])
        waiting = threading.Thread(target=peers.take, args=(16,), daemon=True)
        waiting.start()  # the writer goes back to waiting for work, as serve_writes does
        try:
            read, closed = _read_until_eof(api, within=10)
            assert closed, f"the API process read {read} bytes and then waited for ever"
            assert read < MAX_UNSENT + (2 << 20)
        finally:
            control.close()  # the server is gone: the writer's wait ends
            waiting.join(10)
            api.close()


# --- an API process that reads its answers is never given up for their size -----------------


def test_an_api_process_that_reads_its_answers_is_not_given_up_for_one_large_batch(
    tmp_path: Path,
) -> None:
    """``MAX_UNSENT`` is for an API process that stopped reading, not for one batch's answers
    of more than that, which a reading API process takes (its requests, committed ones
    included, would otherwise all lose their answers)."""
    address = str(tmp_path / "writer.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen()
    control, writer_end = multiprocessing.Pipe()
    peers = _Peers(listener, writer_end)
    big = "x" * (MAX_UNSENT + (1 << 20))

    def writer() -> None:  # serve_writes, reduced to what it does here
        while requests := peers.take(16):
            for peer, (request_id, *_rest) in requests:
                peers.answer(peer, [(request_id, None, ("", "", big, {}))])

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    api = WriterProcess(address)

    async def one() -> BaseException | None:
        try:
            await asyncio.wait_for(api.submit("credits.transfer", {}, "k"), 20)
        except BaseException as e:
            return e
        finally:
            await api.aclose()
        return None

    try:
        error = asyncio.run(one())
    finally:
        control.close()
        thread.join(10)
        listener.close()
    assert not isinstance(error, TimeoutError), "the request never got an answer"
    assert not isinstance(error, WriterUnavailable), (
        "an API process reading its answers was given up: its requests got a 500"
    )
    assert isinstance(error, RuntimeError) and big[:10] in str(error)


# --- from HTTP: requests with a huge bad signature are refused briefly, and stop nothing ------


def _oversized_signature_request(i: int) -> bytes:
    """A transfer whose signature is 16 MiB of U+007F: valid in shape (FastAPI's model takes
    any string as a signature), refused by the writer as ``malformed`` (422). Its message
    used to quote the whole signature, four bytes for each one received: 64 MiB of answer."""
    signed = {
        "instruction": {
            "type": "credits.transfer", "registry": ORIGIN, "actor": "kh-water",
            "key_id": hashlib.sha256(b"k").hexdigest(), "nonce": f"n{i:030d}",
            "expires": "2030-01-01T00:00:00Z",
            "body": {"account": "KH-WATER-1", "batch": "B", "quantity": 1,
                     "to_account": "JP-BUYER-1"},
        },
        "signature": "",
    }
    head = json.dumps(signed).encode()
    room = MAX_BODY_BYTES - len(head)
    data = head.replace(b'"signature": ""', b'"signature": "' + b"\x7f" * room + b'"')
    assert len(data) <= MAX_BODY_BYTES
    return (
        f"POST /v1/transfers HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: big-{i}\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def test_three_requests_with_a_huge_bad_signature_do_not_stop_every_write(
    settings: Settings, registry: Registry, tmp_path: Path
) -> None:
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the database plays no part: SQLite is enough")
    server = ServerProcess(settings, tmp_path / "server.log")
    server.start()
    sockets: list[socket.socket] = []
    try:
        requests = [_oversized_signature_request(i) for i in range(3)]
        sockets = [socket.create_connection(("127.0.0.1", server.port)) for _ in requests]
        for sock, request in zip(sockets, requests, strict=True):
            sock.sendall(request)
        firsts: dict[int, bytes] = {}
        deadline = time.monotonic() + 60
        while len(firsts) < len(sockets) and time.monotonic() < deadline:
            pending = [s for i, s in enumerate(sockets) if i not in firsts]
            readable, _, _ = select.select(pending, [], [], 1)
            for sock in readable:
                firsts[sockets.index(sock)] = sock.recv(1 << 16).split(b"\r\n", 1)[0]
        # Then an ordinary (small) instruction from anyone: refused, but answered.
        small = {"instruction": {"type": "credits.transfer", "registry": ORIGIN,
                                 "actor": "nobody",
                                 "key_id": "0" * 64, "nonce": "n" * 20,
                                 "expires": "2030-01-01T00:00:00Z",
                                 "body": {"account": "A", "batch": "B", "quantity": 1,
                                          "to_account": "C"}},
                 "signature": "AAAA"}
        try:
            after = httpx.post(f"{server.url}/v1/transfers", json=small, timeout=20,
                               headers={"Idempotency-Key": "small-1"}).status_code
        except httpx.TimeoutException:
            after = None
        assert list(firsts.values()) == [b"HTTP/1.1 422 Unprocessable Entity"] * 3 and (
            after is not None and after < 500
        ), (
            f"answers to the three oversized requests within 60 s: {firsts}; a later small "
            f"instruction got {after} (None: no answer in 20 s)\n" + server.log_tail(3)
        )
    finally:
        for sock in sockets:
            sock.close()
        server.stop()


# --- the socket's directory ---------------------------------------------------------------


def test_the_writer_socket_falls_back_when_xdg_runtime_dir_cannot_be_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``$XDG_RUNTIME_DIR`` naming a directory that does not exist, or that this user cannot
    write (``su``/``sudo -u`` keep the invoking user's /run/user/UID), is passed over for the
    temporary directory: ``registry serve`` still starts."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "not-there"))
    host = WriterHost()
    try:
        assert os.path.isdir(os.path.dirname(host.address))
    finally:
        host.stop()


def test_the_writer_socket_is_not_made_again_in_a_directory_others_may_enter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The socket's directory removed while the server runs (a clean-up of the temporary
    directory) and made again by someone else before the server does, open to others: the
    server does not listen there, where the other could put their own socket at the address
    and take the instructions the API processes hand on."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "not-there"))
    host = WriterHost()
    try:
        directory = os.path.dirname(host.address)
        shutil.rmtree(directory)
        os.mkdir(directory)
        os.chmod(directory, 0o777)  # as another user would leave it for their own socket
        host._listen_again_if_gone()
        assert os.listdir(directory) == []
        assert any("not listening in" in r.getMessage() for r in caplog.records)
        # Its own directory, removed, is made again, and the socket in it.
        shutil.rmtree(directory)
        host._listen_again_if_gone()
        assert os.path.exists(host.address)
        assert os.stat(directory).st_mode & 0o777 == 0o700
    finally:
        host.stop()


def _small_refused_instruction() -> dict[str, object]:
    return {"instruction": {"type": "credits.transfer", "registry": ORIGIN, "actor": "nobody",
                            "key_id": "0" * 64, "nonce": "n" * 20,
                            "expires": "2030-01-01T00:00:00Z",
                            "body": {"account": "A", "batch": "B", "quantity": 1,
                                     "to_account": "C"}},
            "signature": "AAAA"}


def test_writes_recover_after_a_writer_restart_when_the_socket_directory_was_removed(
    settings: Settings, registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket lives in a directory under $XDG_RUNTIME_DIR, which systemd-logind removes
    when the user's last session ends (``nohup registry serve &`` over SSH, then log out).
    The next writer process is started on a socket made anew at the same address: without
    it every write answered 500 for the rest of the server's life, while reads answered and
    the server looked healthy."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the database plays no part: SQLite is enough")
    # Short enough for a socket's path, wherever the test's own directory is.
    run = Path(tempfile.mkdtemp(prefix="run-"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    server = ServerProcess(settings, tmp_path / "server.log")
    server.start()
    try:
        first = httpx.post(f"{server.url}/v1/transfers", json=_small_refused_instruction(),
                           timeout=30, headers={"Idempotency-Key": "before"})
        assert first.status_code == 401, first.text  # unknown party: the writer answered
        (socket_dir,) = run.glob("registry-writer-*")
        shutil.rmtree(socket_dir)  # logind removing /run/user/UID at logout
        (writer,) = _spawned(server)
        os.kill(writer, signal.SIGKILL)
        assert _gone(writer, within=10)
        statuses: list[int] = []
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            response = httpx.post(f"{server.url}/v1/transfers",
                                  json=_small_refused_instruction(), timeout=30,
                                  headers={"Idempotency-Key": f"after-{len(statuses)}"})
            statuses.append(response.status_code)
            if response.status_code < 500:
                break
            time.sleep(1)
        assert statuses[-1] == 401, (
            f"writes after the writer's restart: {statuses}; last: {response.text}"
        )
    finally:
        server.stop()
        shutil.rmtree(run, ignore_errors=True)


# --- a ledger lock held elsewhere ---------------------------------------------------------------


@contextmanager
def _ledger_lock_held(database_url: str) -> Iterator[None]:
    """The ledger's lock taken by another connection (a hung server sharing the database, a
    stuck transaction, a tool holding SQLite's write lock) until the block ends."""
    holder = make_engine(database_url)
    try:
        with holder.connect() as conn:
            if holder.dialect.name == "sqlite":
                raw = conn.connection.driver_connection
                assert raw is not None
                raw.execute("BEGIN IMMEDIATE")
                try:
                    yield
                finally:
                    raw.execute("ROLLBACK")
                return
            conn.execute(text("SELECT pg_advisory_lock(:k, hashtext(current_schema()))"),
                         {"k": LEDGER_LOCK_KEY})
            conn.commit()  # a session-level lock: held until released
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock_all()"))
                conn.commit()
    finally:
        holder.dispose()


def test_a_write_waiting_for_the_ledger_lock_is_answered_in_bounded_time(
    settings: Settings, registry: Registry, tmp_path: Path
) -> None:
    """While another connection holds the ledger's lock, a write waits ``lock_timeout`` and
    is answered 503 registry_busy: a retry is safe. On PostgreSQL it used to wait for ever,
    and every other write with it; on SQLite it waited 60 s and was answered 500."""
    server = ServerProcess(settings, tmp_path / "server.log",
                           env={"REGISTRY_LOCK_TIMEOUT": "2"})
    server.start()
    try:
        with _ledger_lock_held(settings.database_url):
            began = time.monotonic()
            answer = httpx.post(f"{server.url}/v1/transfers",
                                json=_small_refused_instruction(), timeout=30,
                                headers={"Idempotency-Key": "locked-out"})
            waited = time.monotonic() - began
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"]["code"] == "registry_busy"
        assert waited < 20, waited
        # The lock free again, the retry goes through (here: refused, the party is unknown).
        retry = httpx.post(f"{server.url}/v1/transfers", json=_small_refused_instruction(),
                           timeout=30, headers={"Idempotency-Key": "locked-out"})
        assert retry.status_code == 401, retry.text
    finally:
        server.stop()


_FROZEN_WRITER = """
import sys, time
from registry.store.db import make_engine, write_transaction
engine = make_engine(sys.argv[1], lock_timeout=float(sys.argv[2]))
with write_transaction(engine):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_server_frozen_inside_a_write_releases_the_ledger_lock_after_lock_timeout(
    settings: Settings, registry: Registry, tmp_path: Path
) -> None:
    """A server stopped in the middle of a write (SIGSTOP, a VM paused, its network cut off)
    kept the ledger's lock for as long as its connection lived: on PostgreSQL every other
    server's writes were 503 until someone killed it. Now a write that waits ``lock_timeout``
    for a holder idle in its transaction for twice as long ends that transaction (503, a retry
    is safe), and the writes after it go on."""
    if settings.database_url.startswith("sqlite"):
        pytest.skip("SQLite's lock is the stopped process's own: it goes with that process")
    server = ServerProcess(settings, tmp_path / "server.log",
                           env={"REGISTRY_LOCK_TIMEOUT": "2"})
    server.start()
    frozen = subprocess.Popen(
        [sys.executable, "-c", _FROZEN_WRITER, settings.database_url, "2"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert frozen.stdout is not None and frozen.stdout.readline() == "locked\n"
        os.kill(frozen.pid, signal.SIGSTOP)
        statuses: list[int] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            response = httpx.post(f"{server.url}/v1/transfers",
                                  json=_small_refused_instruction(), timeout=30,
                                  headers={"Idempotency-Key": "after-the-freeze"})
            statuses.append(response.status_code)
            if response.status_code != 503:
                break
        # Refused (the party is unknown), but by a write that got the ledger's lock.
        # Two waits of 2 s (one on a slow machine) make the holder idle for 4 s.
        assert statuses in ([503, 503, 401], [503, 401]), (statuses, response.text)
        assert frozen.poll() is None  # the stopped server is still there, its write undone
    finally:
        server.stop()
        frozen.kill()
        frozen.wait()


def test_a_server_starting_while_the_ledger_lock_is_held_says_so_in_one_line(
    settings: Settings, registry: Registry, tmp_path: Path
) -> None:
    """Starting, a server checks the schema under the ledger's lock; held elsewhere longer than
    lock_timeout, it stops with one line that fits a start (it used to say that a retry with
    the same Idempotency-Key is safe, a request's advice)."""
    from tests.test_cli import run

    with _ledger_lock_held(settings.database_url), \
            tempfile.TemporaryDirectory(prefix="run-") as runtime:
        r = run(["serve", "--port", "1"], tmp_path, XDG_RUNTIME_DIR=runtime,
                REGISTRY_DATABASE_URL=settings.database_url, REGISTRY_ORIGIN=settings.origin,
                REGISTRY_KEY_FILE=str(settings.key_file), REGISTRY_LOCK_TIMEOUT="1")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "error[registry_busy]: the ledger's lock stayed taken while the schema was to be "
        "checked (another server starting and migrating a large registry, or a tool holding "
        "it?); nothing was changed: start again once it is free"
    ]


# --- a client that never finishes its request -------------------------------------------------


def test_a_client_that_never_finishes_its_request_cannot_hold_a_stopping_server_up(
    settings: Settings, registry: Registry, tmp_path: Path
) -> None:
    """Told to stop, the server lets requests in progress finish, but not for ever: one whose
    body never comes (a stalled or hostile client) kept the server, and a service manager's
    restart, waiting until it was killed."""
    if not settings.database_url.startswith("sqlite"):
        pytest.skip("the database plays no part: SQLite is enough")
    server = ServerProcess(settings, tmp_path / "server.log")
    server.start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as stalled:
            stalled.sendall(b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Type: "
                            b"application/json\r\nContent-Length: 1000\r\n\r\n{\"instr")
            time.sleep(0.5)  # the request is in progress, waiting for the rest of its body
            began = time.monotonic()
            code = server.terminate(within=40)
            took = time.monotonic() - began
        assert code is not None, f"still running after 40 s:\n{server.log_tail()}"
        assert took < 20, took
    finally:
        server.stop()
