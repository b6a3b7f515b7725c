"""The writer in a process of its own, beside the API process that feeds it.

One uvicorn worker is one Python interpreter: with the writer as a thread, the event loop (HTTP,
validation, JSON) and the writer (statements, signatures, canonical checks) take turns on one
interpreter lock, and a transfer costs the sum of both. ``registry serve`` therefore starts, for
each API process, a writer process: the API process sends each signed instruction as received
(its type, body and ``Idempotency-Key``) over a pipe, the writer process carries it out exactly
as :func:`registry.service.submit.submit` would (same ``prepare``, same group commit, same
transaction), and sends the outcome back once it has committed. Both sides then run at once,
on two cores.

Nothing about the guarantees changes:

- an answer is sent only after its transaction committed, so acknowledged still means durable;
- if the writer process dies, every request waiting on it gets a 500 that says a retry with the
  same ``Idempotency-Key`` is safe (what was committed is answered from the stored answer, what
  was not is carried out), and a new writer process is started for the next request;
- if the API process dies, the writer process reads the end of the pipe, finishes the batch it
  is in (its callers are gone: committed but unacknowledged, never half-applied) and exits;
- several API processes (``--workers N``) have a writer process each, serialised by the
  database as the writer threads were;
- neither side ever waits on the pipe: the API process writes and reads it on its event loop,
  so a burst of requests queues in memory instead of leaving both processes blocked;
- what crosses the pipe goes in as few messages as it can: the instructions that arrive in one
  turn of the event loop are written together, the writer reads whatever is waiting in one
  go, and the answers of a batch go back as one message (a system call and a wake-up each
  cost about as much as the rest of a message's way);
- a server is not ready until its writer process is, and SIGTERM or Ctrl-C sent to the whole
  process group stop the API process gracefully, which answers what it holds before it
  closes the pipe (the writer process ignores both and ends when the pipe does).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import socket
import struct
from collections import deque
from multiprocessing.connection import Connection
from typing import Any

from registry.errors import RegistryError
from registry.service.submit import Outcome

_log = logging.getLogger(__name__)

BATCH = 16
"""Most instructions one transaction of the writer process carries out. Smaller than the
writer thread's batch on purpose: while the writer process commits one batch, the API process
answers the one before and reads the next, so two half-size batches in flight keep both busy.
With 32 clients on two cores this gave 1,600 transfers/s and a p99 of 25-30 ms, against
1,300-1,500/s and 30-40 ms with batches of 24 to 64 (``scripts/bench``)."""

READY = "ready"
"""The writer process's first message: it has opened the registry and takes instructions."""

#: What travels back, a batch's answers in one message: (request id, outcome) or
#: (request id, error as data).
Answer = tuple[int, Outcome | None, tuple[str, str, str, dict[str, Any]] | None]

_HEADER = struct.Struct("!i")
"""Each message on the pipe: its length, then its pickle (``multiprocessing``'s own framing,
so the API process can still read the first message with ``Connection.recv``)."""


def _frame(message: object) -> bytes:
    data = pickle.dumps(message)
    return _HEADER.pack(len(data)) + data


