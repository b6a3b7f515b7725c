"""The writer process's side of its socket: whole messages, in turn from each API process,
as many as are waiting, none lost."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import pickle
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from registry.service import writer_process
from registry.service.writer_process import (
    _HEADER,
    READY,
    WriterHost,
    WriterProcess,
    WriterUnavailable,
    _frame,
    _Peers,
)


@contextmanager
def _writer_side(tmp_path: Path) -> Iterator[tuple[_Peers, str, Connection]]:
    """The writer process's ``_Peers`` on a fresh socket, and the server's end of its control
    pipe (closing it says the server is gone)."""
    address = str(tmp_path / "writer.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen()
    control, writer_end = multiprocessing.Pipe()
    try:
        yield _Peers(listener, writer_end), address, control
    finally:
        if not control.closed:
            control.close()
        listener.close()


def _connect(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(address)
    return sock


def _read_frame(sock: socket.socket) -> object:
    sock.settimeout(10)
    data = b""
    while len(data) < _HEADER.size:
        data += sock.recv(_HEADER.size - len(data))
    (size,) = _HEADER.unpack(data)
    body = b""
    while len(body) < size:
        body += sock.recv(size - len(body))
    return pickle.loads(body)


def _taken(peers: _Peers, most: int, names: dict[int, str]) -> list[tuple[str, object]]:
    return [(names[id(peer)], message) for peer, message in peers.take(most)]


def test_messages_come_whole_in_turn_and_what_was_sent_before_a_close_is_still_read(
    tmp_path: Path,
) -> None:
    with _writer_side(tmp_path) as (peers, address, control):
        a, b = _connect(address), _connect(address)
        fourth = _frame({"n": 4, "pad": "x" * 5000})
        a.sendall(_frame(1) + _frame((2, "two")) + _frame([3]) + fourth[:100])
        b.sendall(_frame("b1") + _frame("b2"))
        first = peers.take(3)
        names = {id(peer): "a" if message == 1 else "b" for peer, message in first
                 if message in (1, "b1")}
        named = [(names[id(p)], m) for p, m in first]
        # In turn from each API process (one, then the other), each in the order it sent, and
        # no more than asked for.
        assert named[0][0] != named[1][0]
        assert [m for n, m in named if n == "a"] == [1, (2, "two")]
        assert [m for n, m in named if n == "b"] == ["b1"]
        # What is whole; half a message waits for the rest.
        assert sorted(_taken(peers, 5, names), key=str) == [("a", [3]), ("b", "b2")]
        a_peer, b_peer = (next(p for p, _ in first if names[id(p)] == n) for n in "ab")
        # Each API process is greeted, and gets the answers meant for it.
        assert _read_frame(a) == READY and _read_frame(b) == READY
        peers.answer(b_peer, [(7, None, None)])
        assert _read_frame(b) == [(7, None, None)]
        a.sendall(fourth[100:])
        a.close()
        # That API process is gone, but what it sent first is carried out all the same.
        assert _taken(peers, 5, names) == [("a", {"n": 4, "pad": "x" * 5000})]
        peers.answer(a_peer, [(8, None, None)])  # to nobody, and no error
        b.sendall(_frame("b3"))
        assert _taken(peers, 5, names) == [("b", "b3")]
        control.close()  # the server is gone: nothing more to take, and the writer ends
        assert peers.take(5) == []
        b.close()


def test_a_batch_is_what_has_arrived_not_a_wait_for_more(tmp_path: Path) -> None:
    with _writer_side(tmp_path) as (peers, address, _control):
        sock = _connect(address)
        sock.sendall(_frame("only"))
        assert [m for _, m in peers.take(16)] == ["only"]  # at once: nothing else waits
        sock.sendall(b"".join(_frame(i) for i in range(40)))
        assert [m for _, m in peers.take(16)] == list(range(16))
        assert [m for _, m in peers.take(16)] == list(range(16, 32))
        assert [m for _, m in peers.take(16)] == list(range(32, 40))
        sock.close()


def test_an_api_process_that_stops_reading_holds_up_nobody(tmp_path: Path) -> None:
    with _writer_side(tmp_path) as (peers, address, _control):
        stalled, other = _connect(address), _connect(address)
        stalled.sendall(_frame("s"))
        other.sendall(_frame("o"))
        taken = peers.take(2)
        by_message = {message: peer for peer, message in taken}
        # Far more answers than the socket holds, and nobody reading them: queued, not waited on.
        def answer_both() -> None:
            for _ in range(200):
                peers.answer(by_message["s"], [(1, None, ("", "", "x" * 100_000, {}))])
            peers.answer(by_message["o"], [(2, None, None)])

        answering = threading.Thread(target=answer_both, daemon=True)
        answering.start()
        answering.join(timeout=10)
        assert not answering.is_alive(), "the writer waited on an API process that reads nothing"
        assert _read_frame(other) == READY
        assert _read_frame(other) == [(2, None, None)]
        stalled.close()
        other.close()


def test_requests_waiting_for_a_writer_that_does_not_answer_all_get_their_500_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A socket nobody accepts on: a writer process that is starting, or stuck.
    address = str(tmp_path / "writer.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(address)
    listener.listen()
    monkeypatch.setattr(writer_process, "READY_TIMEOUT", 0.5)
    writer = WriterProcess(address)

    async def four_at_once() -> list[float]:
        started = time.monotonic()

        async def one(i: int) -> float:
            with pytest.raises(WriterUnavailable, match="retry with the same Idempotency-Key"):
                await writer.submit("credits.transfer", {}, f"key-{i}")
            return time.monotonic() - started

        return list(await asyncio.gather(*(one(i) for i in range(4))))

    try:
        waited = asyncio.run(four_at_once())
    finally:
        listener.close()
    # One attempt shared by all four: each waited one timeout, not its turn behind the others.
    assert max(waited) < 1.2, waited


def test_the_writer_socket_goes_where_its_path_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Unix socket's path holds at most 107 bytes: under a deeper ``XDG_RUNTIME_DIR`` the
    server would stop with ``AF_UNIX path too long``; it uses the temporary directory."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(deep))
    host = WriterHost()
    try:
        assert len(os.fsencode(host.address)) < 108
        assert os.listdir(deep) == []  # the directory tried there first is gone
        assert os.stat(os.path.dirname(host.address)).st_mode & 0o777 == 0o700
    finally:
        host.stop()
    assert not os.path.exists(os.path.dirname(host.address))

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path.parent))  # short enough: used
    host = WriterHost()
    host.stop()
    assert os.path.dirname(os.path.dirname(host.address)) == str(tmp_path.parent)
