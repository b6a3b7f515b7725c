"""Hot-path statements: Core statements compiled once per dialect, run on the driver's cursor.

Every transfer runs about ten statements. Executed through SQLAlchemy's ``Connection``, each
costs some 60 µs of Python (compiled-cache lookup, execution context, events, result metadata)
on top of the few µs the driver takes, which was half of a transfer's time. A
:class:`Statement` keeps the statement written in Core, against the tables of
``registry.store.tables``, but compiles it once per dialect and hands the SQL and parameters
straight to the DBAPI cursor of the session's connection, inside the session's transaction
(and savepoint, since :func:`~registry.store.tables.core` asks the session for it every time).

What SQLAlchemy would still have done is kept: parameters and result values go through the
types' bind and result processors, rows come back with named fields, and driver errors raised
while executing or fetching are re-raised as SQLAlchemy's (``IntegrityError`` and the rest), so
callers catch the same types. (Unlike SQLAlchemy, an error inside a bind processor is not
wrapped in a ``StatementError``; our hot-path types have no bind processors.) Statements that
need expanding parameters or other per-call compilation are not for this class: use the
session.

On PostgreSQL every statement waits for its answer: a round trip. :func:`read_ahead` sends
independent reads together (a group commit sends those of all its use cases with its lock: one
round trip) and keeps their rows for the calls that ask for them, until a write of their tables;
:func:`keep` puts back rows a writer knows. See its docstring for why a row so kept is always
the row the read would return.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Delete,
    Dialect,
    Engine,
    Insert,
    Select,
    Table,
    Update,
    bindparam,
    event,
    exc,
    insert,
)
from sqlalchemy.pool import Pool
from sqlalchemy.sql.expression import Executable, TableClause, TextClause
from sqlalchemy.sql.selectable import TextualSelect
from sqlalchemy.sql.util import find_tables
from sqlalchemy.sql.visitors import iterate
from sqlmodel import Session

from registry.store.tables import core

Params = Mapping[str, Any]
Processor = Callable[[Any], Any]
Read = tuple["Statement", Params]
"""A read to send ahead: a statement and its parameters (see :func:`read_ahead`)."""


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...] | None
    """Bind names in order for a positional paramstyle; ``None`` when parameters are named."""
    binds: tuple[tuple[str, Processor], ...]
    defaults: Mapping[str, Any]
    """Values bound in the statement itself (a ``LIMIT 1``, a literal in a ``WHERE``)."""
    row: Callable[..., Any] | None
    results: tuple[tuple[int, Processor], ...]

    def parameters(self, params: Params) -> Any:
        if self.defaults:
            params = {**self.defaults, **params}
        if self.binds:
            params = dict(params)
            for name, process in self.binds:
                params[name] = process(params[name])
        if self.names is None:
            return params
        return tuple(params[name] for name in self.names)

    def make_row(self, raw: Sequence[Any]) -> Any:
        assert self.row is not None
        if self.results:
            values = list(raw)
            for i, process in self.results:
                values[i] = process(values[i])
            raw = values
        return self.row(*raw)


class Statement:
    """A Core statement (``select``, ``insert``, ``update``, ``text``) run on the raw cursor."""

    def __init__(
        self, statement: Executable, *, columns: Sequence[str] = (), secret: bool = False
    ) -> None:
        """``secret``: keep the parameters out of error messages (and so out of logs)."""
        self._statement = statement
        self._columns = tuple(columns)
        self._secret = secret
        self._compiled: dict[tuple[str, str, str], _Compiled] = {}
        self.tables = _tables_of(statement)
        """Names of the tables the statement reads or writes; ``None`` if not known (text)."""
        written = statement.table if isinstance(statement, Insert | Update | Delete) else None
        self.writes: str | None = written.name if isinstance(written, TableClause) else None
        """The table an insert, update or delete writes; ``None`` for anything else."""

    def _for(self, dialect: Dialect) -> _Compiled:
        key = (dialect.name, dialect.driver, dialect.paramstyle)
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = self._compiled[key] = self._compile(dialect)
        return compiled

    def _compile(self, dialect: Dialect) -> _Compiled:
        c = self._statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        binds = []
        for name, bind in c.binds.items():
            process = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                binds.append((name, process))
        fields: Sequence[str] = self._columns
        results = []
        if isinstance(self._statement, Select):
            selected = list(self._statement.selected_columns)
            fields = [str(column.key) for column in selected]
            for i, column in enumerate(selected):
                process = column.type.dialect_impl(dialect).result_processor(dialect, None)
                if process is not None:
                    results.append((i, process))
        row = namedtuple("Row", fields) if fields else None
        return _Compiled(
            sql=c.string,
            names=tuple(c.positiontup) if c.positional else None,
            binds=tuple(binds),
            defaults={
                name: bind.value
                for name, bind in c.binds.items()
                if not bind.required and bind.value is not None
            },
            row=row,
            results=tuple(results),
        )

    @contextmanager
    def _cursor(
        self, connection: Connection, session: Session, params: object, *, reading: bool
    ) -> Iterator[tuple[_Compiled, Any]]:
        """The compiled statement and a cursor (on PostgreSQL one of the connection's kept
        cursors, see :func:`_kept_cursors`; on SQLite a fresh one, closed after); driver errors
        raised inside (on execute or on fetch) come out as SQLAlchemy's."""
        dialect = connection.dialect
        compiled = self._for(dialect)
        kept = dialect.name == "postgresql"
        if kept:
            cursor = _kept_cursors(connection, _READ + 1)[_READ if reading else _WRITE]
        else:
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            yield compiled, cursor
        except dialect.loaded_dbapi.Error as e:
            if session.info.get(_PIPELINED):
                # In a pipeline an error may belong to any statement sent before this one:
                # naming this statement (or its parameters) would point at the wrong one.
                raise _translated(connection, e, _PIPELINED_SQL, None) from e
            raise _translated(connection, e, compiled.sql, None if self._secret else params) from e
        finally:
            if not kept:
                cursor.close()

    def rows(self, session: Session, params: Params | None = None) -> list[Any]:
        """Every row the statement returns, with named fields."""
        params = params or {}
        connection, ahead = self._reading(session, params)
        if ahead is not None:
            return ahead
        with self._cursor(connection, session, params, reading=True) as (compiled, cursor):
            cursor.execute(compiled.sql, compiled.parameters(params))
            return [compiled.make_row(raw) for raw in cursor.fetchall()]

    def first(self, session: Session, params: Params | None = None) -> Any | None:
        """The first row the statement returns, or ``None``."""
        params = params or {}
        connection, ahead = self._reading(session, params)
        if ahead is not None:
            return ahead[0] if ahead else None
        with self._cursor(connection, session, params, reading=True) as (compiled, cursor):
            cursor.execute(compiled.sql, compiled.parameters(params))
            raw = cursor.fetchone()
            return None if raw is None else compiled.make_row(raw)

    def execute(self, session: Session, params: Params) -> None:
        """Run the statement once with ``params`` (a write: the rows kept ahead of every read
        of its table are forgotten; all of them when queued writes go with it, in a pipeline)."""
        connection = self._writing(session)
        if connection.info.get(_QUEUED):
            with pipeline(session):  # the queued writes and this one: one round trip
                self.execute(session, params)
            return
        with self._cursor(connection, session, params, reading=False) as (compiled, cursor):
            cursor.execute(compiled.sql, compiled.parameters(params))

    def execute_many(self, session: Session, rows: Sequence[Params]) -> None:
        """Run the statement once per mapping in ``rows`` (nothing at all when it is empty)."""
        if not rows:
            return
        connection = self._writing(session)
        if connection.info.get(_QUEUED):
            with pipeline(session):  # the queued writes and these: one round trip
                self.execute_many(session, rows)
            return
        with self._cursor(connection, session, rows, reading=False) as (compiled, cursor):
            cursor.executemany(compiled.sql, [compiled.parameters(row) for row in rows])

    def _reading(self, session: Session, params: Params) -> tuple[Connection, list[Any] | None]:
        """The session's connection, and this read's rows if they are kept ahead. Otherwise,
        if writes are queued, they go first, with this read: one round trip."""
        connection = core(session)
        ahead = _sent_ahead(connection, self, params)
        if ahead is None and connection.info.get(_QUEUED):
            read_ahead(session, [(self, params)])
            ahead = _sent_ahead(connection, self, params)
        return connection, ahead

    def _writing(self, session: Session) -> Connection:
        connection = core(session)
        _forget_ahead(connection.info, self.writes)
        return connection

    def execute_soon(self, session: Session, rows: Sequence[Params]) -> None:
        """Run the statement once per mapping in ``rows``, sent with the connection's next
        round trip instead of one of its own.

        For writes whose result nobody reads. On PostgreSQL they wait, in order, in a queue
        kept with the connection until the next statement of the transaction that goes to the
        database, of any kind, which sends them first, in the same pipeline when it is one of
        ours: so every later statement sees them, as if they had run here. (A read answered
        from rows kept ahead sends nothing: the queued writes forgot every kept read of the
        table they write.) The commit sends what is still queued; a
        rollback (of the transaction, or of the savepoint they were queued in) drops it. An
        error of theirs comes from that next statement, labelled as coming from a pipeline,
        and fails the transaction like any other. On SQLite they simply run now.
        """
        if not rows:
            return
        connection = core(session)
        if connection.dialect.name != "postgresql":
            self.execute_many(session, rows)
            return
        _forget_ahead(connection.info, self.writes)
        connection.info.setdefault(_QUEUED, []).append((self, list(rows)))


