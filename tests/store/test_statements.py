"""Hot-path statements on the driver cursor: same rows, same errors, same transaction."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Session

from registry.service.context import Registry
from registry.service.ledger import append_entry
from registry.service.movements import CANCELLATION_ACCOUNT, RETIREMENT_ACCOUNT
from registry.store import ledger_repo
from registry.store.credits_repo import _HELD_IN_BATCH, Account, accounts, accounts_read
from registry.store.db import make_engine, read_session, write_transaction
from registry.store.statements import insert_rows, pipeline, read_ahead
from registry.store.tables import AccountRow, BlockEventRow, IdempotencyRow, table
from tests.conftest import ADMIN, POSTGRES_URL
from tests.factories import append_notes


def _count(registry: Registry, table: str) -> int:
    with read_session(registry.engine) as s:
        return int(s.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_rows_come_back_typed_and_named(registry: Registry) -> None:
    append_notes(registry, 3)
    with read_session(registry.engine) as s:
        tip = ledger_repo.tip(s)
        stored = s.execute(
            text("SELECT leaf_hash FROM ledger_entry WHERE seq = :seq"), {"seq": tip.size - 1}
        ).scalar_one()
    assert tip.size == 4  # genesis and three notes
    assert tip.last_leaf == bytes(stored) and isinstance(tip.last_leaf, bytes)
    assert tip.checkpoint is not None and tip.checkpoint[0] == 4


def test_a_failed_pipelined_write_raises_and_the_transaction_leaves_nothing(
    registry: Registry,
) -> None:
    append_notes(registry, 2)
    entries, checkpoints = _count(registry, "ledger_entry"), _count(registry, "checkpoint")
    with pytest.raises(IntegrityError) as refused, write_transaction(registry.engine) as session:
        append_entry(session, registry, kind="test.note", actor="registry", payload={"n": 9})
        with pipeline(session):
            # A second checkpoint for a size already signed: the primary key refuses it.
            ledger_repo.add_checkpoint(session, size=entries, root=b"\0" * 32, note="forged")
            ledger_repo.add_nodes(session, {(40, 0): b"\1" * 32})
    # A note never reaches an error message (nor a log); in a pipeline the error is not pinned
    # on whichever statement happened to be running when it arrived.
    assert "forged" not in str(refused.value)
    if registry.engine.dialect.name == "postgresql":
        assert "pipeline" in str(refused.value) and "tree_node" not in str(refused.value)
    assert (_count(registry, "ledger_entry"), _count(registry, "checkpoint")) == (
        entries,
        checkpoints,
    )
    # The connection went back to the pool clean: the next append works.
    append_notes(registry, 1)
    assert _count(registry, "ledger_entry") == entries + 1


def test_holdings_are_read_by_account_in_serial_order_not_by_walking_the_batch(
    registry: Registry,
) -> None:
    # A batch split into many blocks once made SQLite read every block of the batch for each
    # transfer (it preferred the (batch, start) key to a sort); the holding index now serves
    # the read in order.
    if registry.engine.dialect.name != "sqlite":
        pytest.skip("the query plan checked here is SQLite's")
    sql = _HELD_IN_BATCH._for(registry.engine.dialect).sql
    with read_session(registry.engine) as s:
        plan = " ".join(
            str(row[-1])
            for row in s.connection().exec_driver_sql(
                f"EXPLAIN QUERY PLAN {sql}", ("KH-WATER-1", "active", "KH-JCM-KH004-2024-00001")
            )
        )
    assert "ix_block_holding_ordered (account_id=? AND status=? AND batch_id=?)" in plan, plan
    assert "TEMP B-TREE" not in plan, plan


_ACCOUNT = table(AccountRow)
_BOTH = [RETIREMENT_ACCOUNT, CANCELLATION_ACCOUNT]


def _kinds(found: dict[str, Account]) -> dict[str, str]:
    return {key: value.kind for key, value in found.items()}


def test_a_read_sent_ahead_answers_as_the_read_itself(registry: Registry) -> None:
    with write_transaction(registry.engine) as session:
        read_ahead(session, [accounts_read(_BOTH)])
        ahead = accounts(session, _BOTH)
        direct = accounts(session, _BOTH)
        session.rollback()
    assert ahead == direct
    assert _kinds(ahead) == {RETIREMENT_ACCOUNT: "retirement", CANCELLATION_ACCOUNT: "cancellation"}


@pytest.mark.parametrize("write", ["core", "orm", "statement", "pipeline"])
def test_a_read_sent_ahead_is_never_answered_after_a_write(registry: Registry, write: str) -> None:
    """Whatever way the transaction writes after reading ahead, the next read sees the write."""
    new_account: dict[str, Any] = {
        "id": "KH-NEW-1",
        "holder": ADMIN,
        "kind": "holding",
        "name": "new",
        "unit_id": None,
        "created_seq": 0,
    }
    with write_transaction(registry.engine) as session:
        read_ahead(session, [accounts_read(_BOTH), accounts_read(["KH-NEW-1"])])
        if write == "core":
            session.execute(
                update(_ACCOUNT).where(_ACCOUNT.c.id == RETIREMENT_ACCOUNT).values(kind="holding")
            )
        elif write == "orm":
            session.add(AccountRow(**new_account))
        else:
            insert = insert_rows(_ACCOUNT, tuple(new_account))
            if write == "pipeline":
                with pipeline(session):
                    insert.execute(session, new_account)
            else:
                insert.execute(session, new_account)
        if write == "core":
            assert _kinds(accounts(session, _BOTH))[RETIREMENT_ACCOUNT] == "holding"
        else:
            assert _kinds(accounts(session, ["KH-NEW-1"])) == {"KH-NEW-1": "holding"}
        session.rollback()


def test_a_read_with_array_parameters_runs_while_rows_are_kept_ahead(registry: Registry) -> None:
    """Looking up the rows kept ahead uses a statement's parameters as a key: a list (the tree
    nodes' levels and indexes, as arrays on PostgreSQL) must not make that fail."""
    append_notes(registry, 3)
    with write_transaction(registry.engine) as session:
        read_ahead(session, [accounts_read(_BOTH)])
        nodes = ledger_repo.fetch_nodes(session, [(0, 0), (0, 1), (1, 0)])
        assert sorted(nodes) == [(0, 0), (0, 1), (1, 0)]
        assert _kinds(accounts(session, _BOTH))[RETIREMENT_ACCOUNT] == "retirement"
        session.rollback()


