"""The writer in a process of its own, shared by every API process of a server.

One uvicorn worker is one Python interpreter: with the writer as a thread, the event loop (HTTP,
validation, JSON) and the writer (statements, signatures, canonical checks) take turns on one
interpreter lock, and a transfer costs the sum of both. ``registry serve`` therefore starts one
writer process (:class:`WriterHost`) before its API processes, and each API process
(:class:`WriterProcess`) connects to it over a Unix socket: it sends each signed instruction
as received (its type, body and ``Idempotency-Key``), the writer process carries it out exactly
as :func:`registry.service.submit.submit` would (same ``prepare``, same group commit, same
transaction), and sends the outcome back once it has committed. HTTP and writing run at once,
on different cores, and with ``--workers N`` every worker's instructions share the one writer's
batches instead of N writers taking turns at the ledger's lock.

Nothing about the guarantees changes:

- an answer is sent only after its transaction committed, so acknowledged still means durable;
- if the writer process dies, every request waiting on it gets a 500 that says a retry with the
  same ``Idempotency-Key`` is safe (what was committed is answered from the stored answer, what
  was not is carried out); the server starts another writer process on the same socket, and
  the next request reaches it (a connection made meanwhile waits in the socket's backlog, for
  at most :data:`READY_TIMEOUT`; while no writer can start, the server closes such
  connections, so their requests get the same 500 instead of waiting);
- if an API process dies, the writer process carries out what it had read from it (committed
  but unacknowledged, never half-applied: its clients retry with their keys) and serves the
  others; if the server's own process dies, the writer finishes its batch and exits;
- neither side ever waits on the other: the API process writes and reads its socket on its
  event loop, so a burst of requests queues in memory instead of leaving both blocked, and the
  writer sends answers without blocking, so an API process that stops reading holds up no
  other (past :data:`MAX_UNSENT` bytes unread, it is given up);
- what crosses the socket goes in as few messages as it can: the instructions that arrive in
  one turn of the event loop are written together, the writer reads whatever is waiting in one
  go, and the answers of a batch go back as one message to each API process (a system call and
  a wake-up each cost about as much as the rest of a message's way);
- a server is not ready until its writer process is, and SIGTERM or Ctrl-C sent to the whole
  process group stop the API processes gracefully: they answer what they hold, then the server
  closes the writer's control pipe and the writer process (which ignores both signals) ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import itertools
import logging
import math
import multiprocessing
import os
import pickle
import selectors
import shutil
import signal
import socket
import stat
import struct
import tempfile
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from registry.errors import ConfigurationError, RegistryError
from registry.logs import log_to_stderr

if TYPE_CHECKING:  # the server's own process launches a writer before it imports the rest
    from registry.service.submit import Outcome

_log = logging.getLogger(__name__)

BATCH = 16
"""Most instructions one transaction of the writer process carries out. Smaller than the
writer thread's batch on purpose: while the writer process commits one batch, the API process
answers the one before and reads the next, so two half-size batches in flight keep both busy.
With 32 clients on two cores this gave 1,600 transfers/s and a p99 of 25-30 ms, against
1,300-1,500/s and 30-40 ms with batches of 24 to 64 (``scripts/bench``)."""

MAX_UNSENT = 64 << 20
"""Bytes of answers an API process may leave unread before the writer gives it up."""

ADDRESS_ENV = "REGISTRY_WRITER_SOCKET"
"""Where ``registry serve`` tells its API processes the writer's socket is."""

READY = "ready"
"""The writer process's first message: it has opened the registry and takes instructions."""

OPEN = "open"
"""The server's message to a writer process that has imported its code: open the registry (the
server has brought its schema up to date). A writer process whose control pipe ends before it
is told so exits without a word: the server could not start, and said why itself."""

#: What travels back, a batch's answers in one message: (request id, outcome) or
#: (request id, error as data).
Answer = tuple[int, "Outcome | None", tuple[str, str, str, dict[str, Any]] | None]

_HEADER = struct.Struct("!i")
"""Each message on the socket: its length, then its pickle."""


def _frame(message: object) -> bytes:
    data = pickle.dumps(message)
    return _HEADER.pack(len(data)) + data