_PIPELINED = "registry.pipelined"
_PIPELINED_SQL = "(one of the statements sent in a pipeline)"


def _translated(
    connection: Connection, error: Exception, sql: str, params: Any
) -> BaseException:
    """``error`` of the driver as SQLAlchemy's, as SQLAlchemy's own execution would raise it.

    A connection the error shows lost (a session ended, a server gone) is invalidated, as
    SQLAlchemy invalidates one its own statement found lost: thrown away, not rolled back and
    handed back to the pool (on PostgreSQL a pipeline cut short leaves psycopg unable even to
    roll back, and the pool's reset would log its failure as a traceback). Only this one: the
    pool's others are checked as they are taken out (``pool_pre_ping``). Its transaction can
    run nothing more (SQLAlchemy's ``PendingRollbackError``): the error must end it, as every
    write path lets it."""
    dialect = connection.dialect
    dbapi_connection = connection.connection.dbapi_connection
    lost = dialect.is_disconnect(error, dbapi_connection, None)  # type: ignore[arg-type]
    if lost and not connection.invalidated:
        connection.invalidate(error)
    return exc.DBAPIError.instance(
        sql, params, error, dialect.loaded_dbapi.Error, dialect=dialect,
        connection_invalidated=lost,
    )


@contextmanager
def pipeline(session: Session) -> Iterator[None]:
    """Send the statements run inside without waiting for each one's answer.

    On PostgreSQL this is psycopg's pipeline mode: writes whose results nobody reads (the
    inserts and updates that end a transaction) cost one round trip together instead of one
    each. An error of any of them is raised, as SQLAlchemy's, when the block ends or from any
    statement run after it inside the block; either way it is labelled as coming from the
    pipeline, not from a particular statement, and the transaction is rolled back as usual.
    SQLite has no round trips to save: there the statements simply run.
    """
    connection = core(session)
    dialect = connection.dialect
    if dialect.name != "postgresql":
        yield
        return
    raw = connection.connection.driver_connection
    _forget_ahead(connection.info)
    session.info[_PIPELINED] = True
    try:
        with raw.pipeline():  # type: ignore[union-attr]
            _send_queued(connection)
            yield
    except dialect.loaded_dbapi.Error as e:
        raise _translated(connection, e, _PIPELINED_SQL, None) from e
    finally:
        session.info.pop(_PIPELINED, None)


