"""Engines, transactions and migrations for SQLite (embedded) and PostgreSQL (production).

Every mutation of the registry runs inside :func:`write_transaction`, which serialises writers:
SQLite takes its write lock at ``BEGIN IMMEDIATE`` (WAL, ``synchronous=FULL``), PostgreSQL takes
a transaction-scoped advisory lock on the ledger head. So two requests can never both read the
same head (or the same holding) and append; acknowledged means committed and durable.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import quote

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlmodel import Session

from registry.errors import (
    ConfigurationError,
    DatabaseMovedError,
    DatabaseReadOnlyError,
    DatabaseUnavailableError,
    RegistryBusyError,
    RegistryError,
    StorageFailedError,
    first_line,
)
from registry.store import write_behind
from registry.store.statements import Read, read_ahead, text_rows

if TYPE_CHECKING:
    from alembic.config import Config

_log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
LEDGER_LOCK_KEY = 0x4B48_4C47  # "KHLG": the advisory lock that serialises appends on PostgreSQL
_WRITE = "registry_write"


def parse_database_url(url: str) -> URL:
    """``url`` parsed, or a ``ConfigurationError`` that quotes none of it: in a URL missing its
    host (``postgresql+psycopg://user:password/db``) the password stands where the port goes,
    and the parser's own error would print it."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as e:
        raise ConfigurationError(
            "the database URL cannot be parsed: expected "
            "dialect+driver://user:password@host:port/database (what it holds is not "
            "repeated here, as it may hold a password)"
        ) from e


def make_engine(url: str, *, lock_timeout: float = 30.0, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the settings durability and serialisation need; no write
    waits more than ``lock_timeout`` seconds for the ledger's lock (SQLite's write lock, or
    PostgreSQL's advisory lock and any row lock)."""
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        if _on_disk(parsed.database):
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": lock_timeout}, **kwargs
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        # Writes are serialised anyway; a small pool keeps several processes well inside
        # PostgreSQL's default 100 connections. Read committed whatever the database's or
        # role's default: a write must see what was committed before the ledger's lock was
        # granted, and under a snapshot level the snapshot is taken by the lock's own statement,
        # before it waits (the writer would append on a stale head). Reads ask for a snapshot
        # of their own (read_session).
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=8,
            max_overflow=8,
            isolation_level="READ COMMITTED",
            **kwargs,
        )
        _configure_postgres(engine, lock_timeout_ms=max(1, round(lock_timeout * 1000)))
        return engine
    raise ConfigurationError(
        f"unsupported database {parsed.get_backend_name()!r}: use sqlite:///path or "
        "postgresql+psycopg://..."
    )


def require_database(url: str) -> None:
    """Refuse a SQLite file that is not there: :func:`make_engine` would create it (and its
    directory), which a command that only reads a registry must never do."""
    parsed = parse_database_url(url)
    file = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if _on_disk(file) and not Path(file).is_file():
        raise ConfigurationError(f"no registry database at {file}")


def _configure_postgres(engine: Engine, *, lock_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # For the session (a URL's own options, a schema's search_path, stay as they are).
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {int(lock_timeout_ms)}")
        dbapi_connection.commit()

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        # A read (read_session) sets the connection read-only, and SQLAlchemy, handing it
        # back, sets it read-write: psycopg would then begin every later transaction READ
        # WRITE, overriding a database its administrator made read-only (ALTER DATABASE ... SET
        # default_transaction_read_only), and the registry would write into it. Back to the
        # database's own default.
        if dbapi_connection is None or dbapi_connection.closed:
            return
        try:
            dbapi_connection.read_only = None
        except Exception as e:  # a connection left in a transaction: not to be used again
            record.invalidate(e)


OPENED_FILE_ENV = "REGISTRY_SQLITE_OPENED"
"""``<device>:<inode>:<absolute path>`` of the SQLite file ``registry serve`` opened as it
started: a writer process it starts again later (the first one died) holds that file, not
whatever is then at the path. Set by ``registry serve`` for the processes it starts."""


def _configure_sqlite(engine: Engine) -> None:
    path = engine.url.database
    on_disk = _on_disk(path)
    # The file this engine uses, as (device, inode): the one OPENED_FILE_ENV names for this
    # path, or else the one its first connection opened.
    opened: list[tuple[int, int]] = []
    if on_disk and (marker := os.environ.get(OPENED_FILE_ENV)):
        device, inode, named = marker.split(":", 2)
        if named == os.path.abspath(path or ""):
            opened.append((int(device), int(inode)))

    def moved() -> bool:
        return on_disk and bool(opened) and _file_id(path) != opened[0]

    @event.listens_for(engine, "do_connect")
    def _before_connect(*_args: Any) -> None:
        # No connection opens a file put in the place of the engine's: SQLite finds its
        # write-ahead log and shared-memory index by name, so even a connection that never
        # writes there would share them with the engine's own file.
        if moved():
            raise _moved_error(path)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so BEGIN is ours to choose.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        if on_disk and not opened:
            opened.append(_file_id(path))

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get(_WRITE, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
        if immediate and moved():
            # SQLite writes on, without an error, into a file moved, replaced (a backup put
            # back with mv) or deleted: what it acknowledged there would be gone at the next
            # start. One stat a write transaction, once its lock is held: the file may have
            # been moved while it waited for another process to let go of it.
            connection.exec_driver_sql("ROLLBACK")
            raise _moved_error(path)


def _moved_error(path: str | None) -> DatabaseMovedError:
    _log.error("the database file %s is no longer the one this server opened", path)
    return DatabaseMovedError(
        f"the database file {path} is no longer the one this server opened: it was "
        "moved, replaced or deleted while the server ran. Nothing was done; writes "
        "are refused until the file is put back, or the server restarted on the file "
        "it should use (what was written to the old file since is only in it)"
    )


def sqlite_file_marker(engine: Engine) -> str | None:
    """:data:`OPENED_FILE_ENV`'s value for the SQLite file ``engine`` has open (``None``: not
    a file, or not opened yet)."""
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not _on_disk(path):
        return None
    device, inode = _file_id(path)
    return f"{device}:{inode}:{os.path.abspath(path or '')}" if inode else None


def _on_disk(database: str | None) -> TypeGuard[str]:
    """Whether a SQLite URL's database is a file (not in memory)."""
    return database not in (None, "", ":memory:")


def _file_id(path: str | None) -> tuple[int, int]:
    """(device, inode) of the file at ``path``; (0, 0) when there is none."""
    try:
        stat = os.stat(path or "")
    except OSError:
        return (0, 0)
    return (stat.st_dev, stat.st_ino)


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


_local_writers: dict[str, threading.Lock] = {}
_local_writers_guard = threading.Lock()


def _local_writer_lock(engine: Engine) -> threading.Lock:
    """One lock per SQLite database and process.

    Threads waiting for SQLite's write lock poll with a growing back-off (up to 100 ms a try)
    while the lock may already be free; queueing them on a Python lock first hands the write
    lock over at once. Other processes still serialise on ``BEGIN IMMEDIATE``.
    """
    key = engine.url.render_as_string()
    with _local_writers_guard:
        return _local_writers.setdefault(key, threading.Lock())


@contextmanager
def write_transaction(engine: Engine, *, reads: Sequence[Read] = ()) -> Iterator[Session]:
    """One serialised read-write transaction: commits on success, rolls back on any exception.

    ``reads`` are sent with the lock on PostgreSQL, in one round trip (``read_ahead``), and
    run once it is held: what the transaction reads first, as the ledger's tip.

    A database that cannot write (its disk full or failing) is a :class:`StorageFailedError`,
    and a connection lost on the way a :class:`DatabaseUnavailableError`, whichever statement
    or the commit met it: the operator is told in one log line, and the caller answered 503.
    """
    try:
        if is_postgres(engine):
            with _write_session(engine, reads) as session:
                yield session
        else:
            with _local_writer_lock(engine), _write_session(engine, reads) as session:
                yield session
    except DBAPIError as e:
        failure = _write_failure(e)
        if failure is None:
            raise
        told, error = failure
        _log.error("%s", told)
        raise error from e


def _write_failure(e: DBAPIError) -> tuple[str, RegistryError] | None:
    """What the operator's log and the client are told of a write the database failed, when
    it is the database's state (not reachable, read-only, its disk full or failing) and not a
    fault of the write's own: ``(log line, error to raise)``; ``None`` for anything else."""
    if _connection_lost(e):
        return f"the connection to the database was lost in a write: {first_line(e)}", (
            DatabaseUnavailableError(
                f"the registry lost its connection to its database ({first_line(e)}); whether "
                "this request was carried out is not known, and a retry with the same "
                "Idempotency-Key is safe"
            )
        )
    if _read_only(e):
        return f"the database takes no writes: {first_line(e)}", DatabaseReadOnlyError(
            f"the registry's database takes no writes ({first_line(e)}): a file system "
            "mounted read-only, or a PostgreSQL standby. Nothing was written; once it "
            "takes writes again, a retry with the same Idempotency-Key is safe"
        )
    if _storage_failed(e):
        return f"the database could not write: {_storage_error_name(e)}", StorageFailedError(
            f"the registry's database could not write ({first_line(e)}): its disk is full "
            "or failing. This request was not acknowledged (a commit that failed may still "
            "reach the disk); once the disk can be written again, a retry with the same "
            "Idempotency-Key is safe: it is carried out once"
        )
    return None


_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})
"""PostgreSQL ending a session, or refusing one, as it stops or starts: ``admin_shutdown``,
``crash_shutdown``, ``cannot_connect_now``."""


def _connection_lost(error: DBAPIError) -> bool:
    """Whether ``error`` says the connection to PostgreSQL was lost or could not be made: a
    restart, a failover, a session ended, a server not (yet) there."""
    if error.connection_invalidated:
        return True
    if isinstance(error.orig, sqlite3.Error) or not isinstance(error, OperationalError):
        return False
    state = getattr(error.orig, "sqlstate", None)
    # No SQLSTATE: the client library's own failure to connect or to reach the server.
    return state is None or state.startswith("08") or state in _SESSION_ENDED


_STORAGE_SQLSTATES = frozenset({"53100", "58030"})
"""PostgreSQL's SQLSTATEs for a write the disk refused: ``disk_full`` and ``io_error``."""


_STORAGE_SQLITE_CODES = frozenset({
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_IOERR_WRITE,  # a write refused (a file-size limit; a full disk, retried)
    sqlite3.SQLITE_IOERR_FSYNC,
    sqlite3.SQLITE_IOERR_DIR_FSYNC,
    sqlite3.SQLITE_IOERR_TRUNCATE,
    sqlite3.SQLITE_IOERR_SHMSIZE,  # the shared-memory file could not grow
})
"""SQLite's (extended) codes for a write its disk refused. Its other I/O errors (a lock, the
shared-memory file, a read, a file gone) are not a disk to free, and stay unexpected."""


_READ_ONLY_SQLSTATES = frozenset({"25006"})
"""PostgreSQL's ``read_only_sql_transaction``: a write on a standby (or a read-only session)."""


def _read_only(error: DBAPIError) -> bool:
    """Whether ``error`` says the database takes no writes at all (a read-only file or file
    system for SQLite, whatever its extended code; a standby for PostgreSQL)."""
    orig = error.orig
    if isinstance(orig, sqlite3.Error):
        return orig.sqlite_errorcode & 0xFF == sqlite3.SQLITE_READONLY
    return getattr(orig, "sqlstate", None) in _READ_ONLY_SQLSTATES


def _storage_failed(error: DBAPIError) -> bool:
    """Whether ``error`` says the database could not write to its disk (full, or failing)."""
    orig = error.orig
    if isinstance(orig, sqlite3.Error):
        return orig.sqlite_errorcode in _STORAGE_SQLITE_CODES
    return getattr(orig, "sqlstate", None) in _STORAGE_SQLSTATES


def _storage_error_name(error: DBAPIError) -> str:
    """``error`` for the operator's log: SQLite's name for its code says which write failed."""
    name = getattr(error.orig, "sqlite_errorname", None) or getattr(error.orig, "sqlstate", None)
    return f"{first_line(error)} ({name})" if name else first_line(error)


# One lock per registry: keyed by the schema, so registries sharing a database (as the test
# suite's schemas do) never wait for each other.
_LEDGER_LOCK = text_rows(
    text("SELECT pg_advisory_xact_lock(:k, hashtext(current_schema())) AS locked"), ("locked",)
)


_LOCK_NOT_AVAILABLE = "55P03"
"""PostgreSQL's SQLSTATE for a lock not obtained within ``lock_timeout``."""

# The holder of the ledger's lock, if it has sat idle in its transaction for twice as long as
# a write waits for the lock: a server stopped in the middle of a write (SIGSTOP, a paused VM,
# a cut network), whose connection lives on and would hold every other server's writes for
# as long. Ended, it rolls back, and the lock is free. Twice, so that a healthy writer's long
# stretch of work between two statements (the geometry of a large forest unit's neighbours)
# is never taken for it. (PostgreSQL's own
# idle_in_transaction_session_timeout is not armed after a pipeline, which is how writes read.)
# A two-key advisory lock is (classid, objid, objsubid 2); objid is the second key as an oid.
_END_STUCK_HOLDER = text(
    "SELECT pg_terminate_backend(a.pid) AS ended FROM pg_locks AS l "
    "JOIN pg_stat_activity AS a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND l.classid::bigint = :k "
    "AND l.objid::bigint = (hashtext(current_schema())::bigint & 4294967295) "
    "AND a.state IN ('idle in transaction', 'idle in transaction (aborted)') "
    "AND a.state_change < now() - 2 * current_setting('lock_timeout')::interval"
)


def _end_stuck_holder(engine: Engine) -> bool:
    """End the ledger lock's holder if it is stuck (see ``_END_STUCK_HOLDER``); whether it was."""
    try:
        with engine.connect() as connection:
            ended = connection.execute(_END_STUCK_HOLDER, {"k": LEDGER_LOCK_KEY}).scalars().all()
            connection.commit()
    except DBAPIError:
        return False  # not allowed to (another role's backend), or the database is away
    return any(ended)

_BUSY = (
    "the ledger's lock stayed taken by another transaction (another server or a tool "
    "sharing the database?); nothing was done, and a retry with the same Idempotency-Key "
    "is safe"
)


def _lock_not_obtained(error: DBAPIError) -> bool:
    """Whether ``error`` says the ledger's lock was still taken when the wait ran out."""
    if isinstance(error.orig, sqlite3.Error):
        return error.orig.sqlite_errorcode == sqlite3.SQLITE_BUSY
    return getattr(error.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE


@contextmanager
def _write_session(engine: Engine, reads: Sequence[Read]) -> Iterator[Session]:
    writer = engine.execution_options(**{_WRITE: True})
    with Session(writer, expire_on_commit=False) as session, session.begin():
        try:
            if is_postgres(engine):
                lock = {"k": LEDGER_LOCK_KEY}
                # The server runs a pipeline's statements in order: the reads wait for the lock.
                read_ahead(session, [(_LEDGER_LOCK, lock), *reads])
                _LEDGER_LOCK.first(session, lock)
            else:
                session.connection()  # BEGIN IMMEDIATE: the write lock, before any work
        except DBAPIError as e:
            if not _lock_not_obtained(e):
                raise
            if is_postgres(engine) and _end_stuck_holder(engine):
                raise RegistryBusyError(
                    "the ledger's lock was held by a transaction left idle for twice as long as "
                    "a write waits (a server stopped in the middle of a write?); that "
                    "transaction was ended and nothing of it kept. Nothing was done here, and "
                    "a retry with the same Idempotency-Key is safe"
                ) from e
            raise RegistryBusyError(_BUSY) from e
        yield session
        if write_behind.pending(session):
            raise RuntimeError("a write transaction ended with deferred rows it never wrote")


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A read-only snapshot: every query of one read sees the same committed state.

    SQLite in WAL mode gives each read transaction a snapshot and never blocks the writer;
    PostgreSQL needs REPEATABLE READ for that (its default, READ COMMITTED, lets a page's rows
    and its totals come from different moments).
    """
    reader = engine
    if is_postgres(engine):
        reader = engine.execution_options(
            isolation_level="REPEATABLE READ", postgresql_readonly=True
        )
    read = False
    try:
        with Session(reader, expire_on_commit=False) as session, session.begin():
            yield session
            read = True
    except DBAPIError as e:
        if not _connection_lost(e):
            raise
        if read:
            # Lost as the read-only transaction ended, its reads all made: it changed nothing,
            # and what it read is a snapshot still: its answer stands.
            _log.warning("the connection to the database was lost as a read ended: %s",
                         first_line(e))
            return
        _log.error("the connection to the database was lost in a read: %s", first_line(e))
        raise DatabaseUnavailableError(
            f"the registry lost its connection to its database ({first_line(e)}); nothing "
            "was changed, and the read can be made again"
        ) from e


def alembic_config() -> Config:
    # Imported here, not at the top: only ``init`` and ``serve``'s own start migrate, and alembic
    # took a tenth of the imports of each process a server starts (its writer, its workers).
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


@functools.cache
def known_revisions() -> tuple[str, ...]:
    """Every migration's revision, oldest first, read from the file names alone: each
    migration's revision is its file name's four digits, and each follows the one before it
    (``tests/store/test_migrations.py`` holds alembic's own reading to that). Reading them so
    spares every start alembic's import and its scripts: a quarter of a server's start."""
    versions = (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    return tuple(sorted(p.name[:4] for p in versions))


def newest_revision() -> str:
    """The revision a schema brought up to date is at."""
    return known_revisions()[-1]


def _schema_revisions(connection: Any) -> tuple[str, ...]:
    """The revisions alembic recorded in the database (none before the first migration)."""
    from sqlalchemy import inspect

    if not inspect(connection).has_table("alembic_version"):
        return ()
    return tuple(connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalars())


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration: the only way tables are ever created."""
    # One migration at a time, under the ledger's lock: servers or inits starting together on
    # one database would otherwise each create the same tables, or (SQLite) both read the
    # schema's version and then fail to write ("database is locked"). The one that waited
    # finds the schema up to date.
    try:
        with write_transaction(engine) as session:
            connection = session.connection()
            revisions = _schema_revisions(connection)
            _refuse_a_newer_schema(revisions)
            if revisions != (newest_revision(),):  # alembic only when there is work for it
                from alembic import command

                cfg = alembic_config()
                cfg.attributes["connection"] = connection
                command.upgrade(cfg, "head")
    except RegistryBusyError as e:
        raise RegistryBusyError(
            "the ledger's lock stayed taken while the schema was to be checked (another server "
            "starting and migrating a large registry, or a tool holding it?); nothing was "
            "changed: start again once it is free"
        ) from e
    except DatabaseUnavailableError as e:
        raise DatabaseUnavailableError(
            f"the connection to the database was lost while its schema was brought up to date "
            f"({first_line(e.__cause__ or e)}); start again once it is back"
        ) from e
    except StorageFailedError as e:
        raise type(e)(
            f"the database could not write while its schema was brought up to date "
            f"({first_line(e.__cause__ or e)}): its disk is full, failing or read-only. "
            "Nothing was changed: start again once it can be written"
        ) from e


def _refuse_a_newer_schema(revisions: tuple[str, ...]) -> None:
    """Refuse a database whose schema a newer version of the registry migrated (the software
    was rolled back under it): this code does not know its tables, and must not run on them."""
    known = set(known_revisions())
    for revision in revisions:
        if revision not in known:
            raise ConfigurationError(
                f"the database's schema is at revision {revision}, which this version of the "
                f"registry does not know (it knows up to {newest_revision()}): a newer "
                "version upgraded it; run that version, or a newer one"
            )


def require_known_schema(engine: Engine, *, upgraded: bool) -> None:
    """For the commands that only read a registry: a schema newer than this version knows is
    refused in one clear line, not an SQL error from a table of another shape; and with
    ``upgraded`` (``verify --against``, which reads every state table) one still to be upgraded
    too. (``export`` reads only the ledger's tables, the same since the first revisions.)"""
    with engine.connect() as connection:
        heads = _schema_revisions(connection)
    _refuse_a_newer_schema(heads)
    head = newest_revision()
    if upgraded and heads != (head,):
        raise ConfigurationError(
            f"the database's schema is at revision {', '.join(heads) or 'none'}, older than "
            f"this version's {head}: start `registry serve` on it once, which upgrades it"
        )


def schema_url(base_url: str, schema: str) -> str:
    """``base_url`` with PostgreSQL's ``search_path`` set to ``schema``."""
    sep = "&" if "?" in base_url else "?"
    return f"{base_url}{sep}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def scratch_schema(base_url: str, *, prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards: one registry per test or benchmark run."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield schema_url(base_url, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