class _Messages:
    """The writer process's end of the pipe: complete messages, read in as few calls as
    possible (everything waiting, not one message at a time)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self._ready: deque[Any] = deque()
        self.closed = False

    def take(self, most: int) -> list[Any]:
        """Up to ``most`` messages: waits for the first, then takes what has arrived. Empty
        only when the other end closed the pipe (messages already read come first)."""
        if not self._ready and not self.closed:
            self._read(block=True)
        elif len(self._ready) < most and not self.closed:
            self._read(block=False)
        taken: list[Any] = []
        while self._ready and len(taken) < most:
            taken.append(self._ready.popleft())
        return taken

    def _read(self, *, block: bool) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 20, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self.closed = True
                return
            self._buffer += data
            self._split()
            if block and self._ready:
                block = False  # a message is here: take what else is waiting, then go

    def _split(self) -> None:
        buffer, start = self._buffer, 0
        while len(buffer) - start >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer, start)
            end = start + _HEADER.size + size
            if len(buffer) < end:
                break
            self._ready.append(pickle.loads(buffer[start + _HEADER.size : end]))
            start = end
        del buffer[:start]


class WriterUnavailable(RegistryError):
    """The writer process stopped before it answered; nothing is known of the request."""

    code = "internal_error"
    http_status = 500


def _error_as_data(error: BaseException) -> tuple[str, str, str, dict[str, Any]]:
    if isinstance(error, RegistryError):
        kind = type(error)
        return (kind.__module__, kind.__qualname__, error.message, error.details)
    # Only its message crosses the pipe: the traceback is logged here, where it happened.
    _log.error("an instruction failed unexpectedly in the writer process", exc_info=error)
    return ("", "", f"{type(error).__name__}: {error}", {})


def _error_from_data(data: tuple[str, str, str, dict[str, Any]]) -> BaseException:
    module, qualname, message, details = data
    if not module:
        return RuntimeError(f"the writer process failed: {message}")
    kind: type[RegistryError] = getattr(importlib.import_module(module), qualname)
    error = kind.__new__(kind)
    RegistryError.__init__(error, message, details=details)
    return error


def serve_writes(connection: Connection) -> None:
    """The writer process: carry out what arrives on ``connection`` until it closes.

    It takes what is waiting on the pipe (up to :data:`BATCH`), carries it out in one
    transaction in this thread (``GroupCommit.run_together``: each use case still all or
    nothing) and sends the answers once it has committed. The API process reads answers as
    they come, whatever it is sending, so neither side can wait for the other for ever.

    Signals do not stop it: SIGINT (Ctrl-C reaches the whole process group) and SIGTERM (as a
    service manager sends to the whole group) are for the API process, which answers what it
    holds and then closes the pipe; this process then finishes and exits. Only SIGKILL stops
    it in the middle, which a transaction survives.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from registry.config import Settings
    from registry.service.setup import open_registry
    from registry.service.submit import prepare

    registry = open_registry(Settings(), migrate_schema=False)
    gc.collect()
    gc.freeze()  # as in the API process (registry.api.server): full collections stay short
    try:
        connection.send(READY)
    except (OSError, ValueError):
        return
    pipe = socket.socket(fileno=os.dup(connection.fileno()))
    connection.close()
    messages = _Messages(pipe)
    answering = True
    while requests := messages.take(BATCH):
        # Once the API process is gone, what was read is still carried out, unanswered:
        # committed or not at all, never half done (its clients retry with their keys).
        answers: list[Answer] = []
        works = []
        for request_id, kind, raw, idempotency_key in requests:
            try:
                work = prepare(registry, raw, expected_type=kind, idempotency_key=idempotency_key)
            except Exception as e:  # a refusal, or a failure of this request alone
                answers.append((request_id, None, _error_as_data(e)))
                continue
            works.append((request_id, work))
        if works:
            results = registry.writes.run_together([work for _, work in works])
            for (request_id, _), result in zip(works, results, strict=True):
                if isinstance(result, BaseException):
                    answers.append((request_id, None, _error_as_data(result)))
                else:
                    answers.append((request_id, result, None))
        if not answering:
            continue
        try:
            frame = _frame(answers)
        except Exception:  # an answer that cannot be pickled: say so instead, for each
            frame = _frame([_picklable(answer) for answer in answers])
        try:
            pipe.sendall(frame)
        except OSError:
            answering = False  # the API process is gone: nobody waits for answers any more


def _picklable(answer: Answer) -> Answer:
    try:
        pickle.dumps(answer)
    except Exception as e:
        return (answer[0], None, _error_as_data(e))
    return answer


class _Link:
    """One writer process, the stream to it, and the requests waiting on its answers."""

    def __init__(self, process: multiprocessing.process.BaseProcess, pipe: Connection) -> None:
        self.process = process
        self.pipe: Connection | None = pipe  # until the event loop takes it over as a stream
        self.stream: asyncio.StreamWriter | None = None
        self.reading: asyncio.Task[None] | None = None
        self.waiting: dict[int, asyncio.Future[Outcome]] = {}
        self.outbox: list[bytes] = []
        """Instructions of this turn of the event loop, written to the pipe together after it."""
        self.lost = False

    def send_outbox(self) -> None:
        frames, self.outbox = self.outbox, []
        if self.stream is not None and not self.stream.is_closing():
            self.stream.write(b"".join(frames))
        # Otherwise the writer process is gone, and _lost answers every waiting request.

    def usable(self) -> bool:
        if self.lost:
            return False
        if self.stream is not None:
            return not self.stream.is_closing()
        return self.process.is_alive()