class _Peer:
    """An API process, seen from the writer process: the complete messages it sent, read in as
    few calls as possible (everything waiting, not one message at a time), and its answers not
    yet sent. Its socket never blocks: an API process that stops reading holds up nobody."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._buffer = bytearray()
        self._ready: deque[Any] = deque()
        self._unsent = bytearray()
        self.closed = False
        """It closed its end (what it sent before is still taken) or was given up."""

    def read_waiting(self) -> None:
        """Read whatever has arrived, without waiting; at the end of the stream, ``closed``."""
        while not self.closed:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._close()
                return
            self._buffer += data
            self._split()

    def has_ready(self) -> bool:
        return bool(self._ready)

    def take_ready(self, most: int) -> list[Any]:
        taken: list[Any] = []
        while self._ready and len(taken) < most:
            taken.append(self._ready.popleft())
        return taken

    def send(self, frame: bytes) -> None:
        """Queue ``frame`` and send what the socket takes now; nothing if the peer is gone.
        An API process that has left :data:`MAX_UNSENT` bytes of answers unread is given up:
        it sees its connection close, and answers 500 (a retry is safe) to whoever waits."""
        if self.closed:
            return
        unread = len(self._unsent)  # answers sent before this one, still not read
        if unread > MAX_UNSENT:
            _log.error("an API process left %d bytes of answers unread; closing its connection",
                       unread)
            self._close()
            return
        self._unsent += frame
        self.flush()

    def flush(self) -> None:
        while self._unsent and not self.closed:
            try:
                sent = self.sock.send(self._unsent)
            except BlockingIOError:
                return
            except OSError:
                self._close()
                return
            del self._unsent[:sent]

    @property
    def sending(self) -> bool:
        return bool(self._unsent)

    def _close(self) -> None:
        self.closed = True
        self._unsent.clear()  # nobody will read it
        # The API process sees the end of its connection now (its waiting requests get a 500
        # that says a retry is safe); the descriptor itself is closed once it is unregistered.
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

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


class WriteTimeout(RegistryError):
    """The writer process did not answer in time (frozen or stuck); nothing is known of the
    request, and a retry with the same Idempotency-Key is safe."""

    code = "write_timeout"
    http_status = 504


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


class _Peers:
    """The writer process's side of the socket: the API processes connected to it, read in
    turn and answered without blocking, and the server's control pipe, whose end means the
    server is gone."""

    def __init__(self, listener: socket.socket, control: Connection) -> None:
        self._selector = selectors.DefaultSelector()
        self._listener = listener
        listener.setblocking(False)
        self._selector.register(listener, selectors.EVENT_READ)
        self._control = socket.socket(fileno=os.dup(control.fileno()))
        control.close()
        self._selector.register(self._control, selectors.EVENT_READ)
        self._peers: list[_Peer] = []
        self._turn = 0
        self._accept_failed = -math.inf
        self.server_gone = False

    def take(self, most: int) -> list[tuple[_Peer, Any]]:
        """Up to ``most`` instructions, taken in turn from each API process that has some:
        waits for the first, then takes what has arrived. Empty only once the server is gone
        and everything read has been taken."""
        while True:
            waiting = any(peer.has_ready() for peer in self._peers)
            self._poll(timeout=0 if waiting or self.server_gone else None)
            taken = self._in_turn(most)
            if taken or self.server_gone:
                return taken

    def answer(self, peer: _Peer, answers: list[Answer]) -> None:
        """Send ``peer`` a batch's answers to its requests, in one message."""
        try:
            frame = _frame(answers)
        except Exception:  # an answer that cannot be pickled: say so instead, for each
            frame = _frame([_picklable(answer) for answer in answers])
        self._send(peer, frame)

    def _send(self, peer: _Peer, frame: bytes) -> None:
        peer.send(frame)
        self._watch(peer)

    def _watch(self, peer: _Peer) -> None:
        """Listen to ``peer`` for what it sends and, while answers wait, for room to send."""
        if peer.closed:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(peer.sock)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if peer.sending else 0)
        if self._selector.get_key(peer.sock).events != events:
            self._selector.modify(peer.sock, events, peer)

    def finish_sending(self, within: float) -> None:
        """Send the answers still queued, for at most ``within`` seconds (the server is gone;
        an API process may still be reading)."""
        deadline = time.monotonic() + within
        while any(peer.sending for peer in self._peers):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._poll(timeout=remaining)

    def _poll(self, timeout: float | None) -> None:
        for key, events in self._selector.select(timeout):
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj is self._control:
                try:
                    more = self._control.recv(1)
                except OSError:
                    more = b""
                if not more:  # the server's process ended, or closed the pipe
                    self._selector.unregister(self._control)
                    self._control.close()
                    self.server_gone = True
            else:
                peer: _Peer = key.data
                if events & selectors.EVENT_WRITE:
                    peer.flush()
                if events & selectors.EVENT_READ:
                    peer.read_waiting()
                self._watch(peer)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as e:  # out of file descriptors, say: not a reason to spin
                if time.monotonic() - self._accept_failed > 60:
                    self._accept_failed = time.monotonic()
                    _log.error("the writer process cannot accept a connection: %s", e)
                time.sleep(0.1)
                return
            peer = _Peer(sock)
            self._peers.append(peer)
            self._selector.register(sock, selectors.EVENT_READ, peer)
            self._send(peer, _frame(READY))

    def _in_turn(self, most: int) -> list[tuple[_Peer, Any]]:
        """Up to ``most`` messages, one from each peer in turn, starting one further along
        each time so that no API process is always last."""
        taken: list[tuple[_Peer, Any]] = []
        peers = self._peers[self._turn :] + self._peers[: self._turn]
        while len(taken) < most:
            before = len(taken)
            for peer in peers:
                taken.extend((peer, message) for message in peer.take_ready(1))
                if len(taken) == most:
                    break
            if len(taken) == before:
                break
        if taken:
            self._turn = (self._turn + 1) % len(self._peers)
        for peer in [p for p in self._peers if p.closed and not p.has_ready()]:
            self._peers.remove(peer)
            peer.sock.close()
        return taken


