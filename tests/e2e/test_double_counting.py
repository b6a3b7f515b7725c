"""The same tonnes are never credited twice through overlapping reports or areas."""

from __future__ import annotations

import json

from tests.world import ADMIN, UNIT, World, issue_jcm, sha

ELSEWHERE = {
    "type": "Polygon",
    "coordinates": [[[104.0, 12.0], [104.1, 12.0], [104.1, 12.1], [104.0, 12.1], [104.0, 12.0]]],
}


def test_a_jcm_project_cannot_gain_a_forest_unit(world: World) -> None:
    """Its reports cover the whole project: a unit's reports would count its hectares again."""
    issue_jcm(world, "KH004-MR1", 1000, period=("2024-01-01", "2024-12-31"))
    error = world.refuse(
        ADMIN,
        "forest_unit.register",
        {
            "unit_id": "KH004-FU1",
            "project_id": "KH004",
            "name": "A unit added to a JCM project",
            "boundary": json.dumps(ELSEWHERE),
            "jurisdiction": "Kampong Speu",
            "reference_level": 10000,
            "leakage_rate_bp": 0,
            "buffer_rate_bp": 0,
        },
        status=409,
        code="conflict",
    )
    assert "forest units belong to REDD+ projects" in error["message"]


def test_a_redd_project_reports_by_forest_unit_even_before_it_has_one(world: World) -> None:
    """A project was REDD+ only once it had a forest unit: a REDD+ project that reported
    before its first unit was registered was issued its 10^6 t in full, as a JCM batch, with
    no leakage, no buffer share and no reference level."""
    world.submit(ADMIN, "project.register", {
        "project_id": "KH006", "title": "Another REDD+ project (illustrative)",
        "partner_country": "KH", "methodology": "KH_AM004", "sector": "REDD+",
        "programme": "REDD+", "participants": ["kh-gov"], "third_party_entity": "lrqa",
        "crediting_period_start": "2020-01-01", "crediting_period_end": "2040-12-31",
    })
    report = {"report_id": "KH006-MR1", "project_id": "KH006", "period_start": "2024-01-01",
              "period_end": "2024-12-31", "reductions": 1_000_000, "document_sha256": sha("m")}
    error = world.refuse("kh-gov", "report.submit", report, status=422, code="invalid_request")
    assert "KH006 is REDD+: name the forest_unit_id" in error["message"]
    # And a JCM project's report names no forest unit.
    error = world.refuse("kh-water", "report.submit", {
        **report, "report_id": "KH004-MR9", "project_id": "KH004", "forest_unit_id": UNIT},
        status=422, code="invalid_request")
    assert "KH004 is JCM: it reports project-wide" in error["message"]


def test_a_new_project_must_name_its_programme(world: World) -> None:
    """Only registrations of ledgers written before programmes were named go without one."""
    body = {
        "project_id": "KH006", "title": "A project of no programme (illustrative)",
        "partner_country": "KH", "methodology": "KH_AM004", "sector": "REDD+",
        "participants": ["kh-gov"], "third_party_entity": "lrqa",
        "crediting_period_start": "2020-01-01", "crediting_period_end": "2040-12-31",
    }
    with world.unchanged():
        error = world.refuse(ADMIN, "project.register", body, status=422,
                             code="invalid_request")
    assert error["message"].startswith("programme is required")