def test_a_read_sent_ahead_does_not_outlive_its_transaction(registry: Registry) -> None:
    """Read ahead and never asked for; then another connection writes: the next transaction,
    on the same pooled connection, reads what is stored now."""
    engine = registry.engine
    engine.dispose()  # an empty pool: the last transaction gets the first one's connection
    with pytest.raises(RuntimeError), write_transaction(engine) as session:
        first = session.connection().connection.driver_connection
        read_ahead(session, [accounts_read(_BOTH)])
        raise RuntimeError("refused before reading")
    other = make_engine(engine.url.render_as_string(hide_password=False))
    try:
        with write_transaction(other) as session:
            session.execute(
                update(_ACCOUNT).where(_ACCOUNT.c.id == CANCELLATION_ACCOUNT).values(kind="buffer")
            )
    finally:
        other.dispose()
    with write_transaction(engine) as session:
        assert session.connection().connection.driver_connection is first
        assert _kinds(accounts(session, _BOTH))[CANCELLATION_ACCOUNT] == "buffer"


_NEW_ACCOUNT = insert_rows(_ACCOUNT, ("id", "holder", "kind", "name", "unit_id", "created_seq"))


def _account(account_id: str, kind: str = "holding") -> dict[str, Any]:
    return {
        "id": account_id,
        "holder": ADMIN,
        "kind": kind,
        "name": account_id,
        "unit_id": None,
        "created_seq": 0,
    }


def _stored(registry: Registry, account_id: str) -> bool:
    with read_session(registry.engine) as s:
        found = s.execute(select(_ACCOUNT.c.id).where(_ACCOUNT.c.id == account_id)).first()
    return found is not None


@pytest.mark.parametrize("reader", ["statement", "read_ahead", "core", "orm"])
def test_a_write_sent_soon_is_seen_by_every_later_read(registry: Registry, reader: str) -> None:
    with write_transaction(registry.engine) as session:
        _NEW_ACCOUNT.execute_soon(session, [_account("KH-SOON-1")])
        if reader == "statement":
            assert _kinds(accounts(session, ["KH-SOON-1"])) == {"KH-SOON-1": "holding"}
        elif reader == "read_ahead":
            read_ahead(session, [accounts_read(["KH-SOON-1"])])
            assert _kinds(accounts(session, ["KH-SOON-1"])) == {"KH-SOON-1": "holding"}
        elif reader == "core":
            assert (
                session.execute(
                    select(_ACCOUNT.c.kind).where(_ACCOUNT.c.id == "KH-SOON-1")
                ).scalar_one()
                == "holding"
            )
        else:
            assert session.get(AccountRow, "KH-SOON-1") is not None
    assert _stored(registry, "KH-SOON-1")