def serve_writes(listener: socket.socket, control: Connection) -> None:
    """The writer process: carry out what the API processes send until the server is gone.

    It takes what is waiting on its connections (up to :data:`BATCH`, in turn from each API
    process), carries it out in one transaction in this thread (``GroupCommit.run_together``:
    each use case still all or nothing) and, once it has committed, sends each API process the
    answers to its own requests. The API processes read answers as they come, whatever they
    are sending, so neither side can wait for the other for ever.

    Signals do not stop it: SIGINT (Ctrl-C reaches the whole process group) and SIGTERM (as a
    service manager sends to the whole group) are for the server, whose API processes answer
    what they hold; the server then closes ``control`` and this process exits. Only SIGKILL
    stops it in the middle, which a transaction survives.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    log_to_stderr()
    from registry.config import Settings
    from registry.service.setup import open_registry
    from registry.service.submit import prepare

    try:
        told = control.recv()
    except (EOFError, OSError):
        return
    if told != OPEN:
        return
    registry = open_registry(Settings(), migrate_schema=False)
    gc.collect()
    gc.freeze()  # as in the API process (registry.api.server): full collections stay short
    try:
        control.send(READY)
    except (OSError, ValueError):
        return
    peers = _Peers(listener, control)
    while requests := peers.take(BATCH):
        # An API process that is gone still has what was read from it carried out,
        # unanswered: committed or not at all, never half done (its clients retry).
        answers: dict[_Peer, list[Answer]] = {}
        works = []
        for peer, (request_id, kind, raw, idempotency_key) in requests:
            try:
                work = prepare(registry, raw, expected_type=kind, idempotency_key=idempotency_key)
            except Exception as e:  # a refusal, or a failure of this request alone
                answers.setdefault(peer, []).append((request_id, None, _error_as_data(e)))
                continue
            works.append((peer, request_id, work))
        if works:
            results = registry.writes.run_together([work for _, _, work in works])
            for (peer, request_id, _), result in zip(works, results, strict=True):
                if isinstance(result, BaseException):
                    answers.setdefault(peer, []).append(
                        (request_id, None, _error_as_data(result))
                    )
                else:
                    answers.setdefault(peer, []).append((request_id, result, None))
        for peer, theirs in answers.items():
            peers.answer(peer, theirs)
    peers.finish_sending(within=5.0)
    # The server is gone (its stop removes the socket too, unless it was killed): nobody
    # will connect again.
    address = listener.getsockname()
    with contextlib.suppress(OSError):
        os.unlink(address)
        os.rmdir(os.path.dirname(address))


def _unavailable(what: str) -> WriterUnavailable:
    return WriterUnavailable(
        f"the registry's writer {what}; a retry with the same Idempotency-Key is safe"
    )


def _picklable(answer: Answer) -> Answer:
    try:
        pickle.dumps(answer)
    except Exception as e:
        return (answer[0], None, _error_as_data(e))
    return answer


_SOCKET = "writer.sock"
_SUN_PATH = 108
"""Bytes a Unix socket's path may take on Linux, with its final NUL."""


