"""Group commit: concurrent use cases share one durable transaction and one checkpoint.

A registry under load spends most of a write on what every write repeats: taking the write lock,
reading the ledger's tail, signing a checkpoint and waiting for the disk to flush. So writes are
queued, and one writer thread per registry and process carries out everything queued (up to
``max_batch``) in one serialised transaction:

- a refused instruction (a ``RegistryError``) leaves nothing behind and the others go on;
- after the last one, one checkpoint is signed for the new size, and the transaction commits;
- only then does any request of the batch get its answer. Acknowledged still means committed
  and durable, and a use case is still all or nothing.

Requests wait without holding a thread: an API served in-process (the tests' servers, an
embedding) awaits :meth:`GroupCommit.run_async`, so a burst of requests costs the event loop
one queue append each, and the writer hands the answers back in one go. Blocking callers (the
CLI, the tests) use :meth:`GroupCommit.run`. The writer thread starts with the first request
and ends after a second without work. ``registry serve`` instead runs the writer in a process of
its own (``registry.service.writer_process``), which carries out each batch it reads from its
API processes with :meth:`GroupCommit.run_together`.

A batch first runs without savepoints, since almost every instruction is accepted; if one is
refused, the transaction rolls back and the batch runs again with a savepoint for each. If the
transaction itself fails (the database refused something no use case expected), nothing of it
was committed and each use case of the batch is carried out again alone, so one bad request
cannot fail the others.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlmodel import Session

from registry.errors import (
    DatabaseMovedError,
    DatabaseUnavailableError,
    RegistryBusyError,
    RegistryError,
    StorageFailedError,
)
from registry.service.ledger import LedgerTail
from registry.store.db import write_transaction
from registry.store.statements import Read

if TYPE_CHECKING:
    from registry.service.context import Registry

_log = logging.getLogger(__name__)

T = TypeVar("T")
Work = Callable[[Session, LedgerTail], T]


@dataclass(frozen=True)
class ReadingWork(Generic[T]):
    """Work whose first reads are known before it runs (``reads``, as for
    ``statements.read_ahead``). A batch sends the reads of all its work with the transaction's
    lock: on PostgreSQL one round trip for the whole batch, not one for each use case. Each
    read's rows stay kept until something writes its tables, so the work still reads what is
    stored when it runs: what an earlier use case changed is read again, or known from the
    change itself (``statements.keep``: a movement, the blocks its source still holds)."""

    work: Work[T]
    reads: Sequence[Read]

    def __call__(self, session: Session, tail: LedgerTail) -> T:
        return self.work(session, tail)


#: Most use cases one transaction carries out: bounds how long the first of them waits.
MAX_BATCH = 64


def _settle(finished: asyncio.Future[None]) -> None:
    if not finished.done():  # the request was cancelled (its client went away): nobody waits
        finished.set_result(None)


#: How long the writer thread waits for work before it ends (a new request starts it again).
IDLE_SECONDS = 1.0


class _Job(Generic[T]):
    """One use case in the queue, and how its caller learns that it is done."""

    def __init__(self, work: Work[T], notify: Callable[[], None]) -> None:
        self.work = work
        self.finished = False
        self._notify = notify
        self._result: T | None = None
        self._error: BaseException | None = None

    def finish(self, result: T | None, error: BaseException | None) -> None:
        """Record the answer and wake the caller; never raises (the others await theirs)."""
        self._result, self._error, self.finished = result, error, True
        try:
            self._notify()
        except Exception:
            _log.exception("could not hand an answer back to its caller")

    def outcome(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class GroupCommit:
    """The one writer of a registry in this process; see the module docstring."""

    def __init__(self, registry: Registry, *, max_batch: int = MAX_BATCH) -> None:
        self._registry = registry
        self._max_batch = max_batch
        self._queue: deque[list[_Job[Any]]] = deque()  # groups that commit together
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._writing = threading.Lock()  # held while a transaction is carried out
        self._tail: LedgerTail | None = None  # as of this process's last commit

    def run(self, work: Work[T]) -> T:
        """Carry out ``work(session, tail)`` in a committed transaction; its result or error."""
        done = threading.Event()
        job: _Job[T] = _Job(work, done.set)
        self._enqueue([job])
        done.wait()
        return job.outcome()

    async def run_async(self, work: Work[T]) -> T:
        """:meth:`run` for the event loop: waits for the writer without blocking a thread."""
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()

        def notify() -> None:
            if not loop.is_closed():  # a closed loop has no caller left to wake
                loop.call_soon_threadsafe(_settle, finished)

        job: _Job[T] = _Job(work, notify)
        self._enqueue([job])
        await finished
        return job.outcome()

    def run_together(self, works: list[Work[Any]]) -> list[Any]:
        """Carry out ``works`` in one transaction, in this thread; results or errors in order.

        It takes the writer thread's place for one batch: the writer process's loop, the
        tests and the benchmark's profile use it.
        """
        jobs: list[_Job[Any]] = [_Job(w, lambda: None) for w in works]
        with self._writing:
            self._carry_out(jobs)
        answers: list[Any] = []
        for job in jobs:
            try:
                answers.append(job.outcome())
            except Exception as e:
                answers.append(e)
        return answers

    def _enqueue(self, group: list[_Job[Any]]) -> None:
        with self._wakeup:
            self._queue.append(group)
            if self._thread is not None:
                self._wakeup.notify()
                return
            try:
                self._start_writer()
            except BaseException:
                self._queue.remove(group)  # its caller is told, so it must never run
                raise

    def _start_writer(self) -> None:
        """Start the writer thread; the caller holds ``_wakeup``."""
        thread = threading.Thread(target=self._write_loop, name="registry-writer", daemon=True)
        thread.start()
        self._thread = thread  # only once it runs: a thread that never started writes nothing

    def _next_batch(self) -> list[_Job[Any]] | None:
        """Queued groups up to ``max_batch`` jobs (at least one group); ``None`` when idle."""
        with self._wakeup:
            if not self._queue:
                self._wakeup.wait(IDLE_SECONDS)
            if not self._queue:
                self._thread = None
                return None
            batch = list(self._queue.popleft())
            while self._queue and len(batch) + len(self._queue[0]) <= self._max_batch:
                batch += self._queue.popleft()
            return batch

    def _write_loop(self) -> None:
        batch: list[_Job[Any]] = []
        try:
            while (queued := self._next_batch()) is not None:
                batch = queued
                with self._writing:
                    self._carry_out(batch)
        except BaseException as e:
            # _carry_out answers every ordinary error itself; whatever still gets here must
            # not leave a caller waiting for ever, nor the queue without a writer.
            for job in batch:
                if not job.finished:
                    job.finish(None, e)
            with self._wakeup:
                self._thread = None
                if self._queue:
                    self._start_writer()
            raise

    def _carry_out(self, batch: list[_Job[Any]]) -> None:
        try:
            try:
                answers = self._commit(batch, savepoints=False)
            except _Refused as refused:
                if len(batch) == 1:
                    answers = [(None, refused.error)]
                else:
                    # Someone in the batch was refused: start again, each in a savepoint.
                    answers = self._commit(batch, savepoints=True)
        except (RegistryBusyError, StorageFailedError, DatabaseMovedError) as e:
            # No transaction at all, or a database that cannot write: each alone would fail
            # again.
            for job in batch:
                job.finish(None, e)
            return
        except Exception as e:
            if len(batch) == 1:
                batch[0].finish(None, e)
                return
            # Not a refusal, nor a busy ledger: a database failure, or a bug that one use case
            # alone may not show (a read of another's rows gone stale). Each is carried out
            # alone, and the failure is logged, not hidden by the retry.
            # A lost connection was told in a line of its own: its traceback says no more.
            _log.error("a group commit of %d failed as a whole; carrying out each alone",
                       len(batch), exc_info=None if isinstance(e, DatabaseUnavailableError) else e)
            for job in batch:
                self._carry_out([job])
            return
        for job, (result, error) in zip(batch, answers, strict=True):
            job.finish(result, error)

    def _commit(
        self, batch: list[_Job[Any]], *, savepoints: bool
    ) -> list[tuple[Any, RegistryError | None]]:
        """One transaction for ``batch``; the answers, valid only once it has committed.

        Without ``savepoints`` any refusal rolls the whole transaction back (``_Refused``):
        the common case, where nobody is refused, then pays for no savepoint at all.
        """
        answers: list[tuple[Any, RegistryError | None]] = []
        registry = self._registry
        reads = LedgerTail.first_reads()
        if not savepoints:  # each savepoint forgets what was read ahead: no use sending it
            works = [job.work for job in batch]
            reads += [r for work in works if isinstance(work, ReadingWork) for r in work.reads]
        with write_transaction(registry.engine, reads=reads) as session:
            tail = LedgerTail.read(session, cached=self._tail)
            self._tail = None  # unknown until the commit succeeds
            for job in batch:
                if not savepoints:
                    try:
                        answers.append((job.work(session, tail), None))
                    except RegistryError as e:
                        raise _Refused(e) from e
                    continue
                mark = tail.mark()
                savepoint = session.begin_nested()
                try:
                    result = job.work(session, tail)
                except RegistryError as e:  # a refusal only: a database error ends the batch
                    savepoint.rollback()
                    tail.reset(session, mark)
                    answers.append((None, e))
                else:
                    savepoint.commit()
                    answers.append((result, None))
            tail.publish(session, registry)
        self._tail = tail
        return answers


class _Refused(Exception):
    """A refusal, carried out of the transaction so that all of it rolls back."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error
