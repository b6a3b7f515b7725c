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
  database as the writer threads were.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import itertools
import logging
import multiprocessing
import signal
from collections.abc import Iterator
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

#: What travels back: (request id, outcome) or (request id, error as data).
Answer = tuple[int, Outcome | None, tuple[str, str, str, dict[str, Any]] | None]


class WriterUnavailable(RegistryError):
    """The writer process stopped before it answered; nothing is known of the request."""

    code = "internal_error"
    http_status = 500


def _error_as_data(error: BaseException) -> tuple[str, str, str, dict[str, Any]]:
    if isinstance(error, RegistryError):
        kind = type(error)
        return (kind.__module__, kind.__qualname__, error.message, error.details)
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
    nothing) and sends the answers once it has committed; meanwhile new instructions queue in
    the pipe for the next batch.
    """
    from registry.config import Settings
    from registry.service.setup import open_registry
    from registry.service.submit import prepare

    stop = _StopSignal()
    registry = open_registry(Settings(), migrate_schema=False)
    gc.collect()
    gc.freeze()  # as in the API process (registry.api.server): full collections stay short
    try:
        connection.send(READY)
    except (OSError, ValueError):
        return
    closed = False
    while not (stop.requested or closed):
        try:
            with stop.interruptible():
                requests = [connection.recv()]
        except (EOFError, OSError, _Stopped):
            break  # the API process is gone or closed the pipe, or we were told to stop
        try:
            while len(requests) < BATCH and connection.poll():
                requests.append(connection.recv())
        except (EOFError, OSError):
            closed = True  # carry out what was read; nobody may be left to answer
        answers: list[Answer] = []
        works = []
        for request_id, kind, raw, idempotency_key in requests:
            try:
                work = prepare(registry, raw, expected_type=kind, idempotency_key=idempotency_key)
            except RegistryError as e:
                answers.append((request_id, None, _error_as_data(e)))
                continue
            works.append((request_id, work))
        results = registry.writes.run_together([work for _, work in works])
        for (request_id, _), result in zip(works, results, strict=True):
            if isinstance(result, BaseException):
                answers.append((request_id, None, _error_as_data(result)))
            else:
                answers.append((request_id, result, None))
        try:
            for answer in answers:
                connection.send(answer)
        except (OSError, ValueError):
            break  # the API process is gone: nobody waits for these answers any more


class _Stopped(Exception):
    """SIGTERM while waiting for instructions."""


class _StopSignal:
    """SIGTERM stops the writer between batches, never inside one; Ctrl-C is for the API
    process (it reaches the whole process group), which then closes the pipe."""

    def __init__(self) -> None:
        self.requested = False
        self._waiting = False
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, _signum: int, _frame: object) -> None:
        self.requested = True
        if self._waiting:
            raise _Stopped

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False


class WriterProcess:
    """The API process's side: sends instructions, hands outcomes back to awaiting requests.

    It lives on the event loop: the answers are read when the pipe is readable, in the loop's
    own thread, so no thread sits between the writer process and the requests.
    """

    def __init__(self) -> None:
        self._ids = itertools.count()
        self._waiting: dict[int, asyncio.Future[Outcome]] = {}
        self._connection: Connection | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, timeout: float = 120.0) -> None:
        """Start the writer process and wait until it takes instructions (it opens the
        registry: the database and the key). A server is not ready before its writer is: a
        writer that cannot start fails the start, with its reason in the log."""
        connection = self._connection or self._spawn()
        if not connection.poll(timeout):
            raise RuntimeError(f"the writer process did not start within {timeout:.0f} s")
        try:
            first = connection.recv()
        except (EOFError, OSError) as e:
            raise RuntimeError("the writer process failed to start (see its error above)") from e
        if first != READY:
            raise RuntimeError(f"the writer process said {first!r} instead of {READY!r}")

    def _spawn(self) -> Connection:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(
            target=serve_writes, args=(theirs,), name="registry-writer", daemon=True
        )
        process.start()
        theirs.close()
        self._connection, self._process, self._loop = ours, process, None
        return ours

    def _watch(self, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            loop.add_reader(connection.fileno(), self._read, connection)
            self._loop = loop

    def _read(self, connection: Connection) -> None:
        try:
            while connection.poll():
                answer = connection.recv()
                if answer == READY:  # a writer started by a request, not by start()
                    continue
                request_id, outcome, error = answer
                future = self._waiting.pop(request_id, None)
                if future is None or future.done():  # its client went away
                    continue
                if error is not None:
                    future.set_exception(_error_from_data(error))
                else:
                    future.set_result(outcome)
        except (EOFError, OSError):
            self._lost(connection)

    def _lost(self, connection: Connection) -> None:
        """The writer process is gone: whoever still waits on it gets a 500 that says a retry
        is safe, and the next instruction starts a new one."""
        if connection is not self._connection:
            return
        if self._loop is not None:
            self._loop.remove_reader(connection.fileno())
        connection.close()
        self._connection = self._process = self._loop = None
        lost, self._waiting = self._waiting, {}
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
        connection = self._connection or self._spawn()
        self._watch(connection)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        request_id = next(self._ids)
        self._waiting[request_id] = future
        try:
            connection.send((request_id, kind, raw, idempotency_key))
        except (OSError, ValueError):
            self._lost(connection)  # fails this request too: it is among the waiting
        return await future

    async def aclose(self) -> None:
        """Close the pipe: the writer process finishes the batch it holds and exits."""
        connection, process = self._connection, self._process
        if connection is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(connection.fileno())
        self._connection = self._process = self._loop = None
        connection.close()
        if process is not None:
            await asyncio.to_thread(process.join, 30)
