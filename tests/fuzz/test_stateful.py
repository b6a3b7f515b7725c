"""Random credit histories through the service layer, with the books checked after every step.

A hypothesis ``RuleBasedStateMachine`` drives ``registry.service.submit.submit`` with
instructions signed by real party keys (``registry.client.sign_instruction``): JCM and REDD+
issuances (report, verification, issuance), transfers, retirements, cancellations (by quantity
or by explicit range) and REDD+ reversals, mixed with moves that must be refused: more than is
held, by someone who does not hold the account, of retired or cancelled serials, of a range only
partly held, out of the wrong kind of account, a second issuance from one report, a replayed
nonce, a reused idempotency key, a NUL character in a text field. Every refusal must be a
``RegistryError`` with the expected code and must change nothing at all; a retry with the same
idempotency key must return the original answer and change nothing either.

The machine keeps its own model, serial by serial: which serials each account holds active in
each batch, and which are retired or cancelled. After every step it reads the database and
checks: each batch's blocks partition ``1..issued`` (issued = active + retired + cancelled, no
serial in two blocks, no empty or negative block) and its kept retired and cancelled totals
are its blocks'; the database equals the model exactly;
retired and cancelled serials sit in the registry's accounts and are never active again; the
ledger grew by exactly one entry per accepted submission and by none per refused one. At the
end of each example the stored ledger is audited (``registry.service.ledger.audit_store``).

Each example gets a fresh database: a SQLite file in its own directory, and (when
``REGISTRY_TEST_POSTGRES_URL`` is set) a fresh PostgreSQL schema, dropped afterwards.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlmodel import func, select

from registry.client import new_nonce, sign_instruction
from registry.config import Settings
from registry.errors import (
    ConflictError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidRequestError,
    PermissionDeniedError,
    RegistryError,
    RegistryKeyReplacedError,
    ReplayError,
    SerialsNotHeldError,
)
from registry.ledger.keys import SigningKey
from registry.service.context import Registry
from registry.service.key_rotation import rotate_registry_key
from registry.service.ledger import audit_store
from registry.service.setup import FirstAdministrator, initialise
from registry.service.submit import submit
from registry.store import ledger_repo
from registry.store.db import read_session, scratch_schema
from registry.store.tables import (
    BatchRow,
    BlockRow,
    ForestUnitRow,
    IdempotencyRow,
    NonceRow,
    ReportRow,
    RetirementRow,
    ReversalRow,
)
from tests.helpers import StepClock
from tests.load import check_offline

POSTGRES_URL = os.environ.get("REGISTRY_TEST_POSTGRES_URL")
ORIGIN = "test.carbon-registry.example/stateful"

ADMIN = "kh-registry-admin"
TPE = "lrqa"
PARTIES = {  # party: (role, seed byte)
    "kh-water": ("participant", 1),
    "jp-buyer": ("participant", 2),
    "kh-gov": ("government", 3),
    TPE: ("third_party_entity", 4),
}
#: Holding accounts and their holders.
HOLDINGS = {"KH-WATER-1": "kh-water", "JP-BUYER-1": "jp-buyer", "KH-GOV-1": "kh-gov"}
#: Each project's participants: the JCM project's credits can go to all three holders, the
#: REDD+ project's not to the buyer, which gets them only by transfer.
PARTICIPANTS = {"KH004": ["kh-water", "jp-buyer"], "KH005": ["kh-gov"]}
UNIT = "KH005-FU1"
BUFFER = f"BUF-{UNIT}"
RETIREMENT, CANCELLATION = "RETIREMENT", "CANCELLATION"
#: Who holds each account that can hold credits.
HOLDER = {**HOLDINGS, BUFFER: ADMIN, RETIREMENT: ADMIN, CANCELLATION: ADMIN}
LEAKAGE_BP, BUFFER_BP = 1000, 2000
SQUARE = (
    '{"type":"Polygon","coordinates":[[[105.8,13.6],[105.9,13.6],[105.9,13.7],[105.8,13.7],'
    "[105.8,13.6]]]}"
)
MOVES = ("credits.transfer", "credits.retire", "credits.cancel")
#: Where each movement may take credits from (buffer pools leave only by cancellation).
MOVABLE_FROM = {
    "credits.transfer": set(HOLDINGS),
    "credits.retire": set(HOLDINGS),
    "credits.cancel": {*HOLDINGS, BUFFER},
}
DESTINATION = {"credits.retire": RETIREMENT, "credits.cancel": CANCELLATION}

Key = tuple[str, str]  # (account, batch)


# --- databases: one fresh per example ---------------------------------------------------------


@dataclass
class Database:
    url: str
    key_file: Path
    drop: Callable[[], None]


def sqlite_databases(root: Path) -> Callable[[], Database]:
    def make() -> Database:
        where = root / uuid.uuid4().hex[:12]
        return Database(f"sqlite:///{where / 'registry.db'}", where / "key.pem", lambda: None)

    return make


def postgres_databases(base: str, root: Path) -> Callable[[], Database]:
    def make() -> Database:
        stack = ExitStack()
        url = stack.enter_context(scratch_schema(base, prefix="t"))
        return Database(url, root / uuid.uuid4().hex[:12] / "key.pem", stack.close)

    return make


# --- helpers ----------------------------------------------------------------------------------


def lowest(serials: set[int], quantity: int) -> set[int]:
    return set(sorted(serials)[:quantity])


def runs(serials: set[int]) -> list[tuple[int, int]]:
    """Maximal contiguous runs of ``serials`` as inclusive ``(start, end)``."""
    out: list[tuple[int, int]] = []
    for _, group in itertools.groupby(enumerate(sorted(serials)), lambda p: p[1] - p[0]):
        items = [s for _, s in group]
        out.append((items[0], items[-1]))
    return out


def expand(blocks: list[dict[str, int]]) -> set[int]:
    return {s for b in blocks for s in range(b["start"], b["end"] + 1)}


def ceil_bp(amount: int, bp: int) -> int:
    return -(-amount * bp // 10_000)


def allocations(data: st.DataObject, total: int, project: str) -> list[tuple[str, int]]:
    """``total`` split among 1-3 distinct holding accounts of ``project``'s side (its
    participants' and the government's: issuance goes nowhere else), each share > 0."""
    side = sorted(a for a, holder in HOLDINGS.items()
                  if holder in PARTICIPANTS[project] or PARTIES[holder][0] == "government")
    accounts = data.draw(
        st.lists(st.sampled_from(side), min_size=1, max_size=min(3, total, len(side)),
                 unique=True),
        label="accounts",
    )
    cuts = sorted(data.draw(
        st.lists(st.integers(1, total - 1), min_size=len(accounts) - 1,
                 max_size=len(accounts) - 1, unique=True),
        label="cuts",
    )) if len(accounts) > 1 else []
    edges = [0, *cuts, total]
    return [(a, edges[i + 1] - edges[i]) for i, a in enumerate(accounts)]


# --- the machine ------------------------------------------------------------------------------


class CreditLedgerMachine(RuleBasedStateMachine):
    """A registry with three holders, a JCM project and a REDD+ forest unit, and its model."""

    def __init__(self, databases: Callable[[], Database]) -> None:
        super().__init__()
        self.database = databases()
        self.keys = {ADMIN: SigningKey.from_seed(b"A" * 32)}
        self.keys.update({p: SigningKey.from_seed(bytes([n]) * 32) for p, (_, n) in
                          PARTIES.items()})
        self.registry: Registry = initialise(
            Settings(database_url=self.database.url, origin=ORIGIN,
                     key_file=self.database.key_file),
            admin=FirstAdministrator(party_id=ADMIN, public_key=self.keys[ADMIN].public_key),
            insecure_dev_key=True,
            clock=StepClock(),
        )
        self.size = self._tree_size()
        # The model: active serials per (account, batch); retired and cancelled per batch.
        self.held: dict[Key, set[int]] = defaultdict(set)
        self.retired: dict[str, set[int]] = defaultdict(set)
        self.cancelled: dict[str, set[int]] = defaultdict(set)
        self.issued: dict[str, int] = {}
        self.shortfall = 0
        self.reports = 0
        self.issued_reports: list[str] = []
        self.last: tuple[dict[str, Any], str, str, dict[str, Any]] | None = None
        self.accepted = 0
        self.refused = 0
        self.rotations = 0
        try:
            self._build_world()
        except BaseException:
            self.registry.engine.dispose()
            self.database.drop()
            raise

    def _build_world(self) -> None:
        for party, (role, _) in PARTIES.items():
            self.accept(ADMIN, "party.register", {
                "party_id": party, "name": f"{party} (illustrative)", "role": role,
                "public_keys": [self.keys[party].public_key.to_b64()],
            })
        for account, holder in HOLDINGS.items():
            self.accept(ADMIN, "account.open",
                        {"account_id": account, "holder": holder, "name": f"{holder} holding"})
        for project, methodology, programme in (
            ("KH004", "KH_AM001", "JCM"), ("KH005", "KH_AM004", "REDD+"),
        ):
            self.accept(ADMIN, "project.register", {
                "project_id": project, "title": f"{project} (illustrative)",
                "partner_country": "KH", "methodology": methodology, "sector": "Energy",
                "programme": programme,
                "participants": PARTICIPANTS[project], "third_party_entity": TPE,
                "crediting_period_start": "2018-01-01", "crediting_period_end": "2037-12-31",
            })
        self.accept(ADMIN, "forest_unit.register", {
            "unit_id": UNIT, "project_id": "KH005", "name": "Prey Lang block (illustrative)",
            "boundary": SQUARE, "jurisdiction": "Stung Treng", "reference_level": 400_000,
            "leakage_rate_bp": LEAKAGE_BP, "buffer_rate_bp": BUFFER_BP,
        })

    def teardown(self) -> None:
        try:
            with read_session(self.registry.engine) as session:
                report = audit_store(session, self.registry)
            assert report.ok, report.failures
            assert report.entries == self.size
            # And as an auditor sees it: the export verifies, and its replay is the store.
            with tempfile.TemporaryDirectory() as workdir:
                check_offline(self.registry, Path(workdir))
        finally:
            self.registry.engine.dispose()
            self.database.drop()

    # --- submitting ---------------------------------------------------------------------------

    def _tree_size(self) -> int:
        with read_session(self.registry.engine) as session:
            return ledger_repo.tree_size(session)

    def _sign(self, actor: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        return sign_instruction(self.keys[actor], registry=ORIGIN, actor=actor, type=kind,
                                body=body)

    def accept(self, actor: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """Submit; it must be accepted and append exactly one entry. Returns the effects."""
        signed, key = self._sign(actor, kind, body), new_nonce()
        outcome = submit(self.registry, signed, expected_type=kind, idempotency_key=key)
        assert not outcome.replayed
        assert outcome.body["seq"] == self.size
        self.size += 1
        assert self._tree_size() == self.size == outcome.body["tree_size"]
        self.last = (signed, kind, key, outcome.body)
        self.accepted += 1
        result: dict[str, Any] = outcome.body["result"]
        return result

    def _snapshot(self) -> tuple[Any, ...]:
        """Everything a submission can change."""
        with read_session(self.registry.engine) as s:
            return (
                ledger_repo.tree_size(s),
                sorted((b.batch_id, b.start, b.end, b.account_id, b.status)
                       for b in s.exec(select(BlockRow)).all()),
                sorted((b.id, b.quantity) for b in s.exec(select(BatchRow)).all()),
                sorted((r.id, r.status) for r in s.exec(select(ReportRow)).all()),
                sorted(r.id for r in s.exec(select(RetirementRow)).all()),
                sorted(r.seq for r in s.exec(select(ReversalRow)).all()),
                [u.shortfall for u in s.exec(select(ForestUnitRow)).all()],
                s.exec(select(func.count()).select_from(NonceRow)).one(),
                s.exec(select(func.count()).select_from(IdempotencyRow)).one(),
            )

    def refuse(self, actor: str, kind: str, body: dict[str, Any], error: type[RegistryError],
               code: str, *, signed: dict[str, Any] | None = None, key: str | None = None
               ) -> None:
        """Submit; it must be refused with ``error``/``code`` and change nothing at all."""
        before = self._snapshot()
        with pytest.raises(RegistryError) as info:
            submit(self.registry, signed or self._sign(actor, kind, body), expected_type=kind,
                   idempotency_key=key or new_nonce())
        assert isinstance(info.value, error), (info.value.code, info.value.message)
        assert info.value.code == code, (info.value.code, info.value.message)
        assert self._snapshot() == before, "a refused submission changed the registry"
        self.refused += 1

    # --- what the model knows -----------------------------------------------------------------

    def holdings(self, accounts: set[str]) -> list[Key]:
        return sorted(k for k, serials in self.held.items() if serials and k[0] in accounts)

    def has_credits(self) -> bool:
        return bool(self.holdings(set(HOLDINGS)))

    def has_batches(self) -> bool:
        return bool(self.issued)

    def has_gone(self) -> bool:
        return any(self.retired.values()) or any(self.cancelled.values())

    def _next_period(self) -> str:
        day = date(2024, 1, 1) + timedelta(days=self.reports)
        self.reports += 1
        return day.isoformat()

    def _report(self, project: str, party: str, reductions: int, verified: int,
                unit: str | None = None) -> str:
        report_id = f"{project}-R{self.reports}"
        day = self._next_period()
        body: dict[str, Any] = {
            "report_id": report_id, "project_id": project, "period_start": day,
            "period_end": day, "reductions": reductions, "document_sha256": "d" * 64,
        }
        if unit is not None:
            body["forest_unit_id"] = unit
        self.accept(party, "report.submit", body)
        self.accept(TPE, "report.verify", {
            "report_id": report_id, "verified_reductions": verified,
            "statement_sha256": "e" * 64,
        })
        return report_id

    def _issue(self, report_id: str, shares: list[tuple[str, int]], extra: list[tuple[str, int]],
               programme: str, project: str) -> None:
        number = 1 + sum(1 for b in self.issued if b.startswith(f"KH-{programme}-{project}-"))
        result = self.accept(ADMIN, "credits.issue", {
            "report_id": report_id, "vintage": 2024,
            "allocations": [{"account": a, "quantity": q} for a, q in shares],
        })
        batch = result["batch"]
        assert batch == f"KH-{programme}-{project}-2024-{number:05d}", batch
        start = 1
        for account, quantity in [*shares, *extra]:
            self.held[(account, batch)] |= set(range(start, start + quantity))
            start += quantity
        self.issued[batch] = start - 1
        assert result["quantity"] == start - 1
        self.issued_reports.append(report_id)

    # --- rules: what is accepted --------------------------------------------------------------

    @rule(data=st.data(), quantity=st.integers(1, 300), claimed_extra=st.integers(0, 20))
    def issue_jcm(self, data: st.DataObject, quantity: int, claimed_extra: int) -> None:
        report_id = self._report("KH004", "kh-water", quantity + claimed_extra, quantity)
        self._issue(report_id, allocations(data, quantity, "KH004"), [], "JCM", "KH004")

    @rule(data=st.data(), gross=st.integers(5, 300))
    def issue_redd(self, data: st.DataObject, gross: int) -> None:
        leakage = ceil_bp(gross, LEAKAGE_BP)
        net = gross - leakage
        buffer = ceil_bp(net, BUFFER_BP)
        issuable = net - buffer
        report_id = self._report("KH005", "kh-gov", gross, gross, unit=UNIT)
        extra = [(BUFFER, buffer)] if buffer else []
        self._issue(report_id, allocations(data, issuable, "KH005"), extra, "REDD", "KH005")

    @initialize(data=st.data(), quantity=st.integers(1, 300), gross=st.integers(5, 300))
    def first_issuances(self, data: st.DataObject, quantity: int, gross: int) -> None:
        """Every history starts with credits to move: one JCM and one REDD+ batch."""
        self.issue_jcm(data, quantity, 0)
        self.issue_redd(data, gross)

    @precondition(lambda self: self.has_credits())
    @rule(data=st.data())
    def transfer(self, data: st.DataObject) -> None:
        self._move("credits.transfer", data)

    @precondition(lambda self: self.has_credits())
    @rule(data=st.data())
    def retire(self, data: st.DataObject) -> None:
        self._move("credits.retire", data)

    @precondition(lambda self: self.has_credits() or bool(self.holdings({BUFFER})))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self._move("credits.cancel", data)

    def _move(self, kind: str, data: st.DataObject) -> None:
        """``kind`` of a quantity or a range the holder has, checked against the model."""
        choices = self.holdings(MOVABLE_FROM[kind])
        if not choices:
            return
        account, batch = data.draw(st.sampled_from(choices), label="from")
        held = self.held[(account, batch)]
        body: dict[str, Any] = {"account": account, "batch": batch}
        if data.draw(st.booleans(), label="by range"):
            run_start, run_end = data.draw(st.sampled_from(runs(held)), label="run")
            start = data.draw(st.integers(run_start, run_end), label="start")
            end = data.draw(st.integers(start, run_end), label="end")
            body["range"] = {"start": start, "end": end}
            taken = set(range(start, end + 1))
        else:
            quantity = data.draw(st.integers(1, len(held)), label="quantity")
            body["quantity"] = quantity
            taken = lowest(held, quantity)
        if kind == "credits.transfer":
            to = data.draw(st.sampled_from(sorted(set(HOLDINGS) - {account})), label="to")
            body["to_account"] = to
        elif kind == "credits.retire":
            body.update(beneficiary="Example Co. (illustrative)", purpose="voluntary",
                        jurisdiction="JP", reason="stateful test")
        else:
            body["reason"] = "stateful test"
        result = self.accept(HOLDER[account], kind, body)
        assert result["quantity"] == len(taken)
        assert expand(result["blocks"]) == taken
        held -= taken
        if kind == "credits.transfer":
            self.held[(body["to_account"], batch)] |= taken
        elif kind == "credits.retire":
            self.retired[batch] |= taken
        else:
            self.cancelled[batch] |= taken

    @rule(lost=st.integers(1, 200), percent=st.integers(0, 99))
    def reversal(self, lost: int, percent: int) -> None:
        pool = [(batch, s) for (account, batch), serials in sorted(self.held.items())
                if account == BUFFER for s in sorted(serials)]
        pool.sort()
        if percent and len(pool) > 1:
            # Part of the pool, which often spans batches: the oldest batch's serials go first.
            lost = max(1, len(pool) * percent // 100)
        cancelled = pool[:lost]
        result = self.accept(ADMIN, "redd.reversal", {
            "unit_id": UNIT, "lost": lost, "document_sha256": "f" * 64, "reason": "fire",
        })
        assert result["pool_before"] == len(pool)
        assert result["cancelled"] == len(cancelled)
        assert result["shortfall"] == lost - len(cancelled)
        self.shortfall += lost - len(cancelled)
        for batch, serial in cancelled:
            self.held[(BUFFER, batch)].discard(serial)
            self.cancelled[batch].add(serial)

    @precondition(lambda self: self.last is not None)
    @precondition(lambda self: self.rotations < 2)
    @rule()
    def rotate_registry_key(self) -> None:
        """The registry hands signing over to a new key between any two movements: the entry
        is the next, and a writer still on the old key is refused and changes nothing."""
        old = self.registry
        path = self.database.key_file.with_name(f"rotated-{self.rotations}.pem")
        rotated = rotate_registry_key(old, new_key_file=path, passphrase=None)
        assert rotated.seq == self.size
        self.size += 1
        assert self._tree_size() == self.size
        self.registry = Registry(
            engine=old.engine,
            signer=SigningKey.from_pem(path.read_bytes(), None),
            origin=old.origin,
            clock=old.clock,
        )
        self.rotations += 1
        before = self._snapshot()
        account = f"KH-ROT-{self.rotations}"
        with pytest.raises(RegistryKeyReplacedError):
            submit(old, self._sign(ADMIN, "account.open", {
                "account_id": account, "holder": "kh-water", "name": "opened by a stale writer",
            }), expected_type="account.open", idempotency_key=new_nonce())
        assert self._snapshot() == before, "a writer on a replaced key changed the registry"

    @rule()
    def retry_is_idempotent(self) -> None:
        assert self.last is not None
        signed, kind, key, answer = self.last
        before = self._snapshot()
        outcome = submit(self.registry, signed, expected_type=kind, idempotency_key=key)
        assert outcome.replayed and outcome.body == answer
        assert self._snapshot() == before

    # --- rules: what is refused ---------------------------------------------------------------

    def _move_body(self, kind: str, account: str, batch: str, **which: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"account": account, "batch": batch, **which}
        if kind == "credits.transfer":
            body["to_account"] = next(a for a in sorted(HOLDINGS) if a != account)
        elif kind == "credits.retire":
            body.update(beneficiary="Nobody", purpose="other", jurisdiction="KH",
                        reason="must fail")
        else:
            body["reason"] = "must fail"
        return body

    @precondition(lambda self: self.has_batches())
    @rule(data=st.data(), extra=st.integers(1, 50))
    def refuse_more_than_held(self, data: st.DataObject, extra: int) -> None:
        kind = data.draw(st.sampled_from(MOVES), label="kind")
        account = data.draw(st.sampled_from(sorted(MOVABLE_FROM[kind])), label="account")
        batch = data.draw(st.sampled_from(sorted(self.issued)), label="batch")
        quantity = len(self.held[(account, batch)]) + extra
        self.refuse(HOLDER[account], kind, self._move_body(kind, account, batch,
                                                           quantity=quantity),
                    InsufficientCreditsError, "insufficient_credits")

    @precondition(lambda self: self.has_credits())
    @rule(data=st.data())
    def refuse_wrong_holder(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(MOVES), label="kind")
        account, batch = data.draw(st.sampled_from(self.holdings(set(HOLDINGS))), label="from")
        actor = data.draw(st.sampled_from(sorted({ADMIN, *PARTIES} - {HOLDER[account]})),
                          label="actor")
        self.refuse(actor, kind, self._move_body(kind, account, batch, quantity=1),
                    PermissionDeniedError, "forbidden")

    @precondition(lambda self: self.has_gone())
    @rule(data=st.data())
    def refuse_retired_or_cancelled(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(MOVES), label="kind")
        gone = sorted((b, s) for b, serials in (*self.retired.items(), *self.cancelled.items())
                      for s in serials)
        batch, serial = data.draw(st.sampled_from(gone), label="serial")
        if data.draw(st.booleans(), label="as the registry"):
            # Straight out of the retirement or cancellation account: it cannot move at all.
            account = RETIREMENT if serial in self.retired[batch] else CANCELLATION
            self.refuse(ADMIN, kind, self._move_body(kind, account, batch, quantity=1),
                        InvalidRequestError, "invalid_request")
        else:
            account = data.draw(st.sampled_from(sorted(MOVABLE_FROM[kind])), label="account")
            self.refuse(HOLDER[account], kind,
                        self._move_body(kind, account, batch,
                                        range={"start": serial, "end": serial}),
                        SerialsNotHeldError, "serials_not_held")

    @precondition(lambda self: self.has_credits())
    @rule(data=st.data(), before=st.integers(0, 3), after=st.integers(0, 3))
    def refuse_range_partly_held(self, data: st.DataObject, before: int, after: int) -> None:
        kind = data.draw(st.sampled_from(MOVES), label="kind")
        choices = self.holdings(MOVABLE_FROM[kind])
        if not choices:
            return
        account, batch = data.draw(st.sampled_from(choices), label="from")
        held = self.held[(account, batch)]
        run_start, run_end = data.draw(st.sampled_from(runs(held)), label="run")
        # Stretch a held run by at least one serial the account does not hold.
        start = max(1, run_start - before)
        end = run_end + after if start < run_start else run_end + max(after, 1)
        assert not set(range(start, end + 1)) <= held
        self.refuse(HOLDER[account], kind,
                    self._move_body(kind, account, batch, range={"start": start, "end": end}),
                    SerialsNotHeldError, "serials_not_held")

    @precondition(lambda self: self.has_batches())
    @rule(data=st.data())
    def refuse_malformed_moves(self, data: st.DataObject) -> None:
        batch = data.draw(st.sampled_from(sorted(self.issued)), label="batch")
        account = data.draw(st.sampled_from(sorted(HOLDINGS)), label="account")
        holder = HOLDER[account]
        case = data.draw(st.sampled_from(
            ["both", "neither", "to self", "to retirement", "buffer transfer", "buffer retire",
             "nul"]
        ), label="case")
        if case == "both":
            body = self._move_body("credits.cancel", account, batch, quantity=1,
                                   range={"start": 1, "end": 1})
            self.refuse(holder, "credits.cancel", body, InvalidRequestError, "invalid_request")
        elif case == "nul":
            # PostgreSQL text cannot hold U+0000: refused on every engine alike, not a 500.
            body = self._move_body("credits.retire", account, batch, quantity=1)
            body["beneficiary"] = "Example\x00Co."
            self.refuse(holder, "credits.retire", body, InvalidRequestError, "invalid_request")
        elif case == "neither":
            body = self._move_body("credits.retire", account, batch)
            self.refuse(holder, "credits.retire", body, InvalidRequestError, "invalid_request")
        elif case in {"to self", "to retirement"}:
            body = self._move_body("credits.transfer", account, batch, quantity=1)
            body["to_account"] = account if case == "to self" else RETIREMENT
            self.refuse(holder, "credits.transfer", body, InvalidRequestError,
                        "invalid_request")
        else:
            kind = "credits.transfer" if case == "buffer transfer" else "credits.retire"
            body = self._move_body(kind, BUFFER, batch, quantity=1)
            self.refuse(ADMIN, kind, body, InvalidRequestError, "invalid_request")

    @precondition(lambda self: bool(self.issued_reports))
    @rule(data=st.data())
    def refuse_second_issuance(self, data: st.DataObject) -> None:
        report_id = data.draw(st.sampled_from(self.issued_reports), label="report")
        self.refuse(ADMIN, "credits.issue", {
            "report_id": report_id, "vintage": 2024,
            "allocations": [{"account": "KH-GOV-1", "quantity": 1}],
        }, ConflictError, "conflict")

    @precondition(lambda self: self.last is not None)
    @rule()
    def refuse_replayed_nonce(self) -> None:
        """The same signed instruction under a new Idempotency-Key is a replay."""
        assert self.last is not None
        signed, kind, _, _ = self.last
        self.refuse(signed["instruction"]["actor"], kind, {}, ReplayError, "nonce_reused",
                    signed=signed)

    @precondition(lambda self: self.last is not None)
    @rule()
    def refuse_reused_idempotency_key(self) -> None:
        """The same party reusing a key for another request (keys are scoped to the signer)."""
        assert self.last is not None
        signed, _, key, _ = self.last
        self.refuse(signed["instruction"]["actor"], "project.status",
                    {"project_id": "KH004", "status": "suspended", "reason": "must not apply"},
                    IdempotencyConflictError, "idempotency_key_reused", key=key)

    # --- the books, after every step ----------------------------------------------------------

    @invariant()
    def books_balance(self) -> None:
        with read_session(self.registry.engine) as s:
            size = ledger_repo.tree_size(s)
            blocks = s.exec(select(BlockRow)).all()
            batch_rows = s.exec(select(BatchRow)).all()
            batches = {b.id: b.quantity for b in batch_rows}
            kept = {b.id: (b.retired, b.cancelled) for b in batch_rows}
            shortfall = s.exec(select(ForestUnitRow.shortfall)).one()
        assert size == self.size, "the ledger grew other than once per accepted submission"
        assert batches == self.issued
        assert shortfall == self.shortfall
        by_batch: dict[str, list[BlockRow]] = defaultdict(list)
        actual: dict[tuple[str, str, str], set[int]] = defaultdict(set)
        for b in blocks:
            assert 1 <= b.start <= b.end, f"empty or negative block {b}"
            by_batch[b.batch_id].append(b)
            actual[(b.account_id, b.batch_id, b.status)] |= set(range(b.start, b.end + 1))
            if b.status == "retired":
                assert b.account_id == RETIREMENT, b
            elif b.status == "cancelled":
                assert b.account_id == CANCELLATION, b
            else:
                assert b.status == "active" and b.account_id in {*HOLDINGS, BUFFER}, b
        assert set(by_batch) == set(batches)
        for batch, rows in by_batch.items():
            # The blocks partition 1..issued: no gap, no serial in two blocks.
            expect = 1
            for row in sorted(rows, key=lambda r: r.start):
                assert row.start == expect, f"{batch}: block {row.start}-{row.end} after {expect}"
                expect = row.end + 1
            assert expect - 1 == batches[batch]
            totals: dict[str, int] = defaultdict(int)
            for row in rows:
                totals[row.status] += row.end - row.start + 1
            assert totals["active"] + totals["retired"] + totals["cancelled"] == batches[batch]
        expected: dict[tuple[str, str, str], set[int]] = {
            (account, batch, "active"): set(serials)
            for (account, batch), serials in self.held.items() if serials
        }
        expected.update({(RETIREMENT, b, "retired"): set(s) for b, s in self.retired.items()
                         if s})
        expected.update({(CANCELLATION, b, "cancelled"): set(s)
                         for b, s in self.cancelled.items() if s})
        assert dict(actual) == expected, "the database differs from the model"
        for batch in batches:
            gone = self.retired[batch] | self.cancelled[batch]
            active: set[int] = set()
            for (_, in_batch, status), serials in actual.items():
                if in_batch == batch and status == "active":
                    active |= serials
            assert not gone & active, f"{batch}: retired or cancelled serials are active again"
            # The totals a batch keeps (what its public read shows) are its blocks' totals.
            assert kept[batch] == (len(self.retired[batch]), len(self.cancelled[batch])), batch


STATEFUL = settings(
    max_examples=20,
    stateful_step_count=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def machine(databases: Callable[[], Database]) -> type[CreditLedgerMachine]:
    """The machine class for one kind of database (hypothesis builds one per example)."""

    class Machine(CreditLedgerMachine):
        def __init__(self) -> None:
            super().__init__(databases)

    return Machine


def test_random_histories_keep_the_books_sqlite(tmp_path: Path) -> None:
    run_state_machine_as_test(machine(sqlite_databases(tmp_path)), settings=STATEFUL)


@pytest.mark.skipif(
    not POSTGRES_URL, reason="PostgreSQL half skipped: set REGISTRY_TEST_POSTGRES_URL to run it"
)
def test_random_histories_keep_the_books_postgresql(tmp_path: Path) -> None:
    assert POSTGRES_URL is not None
    run_state_machine_as_test(
        machine(postgres_databases(POSTGRES_URL, tmp_path)),
        settings=settings(STATEFUL, max_examples=5, stateful_step_count=20),
    )