def test_a_write_sent_soon_is_committed_with_nothing_after_it(registry: Registry) -> None:
    with write_transaction(registry.engine) as session:
        _NEW_ACCOUNT.execute_soon(session, [_account("KH-SOON-2")])
    assert _stored(registry, "KH-SOON-2")


def test_a_write_sent_soon_goes_with_its_rollback(registry: Registry) -> None:
    """Dropped with the savepoint it was queued in, or the transaction; never sent later on
    the same pooled connection."""
    engine = registry.engine
    engine.dispose()  # one pooled connection, used by every transaction below
    with write_transaction(engine) as session:
        _NEW_ACCOUNT.execute_soon(session, [_account("KH-KEPT")])
        savepoint = session.begin_nested()
        _NEW_ACCOUNT.execute_soon(session, [_account("KH-IN-SAVEPOINT")])
        savepoint.rollback()
    with pytest.raises(RuntimeError), write_transaction(engine) as session:
        _NEW_ACCOUNT.execute_soon(session, [_account("KH-ROLLED-BACK")])
        raise RuntimeError("refused")
    with write_transaction(engine) as session:
        _NEW_ACCOUNT.execute(session, _account("KH-AFTER"))
    assert [_stored(registry, a) for a in ("KH-KEPT", "KH-IN-SAVEPOINT", "KH-ROLLED-BACK")] == [
        True,
        False,
        False,
    ]
    assert _stored(registry, "KH-AFTER")


def test_a_failed_write_sent_soon_fails_its_transaction_and_leaves_nothing(
    registry: Registry,
) -> None:
    with pytest.raises(IntegrityError) as refused, write_transaction(registry.engine) as session:
        _NEW_ACCOUNT.execute_soon(session, [_account("KH-SOON-3")])
        _NEW_ACCOUNT.execute_soon(session, [_account(RETIREMENT_ACCOUNT, "retirement")])
        accounts(session, _BOTH)  # the next statement: the queued writes go first
    if registry.engine.dialect.name == "postgresql":
        assert "pipeline" in str(refused.value)
    assert not _stored(registry, "KH-SOON-3")


def test_a_connection_replaced_under_the_registry_gets_cursors_of_its_own(
    registry: Registry,
) -> None:
    # PostgreSQL's cursors are kept with their driver connection. A connection the pool
    # replaced (a restarted server, an invalidated connection) must get its own: the old ones
    # belong to a closed connection, and every write through them would fail.
    append_notes(registry, 1)
    for _ in range(8):  # every connection the pool holds
        with registry.engine.connect() as connection:
            connection.invalidate()
    append_notes(registry, 2)
    with read_session(registry.engine) as s:
        assert ledger_repo.tip(s).size == 4  # genesis and three notes


