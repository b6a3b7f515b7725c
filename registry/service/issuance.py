"""Issuance: a verified monitoring report becomes one batch of serial-numbered credits.

JCM: the verified reductions are allocated among holding accounts exactly as the Joint
Committee decided (the quantities must sum to the verified total). REDD+: leakage is deducted,
the buffer share goes to the forest unit's buffer pool, and the allocations must sum to what
remains. However many tonnes, a batch is one block per allocation.
"""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, func, select

from registry.domain.instructions import Issue
from registry.domain.rules import BufferTerms, check_allocation_holder, plan_issuance
from registry.errors import ConflictError, InvalidRequestError, StateError
from registry.service.instructions import Acting
from registry.store.credits_repo import (
    account,
    active_quantity,
    add_block,
    get_or_404,
    record_event,
)
from registry.store.tables import BatchRow, ForestUnitRow, PartyRow, ProjectRow, ReportRow

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
    participants = json.loads(project.participants)
    for account_id, _ in shares:
        allocated_to = account(session, account_id)
        if allocated_to.kind != "holding":
            raise InvalidRequestError(f"account {account_id} is not a holding account")
        holder = get_or_404(session, PartyRow, allocated_to.holder, "party")
        check_allocation_holder(
            project_id=project.id,
            participants=participants,
            account_id=account_id,
            holder=holder.id,
            role=holder.role,
        )
    terms = None
    if report.forest_unit_id is not None:
        unit = get_or_404(session, ForestUnitRow, report.forest_unit_id, "forest unit")
        terms = BufferTerms(
            leakage_rate_bp=unit.leakage_rate_bp,
            buffer_rate_bp=unit.buffer_rate_bp,
            buffer_account=unit.buffer_account,
            pool=active_quantity(session, unit.buffer_account),
        )
    number = (
        1
        + session.exec(
            select(func.count())
            .select_from(BatchRow)
            .where(BatchRow.project_id == project.id, BatchRow.vintage == b.vintage)
        ).one()
    )
    plan = plan_issuance(
        country=project.partner_country,
        project_id=project.id,
        vintage=b.vintage,
        batch_number=number,
        period_start=report.period_start,
        period_end=report.period_end,
        verified=report.verified_reductions,
        allocations=shares,
        redd=terms,
    )
    session.add(
        BatchRow(
            id=plan.batch_id,
            project_id=project.id,
            report_id=report.id,
            programme=plan.programme,
            vintage=b.vintage,
            number=number,
            quantity=plan.total,
            issued_seq=acting.seq,
        )
    )
    session.flush()
    for account_id, serials in plan.blocks:
        add_block(
            session, batch_id=plan.batch_id, serials=serials, account_id=account_id, status="active"
        )
        record_event(
            session,
            seq=acting.seq,
            kind=Issue.TYPE,
            batch_id=plan.batch_id,
            serials=serials,
            from_account=None,
            to_account=account_id,
            status="active",
        )
    report.status = "issued"
    session.add(report)
    return plan.effects()