class WriterProcess:
    """The API process's side: sends instructions, hands outcomes back to awaiting requests.

    It lives on the event loop and never blocks it: instructions are written to the pipe
    through an asyncio transport (buffered when the writer process is busy), and a task reads
    the answers as they come, so a burst of requests cannot fill both directions of the pipe
    and leave each process waiting for the other.
    """

    def __init__(self) -> None:
        self._ids = itertools.count()
        self._link: _Link | None = None
        self._opening = asyncio.Lock()

    def start(self, timeout: float = 120.0) -> None:
        """Start the writer process and wait until it takes instructions (it opens the
        registry: the database and the key). A server is not ready before its writer is: a
        writer that cannot start fails the start, with its reason in the log."""
        link = self._spawn()
        assert link.pipe is not None
        if not link.pipe.poll(timeout):
            raise RuntimeError(f"the writer process did not start within {timeout:.0f} s")
        try:
            first = link.pipe.recv()
        except (EOFError, OSError) as e:
            raise RuntimeError("the writer process failed to start (see its error above)") from e
        if first != READY:
            raise RuntimeError(f"the writer process said {first!r} instead of {READY!r}")

    def _spawn(self) -> _Link:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve_writes, args=(theirs,), name="registry-writer", daemon=True
        )
        process.start()
        theirs.close()
        self._link = _Link(process, ours)
        return self._link

    async def _open(self) -> _Link:
        """The link to a live writer process, starting one if there is none."""
        link = self._link
        if link is not None and link.stream is not None and link.usable():
            return link
        async with self._opening:
            link = self._link
            if link is None or not link.usable():
                if link is not None:
                    self._lost(link)
                link = self._spawn()
            if link.stream is None:
                assert link.pipe is not None
                sock = socket.socket(fileno=os.dup(link.pipe.fileno()))
                link.pipe.close()
                link.pipe = None
                reader, link.stream = await asyncio.open_unix_connection(sock=sock)
                link.reading = asyncio.create_task(self._read(link, reader))
            return link

    async def _read(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                self._settle(link, await reader.readexactly(size))
        except (asyncio.IncompleteReadError, OSError):
            pass  # the writer process is gone, or the pipe was closed
        finally:
            self._lost(link)

    def _settle(self, link: _Link, data: bytes) -> None:
        try:
            answer = pickle.loads(data)
        except Exception:
            # Whose answers these were is unknown: the link is given up, so that every request
            # waiting on it gets its 500 (a retry is safe) instead of waiting for ever.
            _log.exception("an answer of the writer process could not be read")
            self._lost(link)
            return
        if answer == READY:  # a writer started by a request, not by start()
            return
        for request_id, outcome, error in answer:
            future = link.waiting.pop(request_id, None)
            if future is None or future.done():  # its client went away
                continue
            try:
                if error is not None:
                    future.set_exception(_error_from_data(error))
                else:
                    future.set_result(outcome)
            except Exception as e:  # an error that cannot be rebuilt is still an answer
                future.set_exception(RuntimeError(f"the writer process failed: {e}"))

    def _lost(self, link: _Link) -> None:
        """A writer process is gone (every answer it sent has been read): whoever still
        waits on it gets a 500 that says a retry is safe; the next instruction starts anew."""
        if link.lost:
            return
        link.lost = True
        if self._link is link:
            self._link = None
        if link.stream is not None:
            link.stream.close()
        if link.pipe is not None:
            link.pipe.close()
        if not link.process.is_alive():
            link.process.join(timeout=0)  # reap it: no zombie left behind
        lost, link.waiting = link.waiting, {}
        if lost:
            _log.error("the writer process stopped with %d requests unanswered", len(lost))
        for future in lost.values():
            if not future.done():
                future.set_exception(
                    WriterUnavailable(
                        "the registry's writer stopped; a retry with the same "
                        "Idempotency-Key is safe"
                    )
                )

    async def submit(self, kind: str, raw: object, idempotency_key: str) -> Outcome:
        """Carry out a signed instruction in the writer process; its outcome once committed."""
        link = await self._open()
        assert link.stream is not None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        request_id = next(self._ids)
        frame = _frame((request_id, kind, raw, idempotency_key))
        link.waiting[request_id] = future
        if not link.outbox:
            loop.call_soon(link.send_outbox)
        link.outbox.append(frame)
        return await future

    async def aclose(self) -> None:
        """Close the pipe: the writer process finishes the batch it holds and exits."""
        link, self._link = self._link, None
        if link is None:
            return
        if link.stream is not None:
            link.stream.close()
        if link.pipe is not None:
            link.pipe.close()
        await asyncio.to_thread(link.process.join, 30)
        if link.reading is not None:
            await asyncio.gather(link.reading, return_exceptions=True)
