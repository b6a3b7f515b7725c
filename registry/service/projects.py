"""JCM projects and REDD+ forest units: registration and status."""

from __future__ import annotations

import json
from typing import Any

from sqlmodel import Session, col, select

from registry.domain.instructions import RegisterForestUnit, RegisterProject, SetProjectStatus
from registry.domain.rules import (
    CLOSED_REPORT_STATUSES,
    check_country_and_methodology,
    check_unit_can_join,
)
from registry.errors import (
    ConflictError,
    InvalidGeometryError,
    InvalidRequestError,
    StateError,
)
from registry.service.instructions import Acting
from registry.service.parties import create_account
from registry.store.credits_repo import get_or_404
from registry.store.tables import ForestUnitRow, PartyRow, ProjectRow, ReportRow

Effects = dict[str, Any]

#: Overlap allowed between two forest units before it counts as double counting (GIS noise).
OVERLAP_TOLERANCE_HA = 1.0


def _party_with_role(session: Session, party_id: str, *roles: str) -> PartyRow:
    party = get_or_404(session, PartyRow, party_id, "party")
    if party.role not in roles:
        raise InvalidRequestError(
            f"party {party_id} is a {party.role}, expected {' or '.join(roles)}",
            details={"party": party_id, "role": party.role},
        )
    return party


def register_project(session: Session, acting: Acting[RegisterProject]) -> Effects:
    acting.require_role("administrator")
    b = acting.body
    if b.programme is None:
        raise InvalidRequestError(
            "programme is required: JCM (reports cover the whole project) or REDD+ (reports "
            "by forest unit)",
            details={"field": "programme"},
        )
    check_country_and_methodology(b.partner_country, b.methodology)
    if session.get(ProjectRow, b.project_id) is not None:
        raise ConflictError(
            f"project {b.project_id} already exists", details={"project": b.project_id}
        )
    if b.crediting_period_end < b.crediting_period_start:
        raise InvalidRequestError(
            f"crediting period ends ({b.crediting_period_end}) before it starts "
            f"({b.crediting_period_start})"
        )
    if len(set(b.participants)) != len(b.participants):
        raise InvalidRequestError("participants are listed twice")
    for p in b.participants:
        _party_with_role(session, p, "participant", "government")
    _party_with_role(session, b.third_party_entity, "third_party_entity")
    session.add(
        ProjectRow(
            id=b.project_id,
            title=b.title,
            partner_country=b.partner_country,
            methodology=b.methodology,
            sector=b.sector,
            programme=b.programme,
            participants=json.dumps(b.participants),
            third_party_entity=b.third_party_entity,
            crediting_period_start=b.crediting_period_start,
            crediting_period_end=b.crediting_period_end,
            status="registered",
            registered_seq=acting.seq,
        )
    )
    return {"project_id": b.project_id, "status": "registered"}


def set_project_status(session: Session, acting: Acting[SetProjectStatus]) -> Effects:
    acting.require_role("administrator")
    project = get_or_404(session, ProjectRow, acting.body.project_id, "project")
    if project.status == "closed":
        raise ConflictError(f"project {project.id} is closed; its status cannot change")
    if project.status == acting.body.status:
        # The ledger would gain an entry that changes nothing, and a reader of the project's
        # history a change that never was.
        raise StateError(f"project {project.id} is already {project.status}")
    previous, project.status = project.status, acting.body.status
    session.add(project)
    return {"project_id": project.id, "from": previous, "to": project.status}


def register_forest_unit(session: Session, acting: Acting[RegisterForestUnit]) -> Effects:
    # Imported at the first forest unit, not with the module: the geometry libraries (shapely,
    # pyproj, numpy) were a sixth of the imports of every process a server starts.
    from registry.domain.forest import check_no_overlap, parse_boundary_text, stored_boundary

    acting.require_role("administrator")
    b = acting.body
    if session.get(ForestUnitRow, b.unit_id) is not None:
        raise ConflictError(f"forest unit {b.unit_id} already exists", details={"unit": b.unit_id})
    project = get_or_404(session, ProjectRow, b.project_id, "project")
    if project.status == "closed":
        raise StateError(f"project {project.id} is closed; it cannot gain a forest unit")

    def project_wide_reports() -> list[str]:
        return list(
            session.exec(
                select(ReportRow.id).where(
                    ReportRow.project_id == b.project_id,
                    ReportRow.forest_unit_id == None,  # noqa: E711
                    col(ReportRow.status).not_in(CLOSED_REPORT_STATUSES),
                )
            ).all()
        )

    check_unit_can_join(
        project_id=project.id,
        programme=project.programme,
        project_wide_reports=project_wide_reports,
    )
    boundary = parse_boundary_text(b.boundary)
    if boundary.area_hectares < 1:
        raise InvalidGeometryError(
            f"boundary covers {boundary.area_m2:.4g} m2, which is 0 ha in whole hectares: a "
            "forest unit must cover at least half a hectare",
            details={"area_m2": round(boundary.area_m2, 4)},
        )
    # Only a unit whose bounding box meets the new one's can overlap it: the others' boundaries
    # (each up to 100,000 positions) are not read, parsed and measured under the ledger's lock.
    west, south, east, north = boundary.geometry.bounds
    nearby = select(ForestUnitRow).where(
        col(ForestUnitRow.west) <= east,
        col(ForestUnitRow.east) >= west,
        col(ForestUnitRow.south) <= north,
        col(ForestUnitRow.north) >= south,
    )
    existing = [
        (row.id, stored_boundary(row.boundary))
        for row in session.exec(nearby.order_by(col(ForestUnitRow.registered_seq))).all()
    ]
    check_no_overlap(boundary, existing, tolerance_ha=OVERLAP_TOLERANCE_HA)
    buffer_account = f"BUF-{b.unit_id}"
    create_account(
        session,
        account_id=buffer_account,
        holder=acting.party.id,
        kind="buffer",
        name=f"Non-permanence buffer pool of {b.name}",
        seq=acting.seq,
        unit_id=b.unit_id,
    )
    session.add(
        ForestUnitRow(
            id=b.unit_id,
            project_id=b.project_id,
            name=b.name,
            boundary=json.dumps(boundary.to_geojson(), separators=(",", ":")),
            area_ha=boundary.area_hectares,
            west=west,
            south=south,
            east=east,
            north=north,
            jurisdiction=b.jurisdiction,
            reference_level=b.reference_level,
            leakage_rate_bp=b.leakage_rate_bp,
            buffer_rate_bp=b.buffer_rate_bp,
            buffer_account=buffer_account,
            shortfall=0,
            registered_seq=acting.seq,
        )
    )
    return {
        "unit_id": b.unit_id,
        "area_ha": boundary.area_hectares,
        "buffer_account": buffer_account,
    }
