"""What the registry shows of its state: the ``...Public`` models and the queries that fill them.

Projects, forest units, reports, batches, retirements and a serial's story are public, as public
registries' records are; an account's holdings only to its holder, administrators and auditors.
Every list is paginated (``offset``, ``limit``) and says how many items there are in all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field
from sqlalchemy import tuple_
from sqlmodel import Session, SQLModel, col, func, select

from registry.domain.serials import (
    SerialRange,
    format_block,
    format_unit_serial,
    parse_unit_serial,
)
from registry.errors import NotFoundError, PermissionDeniedError
from registry.ledger.keys import b64encode
from registry.store import ledger_repo
from registry.store.credits_repo import active_quantities, active_quantity, get_or_404
from registry.store.tables import (
    AccountRow,
    BatchRow,
    BlockEventRow,
    BlockRow,
    ForestUnitRow,
    PartyKeyRow,
    PartyRow,
    ProjectRow,
    ReportRow,
    RetirementRow,
    ReversalRow,
)

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    count: int
    offset: int
    limit: int
    tree_size: int = Field(
        description="the ledger's size when this page was read: each page is one snapshot, and "
        "pages read at different sizes may disagree (a row moved or added in between); a "
        "client that sees it change starts again"
    )


class PartyKeyPublic(BaseModel):
    key_id: str
    public_key: str
    added_seq: int
    revoked_seq: int | None


class PartyPublic(BaseModel):
    id: str
    name: str
    role: str
    country: str | None
    created_seq: int
    keys: list[PartyKeyPublic]


class AccountPublic(BaseModel):
    id: str
    holder: str
    kind: str
    name: str
    unit_id: str | None
    created_seq: int


class ProjectPublic(BaseModel):
    id: str
    title: str
    partner_country: str
    methodology: str
    sector: str
    programme: str | None
    participants: list[str]
    third_party_entity: str
    crediting_period_start: str
    crediting_period_end: str
    status: str
    registered_seq: int


class ForestUnitListed(BaseModel):
    """A forest unit as a list shows it: everything but its boundary, which can run to
    100,000 positions (megabytes) a unit; the unit's own read has it."""

    id: str
    project_id: str
    name: str
    bounds: list[float] = Field(
        description="the boundary's box in degrees: [west, south, east, north]"
    )
    area_ha: int
    jurisdiction: str
    reference_level: int
    leakage_rate_bp: int
    buffer_rate_bp: int
    buffer_account: str
    buffer_pool: int
    shortfall: int
    registered_seq: int


class ForestUnitPublic(ForestUnitListed):
    boundary: dict[str, Any]


class ReportPublic(BaseModel):
    id: str
    project_id: str
    forest_unit_id: str | None
    period_start: str
    period_end: str
    reductions: int
    document_sha256: str
    status: str
    verified_reductions: int | None
    verifier: str | None
    statement_sha256: str | None
    submitted_seq: int
    verified_seq: int | None


class BatchPublic(BaseModel):
    id: str
    project_id: str
    report_id: str
    forest_unit_id: str | None = Field(
        description="the REDD+ forest unit whose report issued it (its buffer share is in the "
        "unit's pool); none for a JCM batch"
    )
    programme: str
    vintage: int
    quantity: int
    active: int
    retired: int
    cancelled: int
    issued_seq: int


class BlockPublic(BaseModel):
    block: str
    batch: str
    start: int
    end: int
    quantity: int
    account: str
    status: str


class BlockPage(Page[BlockPublic]):
    next: str | None = Field(
        description="when this page is full, the last serial it lists: pass it as `after` for "
        "the next page. Paging so, every block the account holds all along is listed exactly "
        "once, even while credits move (an offset would skip or repeat blocks then)"
    )


class HoldingsPublic(BaseModel):
    account: AccountPublic
    total_active: int
    blocks: BlockPage


class RetirementListed(BaseModel):
    """A retirement as a list shows it: everything but its blocks, which number as many as the
    fragments the holder's credits were in (a retirement of 10^5 fragments lists 3.5 MB of
    them); the retirement's own read has them."""

    id: str
    seq: int
    account: str
    batch: str
    block_count: int = Field(description="how many serial blocks the retirement took")
    quantity: int
    beneficiary: str
    purpose: str
    jurisdiction: str
    reason: str
    time: str


class RetirementPublic(RetirementListed):
    blocks: list[str] = Field(description="the serial blocks retired, in serial order")


