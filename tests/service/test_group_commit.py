"""Group commit: several use cases in one transaction, each still all or nothing.

The writer batches whatever is queued when it gets the lock; ``run_together`` forces a batch so
the tests do not depend on timing. The registry is built over HTTP (``world``) and its state is
read back through the API, the stored ledger and an offline verification of an export.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlmodel import Session

from registry.client import new_nonce
from registry.errors import InvalidRequestError, RegistryError
from registry.service.context import Registry
from registry.service.group_commit import ReadingWork
from registry.service.ledger import LedgerTail
from registry.service.submit import Outcome, prepare
from registry.store import ledger_repo, write_behind
from registry.store.credits_repo import _BLOCK, held_blocks
from registry.store.db import read_session, write_transaction
from registry.store.tables import IdempotencyRow, table
from tests.factories import drop_append_only_triggers
from tests.helpers import StepClock
from tests.load import check_checkpoints, check_offline, read_ledger
from tests.world import ADMIN, World, issue_jcm


def _transfer(world: World, batch: str, **pick: Any) -> dict[str, Any]:
    body = {"account": "KH-WATER-1", "batch": batch, "to_account": "JP-BUYER-1", **pick}
    return world.as_("kh-water").sign("credits.transfer", body)


def _work(registry: Registry, signed: dict[str, Any], key: str | None = None) -> Any:
    return prepare(registry, signed, expected_type="credits.transfer",
                   idempotency_key=key or new_nonce())


def _checkpoint_sizes(registry: Registry, sizes: range) -> list[int]:
    with read_session(registry.engine) as s:
        return [n for n in sizes if ledger_repo.checkpoint_at(s, n) is not None]


def test_a_batch_appends_in_order_and_signs_one_checkpoint(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    batch = issue_jcm(world)
    before = world.tree_size()
    answers = registry.writes.run_together(
        [_work(registry, _transfer(world, batch, quantity=q)) for q in (1, 2, 3)]
    )
    assert [a.body["seq"] for a in answers] == [before, before + 1, before + 2]
    assert [a.body["result"]["blocks"][0]["start"] for a in answers] == [
        answers[0].body["result"]["blocks"][0]["start"] + d for d in (0, 1, 3)
    ]
    assert world.tree_size() == before + 3
    assert _checkpoint_sizes(registry, range(before, before + 4)) == [before, before + 3]
    assert world.active("JP-BUYER-1") == 6
    ledger = read_ledger(world.http.http, registry)
    check_checkpoints(world.http.http, ledger, registry)
    check_offline(registry, tmp_path)


def test_a_refused_instruction_leaves_no_trace_and_the_rest_of_the_batch_commits(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    batch = issue_jcm(world)
    first = world.submit("kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": batch, "to_account": "JP-BUYER-1", "quantity": 1,
    })["result"]["blocks"][0]["start"]
    contested = {"range": {"start": first + 1, "end": first + 10}}
    double_spend = _transfer(world, batch, **contested)
    answers = registry.writes.run_together([
        _work(registry, _transfer(world, batch, **contested)),
        _work(registry, double_spend),
        _work(registry, _transfer(world, batch, quantity=5)),
    ])
    assert isinstance(answers[0], Outcome) and isinstance(answers[2], Outcome)
    assert isinstance(answers[1], RegistryError)
    refusal = answers[1]
    assert [answers[0].body["seq"], answers[2].body["seq"]] == [
        answers[0].body["seq"], answers[0].body["seq"] + 1
    ], "a refused instruction takes no seq"
    assert world.active("JP-BUYER-1") == 1 + 10 + 5
    # Its nonce and idempotency key were rolled back with it: alone, it gets the same refusal,
    # not a replay error.
    alone = registry.writes.run_together([_work(registry, double_spend)])[0]
    assert isinstance(alone, RegistryError) and alone.code == refusal.code
    check_offline(registry, tmp_path)


def test_a_retry_in_the_same_batch_gets_the_first_answer(
    world: World, registry: Registry
) -> None:
    batch = issue_jcm(world)
    before = world.tree_size()
    signed = _transfer(world, batch, quantity=7)
    first, retry = registry.writes.run_together(
        [_work(registry, signed, key="retry-1"), _work(registry, signed, key="retry-1")]
    )
    assert not first.replayed and retry.replayed and retry.body == first.body
    assert world.tree_size() == before + 1
    assert world.active("JP-BUYER-1") == 7


def test_a_replay_in_the_same_batch_is_refused_and_its_original_commits(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    batch = issue_jcm(world)
    before = world.tree_size()
    signed = _transfer(world, batch, quantity=4)
    # The same signed instruction under another Idempotency-Key: its nonce is the replay check,
    # and the first use is still only in the batch's memory when the second is carried out.
    first, replay, other = registry.writes.run_together([
        _work(registry, signed), _work(registry, signed),
        _work(registry, _transfer(world, batch, quantity=1)),
    ])
    assert isinstance(first, Outcome) and isinstance(other, Outcome)
    assert isinstance(replay, RegistryError) and replay.code == "nonce_reused"
    assert world.tree_size() == before + 2
    # Refused inside the batch, not by the used_nonce key failing the whole transaction (then
    # each use case would have been carried out again alone, one checkpoint each).
    assert _checkpoint_sizes(registry, range(before, before + 3)) == [before, before + 2]
    assert world.active("JP-BUYER-1") == 5
    # Committed, the nonce is refused the same way from the store.
    again = registry.writes.run_together([_work(registry, signed)])[0]
    assert isinstance(again, RegistryError) and again.code == "nonce_reused"
    with read_session(registry.engine) as s:
        nonce = signed["instruction"]["nonce"]
        count = s.execute(text("SELECT count(*) FROM used_nonce WHERE nonce = :n"), {"n": nonce})
        assert count.scalar_one() == 1
    check_offline(registry, tmp_path)


def _between_two_transfers(world: World, registry: Registry, batch: str, middle: Any) -> Any:
    """Carry out ``middle`` between two transfers in one batch; what ``middle`` answered.

    Whatever ``middle`` did, the transfers around it commit as the next two entries.
    """
    before = world.tree_size()
    first, answer, last = registry.writes.run_together([
        _work(registry, _transfer(world, batch, quantity=1)),
        middle,
        _work(registry, _transfer(world, batch, quantity=2)),
    ])
    assert [first.body["seq"], last.body["seq"]] == [before, before + 1]
    assert world.tree_size() == before + 2
    return answer


def test_an_unexpected_failure_fails_its_own_request_only(
    world: World, registry: Registry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    batch = issue_jcm(world)

    def breaks_after_appending(session: Session, tail: LedgerTail) -> None:
        tail.append(session, registry, kind="test.note", actor="registry", payload={"n": 1})
        raise RuntimeError("the disk is on fire")

    failed = _between_two_transfers(world, registry, batch, breaks_after_appending)
    assert isinstance(failed, RuntimeError)
    assert world.active("JP-BUYER-1") == 3
    # The others were carried out again, each alone; the operator is told why, with the cause
    # (a bug that one use case alone does not show would otherwise pass unseen).
    logged = [r for r in caplog.records if "failed as a whole" in r.getMessage()]
    assert [(r.levelname, r.exc_info and str(r.exc_info[1])) for r in logged] == [
        ("ERROR", "the disk is on fire")]
    check_offline(registry, tmp_path)


@pytest.mark.parametrize("size", [1, 3])
def test_a_checkpoint_inconsistent_with_the_store_fails_the_whole_batch(
    world: World, registry: Registry, size: int
) -> None:
    batch = issue_jcm(world)
    before = world.tree_size()
    drop_append_only_triggers(registry)
    with write_transaction(registry.engine) as s:
        s.execute(text("UPDATE checkpoint SET root = :r WHERE size = :n"),
                  {"r": b"\x00" * 32, "n": before})
    answers = registry.writes.run_together(
        [_work(registry, _transfer(world, batch, quantity=1)) for _ in range(size)]
    )
    assert all(isinstance(a, RegistryError) and a.code == "bad_checkpoint" for a in answers)
    assert world.tree_size() == before


def test_a_refusal_after_appending_takes_its_entry_back(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    batch = issue_jcm(world)
    before = world.tree_size()

    def refuses_after_appending(session: Session, tail: LedgerTail) -> None:
        write_behind.defer(session, table(IdempotencyRow), [{
            "key": "ghost", "request_hash": "0" * 64, "status_code": 200, "response": "{}",
            "seq": tail.size,
        }])
        for n in range(3):  # enough appends to complete subtrees that must go too
            tail.append(session, registry, kind="test.note", actor="registry", payload={"n": n})
        raise InvalidRequestError("changed its mind")

    refused = _between_two_transfers(world, registry, batch, refuses_after_appending)
    assert isinstance(refused, InvalidRequestError)
    # One transaction, not a retry of each alone: one checkpoint for the two.
    assert _checkpoint_sizes(registry, range(before, before + 3)) == [before, before + 2]
    with read_session(registry.engine) as s:
        assert s.get(IdempotencyRow, "ghost") is None, "a refused job's deferred row was written"
    for _ in range(4):  # the next appends complete the subtrees the refused ones had
        world.submit("kh-water", "credits.transfer", {
            "account": "KH-WATER-1", "batch": batch, "to_account": "JP-BUYER-1", "quantity": 1,
        })
    ledger = read_ledger(world.http.http, registry)
    assert [s.entry.kind for s in ledger[before:]] == ["credits.transfer"] * 6
    check_checkpoints(world.http.http, ledger, registry)
    check_offline(registry, tmp_path)


def _note(registry: Registry, tag: str, delay: float = 0.0) -> Any:
    def work(session: Session, tail: LedgerTail) -> int:
        time.sleep(delay)
        return tail.append(
            session, registry, kind="test.note", actor="registry", payload={"t": tag}
        ).entry.seq

    return work


def _size(registry: Registry) -> int:
    with read_session(registry.engine) as s:
        return ledger_repo.tree_size(s)


def test_a_writer_that_cannot_start_fails_its_request_and_the_next_one_still_runs(
    registry: Registry, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_start = threading.Thread.start
    failures = iter([True])

    def start_once_fails(thread: threading.Thread) -> None:
        if thread.name == "registry-writer" and next(failures, False):
            raise RuntimeError("can't start new thread")
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_once_fails)
    before = _size(registry)
    with pytest.raises(RuntimeError, match="can't start"):
        registry.writes.run(_note(registry, "refused"))
    assert registry.writes.run(_note(registry, "next")) == before
    time.sleep(0.2)
    assert _size(registry) == before + 1, "the failed request must never be carried out"


def test_a_caller_gone_with_its_event_loop_does_not_fail_the_rest_of_its_batch(
    registry: Registry,
) -> None:
    before = _size(registry)
    busy = threading.Thread(target=registry.writes.run, args=(_note(registry, "busy", 0.5),))
    busy.start()
    time.sleep(0.1)  # the writer is busy: what comes next is batched together

    async def abandon() -> None:
        task = asyncio.ensure_future(registry.writes.run_async(_note(registry, "abandoned")))
        await asyncio.sleep(0.05)
        task.cancel()

    loop = asyncio.new_event_loop()
    loop.run_until_complete(abandon())
    loop.close()
    answer = registry.writes.run(_note(registry, "stays"))
    busy.join(5)
    assert answer == before + 2
    assert _size(registry) == before + 3  # committed, including the abandoned one


def test_an_instruction_is_checked_at_the_time_its_entry_will_bear(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    """Entry times never run backwards: with the clock stepped back, the next entry is dated as
    the last one, and the auditor checks its instruction's expiry at that time. The registry
    checks it at the same time, or it would accept what its own audit then rejects."""
    batch = issue_jcm(world)
    clock = registry.clock
    assert isinstance(clock, StepClock)
    clock.now -= timedelta(hours=1)
    expiring = world.as_("kh-water").sign(
        "credits.transfer",
        {"account": "KH-WATER-1", "batch": batch, "to_account": "JP-BUYER-1", "quantity": 1},
        now=clock.now, valid_for=timedelta(minutes=30),
    )
    before = world.tree_size()
    (answer,) = registry.writes.run_together([_work(registry, expiring)])
    assert isinstance(answer, RegistryError) and answer.code == "instruction_expired"
    assert world.tree_size() == before
    # One that is still valid at the last entry's time goes through, dated at that time.
    valid = _transfer(world, batch, quantity=2)
    (answer,) = registry.writes.run_together([_work(registry, valid)])
    assert isinstance(answer, Outcome) and answer.body["result"]["quantity"] == 2
    clock.now += timedelta(hours=1)  # signed reads are checked against the registry's clock
    assert world.active("JP-BUYER-1") == 2
    check_offline(registry, tmp_path)



def _movement(world: World, registry: Registry, party: str, kind: str, account: str,
              batch: str, **rest: Any) -> Any:
    pick = {k: v for k, v in rest.items() if k in ("quantity", "to_account")}
    if "serials" in rest:
        start, end = rest["serials"]
        pick["range"] = {"start": start, "end": end}
    if kind == "credits.retire":
        pick |= {"beneficiary": "Phnom Penh Water", "purpose": "voluntary",
                 "jurisdiction": "KH", "reason": "2024 operations"}
    elif kind == "credits.cancel":
        pick["reason"] = "correction"
    signed = world.as_(party).sign(kind, {"account": account, "batch": batch, **pick})
    return prepare(registry, signed, expected_type=kind, idempotency_key=new_nonce())


def test_movements_in_one_batch_each_see_the_blocks_the_ones_before_left(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    """The blocks an account holds are read once for a batch and then known from each
    movement's own changes (no round trip on PostgreSQL): every later movement of the batch,
    from either side, must still take exactly the serials the stored blocks hold, including
    pieces split off earlier in the same transaction."""
    batch = issue_jcm(world)
    s = world.blocks("KH-WATER-1")[0][1]
    kh, jp = ("kh-water", "KH-WATER-1"), ("jp-buyer", "JP-BUYER-1")
    to_jp, to_kh = {"to_account": jp[1]}, {"to_account": kh[1]}
    steps: list[tuple[tuple[str, str], str, dict[str, Any]]] = [
        (kh, "credits.transfer", {"serials": (s + 10, s + 19), **to_jp}),
        (kh, "credits.transfer", {"quantity": 5, **to_jp}),  # s..s+4 of s..s+9
        (kh, "credits.transfer", {"serials": (s + 5, s + 6), **to_jp}),  # the piece left
        (kh, "credits.cancel", {"quantity": 3}),  # s+7..s+9, split off just before
        (kh, "credits.retire", {"serials": (s + 20, s + 22)}),  # split off by the first
        (jp, "credits.transfer", {"serials": (s + 12, s + 14), **to_kh}),
        (kh, "credits.transfer", {"quantity": 1, **to_jp}),  # s+12, just come back
        (kh, "credits.transfer", {"quantity": 1, **to_jp}),  # s+13
        (jp, "credits.transfer", {"quantity": 2, **to_kh}),  # s, s+1
    ]

    def checked(work: ReadingWork[Outcome]) -> ReadingWork[Outcome]:
        """``work``, then what both accounts hold as a movement reads it (known, on
        PostgreSQL, without a read) against the stored rows, read anew."""
        def run(session: Session, tail: LedgerTail) -> Outcome:
            outcome = work(session, tail)
            for account in (kh[1], jp[1]):
                known = held_blocks(session, account_id=account, batch_id=batch)
                stored = session.execute(
                    select(_BLOCK.c.start, _BLOCK.c.end)
                    .where(_BLOCK.c.account_id == account, _BLOCK.c.batch_id == batch,
                           _BLOCK.c.status == "active")
                    .order_by(_BLOCK.c.start)
                ).all()
                assert [(b.start, b.end) for b in known] == [tuple(r) for r in stored]
            return outcome
        return ReadingWork(run, work.reads)

    answers = registry.writes.run_together([
        checked(_movement(world, registry, who, kind, account, batch, **pick))
        for (who, account), kind, pick in steps
    ])
    assert all(isinstance(a, Outcome) for a in answers), answers
    taken = [[(b["start"], b["end"]) for b in a.body["result"]["blocks"]] for a in answers]
    assert taken == [
        [(s + 10, s + 19)], [(s, s + 4)], [(s + 5, s + 6)], [(s + 7, s + 9)],
        [(s + 20, s + 22)], [(s + 12, s + 14)], [(s + 12, s + 12)], [(s + 13, s + 13)],
        [(s, s + 1)],
    ]
    assert [(b[1], b[2]) for b in world.blocks("JP-BUYER-1")] == [
        (s + 2, s + 4), (s + 5, s + 6), (s + 10, s + 11), (s + 12, s + 12), (s + 13, s + 13),
        (s + 15, s + 19),
    ]
    assert [(b[1], b[2]) for b in world.blocks("KH-WATER-1")] == [
        (s, s + 1), (s + 14, s + 14), (s + 23, s + 799)]
    check_offline(registry, tmp_path)


def test_a_refusal_after_its_own_writes_in_a_batch_leaves_no_row(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    """A use case refused after writing state rows (``party.register`` adds the party, then
    finds its second key already registered) must leave none of them, also when it is refused
    inside a batch, where only its savepoint can take them back."""
    from registry.ledger.keys import SigningKey
    from registry.store.tables import PartyKeyRow, PartyRow

    batch = issue_jcm(world)
    fresh = SigningKey.from_seed(b"\x42" * 32).public_key
    taken = world.keys["kh-water"].public_key  # already kh-water's
    signed = world.as_(ADMIN).sign("party.register", {
        "party_id": "ghost-party", "name": "Ghost (illustrative)", "role": "participant",
        "public_keys": [fresh.to_b64(), taken.to_b64()],
    })
    register = prepare(registry, signed, expected_type="party.register",
                       idempotency_key=new_nonce())
    refused = _between_two_transfers(world, registry, batch, register)
    assert isinstance(refused, RegistryError) and refused.code == "conflict", refused
    with read_session(registry.engine) as s:
        assert s.get(PartyRow, "ghost-party") is None, "a refused registration left its party"
        assert s.get(PartyKeyRow, fresh.key_id) is None, "a refused registration left a key"
    check_offline(registry, tmp_path)


def test_two_servers_serialise_even_where_the_database_defaults_to_serializable(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    """Two servers (each its own engine and writer) on one PostgreSQL database whose
    transactions default to a snapshot isolation level (``default_transaction_isolation`` set
    for the role or the database, here in the URL): a write that waited for the ledger's lock
    must still see what the other server committed while it waited, not a snapshot taken
    before, or it appends on a stale head and fails (a 500 to its client)."""
    if registry.engine.dialect.name != "postgresql":
        pytest.skip("a PostgreSQL setting")
    from registry.store.db import make_engine

    batch = issue_jcm(world)
    before = world.tree_size()
    url = registry.engine.url.render_as_string(hide_password=False)
    url = url.replace("options=", "options=-cdefault_transaction_isolation%3Dserializable%20", 1)
    first, second = (
        Registry(engine=make_engine(url), signer=registry.signer, origin=registry.origin,
                 clock=registry.clock)
        for _ in range(2)
    )
    try:
        with first.engine.connect() as c:
            shown = c.exec_driver_sql("SHOW default_transaction_isolation").scalar()
            assert shown == "serializable"
        slow = _work(first, _transfer(world, batch, quantity=1))

        def holds_the_lock(session: Session, tail: LedgerTail) -> Any:
            answer = slow(session, tail)
            time.sleep(1.0)  # the other server's write waits for the lock meanwhile
            return answer

        answers: list[Any] = []
        holder = threading.Thread(
            target=lambda: answers.extend(first.writes.run_together([holds_the_lock])))
        holder.start()
        time.sleep(0.3)
        waiting = _work(second, _transfer(world, batch, quantity=2))
        (waited,) = second.writes.run_together([waiting])
        holder.join(10)
        assert isinstance(answers[0], Outcome), answers
        assert isinstance(waited, Outcome), waited
        assert waited.body["seq"] == answers[0].body["seq"] + 1 == before + 1
    finally:
        first.engine.dispose()
        second.engine.dispose()
    assert world.active("JP-BUYER-1") == 3
    check_offline(registry, tmp_path)
