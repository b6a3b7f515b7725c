"""Issuance: a verified monitoring report becomes one batch of serial-numbered credits.

JCM: the verified reductions are allocated among holding accounts exactly as the Joint
Committee decided (the quantities must sum to the verified total). REDD+: leakage is deducted,
the buffer share goes to the forest unit's buffer pool, and the allocations must sum to what
remains. However many tonnes, a batch is one block per allocation.
"""

from __future__ import annotations

from typing import Any

from sqlmodel import Session, func, select

from registry.domain.instructions import Issue
from registry.domain.redd import compute_issuance
from registry.domain.serials import allocate, batch_serial_id
from registry.errors import ConflictError, InvalidRequestError, StateError
from registry.service.instructions import Acting
from registry.store.credits_repo import account, add_block, get_or_404, record_event
from registry.store.tables import BatchRow, ForestUnitRow, ProjectRow, ReportRow

Effects = dict[str, Any]


def issue(session: Session, acting: Acting[Issue]) -> Effects:
    acting.require_role("administrator")
    b = acting.body
    report = get_or_404(session, ReportRow, b.report_id, "report")
    if report.status == "issued":
        raise ConflictError(f"report {report.id} has already been issued against")
    if report.status != "verified" or report.verified_reductions is None:
        raise StateError(f"report {report.id} is {report.status}; only a verified report issues")
    project = get_or_404(session, ProjectRow, report.project_id, "project")
    if project.status != "registered":
        raise StateError(f"project {project.id} is {project.status}; it cannot issue")
    shares = [(a.account, a.quantity) for a in b.allocations]
    for account_id, _ in shares:
        if account(session, account_id).kind != "holding":
            raise InvalidRequestError(f"account {account_id} is not a holding account")
    first_year, last_year = int(report.period_start[:4]), int(report.period_end[:4])
    if not first_year <= b.vintage <= last_year:
        raise InvalidRequestError(
            f"vintage {b.vintage} is outside the report's period "
            f"{report.period_start}..{report.period_end}",
            details={"vintage": b.vintage, "period": [report.period_start, report.period_end]},
        )
    allocated = sum(q for _, q in shares)
    verified = report.verified_reductions
    redd: dict[str, Any] | None = None
    if report.forest_unit_id is not None:
        unit = get_or_404(session, ForestUnitRow, report.forest_unit_id, "forest unit")
        calc = compute_issuance(
            gross=verified, leakage_bp=unit.leakage_rate_bp, buffer_bp=unit.buffer_rate_bp
        )
        expected = calc.issuable
        if calc.buffer:
            shares.append((unit.buffer_account, calc.buffer))
        redd = {
            "gross": calc.gross,
            "leakage": calc.leakage,
            "net": calc.net,
            "buffer": calc.buffer,
            "buffer_account": unit.buffer_account,
        }
    else:
        expected = verified
    if allocated != expected:
        raise InvalidRequestError(
            f"allocations sum to {allocated} tCO2e but {expected} must be allocated",
            details={"allocated": allocated, "expected": expected},
        )
    programme = "JCM" if redd is None else "REDD"
    number = (
        1
        + session.exec(
            select(func.count())
            .select_from(BatchRow)
            .where(BatchRow.project_id == project.id, BatchRow.vintage == b.vintage)
        ).one()
    )
    batch_id = batch_serial_id(
        country=project.partner_country,
        programme=programme,
        project_id=project.id,
        vintage=b.vintage,
        number=number,
    )
    total = sum(q for _, q in shares)
    session.add(
        BatchRow(
            id=batch_id,
            project_id=project.id,
            report_id=report.id,
            programme=programme,
            vintage=b.vintage,
            number=number,
            quantity=total,
            issued_seq=acting.seq,
        )
    )
    session.flush()
    blocks = []
    for account_id, serials in allocate(total, shares):
        add_block(
            session, batch_id=batch_id, serials=serials, account_id=account_id, status="active"
        )
        record_event(
            session,
            seq=acting.seq,
            kind=Issue.TYPE,
            batch_id=batch_id,
            serials=serials,
            from_account=None,
            to_account=account_id,
            status="active",
        )
        blocks.append({"account": account_id, "start": serials.start, "end": serials.end})
    report.status = "issued"
    session.add(report)
    effects: Effects = {"batch": batch_id, "quantity": total, "blocks": blocks}
    if redd is not None:
        effects["redd"] = redd
    return effects