class EventPublic(BaseModel):
    seq: int
    kind: str
    block: str
    from_account: str | None
    to_account: str
    status: str


class SerialStoryPublic(BaseModel):
    serial: str
    batch: str
    number: int
    now: BlockPublic
    history: list[EventPublic] = Field(
        description="the entries that moved the serial, oldest first, at most `limit` of them"
    )
    next: int | None = Field(
        description="when `history` is full, the seq of its last entry: pass it as `after` for "
        "the entries that moved the serial since"
    )


class ReversalPublic(BaseModel):
    seq: int
    unit_id: str
    lost: int
    cancelled: int
    shortfall: int
    document_sha256: str
    reason: str


def _page(
    session: Session,
    model: type[SQLModel],
    order: Any,
    offset: int,
    limit: int,
    *where: Any,
    past: Any = None,
    columns: Sequence[Any] = (),
) -> tuple[list[Any], dict[str, int]]:
    """One page of ``model``'s rows (only ``columns`` of them, when given), and what the
    :class:`Page` says about it; ``past`` (a cursor's condition) narrows the rows but not the
    count."""
    query: Any = select(*columns) if columns else select(model)
    count_query = select(func.count()).select_from(model)
    for w in where:
        query, count_query = query.where(w), count_query.where(w)
    if past is not None:
        query = query.where(past)
    orders = order if isinstance(order, tuple) else (order,)
    rows = list(session.exec(query.order_by(*orders).offset(offset).limit(limit)).all())
    count = int(session.exec(count_query).one())
    size = ledger_repo.tree_size(session)
    return rows, {"count": count, "offset": offset, "limit": limit, "tree_size": size}


def _made(seq: Any, row_id: Any) -> tuple[Any, Any]:
    """The order of a list of records: as the ledger made them (by the id within one entry).
    A record made while a client pages through the list comes last, so an offset never skips
    or repeats one (in the order of their ids, a new one would shift every later one)."""
    return col(seq), col(row_id)


def _block(row: BlockRow) -> BlockPublic:
    return BlockPublic(
        block=format_block(row.batch_id, SerialRange(row.start, row.end)),
        batch=row.batch_id,
        start=row.start,
        end=row.end,
        quantity=row.end - row.start + 1,
        account=row.account_id,
        status=row.status,
    )


def _parties(
    session: Session, rows: list[PartyRow], *, active_only: bool = False
) -> list[PartyPublic]:
    """``rows`` with their keys (only those not revoked, when ``active_only``), read in one
    query (oldest key first)."""
    keys: dict[str, list[PartyKeyPublic]] = {row.id: [] for row in rows}
    if keys:
        query = select(PartyKeyRow).where(col(PartyKeyRow.party_id).in_(list(keys)))
        if active_only:
            query = query.where(PartyKeyRow.revoked_seq == None)  # noqa: E711
        for k in session.exec(
            query.order_by(col(PartyKeyRow.added_seq), col(PartyKeyRow.key_id))
        ):
            keys[k.party_id].append(
                PartyKeyPublic(
                    key_id=k.key_id,
                    public_key=_b64(k.public_key),
                    added_seq=k.added_seq,
                    revoked_seq=k.revoked_seq,
                )
            )
    return [PartyPublic(**row.model_dump(), keys=keys[row.id]) for row in rows]


def party(session: Session, party_id: str) -> PartyPublic:
    return _parties(session, [get_or_404(session, PartyRow, party_id, "party")])[0]


def _b64(data: bytes) -> str:
    return b64encode(data)


def parties(session: Session, offset: int, limit: int) -> Page[PartyPublic]:
    """A page of parties, each with the keys it may sign with now. A party may have revoked
    any number of keys over the years; its own read lists them, so a page stays bounded."""
    rows, page = _page(session, PartyRow, _made(PartyRow.created_seq, PartyRow.id), offset, limit)
    return Page(data=_parties(session, rows, active_only=True), **page)


def accounts(session: Session, offset: int, limit: int) -> Page[AccountPublic]:
    rows, page = _page(
        session, AccountRow, _made(AccountRow.created_seq, AccountRow.id), offset, limit
    )
    return Page(
        data=[AccountPublic(**r.model_dump()) for r in rows],
        **page,
    )


def account(session: Session, account_id: str) -> AccountPublic:
    return AccountPublic(**get_or_404(session, AccountRow, account_id, "account").model_dump())


def _project(row: ProjectRow) -> ProjectPublic:
    data = row.model_dump()
    data["participants"] = json.loads(row.participants)
    return ProjectPublic(**data)


