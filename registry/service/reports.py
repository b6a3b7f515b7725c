"""Monitoring reports: submitted by the project side, then verified or rejected by its
third-party entity, or withdrawn by a participant, until verified."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, select

from registry.domain.instructions import RejectReport, SubmitReport, VerifyReport, WithdrawReport
from registry.domain.rules import (
    CLOSED_REPORT_STATUSES,
    check_no_period_overlap,
    check_report_area,
    check_report_period,
)
from registry.errors import ConflictError, InvalidRequestError, PermissionDeniedError, StateError
from registry.service.instructions import Acting
from registry.store.credits_repo import get_or_404
from registry.store.tables import ForestUnitRow, ProjectRow, ReportRow

Effects = dict[str, Any]


def submit_report(session: Session, acting: Acting[SubmitReport]) -> Effects:
    b = acting.body
    project = get_or_404(session, ProjectRow, b.project_id, "project")
    if acting.party.id not in json.loads(project.participants):
        raise PermissionDeniedError(
            f"party {acting.party.id} is not a participant of project {project.id}",
            details={"party": acting.party.id, "project": project.id},
        )
    if project.status != "registered":
        raise StateError(f"project {project.id} is {project.status}; it cannot report")
    if session.get(ReportRow, b.report_id) is not None:
        raise ConflictError(f"report {b.report_id} already exists", details={"report": b.report_id})
    check_report_period(
        period_start=b.period_start,
        period_end=b.period_end,
        crediting_start=project.crediting_period_start,
        crediting_end=project.crediting_period_end,
        today=acting.now.date(),
    )
    units = session.exec(select(ForestUnitRow).where(ForestUnitRow.project_id == project.id)).all()
    check_report_area(
        project_id=project.id,
        programme=project.programme,
        forest_unit_id=b.forest_unit_id,
        reference_levels={u.id: u.reference_level for u in units},
        reductions=b.reductions,
        period_start=b.period_start,
        period_end=b.period_end,
    )
    same_scope = session.exec(select(ReportRow).where(ReportRow.project_id == project.id)).all()
    check_no_period_overlap(
        period_start=b.period_start,
        period_end=b.period_end,
        forest_unit_id=b.forest_unit_id,
        others=[
            (r.id, r.period_start, r.period_end, r.forest_unit_id)
            for r in same_scope
            if r.status not in CLOSED_REPORT_STATUSES
        ],
    )
    session.add(
        ReportRow(
            id=b.report_id,
            project_id=project.id,
            forest_unit_id=b.forest_unit_id,
            period_start=b.period_start,
            period_end=b.period_end,
            reductions=b.reductions,
            document_sha256=b.document_sha256,
            status="submitted",
            submitted_seq=acting.seq,
        )
    )
    return {"report_id": b.report_id, "status": "submitted"}


def _submitted_report(
    session: Session, acting: Acting[Any], report_id: str, *, by_verifier: bool
) -> ReportRow:
    """Report ``report_id``, still only submitted, and ``acting`` may decide on it: the
    project's third-party entity (``by_verifier``) or one of its participants."""
    report = get_or_404(session, ReportRow, report_id, "report")
    project = get_or_404(session, ProjectRow, report.project_id, "project")
    kind = acting.instruction.type
    if by_verifier and acting.party.id != project.third_party_entity:
        raise PermissionDeniedError(
            f"only project {project.id}'s third-party entity {project.third_party_entity} "
            f"may {'verify' if kind == VerifyReport.TYPE else 'reject'} its reports",
            details={"party": acting.party.id, "verifier": project.third_party_entity},
        )
    if not by_verifier and acting.party.id not in json.loads(project.participants):
        raise PermissionDeniedError(
            f"only a participant of project {project.id} may withdraw its reports",
            details={"party": acting.party.id, "project": project.id},
        )
    if report.status != "submitted":
        raise StateError(f"report {report.id} is already {report.status}")
    return report


def verify_report(session: Session, acting: Acting[VerifyReport]) -> Effects:
    b = acting.body
    report = _submitted_report(session, acting, b.report_id, by_verifier=True)
    if b.verified_reductions > report.reductions:
        raise InvalidRequestError(
            f"verified {b.verified_reductions} tCO2e exceeds the {report.reductions} claimed",
            details={"verified": b.verified_reductions, "claimed": report.reductions},
        )
    report.status = "verified"
    report.verified_reductions = b.verified_reductions
    report.verifier = acting.party.id
    report.statement_sha256 = b.statement_sha256
    report.verified_seq = acting.seq
    session.add(report)
    return {
        "report_id": report.id,
        "status": "verified",
        "verified_reductions": b.verified_reductions,
    }


def reject_report(session: Session, acting: Acting[RejectReport]) -> Effects:
    b = acting.body
    report = _submitted_report(session, acting, b.report_id, by_verifier=True)
    report.status = "rejected"
    report.verifier = acting.party.id
    report.statement_sha256 = b.statement_sha256
    session.add(report)
    return {"report_id": report.id, "status": "rejected"}


def withdraw_report(session: Session, acting: Acting[WithdrawReport]) -> Effects:
    report = _submitted_report(session, acting, acting.body.report_id, by_verifier=False)
    report.status = "withdrawn"
    session.add(report)
    return {"report_id": report.id, "status": "withdrawn"}
