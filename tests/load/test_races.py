"""Races: 64 clients move the same credits at once, retrying and reusing keys and nonces.

Every client acts for one of four holders, so sixteen clients fight over each account, moving
by quantity (lowest serials first) or by explicit serial ranges that other clients want too,
transferring and retiring. Some clients send each instruction twice with the same
``Idempotency-Key`` (the second must replay the first answer), some resend an accepted
instruction under a new key (``nonce_reused``) or reuse an accepted key for another instruction
(``idempotency_key_reused``), and pairs of clients send the same signed instruction at the same
moment, with the same key or with different keys. A few read ``/v1/batches`` under load and
check supply is conserved in what they see.

Then :func:`tests.load.check_registry` proves the ledger and the state are whole. The test runs
on SQLite and PostgreSQL with one server process, with three ``registry serve`` processes
sharing the database (and the key file) to find forks and lost updates between processes, and
with one server of two uvicorn workers, whose instructions share the server's one writer.
Two smaller tests: holdings reads under load are one snapshot each, and the checks themselves
catch a double spend and a false acknowledgement.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from registry.api.paths import INSTRUCTION_PATHS
from registry.client import new_nonce, sign_instruction
from registry.config import Settings
from registry.ledger import merkle
from registry.ledger.entry import Entry, format_time, seal_entry
from registry.ledger.keys import SigningKey, b64encode
from registry.service.context import Registry
from tests.conftest import ORIGIN
from tests.load import (
    Ack,
    Stored,
    ack_of,
    check_acknowledged,
    check_registry,
    error_code,
    long_only,
    replay_credits,
    retirement_or_transfer,
    serving,
)
from tests.world import ADMIN, World, build_world, issue_jcm

CLIENTS = 64
HOLDERS = {"kh-water": "KH-WATER-1", "kh-gov": "KH-GOV-1", "jp-gov": "JP-GOV-1",
           "jp-buyer": "JP-BUYER-1"}
PARTIES = list(HOLDERS)
ROLES = ("plain", "same_key_twice", "new_key_and_reused_key", "paired")
REFUSALS = {"insufficient_credits", "serials_not_held", "nonce_reused", "idempotency_key_reused"}
BATCH_SIZE = 1000


@dataclass
class Outcomes:
    """What every client saw; appended from many threads (list.append is atomic)."""

    acks: list[Ack] = field(default_factory=list)
    refusals: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    paired: dict[tuple[int, int], list[tuple[str, httpx.Response]]] = field(default_factory=dict)
    transport_errors: int = 0


def movement(rng: random.Random, party: str, batches: list[str]) -> tuple[str, dict[str, Any]]:
    """A transfer or retirement from ``party``'s account, by quantity or by a contested range."""
    account = HOLDERS[party]
    body: dict[str, Any] = {"account": account, "batch": rng.choice(batches)}
    if rng.random() < 0.3:
        start = rng.randint(1, BATCH_SIZE)
        body["range"] = {"start": start, "end": min(BATCH_SIZE, start + rng.randint(0, 2))}
    else:
        body["quantity"] = rng.randint(1, 4)
    return retirement_or_transfer(rng, body, list(HOLDERS.values()), "Race test")