_AHEAD = "registry.read_ahead"
"""Key, in the connection's ``info``, of the rows read ahead: by statement and parameters."""


def read_ahead(session: Session, reads: Sequence[Read]) -> None:
    """Send ``reads`` now, together, and keep their rows for the ``rows``/``first`` calls
    that ask for the same statement with the same parameters.

    On PostgreSQL the reads go in one pipeline: one round trip for all instead of one each.
    A kept row is always the row the read would return when it is asked for, because it is
    dropped as soon as it could differ:
    - the reads are sent after every write of the transaction so far (objects added to the
      session are flushed first, as for any statement, and writes queued by
      :meth:`Statement.execute_soon` go first in the same pipeline);
    - a :class:`Statement` that writes a table (``execute``, ``execute_many``,
      ``execute_soon``) forgets the rows of every read of that table, and of every read whose
      tables are not known (a textual one);
    - any other write forgets them all: a :func:`pipeline`, and (by listeners on every
      engine) any statement but a ``SELECT`` run through SQLAlchemy, including the ORM's
      flushes and savepoints; so do the end of the transaction and the connection's return
      to the pool;
    - other transactions cannot write in between: writers are serialised
      (:func:`registry.store.db.write_transaction`).
    So the reads of many use cases can be sent at the start of their transaction: each keeps
    its rows until something writes its tables (:func:`keep` puts back rows a writer knows).
    A read already kept is not sent again. On SQLite, which has no round trips to save, this
    does nothing.
    """
    connection = core(session)
    dialect = connection.dialect
    if dialect.name != "postgresql" or not reads:
        return
    kept_now = connection.info.get(_AHEAD) or {}
    wanted: dict[tuple[Statement, Any], Read] = {}
    for statement, params in reads:
        key = (statement, _frozen(params))
        if key not in kept_now:
            wanted.setdefault(key, (statement, params))
    if not wanted:
        return
    reads = list(wanted.values())
    raw = connection.connection.driver_connection
    # The queued writes go on the writes' cursor; each read has a cursor of its own.
    cursors = _kept_cursors(connection, _AHEAD_FROM + len(reads))[_AHEAD_FROM:]
    sent: list[tuple[Read, _Compiled, Any]] = []
    try:
        with raw.pipeline():  # type: ignore[union-attr]
            _send_queued(connection)
            for (statement, params), cursor in zip(reads, cursors, strict=True):
                compiled = statement._for(dialect)
                sent.append(((statement, params), compiled, cursor))
                cursor.execute(compiled.sql, compiled.parameters(params))
        kept: dict[tuple[Statement, Any], list[Any]] = connection.info.setdefault(_AHEAD, {})
        for (statement, params), compiled, cursor in sent:
            kept[statement, _frozen(params)] = [compiled.make_row(r) for r in cursor.fetchall()]
    except dialect.loaded_dbapi.Error as e:
        _forget_ahead(connection.info)
        raise _translated(connection, e, _PIPELINED_SQL, None) from e


