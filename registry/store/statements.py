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
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Dialect, Select, Table, bindparam, exc, insert
from sqlalchemy.sql.expression import Executable, TextClause
from sqlmodel import Session

from registry.store.tables import core

Params = Mapping[str, Any]
Processor = Callable[[Any], Any]


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
    def _cursor(self, session: Session, params: object) -> Iterator[tuple[_Compiled, Any]]:
        """The compiled statement and a fresh cursor, closed after; driver errors raised
        inside (on execute or on fetch) come out as SQLAlchemy's."""
        connection = core(session)
        dialect = connection.dialect
        compiled = self._for(dialect)
        cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            yield compiled, cursor
        except dialect.loaded_dbapi.Error as e:
            if session.info.get(_PIPELINED):
                # In a pipeline an error may belong to any statement sent before this one:
                # naming this statement (or its parameters) would point at the wrong one.
                raise _translated(dialect, e, _PIPELINED_SQL, None) from e
            raise _translated(dialect, e, compiled.sql, None if self._secret else params) from e
        finally:
            cursor.close()

    def rows(self, session: Session, params: Params | None = None) -> list[Any]:
        """Every row the statement returns, with named fields."""
        params = params or {}
        with self._cursor(session, params) as (compiled, cursor):
            cursor.execute(compiled.sql, compiled.parameters(params))
            return [compiled.make_row(raw) for raw in cursor.fetchall()]

    def first(self, session: Session, params: Params | None = None) -> Any | None:
        """The first row the statement returns, or ``None``."""
        params = params or {}
        with self._cursor(session, params) as (compiled, cursor):
            cursor.execute(compiled.sql, compiled.parameters(params))
            raw = cursor.fetchone()
            return None if raw is None else compiled.make_row(raw)

    def execute(self, session: Session, params: Params) -> None:
        """Run the statement once with ``params``."""
        with self._cursor(session, params) as (compiled, cursor):
            cursor.execute(compiled.sql, compiled.parameters(params))

    def execute_many(self, session: Session, rows: Sequence[Params]) -> None:
        """Run the statement once per mapping in ``rows`` (nothing at all when it is empty)."""
        if not rows:
            return
        with self._cursor(session, rows) as (compiled, cursor):
            cursor.executemany(compiled.sql, [compiled.parameters(row) for row in rows])


_PIPELINED = "registry.pipelined"
_PIPELINED_SQL = "(one of the statements sent in a pipeline)"


def _translated(dialect: Dialect, error: Exception, sql: str, params: Any) -> BaseException:
    dbapi_error = dialect.loaded_dbapi.Error
    return exc.DBAPIError.instance(sql, params, error, dbapi_error, dialect=dialect)


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
    session.info[_PIPELINED] = True
    try:
        with raw.pipeline():  # type: ignore[union-attr]
            yield
    except dialect.loaded_dbapi.Error as e:
        raise _translated(dialect, e, _PIPELINED_SQL, None) from e
    finally:
        session.info.pop(_PIPELINED, None)


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