def pair_of(index: int) -> int:
    """Paired clients ``i`` and ``i + 16`` (same party, same role) share their instructions."""
    return (index // 32) * 16 + index % 16


class Racer:
    """One client thread: a party, a server, a role, and a fixed number of operations."""

    def __init__(self, index: int, url: str, keys: dict[str, SigningKey], batches: list[str],
                 outcomes: Outcomes, ops: int, shared: list[tuple[str, dict[str, Any]]] | None,
                 barrier: threading.Barrier | None) -> None:
        self.index = index
        self.pair = pair_of(index)
        self.party = PARTIES[index % len(PARTIES)]
        self.role = ROLES[(index // len(PARTIES)) % len(ROLES)]
        self.key = keys[self.party]
        self.batches = batches
        self.outcomes = outcomes
        self.ops = ops
        self.rng = random.Random(index)
        self.shared = shared
        self.barrier = barrier
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(60, connect=10))

    def sign(self) -> dict[str, Any]:
        kind, body = movement(self.rng, self.party, self.batches)
        return sign_instruction(self.key, registry=ORIGIN, actor=self.party, type=kind,
                                body=body)

    def post(self, signed: dict[str, Any], key: str) -> httpx.Response | None:
        """Post, retrying the same key on a transport error; records what came back."""
        path = INSTRUCTION_PATHS[signed["instruction"]["type"]]
        for _ in range(3):
            try:
                response = self.http.post(path, json=signed, headers={"Idempotency-Key": key})
            except httpx.TransportError:
                self.outcomes.transport_errors += 1
                continue
            self.observe(response, key, signed)
            return response
        self.outcomes.problems.append(f"client {self.index}: no answer after 3 attempts")
        return None

    def observe(self, response: httpx.Response, key: str, signed: dict[str, Any]) -> None:
        if response.status_code == 200:
            self.outcomes.acks.append(ack_of(response, key=key, signed=signed))
            return
        code = error_code(response)
        if response.status_code == 409 and code in REFUSALS:
            self.outcomes.refusals[code] += 1
        else:
            self.outcomes.problems.append(
                f"client {self.index}: {response.status_code} {response.text[:300]}")

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            self.outcomes.problems.append(f"client {self.index} ({self.role}): {what}")

    def run(self) -> None:
        try:
            for op in range(self.ops):
                getattr(self, f"_{self.role}")(op)
        except Exception as e:  # a failure in a thread must fail the test, not vanish
            self.outcomes.problems.append(f"client {self.index} crashed: {e!r}")
        finally:
            self.http.close()

    def _plain(self, _op: int) -> None:
        self.post(self.sign(), new_nonce())
        page = self.http.get("/v1/batches", params={"limit": 10})
        for b in page.json()["data"]:
            self.expect(b["active"] + b["retired"] + b["cancelled"] == b["quantity"],
                        f"a read under load saw supply not conserved: {b}")

    def _same_key_twice(self, _op: int) -> None:
        signed, key = self.sign(), new_nonce()
        first = self.post(signed, key)
        second = self.post(signed, key)
        if first is not None and first.status_code == 200 and second is not None:
            self.expect(second.status_code == 200 and second.json() == first.json()
                        and second.headers.get("Idempotent-Replayed") == "true",
                        f"a retry with the same key did not replay: {second.text[:300]}")

    def _new_key_and_reused_key(self, _op: int) -> None:
        signed, key = self.sign(), new_nonce()
        first = self.post(signed, key)
        again = self.post(signed, new_nonce())
        other = self.post(self.sign(), key)
        if first is not None and first.status_code == 200:
            self.expect(again is not None and again.status_code == 409
                        and error_code(again) == "nonce_reused",
                        f"an accepted instruction under a new key was not refused: {again}")
            self.expect(other is not None and other.status_code == 409
                        and error_code(other) == "idempotency_key_reused",
                        f"an accepted key reused for another body was not refused: {other}")

    def _paired(self, op: int) -> None:
        assert self.shared is not None and self.barrier is not None
        key, signed = self.shared[op]
        if op % 2 and self.index % 32 >= 16:
            key = key + "-other"  # odd operations: same instruction, different keys
        self.barrier.wait()
        response = self.post(signed, key)
        if response is not None:
            self.outcomes.paired.setdefault((self.pair, op), []).append((key, response))


def check_pairs(outcomes: Outcomes) -> None:
    """Same instruction at once: same key replays the one answer; different keys, one entry."""
    for (pair, op), answers in outcomes.paired.items():
        assert len(answers) == 2, (pair, op, answers)
        ok = [(key, r) for key, r in answers if r.status_code == 200]
        if answers[0][0] == answers[1][0]:
            # The one instruction under the one key: the later answer is the earlier one's
            # replay, never a refusal for a nonce or a key its own twin used.
            replays = [error_code(r) for _, r in answers
                       if r.status_code == 409 and error_code(r) in {
                           "nonce_reused", "idempotency_key_reused"}]
            assert not replays, (
                f"pair {pair} op {op}: the same request under the same key was refused "
                f"{replays} instead of getting the first answer again")
            if len(ok) == 2:
                assert ok[0][1].json() == ok[1][1].json(), (pair, op)
                replayed = sorted(r.headers.get("Idempotent-Replayed") == "true" for _, r in ok)
                assert replayed == [False, True], (pair, op, replayed)
        else:
            assert len(ok) <= 1, f"pair {pair} op {op}: one instruction accepted twice"


def run_races(world: World, urls: list[str], ops: int) -> Outcomes:
    batches = [issue_jcm(world, "KH004-MR1", BATCH_SIZE),
               issue_jcm(world, "KH004-MR2", BATCH_SIZE, period=("2025-01-01", "2025-06-30"))]
    outcomes = Outcomes()
    shared: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    barriers: dict[int, threading.Barrier] = {}
    racers = []
    for i in range(CLIENTS):
        party = PARTIES[i % len(PARTIES)]
        pair = pair_of(i)
        if ROLES[(i // len(PARTIES)) % len(ROLES)] == "paired" and pair not in shared:
            rng = random.Random(1000 + pair)
            shared[pair] = []
            for _ in range(ops):
                kind, body = movement(rng, party, batches)
                signed = sign_instruction(world.keys[party], registry=world.origin, actor=party,
                                          type=kind, body=body)
                shared[pair].append((new_nonce(), signed))
            barriers[pair] = threading.Barrier(2, timeout=120)
        racers.append(Racer(i, urls[i % len(urls)], world.keys, batches, outcomes, ops,
                            shared.get(pair), barriers.get(pair)))
    threads = [threading.Thread(target=r.run, name=f"racer-{r.index}") for r in racers]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(1.0, 300 - (time.monotonic() - started)))
    assert not any(t.is_alive() for t in threads), "clients still running after 300 s"
    print(f"\nraces: {len(urls)} server(s), {CLIENTS} clients x {ops} ops in "
          f"{time.monotonic() - started:.1f} s: {len(outcomes.acks)} acknowledged, "
          f"refused {dict(outcomes.refusals)}, transport errors {outcomes.transport_errors}")
    return outcomes


def race(settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path,
         processes: int, ops: int, workers: int = 1) -> None:
    with serving(settings, tmp_path, count=processes, workers=workers) as servers:
        world = build_world(servers[0].url, admin_key)
        try:
            outcomes = run_races(world, [s.url for s in servers], ops)
            assert not outcomes.problems, "\n".join(outcomes.problems[:20])
            check_pairs(outcomes)
            moved = sum(1 for a in outcomes.acks if not a.replayed)
            assert moved > CLIENTS, f"too little got through to prove anything: {moved}"
            check_registry(world, registry, outcomes.acks, tmp_path)
            for server in servers:
                assert not server.errors_logged(), server.log_tail()
        finally:
            world.http.http.close()


# One server; three sharing the database; one with two uvicorn workers (sharing its writer).
SCALES = pytest.mark.parametrize(
    ("processes", "workers"), [(1, 1), (3, 1), (1, 2)],
    ids=["1-process", "3-processes", "2-workers"],
)


@SCALES
def test_races(settings: Settings, registry: Registry, admin_key: SigningKey, tmp_path: Path,
               processes: int, workers: int) -> None:
    race(settings, registry, admin_key, tmp_path, processes, ops=5, workers=workers)


@pytest.mark.slow
@long_only
@SCALES
def test_races_long(settings: Settings, registry: Registry, admin_key: SigningKey,
                    tmp_path: Path, processes: int, workers: int) -> None:
    race(settings, registry, admin_key, tmp_path, processes, ops=24, workers=workers)


def test_reads_under_load_are_snapshots(settings: Settings, registry: Registry,
                                        admin_key: SigningKey, tmp_path: Path) -> None:
    """A holdings read is one snapshot: its blocks add up to its ``total_active``, however fast
    transfers commit around it. (Each is a separate statement; PostgreSQL's READ COMMITTED would
    give each statement its own snapshot, so read transactions ask for REPEATABLE READ.)"""
    with serving(settings, tmp_path) as servers:
        world = build_world(servers[0].url, admin_key)
        try:
            batch = issue_jcm(world, "KH004-MR1", BATCH_SIZE)
            key = world.keys["kh-water"]
            signed = [sign_instruction(key, registry=world.origin, actor="kh-water",
                                       type="credits.transfer", body={
                "account": "KH-WATER-1", "batch": batch, "quantity": 1,
                "to_account": "JP-BUYER-1"}) for _ in range(240)]

            statuses: list[int] = []

            def move(chunk: list[dict[str, Any]]) -> None:
                with httpx.Client(base_url=servers[0].url, timeout=60) as http:
                    for body in chunk:
                        statuses.append(http.post("/v1/transfers", json=body, headers={
                            "Idempotency-Key": new_nonce()}).status_code)

            movers = [threading.Thread(target=move, args=(signed[i::6],)) for i in range(6)]
            for t in movers:
                t.start()
            skewed: list[tuple[int, int]] = []
            reads = 0
            deadline = time.monotonic() + 60
            while any(t.is_alive() for t in movers) and time.monotonic() < deadline:
                held = world.holdings("KH-WATER-1")
                reads += 1
                listed = sum(b["quantity"] for b in held["blocks"]["data"]
                             if b["status"] == "active")
                if held["blocks"]["count"] <= len(held["blocks"]["data"]) and (
                        listed != held["total_active"]):
                    skewed.append((listed, held["total_active"]))
            for t in movers:
                t.join(timeout=60)
            # The reads overlapped transfers that went through, not refusals that moved nothing.
            assert statuses == [200] * len(signed), sorted(set(statuses))
            assert world.active("JP-BUYER-1") == len(signed)
            assert reads > 20, f"only {reads} reads overlapped the transfers"
            assert not skewed, (f"{len(skewed)} of {reads} holdings reads disagreed with "
                                f"themselves (blocks, total_active): {skewed[:5]}")
        finally:
            world.http.http.close()

# --- the checks themselves catch what they are for --------------------------------------------


def _stored(seq: int, kind: str, actor: str, nonce: str, effects: dict[str, Any],
            asked: dict[str, Any] | None = None) -> Stored:
    instruction = {"actor": actor, "nonce": nonce, "body": asked or {}}
    entry = Entry(v=1, seq=seq, time=format_time(datetime.now(UTC)), kind=kind, actor=actor,
                  payload={"instruction": instruction, "effects": effects},
                  prev=None if seq == 0 else "ab" * 32)
    envelope = seal_entry(entry, SigningKey.from_seed(b"R" * 32))
    return Stored(seq, merkle.leaf_hash(envelope), envelope, entry)


def _move(seq: int, nonce: str, start: int, end: int, asked: int | None = None) -> Stored:
    return _stored(seq, "credits.transfer", "a", nonce, {
        "batch": "B", "from": "A", "to": "C", "quantity": end - start + 1,
        "blocks": [{"start": start, "end": end}]}, {
        "account": "A", "batch": "B", "to_account": "C",
        "quantity": end - start + 1 if asked is None else asked})


def test_checks_catch_double_spends_and_false_acknowledgements() -> None:
    issue = _stored(1, "credits.issue", ADMIN, "n1", {
        "batch": "B", "quantity": 10, "blocks": [{"account": "A", "start": 1, "end": 10}]})
    genesis = _stored(0, "registry.genesis", "registry", "n0", {})
    ledger = [genesis, issue, _move(2, "n2", 3, 5)]
    assert replay_credits(ledger) == {
        "B": [(1, 2, "A", "active"), (3, 5, "C", "active"), (6, 10, "A", "active")]}
    with pytest.raises(AssertionError, match="double spend"):
        replay_credits([*ledger, _move(3, "n3", 5, 6)])
    with pytest.raises(AssertionError, match="asked for 4"):  # a partial fill
        replay_credits([*ledger, _move(3, "n3", 6, 8, asked=4)])
    with pytest.raises(AssertionError, match="twice"):
        check_acknowledged([*ledger, _move(3, "n2", 6, 6)], [])
    good = Ack(key="k", actor="a", nonce="n2", kind="credits.transfer", replayed=False, body={
        "seq": 2, "kind": "credits.transfer", "leaf_hash": b64encode(ledger[2].leaf_hash),
        "tree_size": 3, "result": ledger[2].entry.payload["effects"]})
    check_acknowledged(ledger, [good])
    with pytest.raises(AssertionError, match="leaf hash"):
        check_acknowledged(ledger, [replace(good, body={**good.body, "seq": 1})])
    with pytest.raises(AssertionError, match="not in the ledger"):
        check_acknowledged(ledger, [replace(good, body={**good.body, "seq": 3})])
    with pytest.raises(AssertionError, match="different answers"):
        other = replace(good, body={**good.body, "tree_size": 4})
        check_acknowledged(ledger, [good, other])