def _frozen(params: Params) -> Any:
    # In the order given, unsorted: the read and its use build their parameters in the same
    # place, and parameters given in another order only miss the kept rows (and read again).
    # An array parameter (a list) is kept as a tuple, which can be a key.
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in params.items())


def _sent_ahead(connection: Connection, statement: Statement, params: Params) -> list[Any] | None:
    """The rows of ``statement`` with ``params`` read ahead (a copy), or ``None``."""
    kept = connection.info.get(_AHEAD)
    rows = None if not kept else kept.get((statement, _frozen(params)))
    return None if rows is None else list(rows)


def keep(session: Session, read: Read, rows: Sequence[Sequence[Any]]) -> None:
    """Keep ``rows`` as the answer ``read`` would give now, as if it had been read ahead.

    For a writer that knows exactly what the tables it has just written hold for ``read``
    (a movement, the blocks its source account still holds): the next use case asks for them
    without a round trip. Only on PostgreSQL (elsewhere reads are never kept), and only until
    the next write of the read's tables, like any read kept.
    """
    connection = core(session)
    if connection.dialect.name != "postgresql":
        return
    statement, params = read
    make = statement._for(connection.dialect).row  # values as read, already converted
    assert make is not None, "only a read's rows can be kept"
    kept: dict[tuple[Statement, Any], list[Any]] = connection.info.setdefault(_AHEAD, {})
    kept[statement, _frozen(params)] = [make(*row) for row in rows]


def _forget_ahead(info: dict[Any, Any], table: str | None = None) -> None:
    """Forget the rows read ahead: all of them, or those a write of ``table`` may change."""
    if table is None:
        info.pop(_AHEAD, None)
        return
    kept: dict[tuple[Statement, Any], list[Any]] | None = info.get(_AHEAD)
    if kept:
        for key in [k for k in kept if k[0].tables is None or table in k[0].tables]:
            del kept[key]


def _tables_of(statement: Executable) -> frozenset[str] | None:
    """The tables a Core statement names anywhere (subqueries too); ``None`` for one that
    holds any text, whose tables cannot be known."""
    if any(isinstance(e, TextClause | TextualSelect) for e in iterate(statement)):  # type: ignore[arg-type]
        return None
    found = find_tables(statement, check_columns=True, include_crud=True)  # type: ignore[arg-type]
    names = frozenset(t.name for t in found if isinstance(t, TableClause))
    return names or None


_QUEUED = "registry.queued_writes"
"""Key, in the connection's ``info``, of the writes :meth:`Statement.execute_soon` queued."""


