"""What SIGKILL cannot show: a commit is on disk before it is acknowledged.

The crash test kills the server, not the machine, so the operating system's cache survives, and
an engine that never flushed a commit to disk would pass it. These settings are what make a
commit durable, and the write lock what serialises appends.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from registry.errors import DatabaseMovedError, DatabaseUnavailableError, StorageFailedError
from registry.store.db import make_engine, read_session, write_transaction


def test_a_write_transaction_commits_durably_and_alone(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with write_transaction(engine) as session:
            if engine.dialect.name == "postgresql":
                assert session.execute(text("SHOW synchronous_commit")).scalar_one() == "on"
                assert session.execute(text("SHOW fsync")).scalar_one() == "on"
                return
            assert session.execute(text("PRAGMA synchronous")).scalar_one() == 2  # FULL
            assert session.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
            # The write lock is held from BEGIN: another connection cannot begin a write.
            other = engine.raw_connection()
            try:
                other.execute("PRAGMA busy_timeout = 0")
                with pytest.raises(sqlite3.OperationalError, match="locked"):
                    other.execute("BEGIN IMMEDIATE")
            finally:
                other.close()
    finally:
        engine.dispose()


def test_a_database_that_cannot_write_is_answered_503_and_keeps_nothing(db_url: str) -> None:
    """A full disk, met by any statement of a write, is a ``storage_failed`` 503 (not a 500),
    and the transaction leaves nothing: ``tests/load/test_disk_full.py`` fills a server's
    disk under load; here each engine's own error is met inside one write."""
    engine = make_engine(db_url)
    try:
        with write_transaction(engine) as session:
            session.execute(text("CREATE TABLE filler (n INTEGER, pad TEXT)"))
        with pytest.raises(StorageFailedError) as refused, write_transaction(engine) as session:
            session.execute(text("INSERT INTO filler VALUES (1, 'kept?')"))
            if engine.dialect.name == "sqlite":
                # A database file that may not grow: SQLite's own "database or disk is full".
                pages = session.execute(text("PRAGMA page_count")).scalar_one()
                session.execute(text(f"PRAGMA max_page_count = {pages}"))
                for _ in range(1000):
                    session.execute(text("INSERT INTO filler VALUES (2, :pad)"),
                                    {"pad": "x" * 4000})
            else:
                # PostgreSQL's disk cannot be filled without its server's privileges: its
                # error, as psycopg raises it when the server could not extend a file.
                raise OperationalError("INSERT INTO filler", {}, psycopg.errors.DiskFull(
                    'could not extend file "base/16384/16385": No space left on device'))
        error = refused.value
        assert (error.http_status, error.code) == (503, "storage_failed")
        assert "could not write" in error.message and "disk is full" in error.message
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM filler")).scalar_one() == 0
    finally:
        engine.dispose()


def test_a_database_that_cannot_be_reached_is_answered_503_on_reads_and_writes() -> None:
    """PostgreSQL not there (restarting, failing over, its socket gone): a read and a write
    are each a ``database_unavailable`` 503, which a client retries, not a 500."""
    engine = make_engine("postgresql+psycopg://registry@/registry?host=/nonexistent/socket-dir")
    try:
        with pytest.raises(DatabaseUnavailableError) as read, read_session(engine) as session:
            session.execute(text("SELECT 1"))
        assert "nothing was changed, and the read can be made again" in read.value.message
        with pytest.raises(DatabaseUnavailableError) as write, write_transaction(engine):
            pass
        assert (write.value.http_status, write.value.code) == (503, "database_unavailable")
        assert "a retry with the same Idempotency-Key is safe" in write.value.message
    finally:
        engine.dispose()


def test_no_connection_opens_a_file_put_in_the_place_of_the_engines(tmp_path: Path) -> None:
    """A file put at the database's path while the engine has its own open is never opened
    (SQLite would share the engine's write-ahead log with it, found by name): a write that
    needs a new connection is refused, and once the file is back every write goes to it."""
    database = tmp_path / "registry.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with write_transaction(engine) as session:
            session.execute(text("CREATE TABLE t (n INTEGER)"))
        held = engine.connect()  # the engine's file, kept out of the pool
        held.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")  # so the copy holds it all
        aside = tmp_path / "aside.db"
        database.rename(aside)
        database.write_bytes(aside.read_bytes())
        with pytest.raises(DatabaseMovedError), write_transaction(engine):
            pass  # it needs a new connection: refused before SQLite opens the copy
        database.unlink()
        aside.rename(database)
        held.close()
        for n in range(3):
            with write_transaction(engine) as session:
                session.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
    finally:
        engine.dispose()
    with closing(sqlite3.connect(database)) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (3,)


def test_a_file_moved_while_a_write_waits_for_its_lock_is_not_written_into(
    tmp_path: Path,
) -> None:
    """Another process holds SQLite's write lock (a second server, `registry export`'s
    snapshot, an operator's sqlite3 shell) while the file is moved aside: the write that was
    waiting is refused once it gets the lock, not carried out into the moved file."""
    database = tmp_path / "registry.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        with write_transaction(engine) as session:
            session.execute(text("CREATE TABLE t (n INTEGER)"))
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        outcome: list[BaseException | None] = []

        def write() -> None:
            try:
                with write_transaction(engine) as session:
                    session.execute(text("INSERT INTO t VALUES (1)"))
                outcome.append(None)
            except BaseException as e:  # what the waiting write met
                outcome.append(e)

        waiting = threading.Thread(target=write)
        waiting.start()
        time.sleep(0.5)  # the write waits for the lock
        assert not outcome
        aside = tmp_path / "aside.db"
        database.rename(aside)
        holder.rollback()
        holder.close()
        waiting.join(timeout=30)
        assert len(outcome) == 1 and isinstance(outcome[0], DatabaseMovedError), outcome
    finally:
        engine.dispose()
    aside.rename(database)  # back beside its write-ahead log, which SQLite finds by name
    with closing(sqlite3.connect(database)) as check:
        assert check.execute("SELECT count(*) FROM t").fetchone() == (0,)
