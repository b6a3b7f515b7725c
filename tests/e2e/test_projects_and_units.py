"""JCM projects and REDD+ forest units over HTTP: registration, status, boundaries."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from registry.ledger.keys import SigningKey
from tests.world import ADMIN, BUFFER, SQUARE, UNIT, World, sha, submit_report, verify_report

KH006: dict[str, Any] = {
    "project_id": "KH006",
    "title": "Installation of high-efficiency chillers in a Phnom Penh shopping mall "
             "(illustrative)",
    "partner_country": "KH", "methodology": "KH_AM002", "sector": "Energy efficiency",
    "programme": "JCM",
    "participants": ["jp-buyer", "kh-gov"], "third_party_entity": "lrqa",
    "crediting_period_start": "2024-01-01", "crediting_period_end": "2030-12-31",
}


def square(lon: float, lat: float, size: float = 0.1) -> str:
    ring = [[lon, lat], [lon + size, lat], [lon + size, lat + size], [lon, lat + size],
            [lon, lat]]
    return json.dumps({"type": "Polygon", "coordinates": [ring]})


def spherical_hectares(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    """Area of a lon/lat rectangle on the authalic sphere: an estimate independent of pyproj."""
    radius = 6_371_007.2
    area = radius**2 * math.radians(lon1 - lon0) * (
        math.sin(math.radians(lat1)) - math.sin(math.radians(lat0)))
    return area / 10_000


def test_jcm_project_registration(world: World) -> None:
    answer = world.submit(ADMIN, "project.register", KH006)
    assert answer["result"] == {"project_id": "KH006", "status": "registered"}
    project = world.http.get("/v1/projects/KH006")
    expected = {k: v for k, v in KH006.items() if k != "project_id"}
    assert project == {**expected, "id": "KH006", "status": "registered",
                       "registered_seq": answer["seq"]}
    assert "KH006" in [p["id"] for p in world.http.get("/v1/projects")["data"]]
    base = {**KH006, "project_id": "KH007"}
    with world.unchanged():
        world.refuse(ADMIN, "project.register", KH006, status=409, code="conflict")
        world.refuse("kh-gov", "project.register", base, status=403, code="forbidden")
        world.refuse(ADMIN, "project.register", {**base, "participants": ["lrqa"]},
                     status=422, code="invalid_request")
        world.refuse(ADMIN, "project.register", {**base, "third_party_entity": "kh-gov"},
                     status=422, code="invalid_request")
        world.refuse(ADMIN, "project.register", {**base, "participants": ["nobody"]},
                     status=404, code="not_found")
        world.refuse(ADMIN, "project.register",
                     {**base, "participants": ["kh-gov", "kh-gov"]},
                     status=422, code="invalid_request")
        world.refuse(ADMIN, "project.register",
                     {**base, "crediting_period_start": "2031-01-01"},
                     status=422, code="invalid_request")
        world.refuse(ADMIN, "project.register", {**base, "crediting_period_end": "2030-02-30"},
                     status=422, code="invalid_request")
        world.refuse(ADMIN, "project.register", {**base, "methodology": "AM0001"},
                     status=422, code="invalid_request")
        # A partner country is an ISO 3166-1 code that names a country, and a JCM methodology
        # is approved by one partner country's Joint Committee, named by its code.
        unknown = world.refuse(ADMIN, "project.register",
                               {**base, "partner_country": "ZZ", "methodology": "ZZ_AM001"},
                               status=422, code="invalid_request")
        assert "ZZ" in unknown["message"] and "ISO 3166-1" in unknown["message"]
        assert unknown["details"] == {"field": "partner_country", "partner_country": "ZZ"}
        world.refuse(ADMIN, "project.register",  # user-assigned, though listed for Kosovo
                     {**base, "partner_country": "XK", "methodology": "XK_AM001"},
                     status=422, code="invalid_request")
        elsewhere = world.refuse(ADMIN, "project.register", {**base, "methodology": "ID_AM001"},
                                 status=422, code="invalid_request")
        assert "ID_AM001" in elsewhere["message"] and "KH" in elsewhere["message"]
        assert elsewhere["details"] == {"field": "methodology", "methodology": "ID_AM001",
                                        "partner_country": "KH"}


def test_suspended_project_cannot_report_or_issue(world: World) -> None:
    submit_report(world, "KH004-MR1", 1000)
    verify_report(world, "KH004-MR1", 1000)
    answer = world.submit(ADMIN, "project.status",
                          {"project_id": "KH004", "status": "suspended", "reason": "site audit"})
    assert answer["result"] == {"project_id": "KH004", "from": "registered", "to": "suspended"}
    assert world.http.get("/v1/projects/KH004")["status"] == "suspended"
    issue = {"report_id": "KH004-MR1", "vintage": 2024,
             "allocations": [{"account": "KH-WATER-1", "quantity": 1000}]}
    with world.unchanged():
        error = world.refuse("kh-water", "report.submit", {
            "report_id": "KH004-MR2", "project_id": "KH004", "period_start": "2025-01-01",
            "period_end": "2025-12-31", "reductions": 5, "document_sha256": "c" * 64},
            status=409, code="invalid_state")
        assert "suspended" in error["message"]
        error = world.refuse(ADMIN, "credits.issue", issue, status=409, code="invalid_state")
        assert "suspended" in error["message"]
        world.refuse("kh-gov", "project.status",
                     {"project_id": "KH004", "status": "registered", "reason": "x"},
                     status=403, code="forbidden")
        world.refuse(ADMIN, "project.status",
                     {"project_id": "KH404", "status": "registered", "reason": "x"},
                     status=404, code="not_found")
        # A change to the status it has would be an entry that changes nothing.
        error = world.refuse(ADMIN, "project.status",
                             {"project_id": "KH004", "status": "suspended", "reason": "again"},
                             status=409, code="invalid_state")
        assert error["message"] == "project KH004 is already suspended"
    # Reinstated, the project issues the report it had verified.
    world.submit(ADMIN, "project.status",
                 {"project_id": "KH004", "status": "registered", "reason": "audit passed"})
    world.submit(ADMIN, "credits.issue", issue)
    assert world.active("KH-WATER-1") == 1000
    # A closed project stays closed.
    world.submit(ADMIN, "project.status",
                 {"project_id": "KH004", "status": "closed", "reason": "crediting ended"})
    world.refuse(ADMIN, "project.status",
                 {"project_id": "KH004", "status": "registered", "reason": "reopen"},
                 status=409, code="conflict")


def test_forest_unit_area_and_buffer_account(world: World) -> None:
    unit = world.http.get(f"/v1/forest-units/{UNIT}")
    expected = spherical_hectares(105.8, 13.6, 105.9, 13.7)
    assert isinstance(unit["area_ha"], int)
    assert abs(unit["area_ha"] - expected) / expected < 0.005, (unit["area_ha"], expected)
    assert unit["buffer_account"] == BUFFER
    assert (unit["buffer_pool"], unit["shortfall"]) == (0, 0)
    assert (unit["leakage_rate_bp"], unit["buffer_rate_bp"]) == (1000, 2000)
    assert unit["boundary"]["type"] == "Polygon"
    assert unit["boundary"]["coordinates"][0][0] == SQUARE["coordinates"][0][0]
    # A second unit sharing an edge with the first is no overlap; its area is its own.
    answer = world.submit(ADMIN, "forest_unit.register", {
        "unit_id": "KH005-FU2", "project_id": "KH005", "name": "Prey Lang block 2",
        "boundary": square(105.9, 13.6, 0.05), "jurisdiction": "Stung Treng",
        "reference_level": 1000, "leakage_rate_bp": 0, "buffer_rate_bp": 1500,
    })
    area = answer["result"]["area_ha"]
    expected = spherical_hectares(105.9, 13.6, 105.95, 13.65)
    assert abs(area - expected) / expected < 0.005
    assert answer["result"] == {"unit_id": "KH005-FU2", "area_ha": area,
                                "buffer_account": "BUF-KH005-FU2"}
    assert world.http.get("/v1/forest-units/KH005-FU2")["area_ha"] == area
    accounts = {a["id"]: a for a in world.http.get("/v1/accounts")["data"]}
    assert accounts["BUF-KH005-FU2"]["kind"] == "buffer"
    assert accounts["BUF-KH005-FU2"]["unit_id"] == "KH005-FU2"
    assert world.http.get("/v1/forest-units")["count"] == 2
    # A MultiPolygon measures the sum of its parts.
    parts = [json.loads(square(106.5, 13.0, 0.02))["coordinates"],
             json.loads(square(106.6, 13.0, 0.02))["coordinates"]]
    answer = world.submit(ADMIN, "forest_unit.register", {
        "unit_id": "KH005-FU3", "project_id": "KH005", "name": "Prey Lang islands",
        "boundary": json.dumps({"type": "MultiPolygon", "coordinates": parts}),
        "jurisdiction": "Stung Treng", "reference_level": 1000, "leakage_rate_bp": 0,
        "buffer_rate_bp": 0,
    })
    expected = (spherical_hectares(106.5, 13.0, 106.52, 13.02)
                + spherical_hectares(106.6, 13.0, 106.62, 13.02))
    assert abs(answer["result"]["area_ha"] - expected) / expected < 0.005


def test_a_report_may_cover_its_crediting_period_to_the_day_and_not_a_day_more(
    world: World,
) -> None:
    """KH006 credits 2024-04-01..2025-03-31: a report of exactly that period is accepted, one
    starting a day before or ending a day after is not. A crediting period may be one day."""
    world.submit(ADMIN, "project.register", {**KH006, "crediting_period_start": "2024-04-01",
                                             "crediting_period_end": "2025-03-31"})
    report = {"report_id": "KH006-MR1", "project_id": "KH006", "period_start": "2024-04-01",
              "period_end": "2025-03-31", "reductions": 700, "document_sha256": sha("KH006")}
    with world.unchanged():
        for start, end in (("2024-03-31", "2025-03-31"), ("2024-04-01", "2025-04-01")):
            error = world.refuse("jp-buyer", "report.submit",
                                 {**report, "period_start": start, "period_end": end},
                                 status=422, code="invalid_request")
            assert "outside the crediting period 2024-04-01..2025-03-31" in error["message"]
    answer = world.submit("jp-buyer", "report.submit", report)
    assert answer["result"] == {"report_id": "KH006-MR1", "status": "submitted"}
    one_day = world.submit(ADMIN, "project.register", {
        **KH006, "project_id": "KH007", "crediting_period_start": "2025-03-01",
        "crediting_period_end": "2025-03-01"})
    assert one_day["result"] == {"project_id": "KH007", "status": "registered"}
    world.submit("jp-buyer", "report.submit", {
        **report, "report_id": "KH007-MR1", "project_id": "KH007",
        "period_start": "2025-03-01", "period_end": "2025-03-01"})
    assert world.http.get("/v1/reports/KH007-MR1")["status"] == "submitted"


def test_a_closed_project_issues_nothing_more(world: World) -> None:
    """A report verified before its project closed stays unissued: no credits appear."""
    submit_report(world, "KH004-MR1", 1000)
    verify_report(world, "KH004-MR1", 1000)
    world.submit(ADMIN, "project.status",
                 {"project_id": "KH004", "status": "closed", "reason": "crediting ended"})
    issue = {"report_id": "KH004-MR1", "vintage": 2024,
             "allocations": [{"account": "KH-WATER-1", "quantity": 1000}]}
    with world.unchanged():
        error = world.refuse(ADMIN, "credits.issue", issue, status=409, code="invalid_state")
        assert error["message"] == "project KH004 is closed; it cannot issue"
        error = world.refuse("kh-water", "report.submit", {
            "report_id": "KH004-MR2", "project_id": "KH004", "period_start": "2025-01-01",
            "period_end": "2025-12-31", "reductions": 5, "document_sha256": "c" * 64},
            status=409, code="invalid_state")
        assert "closed" in error["message"]
    assert world.http.get("/v1/reports/KH004-MR1")["status"] == "verified"
    assert world.http.get("/v1/batches")["count"] == 0
    assert world.active("KH-WATER-1") == 0


def test_a_closed_redd_project_gains_no_forest_unit(world: World) -> None:
    """A closed project never reports again: a forest unit registered into it would claim its
    forest (no other unit may overlap it) for a project that can never credit it."""
    world.submit(ADMIN, "project.status",
                 {"project_id": "KH005", "status": "closed", "reason": "crediting ended"})
    unit = {"unit_id": "KH005-FU2", "project_id": "KH005", "name": "Prey Lang block 2",
            "boundary": square(105.9, 13.6, 0.05), "jurisdiction": "Stung Treng",
            "reference_level": 1000, "leakage_rate_bp": 0, "buffer_rate_bp": 1500}
    with world.unchanged():
        error = world.refuse(ADMIN, "forest_unit.register", unit, status=409,
                             code="invalid_state")
        assert error["message"] == "project KH005 is closed; it cannot gain a forest unit"
    assert world.http.get("/v1/forest-units")["count"] == 1


def test_only_the_projects_own_third_party_entity_verifies_and_no_participant_is_one(
    world: World,
) -> None:
    """A second verifier, accredited and registered, still cannot verify or reject the reports
    of a project that named another; and a project cannot name a participant as its verifier."""
    key = SigningKey.from_seed(b"V" * 32)
    world.keys["bv"] = key
    world.submit(ADMIN, "party.register", {
        "party_id": "bv", "name": "Bureau Veritas (illustrative)", "role": "third_party_entity",
        "country": "FR", "public_keys": [key.public_key.to_b64()]})
    submit_report(world, "KH004-MR1", 1000)
    verify = {"report_id": "KH004-MR1", "verified_reductions": 1000,
              "statement_sha256": sha("KH004-MR1/statement")}
    reject = {"report_id": "KH004-MR1", "statement_sha256": "c" * 64, "reason": "not ours"}
    with world.unchanged():
        for kind, body in (("report.verify", verify), ("report.reject", reject)):
            error = world.refuse("bv", kind, body, status=403, code="forbidden")
            assert error["details"] == {"party": "bv", "verifier": "lrqa"}
        for tpe in ("kh-water", "jp-buyer"):
            error = world.refuse(ADMIN, "project.register",
                                 {**KH006, "third_party_entity": tpe},
                                 status=422, code="invalid_request")
            assert error["details"] == {"party": tpe, "role": "participant"}
    assert world.http.get("/v1/reports/KH004-MR1")["status"] == "submitted"
    # Named by a project of its own, the second verifier verifies that project's reports.
    world.submit(ADMIN, "project.register", {**KH006, "third_party_entity": "bv"})
    world.submit("jp-buyer", "report.submit", {
        "report_id": "KH006-MR1", "project_id": "KH006", "period_start": "2024-01-01",
        "period_end": "2024-12-31", "reductions": 10, "document_sha256": sha("KH006-MR1")})
    answer = world.submit("bv", "report.verify", {**verify, "report_id": "KH006-MR1",
                                                  "verified_reductions": 10})
    assert answer["result"]["status"] == "verified"
    assert world.http.get("/v1/reports/KH006-MR1")["verifier"] == "bv"


def test_the_list_of_forest_units_names_each_units_box_not_its_whole_boundary(
    world: World,
) -> None:
    # A boundary may run to 100,000 positions: a page of such units would be hundreds of
    # megabytes. The list gives each unit's box; the unit's own read gives its boundary.
    n = 20_000
    ring = [[round(106.2 + 0.05 * math.cos(2 * math.pi * i / n), 9),
             round(13.2 + 0.05 * math.sin(2 * math.pi * i / n), 9)] for i in range(n)]
    world.submit(ADMIN, "forest_unit.register", {
        "unit_id": "KH005-FU9", "project_id": "KH005", "name": "A finely drawn block",
        "boundary": json.dumps({"type": "Polygon", "coordinates": [[*ring, ring[0]]]}),
        "jurisdiction": "Kampong Thom", "reference_level": 1000, "leakage_rate_bp": 0,
        "buffer_rate_bp": 1500,
    })
    listed = world.http.http.get("/v1/forest-units")
    assert listed.status_code == 200 and len(listed.content) < 5_000, len(listed.content)
    units = {u["id"]: u for u in listed.json()["data"]}
    assert set(units) == {UNIT, "KH005-FU9"}
    own = world.http.get("/v1/forest-units/KH005-FU9")
    assert len(own["boundary"]["coordinates"][0]) == n + 1
    assert "boundary" not in units["KH005-FU9"]
    assert units["KH005-FU9"] == {k: v for k, v in own.items() if k != "boundary"}
    west, south, east, north = units["KH005-FU9"]["bounds"]
    assert (west, south, east, north) == pytest.approx((106.15, 13.15, 106.25, 13.25), abs=1e-6)
    assert units[UNIT]["bounds"] == [105.8, 13.6, 105.9, 13.7]
