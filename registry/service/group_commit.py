"""Group commit: concurrent use cases share one durable transaction and one checkpoint.

A registry under load spends most of a write on what every write repeats: taking the write lock,
reading the ledger's tail, signing a checkpoint and waiting for the disk to flush. So writes are
queued, and whichever request finds the writer free carries out everything queued (up to
``max_batch``) in one serialised transaction:

- each use case runs inside its own savepoint: a refused instruction (a ``RegistryError``) rolls
  back its own changes and its own appends, and the others go on;
- after the last one, one checkpoint is signed for the new size, and the transaction commits;
- only then does any request of the batch get its answer. Acknowledged still means committed
  and durable, and a use case is still all or nothing.

If the transaction itself fails (the database refused something no use case expected), nothing
of it was committed and each use case of the batch is carried out again alone, so one bad
request cannot fail the others. A lone request never pays for a savepoint.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlmodel import Session

from registry.errors import RegistryError
from registry.service.ledger import LedgerTail
from registry.store.db import write_transaction

if TYPE_CHECKING:
    from registry.service.context import Registry

T = TypeVar("T")
Work = Callable[[Session, LedgerTail], T]

#: Most use cases one transaction carries out: bounds how long the first of them waits.
MAX_BATCH = 64


class _Job(Generic[T]):
    def __init__(self, work: Work[T]) -> None:
        self.work = work
        self.finished = False
        self._result: T | None = None
        self._error: BaseException | None = None

    def finish(self, result: T | None, error: BaseException | None) -> None:
        self._result, self._error, self.finished = result, error, True

    def outcome(self) -> T:
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]


class GroupCommit:
    """The one writer of a registry in this process; see the module docstring."""

    def __init__(self, registry: Registry, *, max_batch: int = MAX_BATCH) -> None:
        self._registry = registry
        self._max_batch = max_batch
        self._queue: deque[_Job[Any]] = deque()
        self._queue_lock = threading.Lock()
        self._writer = threading.Lock()
        self._tail: LedgerTail | None = None  # as of this process's last commit

    def run(self, work: Work[T]) -> T:
        """Carry out ``work(session, tail)`` in a committed transaction; its result or error."""
        job: _Job[T] = _Job(work)
        with self._queue_lock:
            self._queue.append(job)
        with self._writer:
            while not job.finished:
                with self._queue_lock:
                    count = min(len(self._queue), self._max_batch)
                    batch = [self._queue.popleft() for _ in range(count)]
                self._carry_out(batch)
        return job.outcome()

    def run_together(self, works: list[Work[Any]]) -> list[Any]:
        """Carry out ``works`` in one transaction (as a full queue would); results or errors."""
        jobs: list[_Job[Any]] = [_Job(w) for w in works]
        with self._writer:
            self._carry_out(jobs)
        answers: list[Any] = []
        for job in jobs:
            try:
                answers.append(job.outcome())
            except Exception as e:
                answers.append(e)
        return answers

    def _carry_out(self, batch: list[_Job[Any]]) -> None:
        try:
            answers = self._commit(batch)
        except Exception as e:
            if len(batch) == 1:
                batch[0].finish(None, e)
                return
            for job in batch:
                self._carry_out([job])
            return
        for job, (result, error) in zip(batch, answers, strict=True):
            job.finish(result, error)

    def _commit(self, batch: list[_Job[Any]]) -> list[tuple[Any, RegistryError | None]]:
        """One transaction for ``batch``; the answers, valid only once it has committed."""
        answers: list[tuple[Any, RegistryError | None]] = []
        registry = self._registry
        try:
            with write_transaction(registry.engine) as session:
                tail = LedgerTail.read(session, cached=self._tail)
                self._tail = None  # unknown until the commit succeeds
                if len(batch) == 1:
                    try:
                        answers.append((batch[0].work(session, tail), None))
                    except RegistryError as e:
                        # Alone, a refusal rolls the whole transaction back: no savepoint.
                        raise _Refused(e) from e
                else:
                    for job in batch:
                        mark = tail.mark()
                        savepoint = session.begin_nested()
                        try:
                            result = job.work(session, tail)
                        except RegistryError as e:
                            savepoint.rollback()
                            tail.reset(mark)
                            answers.append((None, e))
                        else:
                            savepoint.commit()
                            answers.append((result, None))
                tail.publish(session, registry)
        except _Refused as refused:
            return [(None, refused.error)]
        self._tail = tail
        return answers


class _Refused(Exception):
    """A lone use case's refusal, carried out of the transaction so that it rolls back."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error
