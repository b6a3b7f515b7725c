"""Monitoring reports: submitted by the project side, verified by its third-party entity."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from sqlmodel import Session, select

from registry.domain.instructions import SubmitReport, VerifyReport
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
    if b.period_end < b.period_start:
        raise InvalidRequestError(
            f"period ends ({b.period_end}) before it starts ({b.period_start})"
        )
    if (
        b.period_start < project.crediting_period_start
        or b.period_end > project.crediting_period_end
    ):
        raise InvalidRequestError(
            f"period {b.period_start}..{b.period_end} lies outside the crediting period "
            f"{project.crediting_period_start}..{project.crediting_period_end}"
        )
    units = session.exec(select(ForestUnitRow).where(ForestUnitRow.project_id == project.id)).all()
    if units and b.forest_unit_id is None:
        raise InvalidRequestError(f"project {project.id} is REDD+: name the forest_unit_id")
    if b.forest_unit_id is not None:
        unit = next((u for u in units if u.id == b.forest_unit_id), None)
        if unit is None:
            raise InvalidRequestError(
                f"forest unit {b.forest_unit_id} is not a unit of project {project.id}"
            )
        days = (date.fromisoformat(b.period_end) - date.fromisoformat(b.period_start)).days + 1
        ceiling = -(-unit.reference_level * days // 365)
        if b.reductions > ceiling:
            raise InvalidRequestError(
                f"{b.reductions} tCO2e exceeds the reference level for {days} days ({ceiling})",
                details={"reductions": b.reductions, "ceiling": ceiling},
            )
    # Two reports covering the same days of the same project (or forest unit) would count the
    # same reductions twice.
    for other in session.exec(
        select(ReportRow).where(
            ReportRow.project_id == project.id, ReportRow.forest_unit_id == b.forest_unit_id
        )
    ).all():
        if other.period_start <= b.period_end and b.period_start <= other.period_end:
            raise ConflictError(
                f"period overlaps report {other.id} ({other.period_start}..{other.period_end})",
                details={"report": other.id},
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


def verify_report(session: Session, acting: Acting[VerifyReport]) -> Effects:
    b = acting.body
    report = get_or_404(session, ReportRow, b.report_id, "report")
    project = get_or_404(session, ProjectRow, report.project_id, "project")
    if acting.party.id != project.third_party_entity:
        raise PermissionDeniedError(
            f"only project {project.id}'s third-party entity {project.third_party_entity} "
            f"may verify its reports",
            details={"party": acting.party.id, "verifier": project.third_party_entity},
        )
    if report.status != "submitted":
        raise StateError(f"report {report.id} is already {report.status}")
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
