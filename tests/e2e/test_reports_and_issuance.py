"""Monitoring reports and issuance over HTTP: JCM allocation, REDD+ leakage and buffer."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from registry.service.context import Registry
from tests.load import check_offline
from tests.world import (
    ADMIN,
    BUFFER,
    UNIT,
    World,
    issue_jcm,
    sha,
    submit_report,
    verify_report,
)


def ceil_bp(amount: int, bp: int) -> int:
    return -(-amount * bp // 10_000)


def issue_body(report: str, *allocations: tuple[str, int], vintage: int = 2024
               ) -> dict[str, Any]:
    return {"report_id": report, "vintage": vintage,
            "allocations": [{"account": a, "quantity": q} for a, q in allocations]}


def test_report_submitted_by_a_participant_and_verified_by_its_tpe(world: World) -> None:
    submitted = submit_report(world, "KH004-MR1", 1200)
    assert submitted["result"] == {"report_id": "KH004-MR1", "status": "submitted"}
    report = world.http.get("/v1/reports/KH004-MR1")
    assert (report["status"], report["reductions"], report["verified_reductions"]) == (
        "submitted", 1200, None)
    assert report["document_sha256"] == sha("KH004-MR1")
    body = {"report_id": "KH004-MR2", "project_id": "KH004", "period_start": "2025-01-01",
            "period_end": "2025-12-31", "reductions": 500, "document_sha256": "d" * 64}
    verify = {"report_id": "KH004-MR1", "verified_reductions": 1150,
              "statement_sha256": "e" * 64}
    with world.unchanged():
        # Only the project's participants submit; only its third-party entity verifies.
        world.refuse("jp-buyer", "report.submit", body, status=403, code="forbidden")
        world.refuse("lrqa", "report.submit", body, status=403, code="forbidden")
        world.refuse("kh-water", "report.verify", verify, status=403, code="forbidden")
        world.refuse(ADMIN, "report.verify", verify, status=403, code="forbidden")
        # Verifying more than claimed.
        error = world.refuse("lrqa", "report.verify", {**verify, "verified_reductions": 1201},
                             status=422, code="invalid_request")
        assert error["details"] == {"verified": 1201, "claimed": 1200}
        world.refuse("lrqa", "report.verify", {**verify, "report_id": "KH004-MR9"},
                     status=404, code="not_found")
        # The same days reported twice would count the same reductions twice.
        error = world.refuse("kh-water", "report.submit",
                             {**body, "period_start": "2024-12-31"},
                             status=409, code="conflict")
        assert "KH004-MR1" in error["message"]
        world.refuse("kh-water", "report.submit",
                     {**body, "period_start": "2023-07-01", "period_end": "2025-06-30"},
                     status=409, code="conflict")
        world.refuse("kh-water", "report.submit", {**body, "report_id": "KH004-MR1"},
                     status=409, code="conflict")
        world.refuse("kh-water", "report.submit", {**body, "period_end": "2024-12-31"},
                     status=422, code="invalid_request")
        world.refuse("kh-water", "report.submit", {**body, "period_end": "2031-01-31"},
                     status=422, code="invalid_request")
        world.refuse("kh-water", "report.submit", {**body, "project_id": "KH404"},
                     status=404, code="not_found")
        world.refuse("kh-water", "report.submit", {**body, "forest_unit_id": UNIT},
                     status=422, code="invalid_request")
        # A REDD+ report names its forest unit and stays under the reference level.
        redd = {**body, "project_id": "KH005", "report_id": "KH005-MR1"}
        world.refuse("kh-gov", "report.submit", redd, status=422, code="invalid_request")
        error = world.refuse("kh-gov", "report.submit",
                             {**redd, "forest_unit_id": UNIT, "reductions": 400_001},
                             status=422, code="invalid_request")
        assert error["details"] == {"reductions": 400_001, "ceiling": 400_000}
        # A leap year's level is its level too (counting 365 days a year, 2024 allowed 401,096).
        error = world.refuse("kh-gov", "report.submit",
                             {**redd, "forest_unit_id": UNIT, "reductions": 400_001,
                              "period_start": "2024-01-01", "period_end": "2024-12-31"},
                             status=422, code="invalid_request")
        assert error["details"] == {"reductions": 400_001, "ceiling": 400_000}
        # Reductions are reported once they have happened: not for a period still running.
        error = world.refuse("kh-water", "report.submit",
                             {**body, "period_start": "2026-01-01",
                              "period_end": date.today().isoformat()},
                             status=422, code="invalid_request")
        assert "is not over" in error["message"]
    # The third-party entity may verify fewer tonnes than claimed, and only once.
    verified = world.submit("lrqa", "report.verify", verify)
    assert verified["result"] == {"report_id": "KH004-MR1", "status": "verified",
                                  "verified_reductions": 1150}
    report = world.http.get("/v1/reports/KH004-MR1")
    assert (report["status"], report["verified_reductions"], report["verifier"]) == (
        "verified", 1150, "lrqa")
    assert (report["verified_seq"], report["statement_sha256"]) == (verified["seq"], "e" * 64)
    world.refuse("lrqa", "report.verify", verify, status=409, code="invalid_state")
    # The next period, adjacent to the first, is fine.
    submit_report(world, "KH004-MR2", 500, period=("2025-01-01", "2025-12-31"))
    assert world.http.get("/v1/reports", params={"project_id": "KH004"})["count"] == 2
    assert world.http.get("/v1/reports", params={"project_id": "KH005"})["count"] == 0


def test_jcm_issuance_exact_allocation(world: World) -> None:
    submit_report(world, "KH004-MR1", 1000)
    ok = issue_body("KH004-MR1", ("KH-WATER-1", 800), ("KH-GOV-1", 100), ("JP-GOV-1", 100))
    with world.unchanged():
        error = world.refuse(ADMIN, "credits.issue", ok, status=409, code="invalid_state")
        assert "submitted" in error["message"]
    verify_report(world, "KH004-MR1", 1000)
    with world.unchanged():
        world.refuse("kh-water", "credits.issue", ok, status=403, code="forbidden")
        world.refuse("lrqa", "credits.issue", ok, status=403, code="forbidden")
        error = world.refuse(ADMIN, "credits.issue",
                             issue_body("KH004-MR1", ("KH-WATER-1", 900), ("KH-GOV-1", 99)),
                             status=422, code="invalid_request")
        assert error["details"] == {"allocated": 999, "expected": 1000}
        world.refuse(ADMIN, "credits.issue",
                     issue_body("KH004-MR1", ("KH-WATER-1", 901), ("KH-GOV-1", 100)),
                     status=422, code="invalid_request")
        world.refuse(ADMIN, "credits.issue",
                     issue_body("KH004-MR1", ("KH-WATER-1", 900), ("KH-NOBODY-1", 100)),
                     status=404, code="not_found")
        for account in ("RETIREMENT", "CANCELLATION", BUFFER):
            world.refuse(ADMIN, "credits.issue",
                         issue_body("KH004-MR1", ("KH-WATER-1", 900), (account, 100)),
                         status=422, code="invalid_request")
        world.refuse(ADMIN, "credits.issue",
                     issue_body("KH004-MR1", ("KH-WATER-1", 500), ("KH-WATER-1", 500)),
                     status=422, code="invalid_request")
        world.refuse(ADMIN, "credits.issue", issue_body("KH004-MR9", ("KH-WATER-1", 1000)),
                     status=404, code="not_found")
        world.refuse(ADMIN, "credits.issue", {**ok, "vintage": 1999},
                     status=422, code="invalid_request")
    answer = world.submit(ADMIN, "credits.issue", ok)
    batch = "KH-JCM-KH004-2024-00001"
    assert answer["result"] == {"batch": batch, "quantity": 1000, "blocks": [
        {"account": "KH-WATER-1", "start": 1, "end": 800},
        {"account": "KH-GOV-1", "start": 801, "end": 900},
        {"account": "JP-GOV-1", "start": 901, "end": 1000},
    ]}
    assert world.blocks("KH-WATER-1") == [(batch, 1, 800, "active")]
    assert world.blocks("KH-GOV-1") == [(batch, 801, 900, "active")]
    assert world.blocks("JP-GOV-1") == [(batch, 901, 1000, "active")]
    assert world.http.get(f"/v1/batches/{batch}") == {
        "id": batch, "project_id": "KH004", "report_id": "KH004-MR1", "forest_unit_id": None,
        "programme": "JCM",
        "vintage": 2024, "quantity": 1000, "active": 1000, "retired": 0, "cancelled": 0,
        "issued_seq": answer["seq"]}
    assert world.http.get("/v1/reports/KH004-MR1")["status"] == "issued"
    # A report issues once.
    with world.unchanged():
        error = world.refuse(ADMIN, "credits.issue", ok, status=409, code="conflict")
        assert "KH004-MR1" in error["message"]
    # Batch numbers count per project and vintage.
    assert issue_jcm(world, "KH004-MR2", 50, ("2025-01-01", "2025-06-30")) == (
        "KH-JCM-KH004-2025-00001")
    assert issue_jcm(world, "KH004-MR3", 50, ("2025-07-01", "2025-12-31")) == (
        "KH-JCM-KH004-2025-00002")
    assert world.active("KH-WATER-1") == 800 + 40 + 40


def test_credits_are_allocated_only_to_the_project_side(world: World) -> None:
    """The Joint Committee allocates a project's credits to its participants and to
    governments: an account of a party outside the project (a buyer, or the registry's own
    administrator) gets none at issuance."""
    submit_report(world, "KH004-MR1", 1000)
    verify_report(world, "KH004-MR1", 1000)
    world.submit(ADMIN, "account.open",
                 {"account_id": "KH-ADMIN-1", "holder": ADMIN, "name": "the administrator's own"})
    with world.unchanged():
        for outsider, holder in (("JP-BUYER-1", "jp-buyer"), ("KH-ADMIN-1", ADMIN)):
            error = world.refuse(ADMIN, "credits.issue",
                                 issue_body("KH004-MR1", ("KH-WATER-1", 900), (outsider, 100)),
                                 status=422, code="invalid_request")
            assert error["details"] == {"account": outsider, "holder": holder}
            assert "neither a participant of project KH004 nor a government" in error["message"]
    world.submit(ADMIN, "credits.issue", issue_body(
        "KH004-MR1", ("KH-WATER-1", 800), ("KH-GOV-1", 100), ("JP-GOV-1", 100)))
    assert world.active("JP-BUYER-1") == 0


def test_redd_issuance_deducts_leakage_and_fills_the_buffer(world: World) -> None:
    gross = 12_347
    leakage = ceil_bp(gross, 1000)
    net = gross - leakage
    buffer = ceil_bp(net, 2000)
    issuable = net - buffer
    # Both deductions round up: 1234.7 -> 1235 and 2222.4 -> 2223.
    assert (leakage, net, buffer, issuable) == (1235, 11_112, 2223, 8889)
    submit_report(world, "KH005-MR1", gross, project="KH005", party="kh-gov", unit=UNIT)
    verify_report(world, "KH005-MR1", gross)
    with world.unchanged():
        for wrong in (gross, net, issuable + 1, issuable - 1):
            error = world.refuse(ADMIN, "credits.issue",
                                 issue_body("KH005-MR1", ("KH-GOV-1", wrong)),
                                 status=422, code="invalid_request")
            assert error["details"] == {"allocated": wrong, "expected": issuable}
    answer = world.submit(ADMIN, "credits.issue", issue_body(
        "KH005-MR1", ("KH-GOV-1", 8000), ("JP-GOV-1", 889)))
    batch = "KH-REDD-KH005-2024-00001"
    assert answer["result"] == {
        "batch": batch, "quantity": net,
        "blocks": [{"account": "KH-GOV-1", "start": 1, "end": 8000},
                   {"account": "JP-GOV-1", "start": 8001, "end": 8889},
                   {"account": BUFFER, "start": 8890, "end": net}],
        "redd": {"gross": gross, "leakage": leakage, "net": net, "buffer": buffer,
                 "buffer_account": BUFFER},
    }
    assert world.blocks(BUFFER) == [(batch, 8890, 11_112, "active")]
    assert world.http.get(f"/v1/forest-units/{UNIT}")["buffer_pool"] == buffer
    listed = {u["id"]: u for u in world.http.get("/v1/forest-units")["data"]}
    assert listed[UNIT]["buffer_pool"] == buffer
    # A reader of the batch finds the forest it came from, and the pool its buffer share is in.
    public = world.http.get(f"/v1/batches/{batch}")
    assert public["quantity"] == net and public["forest_unit_id"] == UNIT
    assert world.http.get("/v1/batches")["data"][0]["forest_unit_id"] == UNIT
    assert world.active("KH-GOV-1") == 8000 and world.active("JP-GOV-1") == 889


def test_billion_tonnes_is_one_block_per_allocation(world: World) -> None:
    batch = issue_jcm(world, quantity=10**9)
    holdings = world.holdings("KH-WATER-1")
    assert holdings["total_active"] == 800_000_000
    assert holdings["blocks"]["count"] == 1
    assert world.blocks("KH-GOV-1") == [(batch, 800_000_001, 900_000_000, "active")]
    assert world.blocks("JP-GOV-1") == [(batch, 900_000_001, 10**9, "active")]
    assert world.http.get(f"/v1/batches/{batch}")["active"] == 10**9
    # Taking one serial out of the middle splits the block in three pieces, not 10^9 rows.
    world.submit("kh-water", "credits.transfer", {
        "account": "KH-WATER-1", "batch": batch,
        "range": {"start": 500_000_000, "end": 500_000_000}, "to_account": "JP-BUYER-1"})
    assert world.blocks("KH-WATER-1") == [(batch, 1, 499_999_999, "active"),
                                         (batch, 500_000_001, 800_000_000, "active")]
    assert world.blocks("JP-BUYER-1") == [(batch, 500_000_000, 500_000_000, "active")]
    story = world.http.get(f"/v1/serials/{batch}-500000000")
    assert story["now"]["account"] == "JP-BUYER-1"



def test_a_rejected_or_withdrawn_report_frees_its_period_and_never_issues(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    submit_report(world, "KH004-MR1", 1200)
    reject = {"report_id": "KH004-MR1", "statement_sha256": "c" * 64,
              "reason": "monitored electricity data for March are missing"}
    withdraw = {"report_id": "KH004-MR1", "reason": "submitted with last year's sheet"}
    with world.unchanged():
        # Only its third-party entity rejects a report; only its participants withdraw one.
        for party in ("kh-water", ADMIN):
            world.refuse(party, "report.reject", reject, status=403, code="forbidden")
        for party in ("lrqa", "jp-buyer", ADMIN):
            world.refuse(party, "report.withdraw", withdraw, status=403, code="forbidden")
        world.refuse("lrqa", "report.reject", {**reject, "report_id": "KH004-MR9"},
                     status=404, code="not_found")
    rejected = world.submit("lrqa", "report.reject", reject)
    assert rejected["result"] == {"report_id": "KH004-MR1", "status": "rejected"}
    report = world.http.get("/v1/reports/KH004-MR1")
    assert (report["status"], report["verifier"], report["statement_sha256"]) == (
        "rejected", "lrqa", "c" * 64)
    with world.unchanged():
        # A rejected report is closed: nothing verifies, withdraws or issues it.
        for party, kind, body in (
            ("lrqa", "report.verify", {"report_id": "KH004-MR1", "verified_reductions": 1,
                                       "statement_sha256": "e" * 64}),
            ("lrqa", "report.reject", reject),
            ("kh-water", "report.withdraw", withdraw),
            (ADMIN, "credits.issue", issue_body("KH004-MR1", ("KH-WATER-1", 1))),
        ):
            error = world.refuse(party, kind, body, status=409, code="invalid_state")
            assert "rejected" in error["message"]
    # Its period is free again: a corrected report, which a co-participant may withdraw...
    submit_report(world, "KH004-MR2", 1200)
    withdrawn = world.submit("kh-gov", "report.withdraw", {**withdraw, "report_id": "KH004-MR2"})
    assert withdrawn["result"] == {"report_id": "KH004-MR2", "status": "withdrawn"}
    assert world.http.get("/v1/reports/KH004-MR2")["status"] == "withdrawn"
    # ...and one that is verified and issued. A verified report can no longer be withdrawn.
    batch = issue_jcm(world, "KH004-MR3", 1000)
    world.refuse("kh-water", "report.withdraw", {**withdraw, "report_id": "KH004-MR3"},
                 status=409, code="invalid_state")
    assert world.active("KH-WATER-1") == 800 and batch.endswith("-00001")
    check_offline(registry, tmp_path)


def test_a_report_ending_on_the_first_day_of_another_is_refused(world: World) -> None:
    """A later year reported first: an earlier report may run up to the day before it, and not
    onto its first day, which both would then credit."""
    submit_report(world, "KH004-MR2", 500, period=("2025-01-01", "2025-12-31"))
    body = {"report_id": "KH004-MR1", "project_id": "KH004", "period_start": "2024-01-01",
            "period_end": "2025-01-01", "reductions": 1000, "document_sha256": sha("KH004-MR1")}
    with world.unchanged():
        error = world.refuse("kh-water", "report.submit", body, status=409, code="conflict")
        assert error["details"] == {"report": "KH004-MR2"}
        assert "2025-01-01..2025-12-31" in error["message"]
    submit_report(world, "KH004-MR1", 1000, period=("2024-01-01", "2024-12-31"))
    assert world.http.get("/v1/reports", params={"project_id": "KH004"})["count"] == 2


def test_issuance_follows_the_verified_figure_not_the_claimed_one(world: World) -> None:
    """The verifier cut KH004-MR1's 1200 t to 1150 t and KH005-MR1's 10,000 t to 9,000 t:
    the batches hold what was verified, and the REDD+ deductions are taken from that."""
    submit_report(world, "KH004-MR1", 1200)
    verify_report(world, "KH004-MR1", 1150)
    submit_report(world, "KH005-MR1", 10_000, project="KH005", party="kh-gov", unit=UNIT)
    verify_report(world, "KH005-MR1", 9000)
    # 9000 verified: leakage 900, net 8100, buffer 1620, issuable 6480 (from 10,000: 7200).
    with world.unchanged():
        error = world.refuse(ADMIN, "credits.issue",
                             issue_body("KH004-MR1", ("KH-WATER-1", 1200)),
                             status=422, code="invalid_request")
        assert error["details"] == {"allocated": 1200, "expected": 1150}
        error = world.refuse(ADMIN, "credits.issue",
                             issue_body("KH005-MR1", ("KH-GOV-1", 7200)),
                             status=422, code="invalid_request")
        assert error["details"] == {"allocated": 7200, "expected": 6480}
    jcm = world.submit(ADMIN, "credits.issue", issue_body("KH004-MR1", ("KH-WATER-1", 1150)))
    assert jcm["result"]["quantity"] == 1150
    redd = world.submit(ADMIN, "credits.issue", issue_body("KH005-MR1", ("KH-GOV-1", 6480)))
    assert redd["result"]["redd"] == {"gross": 9000, "leakage": 900, "net": 8100,
                                      "buffer": 1620, "buffer_account": BUFFER}
    assert world.active("KH-WATER-1") == 1150 and world.active("KH-GOV-1") == 6480
    assert world.http.get(f"/v1/forest-units/{UNIT}")["buffer_pool"] == 1620