def project(session: Session, project_id: str) -> ProjectPublic:
    return _project(get_or_404(session, ProjectRow, project_id, "project"))


def projects(session: Session, offset: int, limit: int) -> Page[ProjectPublic]:
    rows, page = _page(
        session, ProjectRow, _made(ProjectRow.registered_seq, ProjectRow.id), offset, limit
    )
    return Page(data=[_project(r) for r in rows], **page)


def _columns_but(model: type[SQLModel], name: str) -> list[Any]:
    """``model``'s columns but ``name``: what a list reads of a record whose ``name`` can run
    to megabytes."""
    return [c for c in model.__table__.columns if c.name != name]  # type: ignore[attr-defined]


#: A forest unit's columns but its boundary, for lists.
_LISTED = _columns_but(ForestUnitRow, "boundary")


def _listed(row: Any, pool: int) -> dict[str, Any]:
    data = {c.name: getattr(row, c.name) for c in _LISTED}
    data["bounds"] = [data.pop("west"), data.pop("south"), data.pop("east"), data.pop("north")]
    return {**data, "buffer_pool": pool}


def forest_unit(session: Session, unit_id: str) -> ForestUnitPublic:
    row = get_or_404(session, ForestUnitRow, unit_id, "forest unit")
    return ForestUnitPublic(**_listed(row, active_quantity(session, row.buffer_account)),
                            boundary=json.loads(row.boundary))


def forest_units(session: Session, offset: int, limit: int) -> Page[ForestUnitListed]:
    """A page of forest units, without their boundaries (neither read nor sent), each with its
    buffer pool, the page's pools summed in one statement."""
    rows, page = _page(
        session, ForestUnitRow, _made(ForestUnitRow.registered_seq, ForestUnitRow.id), offset,
        limit, columns=_LISTED,
    )
    pools = active_quantities(session, [row.buffer_account for row in rows])
    return Page(
        data=[ForestUnitListed(**_listed(row, pools.get(row.buffer_account, 0))) for row in rows],
        **page,
    )


def report(session: Session, report_id: str) -> ReportPublic:
    return ReportPublic(**get_or_404(session, ReportRow, report_id, "report").model_dump())


def reports(
    session: Session, offset: int, limit: int, project_id: str | None = None
) -> Page[ReportPublic]:
    where = [] if project_id is None else [ReportRow.project_id == project_id]
    rows, page = _page(session, ReportRow, col(ReportRow.submitted_seq), offset, limit, *where)
    return Page(data=[ReportPublic(**r.model_dump()) for r in rows], **page)


def _batch(row: BatchRow, forest_unit_id: str | None) -> BatchPublic:
    return BatchPublic(
        id=row.id,
        project_id=row.project_id,
        report_id=row.report_id,
        forest_unit_id=forest_unit_id,
        programme=row.programme,
        vintage=row.vintage,
        quantity=row.quantity,
        issued_seq=row.issued_seq,
        active=row.quantity - row.retired - row.cancelled,
        retired=row.retired,
        cancelled=row.cancelled,
    )


def _forest_units_of(session: Session, rows: Sequence[BatchRow]) -> dict[str, str | None]:
    """The forest unit of each batch's report, in one statement for a page of batches."""
    reports = [row.report_id for row in rows]
    found = session.exec(
        select(ReportRow.id, ReportRow.forest_unit_id).where(col(ReportRow.id).in_(reports))
    ).all()
    return dict(found)


def batch(session: Session, batch_id: str) -> BatchPublic:
    row = get_or_404(session, BatchRow, batch_id, "batch")
    return _batch(row, _forest_units_of(session, [row]).get(row.report_id))


def batches(session: Session, offset: int, limit: int) -> Page[BatchPublic]:
    rows, page = _page(session, BatchRow, col(BatchRow.issued_seq), offset, limit)
    units = _forest_units_of(session, rows)
    return Page(data=[_batch(r, units.get(r.report_id)) for r in rows], **page)


#: A retirement's columns but its blocks, and how many blocks it took (counted by the database,
#: so a list reads no block).
_RETIREMENT_LISTED = [
    *_columns_but(RetirementRow, "blocks"),
    (
        func.length(col(RetirementRow.blocks))
        - func.length(func.replace(col(RetirementRow.blocks), ",", ""))
        + 1
    ).label("block_count"),
]


