"""What SIGKILL cannot show: a commit is on disk before it is acknowledged.

The crash test kills the server, not the machine, so the operating system's cache survives, and
an engine that never flushed a commit to disk would pass it. These settings are what make a
commit durable, and the write lock what serialises appends.
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from registry.store.db import make_engine, write_transaction


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