def _send_queued(connection: Connection) -> None:
    """Send the queued writes, in order, into the psycopg pipeline open on ``connection``."""
    queued: list[tuple[Statement, list[Params]]] | None = connection.info.pop(_QUEUED, None)
    if not queued:
        return
    dialect = connection.dialect
    cursor = _kept_cursors(connection, _WRITE + 1)[_WRITE]
    for statement, rows in queued:
        compiled = statement._for(dialect)
        cursor.executemany(compiled.sql, [compiled.parameters(row) for row in rows])


_CURSORS = "registry.cursors"
"""Key, in the connection's ``info``, of its driver connection and the cursors kept for it."""

_WRITE, _READ, _AHEAD_FROM = 0, 1, 2
"""Which kept cursor does what. Writes (whose results nobody reads) have one of their own: in a
pipeline psycopg hands a result to its cursor when it arrives, so a write still unanswered on
a cursor could answer a read sent after it on the same one. Reads run one at a time on
another; reads sent ahead, whose results all wait until their pipeline ends, one each."""


def _kept_cursors(connection: Connection, n: int) -> list[Any]:
    """``n`` cursors of the connection's psycopg connection, made once and kept with it.

    Making and closing a psycopg cursor costs about as much as running a small statement in a
    pipeline (13 against 20 µs here), and a transfer ran six. A cursor only holds the results
    of the last statement run on it; each read fetches its own before another read runs on
    its cursor, and writes never need theirs (see ``_WRITE``), so the same few serve every
    transaction of the connection. They are kept with the driver connection they belong to: a
    connection that was replaced gets new ones. SQLite's cursors cost next to nothing and are
    not kept.
    """
    raw = connection.connection.driver_connection
    kept: tuple[Any, list[Any]] | None = connection.info.get(_CURSORS)
    if kept is None or kept[0] is not raw:
        kept = (raw, [])
        connection.info[_CURSORS] = kept
    cursors = kept[1]
    while len(cursors) < n:
        cursors.append(raw.cursor())  # type: ignore[union-attr]
    return cursors[:n]


def _send_queued_now(connection: Connection) -> None:
    """Send the queued writes in a pipeline of their own, before a statement not of ours."""
    if not connection.info.get(_QUEUED):
        return
    dialect = connection.dialect
    try:
        with connection.connection.driver_connection.pipeline():  # type: ignore[union-attr]
            _send_queued(connection)
    except dialect.loaded_dbapi.Error as e:
        raise _translated(connection, e, _PIPELINED_SQL, None) from e


# Every engine and pool: whoever made the engine, no connection keeps rows read ahead past a
# write (see read_ahead), and queued writes go before any other statement and the commit, or
# with the transaction or savepoint that rolls back (see Statement.execute_soon).
@event.listens_for(Engine, "before_cursor_execute")
def _before_statement(conn: Connection, _cursor: Any, statement: str, *_args: Any) -> None:
    _send_queued_now(conn)
    if statement.lstrip()[:6].upper() != "SELECT":
        _forget_ahead(conn.info)


def _send_and_forget(conn: Connection, *_args: Any) -> None:
    _send_queued_now(conn)
    _forget_ahead(conn.info)


def _drop_and_forget(conn: Connection, *_args: Any) -> None:
    if conn.invalidated:
        # Its database connection was lost (the rollback that follows is this one): reading
        # conn.info would raise, hiding the loss; what was queued goes at checkin.
        return
    conn.info.pop(_QUEUED, None)
    _forget_ahead(conn.info)


for _name in ("commit", "savepoint", "release_savepoint"):
    event.listen(Engine, _name, _send_and_forget)
for _name in ("begin", "rollback", "rollback_savepoint"):
    event.listen(Engine, _name, _drop_and_forget)


@event.listens_for(Pool, "checkin")
def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
    if record is not None:
        record.info.pop(_QUEUED, None)
        _forget_ahead(record.info)


def insert_rows(table: Table, columns: Sequence[str], *, secret: bool = False) -> Statement:
    """``INSERT INTO table (columns) VALUES (...)``, fetching nothing back.

    ``inline`` keeps PostgreSQL from adding ``RETURNING`` for the primary key, which a plain
    cursor has no use for.
    """
    statement = insert(table).values({name: bindparam(name) for name in columns}).inline()
    return Statement(statement, secret=secret)


def text_rows(clause: TextClause, columns: Sequence[str]) -> Statement:
    """A textual ``SELECT`` whose rows have the fields ``columns``."""
    return Statement(clause, columns=columns)