def _retirement_fields(values: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(values)
    data["account"], data["batch"] = data.pop("account_id"), data.pop("batch_id")
    return data


def retirement(session: Session, retirement_id: str) -> RetirementPublic:
    row = get_or_404(session, RetirementRow, retirement_id, "retirement")
    data = _retirement_fields(row.model_dump())
    blocks = []
    for part in data.pop("blocks").split(","):  # "start-end,start-end,..."
        start, end = (int(x) for x in part.split("-"))
        blocks.append(format_block(row.batch_id, SerialRange(start, end)))
    return RetirementPublic(**data, block_count=len(blocks), blocks=blocks)


def retirements(session: Session, offset: int, limit: int) -> Page[RetirementListed]:
    """A page of retirements, without their blocks (neither read nor sent)."""
    rows, page = _page(
        session, RetirementRow, col(RetirementRow.seq), offset, limit, columns=_RETIREMENT_LISTED
    )
    return Page(data=[RetirementListed(**_retirement_fields(r._mapping)) for r in rows], **page)


def reversals(session: Session, offset: int, limit: int) -> Page[ReversalPublic]:
    rows, page = _page(session, ReversalRow, col(ReversalRow.seq), offset, limit)
    return Page(
        data=[ReversalPublic(**r.model_dump()) for r in rows],
        **page,
    )


def holdings(
    session: Session,
    *,
    account_id: str,
    reader: PartyRow,
    offset: int,
    limit: int,
    after: str | None = None,
) -> HoldingsPublic:
    """An account's blocks, for its holder, administrators and auditors only.

    ``after`` (a unit serial, the previous page's ``next``) starts the page past that serial.
    Blocks are only ever split, never merged, so a block that holds serials past the last one
    a page listed starts past it too: a block held all along is on exactly one page.
    """
    acct = get_or_404(session, AccountRow, account_id, "account")
    if reader.id != acct.holder and reader.role not in {"administrator", "auditor"}:
        raise PermissionDeniedError(
            f"holdings of {account_id} are private to {acct.holder}",
            details={"account": account_id, "reader": reader.id},
        )
    order = (col(BlockRow.batch_id), col(BlockRow.start))
    past = None
    if after is not None:
        batch_id, number = parse_unit_serial(after)
        past = tuple_(*order) > tuple_(batch_id, number)
    rows, page = _page(
        session, BlockRow, order, offset, limit, BlockRow.account_id == account_id, past=past
    )
    last = rows[-1] if len(rows) == limit else None
    return HoldingsPublic(
        account=AccountPublic(**acct.model_dump()),
        total_active=active_quantity(session, account_id),
        blocks=BlockPage(
            data=[_block(r) for r in rows],
            **page,
            next=None if last is None else format_unit_serial(last.batch_id, last.end),
        ),
    )


def serial_story(
    session: Session, serial: str, *, after: int | None = None, limit: int = 100
) -> SerialStoryPublic:
    """Where one credit is now, and the ledger entries that moved it: ``limit`` of them, past
    seq ``after``. One entry moves a serial at most once (it lies in one block at a time), so
    a seq is a cursor that neither skips nor repeats a movement."""
    batch_id, number = parse_unit_serial(serial)
    # Blocks of a batch never overlap: the one that starts last at or below the serial is the
    # only one that can hold it (one index probe, where a filter on its end walked them all).
    row = session.exec(
        select(BlockRow)
        .where(BlockRow.batch_id == batch_id, col(BlockRow.start) <= number)
        .order_by(col(BlockRow.start).desc())
        .limit(1)
    ).first()
    if row is None or row.end < number:
        raise NotFoundError(f"serial {serial} was never issued", details={"serial": serial})
    events = session.exec(
        select(BlockEventRow)
        .where(
            BlockEventRow.batch_id == batch_id,
            col(BlockEventRow.start) <= number,
            col(BlockEventRow.end) >= number,
            col(BlockEventRow.seq) > (-1 if after is None else after),
        )
        .order_by(col(BlockEventRow.seq))
        .limit(limit)
    ).all()
    return SerialStoryPublic(
        serial=serial,
        batch=batch_id,
        number=number,
        now=_block(row),
        history=[
            EventPublic(
                seq=e.seq,
                kind=e.kind,
                block=format_block(e.batch_id, SerialRange(e.start, e.end)),
                from_account=e.from_account,
                to_account=e.to_account,
                status=e.status,
            )
            for e in events
        ],
        next=events[-1].seq if len(events) == limit else None,
    )