@pytest.mark.parametrize("where", ["read_ahead", "pipeline"])
def test_a_connection_lost_in_a_pipeline_is_dropped_not_reset(
    registry: Registry, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A session ended (a restart, a failover) while a pipeline was under way leaves psycopg's
    # connection unusable. It must be thrown away as lost: handed back to the pool as if
    # alive, it was rolled back, which failed again and put a traceback in the operator's log
    # for what the client was already answered as a lost connection.
    if registry.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no connection to lose")
    assert POSTGRES_URL is not None
    append_notes(registry, 1)
    admin = create_engine(POSTGRES_URL)
    caplog.set_level(logging.WARNING)
    session = Session(registry.engine)
    try:
        session.begin()
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with admin.begin() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        # Until the backend is gone: each look in a transaction of its own, since a transaction
        # keeps the first snapshot of pg_stat_activity it took.
        for _ in range(500):
            with admin.begin() as connection:
                if not connection.execute(
                    text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"), {"p": pid}
                ).scalar_one():
                    break
            time.sleep(0.01)
        else:
            pytest.fail(f"backend {pid} still there 5 s after it was terminated")
        with pytest.raises(DBAPIError) as lost:
            if where == "read_ahead":
                read_ahead(session, [accounts_read([RETIREMENT_ACCOUNT])])
            else:
                with pipeline(session):
                    ledger_repo.add_nodes(session, {(40, 0): b"\1" * 32})
        assert lost.value.connection_invalidated
        session.rollback()  # as a write transaction ends: nothing to roll back on a lost one
    finally:
        session.close()
        admin.dispose()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    append_notes(registry, 1)  # the pool goes on with a new connection
    with read_session(registry.engine) as s:
        assert ledger_repo.tip(s).size == 3


def test_reads_sent_ahead_after_a_failed_pipeline_answer_their_own_rows(
    registry: Registry,
) -> None:
    # The same kept cursors serve every transaction of a connection: after one ended in a
    # refused pipeline, each read of the next still gets its own rows, not a leftover.
    append_notes(registry, 1)
    with (
        pytest.raises(IntegrityError),
        write_transaction(registry.engine) as session,
        pipeline(session),
    ):
        ledger_repo.add_checkpoint(session, size=1, root=b"\0" * 32, note="again")
    reads = [accounts_read([RETIREMENT_ACCOUNT]), accounts_read([CANCELLATION_ACCOUNT])]
    with write_transaction(registry.engine) as session:
        read_ahead(session, reads)
        retirement = accounts(session, [RETIREMENT_ACCOUNT])
        cancellation = accounts(session, [CANCELLATION_ACCOUNT])
    assert [a.id for a in retirement.values()] == [RETIREMENT_ACCOUNT]
    assert [a.id for a in cancellation.values()] == [CANCELLATION_ACCOUNT]


def test_a_session_that_begins_by_itself_gets_each_transaction_its_own_connection(
    registry: Registry,
) -> None:
    # The connection is kept per transaction; a session whose transactions begin on their
    # own (no session.begin()) must not be handed the one its last transaction closed.
    append_notes(registry, 1)
    with Session(registry.engine) as session:
        first = ledger_repo.tip(session)
        session.commit()
        second = ledger_repo.tip(session)
        session.commit()
    assert first == second and first.size == 2


_ANSWERS = table(IdempotencyRow)
_EVENTS = table(BlockEventRow)


def _answer(key: str, seq: int) -> dict[str, Any]:
    return {"key": key, "request_hash": "h" * 64, "status_code": 200, "response": "{}", "seq": seq}


def test_rows_inserted_together_read_back_as_written(registry: Registry) -> None:
    events = [
        {"seq": 2**53 - 1, "kind": "credits.issue", "batch_id": "B", "start": 1, "end": 2**53 - 1,
         "from_account": None, "to_account": "KH-WATER-1", "status": "active"},
        {"seq": 7, "kind": "credits.transfer", "batch_id": "B", "start": 5, "end": 6,
         "from_account": "KH-WATER-1", "to_account": "JP-BUYER-1", "status": "active"},
    ]
    with write_transaction(registry.engine) as session:
        insert_rows(_EVENTS, tuple(events[0])).execute_many(session, events)
        insert_rows(_ANSWERS, tuple(_answer("a", 1))).execute_many(
            session, [_answer("a", 1), _answer("b", 2)])
    with read_session(registry.engine) as s:
        stored = s.execute(
            select(*(_EVENTS.c[name] for name in events[0])).order_by(_EVENTS.c.seq.desc())
        ).all()
        keys = s.execute(select(_ANSWERS.c.key, _ANSWERS.c.seq).order_by(_ANSWERS.c.key)).all()
    assert [dict(r._mapping) for r in stored] == events
    assert [tuple(r) for r in keys] == [("a", 1), ("b", 2)]


def test_rows_inserted_together_are_refused_as_each_would_be(registry: Registry) -> None:
    """All or nothing, and never cut to fit: a key too long for its column is refused."""
    too_long = "k" * 129
    cases = [[_answer("same", 1), _answer("same", 2)]]
    if registry.engine.dialect.name == "postgresql":  # SQLite does not enforce lengths
        cases.append([_answer("fine", 1), _answer(too_long, 2)])
    for rows in cases:
        with pytest.raises(DBAPIError), write_transaction(registry.engine) as session:
            insert_rows(_ANSWERS, tuple(rows[0])).execute_many(session, rows)
        assert _count(registry, "idempotency") == 0


@pytest.mark.parametrize(
    "read", ["parties", "accounts", "projects", "forest_units", "reports", "batches",
             "retirements", "reversals"],
)
def test_a_public_list_page_is_read_in_index_order_not_by_sorting_the_table(
    registry: Registry, read: str
) -> None:
    # Every page of a public list is ordered as the ledger made its records; without an index
    # on that order, each page sorted the whole table, a cost growing with the registry.
    if registry.engine.dialect.name != "sqlite":
        pytest.skip("the query plan checked here is SQLite's")
    from sqlalchemy import event

    from registry.service import views

    pages: list[tuple[str, Any]] = []

    def keep(_conn: Any, _cursor: Any, sql: str, params: Any, *_: Any) -> None:
        if "ORDER BY" in sql:
            pages.append((sql, params))

    with read_session(registry.engine) as s:
        event.listen(registry.engine, "before_cursor_execute", keep)
        try:
            getattr(views, read)(s, 0, 100)
        finally:
            event.remove(registry.engine, "before_cursor_execute", keep)
        sql, params = pages[0]  # the page itself (later ones read what its rows name)
        plan = " ".join(str(row[-1]) for row in
                        s.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "TEMP B-TREE" not in plan, plan