def _socket_dir() -> str:
    """A new directory for the writer's socket that only this user can enter: under
    ``$XDG_RUNTIME_DIR`` when there is one (no clean-up of old temporary files reaches it),
    else, or when it cannot be written (``su`` keeps the invoking user's) or a socket's path
    there would be too long for the system, under the temporary directory."""
    for parent in (os.environ.get("XDG_RUNTIME_DIR") or None, None):
        try:
            path = tempfile.mkdtemp(prefix="registry-writer-", dir=parent)
        except OSError:
            if parent is None:
                raise
            continue
        if len(os.fsencode(os.path.join(path, _SOCKET))) < _SUN_PATH:
            return path
        os.rmdir(path)
    raise ConfigurationError(
        f"no directory for the writer's socket: {path} is too long a path for a Unix socket; "
        "set TMPDIR to a shorter one"
    )


class WriterHost:
    """The server's writer process and the Unix socket its API processes reach it on.

    The socket lives as long as the server, in a directory of its own that only this user can
    enter (:func:`_socket_dir`); each writer process listens on it in turn. :meth:`start`
    returns once the first is ready to take instructions. A thread then watches it: a writer
    process that stops while the server runs is logged and replaced. Connections made
    meanwhile wait in the socket's backlog for the new one; if it cannot start, they are closed
    (their requests get a 500 that says a retry is safe) and it is tried again, less and less
    often.
    """

    def __init__(self) -> None:
        self._dir = _socket_dir()
        self.address = os.path.join(self._dir, _SOCKET)
        self._listener = self._listen()
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._control: Connection | None = None
        self._launched = False
        """The current writer process was launched and not yet waited for."""
        self._opening = False
        """The current writer process was told to open the registry."""
        self._lock = threading.Lock()
        """Held while a writer process is started: :meth:`stop` waits for it."""
        self._stopping = threading.Event()

    def _listen(self) -> socket.socket:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.address)
        listener.listen(socket.SOMAXCONN)
        return listener

    def _listen_again_if_gone(self) -> None:
        """Make the socket anew, at the same address, if its file is gone: the API processes
        connect by its path, which a clean-up of ``$XDG_RUNTIME_DIR`` (the end of the user's
        last session) removes while the server runs. Connections made so far are not
        affected; the next ones, after a writer process is replaced, would find nothing."""
        if os.path.exists(self.address):
            return
        _log.error("the writer's socket %s was removed; making it again", self.address)
        os.makedirs(os.path.dirname(self._dir), mode=0o700, exist_ok=True)
        try:
            os.mkdir(self._dir, mode=0o700)
        except FileExistsError:
            # Made again by someone: only a directory of this user's that no one else may
            # enter is used; in another's, they could put their own socket at the address,
            # and the API processes would hand them the instructions (writes then fail).
            found = os.lstat(self._dir)
            if (not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid()
                    or found.st_mode & 0o077):
                _log.error("not listening in %s: it is not a directory of this user's that "
                           "only this user may enter", self._dir)
                return
        old, self._listener = self._listener, self._listen()
        old.close()

    def launch(self) -> None:
        """Start the writer process's interpreter: it imports its code (most of its start)
        while this process does something else, as bringing the schema up to date. Until it is
        told to open the registry (:meth:`open`, :meth:`start`) it opens nothing, and
        :meth:`stop` ends it without a word."""
        with self._lock:
            self._launch_if_needed()

    def open(self) -> None:
        """Tell the writer process to open the registry (the schema is up to date), launching
        it if need be, without waiting for it: :meth:`start` waits."""
        with self._lock:
            self._launch_if_needed()
            self._open()

    def start(self, timeout: float = 120.0) -> None:
        """Start the writer process (unless :meth:`launch` did) and wait until it takes
        instructions (it opens the registry: the database and the key). A server is not ready
        before its writer is: a writer that cannot start fails the start, with its reason in
        the log."""
        try:
            with self._lock:
                self._spawn(timeout)
        except BaseException:
            self.stop()
            raise
        threading.Thread(target=self._watch, name="registry-writer-watch", daemon=True).start()

    def _launch_if_needed(self) -> None:
        """A writer process launched and not yet waited for is the next to start; otherwise
        (none yet, or the last one started and since died) a new one is launched."""
        if not self._launched:
            self._launch()

    def _launch(self) -> None:
        if self._control is not None:
            self._control.close()
        ours, theirs = self._context.Pipe()
        process = self._context.Process(
            target=serve_writes,
            args=(self._listener, theirs),
            name="registry-writer",
            daemon=True,
        )
        process.start()
        theirs.close()
        self._process, self._control = process, ours
        self._launched, self._opening = True, False

    def _open(self) -> None:
        if not self._opening:
            assert self._control is not None
            self._opening = True
            # A writer process that already died (its import failed) is reported by the wait
            # for its greeting, with its error above.
            with contextlib.suppress(OSError):
                self._control.send(OPEN)

    def _spawn(self, timeout: float) -> None:
        """Start a writer process (the one launched, if any); on failure it is gone again when
        this raises."""
        self._launch_if_needed()
        self._launched = False  # the next one is launched anew
        process, ours = self._process, self._control
        assert process is not None and ours is not None
        try:
            self._open()
            deadline = time.monotonic() + timeout
            while not ours.poll(0.2):
                if self._stopping.is_set():
                    raise RuntimeError("the server stopped while a writer process started")
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the writer process did not start within {timeout:.0f} s"
                    )
            try:
                first = ours.recv()
            except (EOFError, OSError) as e:
                raise RuntimeError(
                    "the writer process failed to start (see its error above)"
                ) from e
            if first != READY:
                raise RuntimeError(f"the writer process said {first!r} instead of {READY!r}")
        except BaseException:
            if process.is_alive():
                process.kill()
            process.join(10)
            raise

    def _watch(self) -> None:
        while True:
            process = self._process
            assert process is not None
            process.join()
            if self._stopping.is_set():
                return
            _log.error(
                "the writer process stopped (exit code %s); starting another", process.exitcode
            )
            if not self._replace():
                return

    def _replace(self) -> bool:
        """Start another writer process, trying again less and less often; ``False`` once the
        server is stopping."""
        delay = 1.0
        while True:
            with self._lock:
                if self._stopping.is_set():
                    return False
                try:
                    self._listen_again_if_gone()
                    self._spawn(timeout=60.0)
                    return True
                except Exception:
                    if self._stopping.is_set():
                        return False
                    _log.exception("no writer process could start; trying again in %.0f s",
                                   delay)
            if not self._turn_away_for(delay):
                return False
            delay = min(2 * delay, 30.0)

    def _turn_away_for(self, seconds: float) -> bool:
        """Turn connections away until the next try; ``False`` once the server is stopping."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self._turn_away()
            if self._stopping.wait(0.25):
                return False
        return True

    def _turn_away(self) -> None:
        """Close the connections waiting for a writer that could not start: their requests
        are answered (500, a retry is safe) instead of waiting for the next try."""
        # Non-blocking, as every writer process sets it anyway (the flag is shared with them).
        self._listener.setblocking(False)
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:  # none left
                return
            sock.close()

    def stop(self, timeout: float = 30.0) -> None:
        """Let the writer process finish what it holds and exit, then remove the socket."""
        self._stopping.set()
        with self._lock:
            if self._control is not None:
                self._control.close()
            process = self._process
            if process is not None and not self._opening:
                process.kill()  # it has opened nothing: no need to wait for its imports
        if process is not None:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(10)
        self._listener.close()
        shutil.rmtree(self._dir, ignore_errors=True)


READY_TIMEOUT = 15.0
"""Seconds an API process waits for a new connection's greeting before it answers 500 (a
retry is safe): a writer process that was just replaced starts in a second or two."""


class _Link:
    """One connection to the writer process, and the requests waiting on its answers."""

    def __init__(self, stream: asyncio.StreamWriter) -> None:
        self.stream = stream
        self.reading: asyncio.Task[None] | None = None
        self.waiting: dict[int, asyncio.Future[Outcome]] = {}
        self.outbox: list[bytes] = []
        """Instructions of this turn of the event loop, written to the socket together after it."""
        self.lost = False

    def send_outbox(self) -> None:
        frames, self.outbox = self.outbox, []
        if not self.stream.is_closing():
            self.stream.write(b"".join(frames))
        # Otherwise the writer process is gone, and _lost answers every waiting request.

    def usable(self) -> bool:
        return not self.lost and not self.stream.is_closing()


class WriterProcess:
    """The API process's side: sends instructions, hands outcomes back to awaiting requests.

    It lives on the event loop and never blocks it: instructions are written to the socket
    through an asyncio transport (buffered when the writer process is busy), and a task reads
    the answers as they come, so a burst of requests cannot fill both directions of the socket
    and leave each process waiting for the other. Instructions go to a connection only once
    the writer process has greeted it; the first is made by the first instruction (the server
    was not started before its writer was ready). ``host`` is a writer this process started for
    itself (an app served without ``registry serve``), stopped with it.
    """

    def __init__(
        self, address: str, *, host: WriterHost | None = None, answer_within: float = 120.0
    ) -> None:
        self._address = address
        self._host = host
        self._answer_within = answer_within
        """Seconds a request waits for its answer: a writer process that is frozen (stopped,
        or its database connection stuck) is not gone, so nothing else would ever answer."""
        self._ids = itertools.count()
        self._link: _Link | None = None
        self._connecting: asyncio.Future[_Link] | None = None
        """The connection being made, which every request that needs it awaits: if it fails,
        all of them get their 500 at once, not one after another."""

    async def _open(self) -> _Link:
        """The connection to the writer process, made anew if the last one was lost."""
        link = self._link
        if link is not None and link.usable():
            return link
        if self._connecting is None:
            if link is not None:
                self._lost(link)
            connecting = asyncio.ensure_future(self._new_link())
            # Retrieved even if every request that awaited it went away.
            connecting.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._connecting = connecting
        # Shielded: a request whose client goes away does not call the attempt off for others.
        return await asyncio.shield(self._connecting)

    async def _new_link(self) -> _Link:
        try:
            try:
                reader, stream = await asyncio.wait_for(self._connect(), READY_TIMEOUT)
            except Exception as e:  # refused, turned away, timed out, or a garbled greeting
                raise _unavailable(f"cannot be reached ({type(e).__name__})") from e
            link = self._link = _Link(stream)
            link.reading = asyncio.create_task(self._read(link, reader))
            return link
        finally:
            self._connecting = None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A new connection to the writer process, once it has greeted it."""
        reader, stream = await asyncio.open_unix_connection(self._address)
        try:
            (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
            first = pickle.loads(await reader.readexactly(size))
            if first != READY:
                raise OSError(f"the writer process said {first!r} instead of {READY!r}")
        except BaseException:
            stream.close()
            raise
        return reader, stream

    async def _read(self, link: _Link, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                self._settle(link, await reader.readexactly(size))
        except (asyncio.IncompleteReadError, OSError):
            pass  # the writer process is gone, or the socket was closed
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
        """The writer process is gone (every answer it sent has been read): whoever still
        waits on it gets a 500 that says a retry is safe; the next instruction connects anew."""
        if link.lost:
            return
        link.lost = True
        if self._link is link:
            self._link = None
        link.stream.close()
        lost, link.waiting = link.waiting, {}
        if lost:
            _log.error("the writer process stopped with %d requests unanswered", len(lost))
        for future in lost.values():
            if not future.done():
                future.set_exception(_unavailable("stopped"))

    async def submit(self, kind: str, raw: object, idempotency_key: str) -> Outcome:
        """Carry out a signed instruction in the writer process; its outcome once committed."""
        link = await self._open()
        if not link.usable():  # lost again while this request waited for it
            raise _unavailable("stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        request_id = next(self._ids)
        frame = _frame((request_id, kind, raw, idempotency_key))
        link.waiting[request_id] = future
        if not link.outbox:
            loop.call_soon(link.send_outbox)
        link.outbox.append(frame)
        timer = loop.call_later(self._answer_within, self._too_late, link, request_id)
        try:
            return await future
        finally:
            timer.cancel()
            # Answered, or its client went away: an answer that comes later finds no one.
            link.waiting.pop(request_id, None)

    def _too_late(self, link: _Link, request_id: int) -> None:
        """The request's answer did not come in time: it is given up (an answer that comes
        later is dropped, as for a client gone away) and answered 504."""
        future = link.waiting.pop(request_id, None)
        if future is not None and not future.done():
            _log.error("the writer process did not answer within %.0f s", self._answer_within)
            future.set_exception(WriteTimeout(
                f"the registry's writer did not answer within {self._answer_within:.0f} s; "
                "whether the instruction was carried out is not known, and a retry with the "
                "same Idempotency-Key is safe"
            ))

    async def aclose(self) -> None:
        """Close this process's connection; a writer it started for itself finishes what it
        holds and exits."""
        link, self._link = self._link, None
        if link is not None:
            link.stream.close()
            if link.reading is not None:
                await asyncio.gather(link.reading, return_exceptions=True)
        if self._host is not None:
            await asyncio.to_thread(self._host.stop)

