"""Public reads of a large registry cost what one page costs, not what the whole table does.

Work is counted in SQLite virtual-machine steps (its progress handler), which, unlike time,
does not depend on how busy the machine is; the rows are written straight into the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlmodel import Session

from registry.service import views
from registry.service.context import Registry
from registry.store.db import read_session
from tests.conftest import ADMIN

BATCH = "KH-JCM-KH004-2024-00001"
ROWS = 5000
STEP = 100  # the progress handler is called once per STEP virtual-machine instructions


def _fill(registry: Registry) -> None:
    """One batch split into ROWS one-tonne blocks, each retired by an entry of its own."""
    with registry.engine.begin() as c:
        c.execute(text(
            "INSERT INTO account (id, holder, kind, name, created_seq) "
            "VALUES ('KH-WATER-1', :admin, 'holding', 'a', 1)"), {"admin": ADMIN})
        c.execute(text(
            "INSERT INTO project (id, title, partner_country, methodology, sector, programme, "
            "participants, third_party_entity, crediting_period_start, crediting_period_end, "
            "status, registered_seq) VALUES ('KH004', 't', 'KH', 'KH_AM001', 's', 'JCM', '[]', "
            ":admin, '2020-01-01', '2030-12-31', 'registered', 2)"), {"admin": ADMIN})
        c.execute(text(
            "INSERT INTO batch (id, project_id, report_id, programme, vintage, number, "
            "quantity, issued_seq, retired, cancelled) "
            "VALUES (:b, 'KH004', 'KH004-MR1', 'JCM', 2024, 1, :n, 3, :n, 0)"),
            {"b": BATCH, "n": ROWS})
        serials = range(1, ROWS + 1)
        c.execute(text(
            'INSERT INTO block (batch_id, start, "end", account_id, status) '
            "VALUES (:b, :s, :s, 'RETIREMENT', 'retired')"),
            [{"b": BATCH, "s": s} for s in serials])
        c.execute(text(
            'INSERT INTO block_event (seq, kind, batch_id, start, "end", from_account, '
            "to_account, status) VALUES (:q, 'credits.retire', :b, :s, :s, 'KH-WATER-1', "
            "'RETIREMENT', 'retired')"), [{"q": 3 + s, "b": BATCH, "s": s} for s in serials])
        c.execute(text(
            "INSERT INTO retirement (id, seq, account_id, batch_id, blocks, quantity, "
            "beneficiary, purpose, jurisdiction, reason, time) VALUES (:id, :q, 'KH-WATER-1', "
            ":b, :blocks, 1, 'x', 'voluntary', 'KH', 'r', '2024-06-01T00:00:00Z')"),
            [{"id": f"RET-{3 + s}", "q": 3 + s, "b": BATCH, "blocks": f"{s}-{s}"}
             for s in serials])


def _work(registry: Registry, read: Callable[[Session], Any]) -> int:
    """How many STEPs of SQLite's virtual machine ``read`` took."""
    with read_session(registry.engine) as session:
        connection: Any = session.connection().connection.driver_connection
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        connection.set_progress_handler(count, STEP)
        try:
            read(session)
        finally:
            connection.set_progress_handler(None, STEP)
    return steps


def test_a_page_of_retirements_does_not_sort_them_all(
    registry: Registry,
) -> None:
    if registry.engine.dialect.name != "sqlite":
        pytest.skip("the work counted here is SQLite's")
    _fill(registry)
    # The first page of retirements is read in ledger order from an index (16 steps here),
    # not by sorting every retirement (325).
    first_page = _work(registry, lambda s: views.retirements(s, 0, 100))
    assert first_page < 50, first_page


def test_a_batch_is_read_without_summing_its_blocks(registry: Registry) -> None:
    if registry.engine.dialect.name != "sqlite":
        pytest.skip("the work counted here is SQLite's")
    _fill(registry)
    # The batch keeps its totals: summing its 5,000 blocks by status took 1,000 steps.
    batch = _work(registry, lambda s: views.batch(s, BATCH))
    assert batch < 20, batch
    assert views.batch(Session(registry.engine), BATCH).retired == ROWS
    assert _work(registry, lambda s: views.batches(s, 0, 100)) < 30


def test_a_serials_block_is_found_without_walking_the_blocks_below_it(
    registry: Registry,
) -> None:
    if registry.engine.dialect.name != "sqlite":
        pytest.skip("the work counted here is SQLite's")
    _fill(registry)
    # One index probe: the story of the batch's last serial took 500 steps, half of them
    # walking every block below it. Its history still reads the batch's events up to the
    # serial (250 steps here).
    assert _work(registry, lambda s: views.serial_story(s, f"{BATCH}-2")) < 10
    last = _work(registry, lambda s: views.serial_story(s, f"{BATCH}-{ROWS}"))
    assert last < 350, last


def test_a_page_of_parties_is_read_in_a_few_statements_not_two_per_party(
    registry: Registry,
) -> None:
    # Each party on a page was read again with its keys (1,000 statements for a page of
    # 500: 315 ms on PostgreSQL); its keys are listed oldest first.
    with registry.engine.begin() as c:
        c.execute(text(
            "INSERT INTO party (id, name, role, country, created_seq) "
            "VALUES (:id, 'p', 'participant', 'KH', 1)"), [{"id": f"p{i:03}"} for i in range(50)])
        c.execute(text(
            "INSERT INTO party_key (key_id, party_id, public_key, added_seq) "
            "VALUES (:key, :party, :raw, :seq)"),
            [{"key": f"k{i:03}-{n}", "party": f"p{i:03}", "raw": bytes(32), "seq": 10 - n}
             for i in range(50) for n in range(2)])
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(registry.engine, "before_cursor_execute", seen)
    try:
        with read_session(registry.engine) as session:
            page = views.parties(session, 0, 500)
    finally:
        event.remove(registry.engine, "before_cursor_execute", seen)
    assert page.count == 51 and len(page.data) == 51
    assert len(statements) <= 5, statements
    p001 = next(p for p in page.data if p.id == "p001")
    assert [k.key_id for k in p001.keys] == ["k001-1", "k001-0"]


def test_a_serials_history_is_read_a_page_at_a_time(registry: Registry) -> None:
    # A serial moved back and forth 250 times: its story listed all 250 entries in one
    # answer (a serial moved 10^6 times, 10^6 of them).
    _fill(registry)
    moves = range(10_000, 10_250)
    with registry.engine.begin() as c:
        c.execute(text(
            'INSERT INTO block_event (seq, kind, batch_id, start, "end", from_account, '
            "to_account, status) VALUES (:q, 'credits.transfer', :b, 7, 7, 'A', 'B', 'active')"),
            [{"q": q, "b": BATCH} for q in moves])
    seen: list[int] = []
    after = None
    with read_session(registry.engine) as session:
        while True:
            story = views.serial_story(session, f"{BATCH}-7", after=after, limit=100)
            assert len(story.history) <= 100
            seen += [e.seq for e in story.history]
            if story.next is None:
                break
            after = story.next
    assert seen == [3 + 7, *moves]
