"""Comparing the database's state tables with the state the ledger alone defines (``--against``).

The state tables (``registry/store/tables.py``) are a cache of the ledger, kept for queries; this
module owns proving that cache honest. Given a :class:`~registry.ledger.replay.ReplayedState`
rebuilt from a bundle, it reads every state table and lists every difference: parties, party
keys, accounts, projects, forest units, monitoring reports, batches, blocks (by batch, serial
range, account and status), retirements, reversals, used nonces and the registry key table
(exactly the genesis key, from entry 0 on). First, in the same snapshot, it checks that the
database holds the very ledger the state was replayed from (its size, and its checkpoint's root
for that size): state tables of another moment are one difference, said plainly. Big tables
are streamed, so memory is that of the replayed state. ``block_event`` (an index of movements)
and ``idempotency`` (answers to retries) are not state the ledger defines, and are not compared.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlmodel import Session, SQLModel, col, select

from registry.ledger.replay import CANCELLED, RETIRED, ReplayedState
from registry.store import ledger_repo
from registry.store.db import (
    make_engine,
    read_session,
    require_database,
    require_known_schema,
)
from registry.store.tables import (
    AccountRow,
    BatchRow,
    BlockRow,
    ForestUnitRow,
    NonceRow,
    PartyKeyRow,
    PartyRow,
    ProjectRow,
    ReportRow,
    RetirementRow,
    ReversalRow,
)

PAGE = 1000
T = TypeVar("T", bound=SQLModel)
Fields = dict[str, Any]


@dataclass(frozen=True)
class Difference:
    """One way the database disagrees with the ledger."""

    table: str
    key: str
    message: str

    def __str__(self) -> str:
        return f"table {self.table}, row {self.key}: {self.message}"


def _rows(session: Session, model: type[T], *order: Any) -> Iterator[T]:
    """Every row of ``model`` in ``order``, streamed ``PAGE`` rows at a time."""
    query = select(model).order_by(*order).execution_options(yield_per=PAGE)
    yield from session.exec(query)


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _compare(
    out: list[Difference],
    table: str,
    ledger: Callable[[Hashable], Fields | None],
    ledger_keys: Iterable[Hashable],
    database: Iterable[tuple[Hashable, Fields]],
) -> None:
    """Compare rows by key and field; ``ledger`` looks one key up in the replayed state."""
    seen: set[Hashable] = set()
    for key, row in database:
        seen.add(key)
        want = ledger(key)
        if want is None:
            out.append(Difference(table, _key(key), "is in the database but not in the ledger"))
            continue
        for name, expected in want.items():
            if row.get(name) != expected:
                out.append(
                    Difference(
                        table,
                        _key(key),
                        f"{name} is {_show(row.get(name))} in the database, the ledger says "
                        f"{_show(expected)}",
                    )
                )
    for key in ledger_keys:
        if key not in seen:
            out.append(Difference(table, _key(key), "is in the ledger but not in the database"))


def _key(key: Hashable) -> str:
    if isinstance(key, tuple):
        return "/".join(str(k) for k in key)
    return str(key)


def _lookup(
    table: Mapping[Any, Any], fields: Callable[[Any], Fields]
) -> Callable[[Hashable], Fields | None]:
    def get(key: Hashable) -> Fields | None:
        item = table.get(key)
        return None if item is None else fields(item)

    return get


def _time(text: str) -> datetime | str:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return text


def compare_ledger(session: Session, size: int, root: bytes) -> list[Difference]:
    """Whether the database holds the very ledger the state was replayed from: the same number
    of entries, and its checkpoint for that size signing the same root. If not, its state
    tables are of another moment (or another ledger), and comparing them row by row would only
    blame rows for it."""
    tip = ledger_repo.tip(session)
    stored = tip.size
    if stored != size:
        return [
            Difference(
                "ledger_entry",
                "*",
                f"the database holds {stored} entries, the bundle {size}: its state tables are "
                "of another moment; export and compare at one size (with the registry stopped, "
                "or against a copy)",
            )
        ]
    signed = tip.checkpoint  # the last checkpoint: (size, root)
    if size and (signed is None or signed[0] != size or bytes(signed[1]) != root):
        found = "none" if signed is None or signed[0] != size else bytes(signed[1]).hex()
        return [
            Difference(
                "checkpoint",
                str(size),
                f"the database's checkpoint for size {size} signs root {found}, the bundle's "
                f"entries give {root.hex()}: it holds another ledger",
            )
        ]
    return []


def compare_state(session: Session, state: ReplayedState) -> list[Difference]:
    """Every difference between the state tables read through ``session`` and ``state``."""
    out: list[Difference] = []

    def same(obj: Any, *names: str) -> Fields:
        return {n: getattr(obj, n) for n in names}

    if state.registry_keys:
        # The ledger establishes its registry keys, each over the entries it signs (genesis's,
        # then each rotation's): the table (published at /v1/keys and copied into every
        # export's header) says exactly that.
        established: dict[Hashable, Fields] = {
            p.key.key_id: {"public_key": p.key.raw, "valid_from_seq": p.valid_from_seq,
                           "valid_until_seq": p.valid_until_seq}
            for p in state.registry_keys
        }
        _compare(
            out,
            "registry_key",
            established.get,
            established,
            (
                (r.key_id, {"public_key": bytes(r.public_key), "valid_from_seq": r.valid_from_seq,
                            "valid_until_seq": r.valid_until_seq})
                for r in ledger_repo.registry_keys(session)
            ),
        )
    party_f = ("name", "role", "country", "created_seq")
    _compare(
        out,
        "party",
        _lookup(state.parties, lambda p: same(p, *party_f)),
        state.parties,
        ((r.id, same(r, *party_f)) for r in _rows(session, PartyRow, col(PartyRow.id))),
    )
    key_f = ("party_id", "public_key", "added_seq", "revoked_seq")
    _compare(
        out,
        "party_key",
        _lookup(state.keys, lambda k: same(k, *key_f)),
        state.keys,
        (
            (r.key_id, {**same(r, *key_f), "public_key": bytes(r.public_key)})
            for r in _rows(session, PartyKeyRow, col(PartyKeyRow.key_id))
        ),
    )
    account_f = ("holder", "kind", "name", "unit_id", "created_seq")
    _compare(
        out,
        "account",
        _lookup(state.accounts, lambda a: same(a, *account_f)),
        state.accounts,
        ((r.id, same(r, *account_f)) for r in _rows(session, AccountRow, col(AccountRow.id))),
    )
    project_f = (
        "title",
        "partner_country",
        "methodology",
        "sector",
        "programme",
        "participants",
        "third_party_entity",
        "crediting_period_start",
        "crediting_period_end",
        "status",
        "registered_seq",
    )
    _compare(
        out,
        "project",
        _lookup(state.projects, lambda p: same(p, *project_f)),
        state.projects,
        (
            (r.id, {**same(r, *project_f), "participants": json.loads(r.participants)})
            for r in _rows(session, ProjectRow, col(ProjectRow.id))
        ),
    )
    unit_f = (
        "project_id",
        "name",
        "area_ha",
        "jurisdiction",
        "reference_level",
        "leakage_rate_bp",
        "buffer_rate_bp",
        "buffer_account",
        "shortfall",
        "registered_seq",
    )
    _compare(
        out,
        "forest_unit",
        _lookup(state.units, lambda u: {**same(u, *unit_f), "boundary": u.boundary_text}),
        state.units,
        (
            (r.id, same(r, *unit_f, "boundary"))
            for r in _rows(session, ForestUnitRow, col(ForestUnitRow.id))
        ),
    )
    report_f = (
        "project_id",
        "forest_unit_id",
        "period_start",
        "period_end",
        "reductions",
        "document_sha256",
        "status",
        "verified_reductions",
        "verifier",
        "statement_sha256",
        "submitted_seq",
        "verified_seq",
    )
    _compare(
        out,
        "monitoring_report",
        _lookup(state.reports, lambda r: same(r, *report_f)),
        state.reports,
        ((r.id, same(r, *report_f)) for r in _rows(session, ReportRow, col(ReportRow.id))),
    )
    batch_f = (
        "project_id",
        "report_id",
        "programme",
        "vintage",
        "number",
        "quantity",
        "issued_seq",
    )
    def batch_fields(b: Any) -> Fields:
        # The totals a batch keeps are its blocks' sums.
        supply = state.supply(b.id) if b.id in state.blocks else {RETIRED: 0, CANCELLED: 0}
        return {**same(b, *batch_f), "retired": supply[RETIRED], "cancelled": supply[CANCELLED]}

    batch_columns = (*batch_f, "retired", "cancelled")
    _compare(
        out,
        "batch",
        _lookup(state.batches, batch_fields),
        state.batches,
        ((r.id, same(r, *batch_columns)) for r in _rows(session, BatchRow, col(BatchRow.id))),
    )
    _compare_blocks(out, session, state)
    retirement_f = (
        "seq",
        "account_id",
        "batch_id",
        "blocks",
        "quantity",
        "beneficiary",
        "purpose",
        "jurisdiction",
        "reason",
        "time",
    )
    _compare(
        out,
        "retirement",
        _lookup(state.retirements, lambda r: same(r, *retirement_f)),
        state.retirements,
        (
            (r.id, {**same(r, *retirement_f), "time": _time(r.time)})
            for r in _rows(session, RetirementRow, col(RetirementRow.id))
        ),
    )
    reversal_f = ("unit_id", "lost", "cancelled", "shortfall", "document_sha256", "reason")
    _compare(
        out,
        "reversal",
        _lookup(state.reversals, lambda r: same(r, *reversal_f)),
        state.reversals,
        ((r.seq, same(r, *reversal_f)) for r in _rows(session, ReversalRow, col(ReversalRow.seq))),
    )
    _compare_nonces(out, session, state)
    return out


def _compare_blocks(out: list[Difference], session: Session, state: ReplayedState) -> None:
    """Blocks by (batch, first serial): each must have the same last serial, account, status."""

    def ledger(key: Hashable) -> Fields | None:
        assert isinstance(key, tuple)
        batch, start = key
        blocks = state.blocks.get(batch)
        if blocks is None:
            return None
        found = blocks.get(start)
        if found is None:
            return None
        return {"end": found.end, "account_id": found.account, "status": found.status}

    keys = ((b.batch, b.start) for b in state.iter_blocks())
    database = (
        ((r.batch_id, r.start), {"end": r.end, "account_id": r.account_id, "status": r.status})
        for r in _rows(session, BlockRow, col(BlockRow.batch_id), col(BlockRow.start))
    )
    _compare(out, "block", ledger, keys, database)


def _compare_nonces(out: list[Difference], session: Session, state: ReplayedState) -> None:
    def ledger(key: Hashable) -> Fields | None:
        assert isinstance(key, tuple)
        party, nonce = key
        seq = state.nonces.get(party, {}).get(nonce)
        return None if seq is None else {"seq": seq}

    keys = ((party, nonce) for party, used in state.nonces.items() for nonce in used)
    database = (
        ((r.party_id, r.nonce), {"seq": r.seq})
        for r in _rows(session, NonceRow, col(NonceRow.party_id), col(NonceRow.nonce))
    )
    _compare(out, "used_nonce", ledger, keys, database)


def compare_with_database(
    url: str, state: ReplayedState, *, size: int, root: bytes
) -> list[Difference]:
    """Open the database at ``url`` read-only and, in one snapshot, check that it holds the
    ledger of ``size`` entries and ``root`` that ``state`` was replayed from, then compare its
    state tables with ``state``."""
    require_database(url)
    engine: Engine = make_engine(url)
    try:
        require_known_schema(engine, upgraded=True)
        with read_session(engine) as session:
            return compare_ledger(session, size, root) or compare_state(session, state)
    finally:
        engine.dispose()


def describe_url(url: str) -> str:
    """``url`` without its password, for reports."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparseable URL: show only its scheme
        return url.split(":", 1)[0] + ":..."
