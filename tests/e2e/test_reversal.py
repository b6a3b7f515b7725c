"""REDD+ reversals over HTTP: lost carbon cancels buffer credits; a shortfall is recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlmodel import col

from registry.service.context import Registry
from registry.store.db import write_transaction
from registry.store.tables import ForestUnitRow
from tests.load import check_offline
from tests.world import ADMIN, BUFFER, UNIT, World, issue_redd, submit_report, verify_report

BATCH_2024 = "KH-REDD-KH005-2024-00001"
BATCH_2025 = "KH-REDD-KH005-2025-00001"


def reversal(lost: int, unit: str = UNIT) -> dict[str, Any]:
    return {"unit_id": unit, "lost": lost, "document_sha256": "f" * 64,
            "reason": "illegal logging in the north-east corner (illustrative)"}


def test_reversal_cancels_buffer_then_records_the_shortfall(world: World) -> None:
    # gross 10000: leakage 1000, net 9000, buffer 1800 (serials 7201-9000), issuable 7200.
    issue_redd(world, gross=10_000, issuable=7200)
    assert world.http.get(f"/v1/forest-units/{UNIT}")["buffer_pool"] == 1800
    first = world.submit(ADMIN, "redd.reversal", reversal(500))
    assert first["result"] == {"unit_id": UNIT, "lost": 500, "pool_before": 1800,
                               "cancelled": 500, "shortfall": 0,
                               "blocks": [{"batch": BATCH_2024, "start": 7201, "end": 7700}]}
    assert world.blocks(BUFFER) == [(BATCH_2024, 7701, 9000, "active")]
    # More carbon lost than the pool holds: the pool is emptied, the rest is a shortfall.
    second = world.submit(ADMIN, "redd.reversal", reversal(2000))
    assert second["result"] == {"unit_id": UNIT, "lost": 2000, "pool_before": 1300,
                                "cancelled": 1300, "shortfall": 700,
                                "blocks": [{"batch": BATCH_2024, "start": 7701, "end": 9000}]}
    unit = world.http.get(f"/v1/forest-units/{UNIT}")
    assert (unit["buffer_pool"], unit["shortfall"]) == (0, 700)
    assert world.blocks(BUFFER) == []
    reversals = world.http.get("/v1/reversals")
    assert reversals["count"] == 2
    assert [(r["seq"], r["lost"], r["cancelled"], r["shortfall"]) for r in reversals["data"]] == [
        (first["seq"], 500, 500, 0), (second["seq"], 2000, 1300, 700)]
    # With the pool empty, all of a further loss is shortfall; the unit adds it up.
    third = world.submit(ADMIN, "redd.reversal", reversal(40))
    assert (third["result"]["cancelled"], third["result"]["shortfall"]) == (0, 40)
    assert world.http.get(f"/v1/forest-units/{UNIT}")["shortfall"] == 740
    # The proponent's credits are untouched; the cancelled buffer shows on the batch.
    assert world.active("KH-GOV-1") == 7200
    batch = world.http.get(f"/v1/batches/{BATCH_2024}")
    assert (batch["active"], batch["cancelled"]) == (7200, 1800)
    story = world.http.get(f"/v1/serials/{BATCH_2024}-7701")
    assert (story["now"]["account"], story["now"]["status"]) == ("CANCELLATION", "cancelled")
    assert [(e["kind"], e["to_account"]) for e in story["history"]] == [
        ("credits.issue", BUFFER), ("redd.reversal", "CANCELLATION")]


def test_buffer_pool_guards_and_reversal_across_batches(world: World) -> None:
    issue_redd(world, gross=1000, issuable=720)  # buffer: serials 721-900
    with world.unchanged():
        world.refuse("kh-gov", "redd.reversal", reversal(10), status=403, code="forbidden")
        world.refuse("lrqa", "redd.reversal", reversal(10), status=403, code="forbidden")
        world.refuse(ADMIN, "redd.reversal", reversal(10, unit="KH005-FU9"),
                     status=404, code="not_found")
        world.refuse(ADMIN, "redd.reversal", reversal(0), status=422, code="invalid_request")
        # Buffer credits insure against reversals: they are not the administrator's to hand
        # out or to retire for someone's claim.
        move = {"account": BUFFER, "batch": BATCH_2024, "quantity": 10}
        world.refuse(ADMIN, "credits.transfer", {**move, "to_account": "KH-GOV-1"},
                     status=422, code="invalid_request")
        world.refuse(ADMIN, "credits.retire", {
            **move, "beneficiary": "anyone", "purpose": "voluntary", "jurisdiction": "KH",
            "reason": "buffer release"}, status=422, code="invalid_request")
        world.refuse("kh-gov", "credits.cancel", {**move, "reason": "not theirs"},
                     status=403, code="forbidden")
    assert world.http.get(f"/v1/forest-units/{UNIT}")["buffer_pool"] == 180
    # With a second batch in the pool, a reversal takes the oldest vintage's serials first.
    issue_redd(world, gross=1000, issuable=720, report_id="KH005-MR2",
               period=("2025-01-01", "2025-12-31"))
    assert world.http.get(f"/v1/forest-units/{UNIT}")["buffer_pool"] == 360
    answer = world.submit(ADMIN, "redd.reversal", reversal(200))
    assert answer["result"]["blocks"] == [
        {"batch": BATCH_2024, "start": 721, "end": 900},
        {"batch": BATCH_2025, "start": 721, "end": 740}]
    assert world.blocks(BUFFER) == [(BATCH_2025, 741, 900, "active")]


def test_a_buffer_share_is_issued_when_nothing_is_left_for_the_proponents(
    world: World,
) -> None:
    """Gross 2 t for KH005-FU1: leakage 1 t, net 1 t, all of it the buffer's (rounded up). The
    proponents get nothing, and the pool still gets its tonne: an issuance without allocations."""
    submit_report(world, "KH005-MR9", 2, project="KH005", party="kh-gov", unit=UNIT)
    verify_report(world, "KH005-MR9", 2)
    with world.unchanged():
        world.refuse(ADMIN, "credits.issue", {"report_id": "KH005-MR9", "vintage": 2024,
                                              "allocations": [{"account": "KH-GOV-1",
                                                               "quantity": 1}]},
                     status=422, code="invalid_request")
    issued = world.submit(ADMIN, "credits.issue", {"report_id": "KH005-MR9", "vintage": 2024,
                                                   "allocations": []})
    assert issued["result"]["quantity"] == 1
    assert issued["result"]["blocks"] == [{"account": BUFFER, "start": 1, "end": 1}]
    assert world.http.get(f"/v1/forest-units/{UNIT}")["buffer_pool"] == 1


def test_a_buffer_pool_never_grows_past_what_a_reversal_can_state(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    """A reversal writes the pool it drew on into its entry, and ledger integers stop at
    2^53 - 1: an issuance that would take a pool past that is refused, where it used to be
    accepted and leave every later reversal of the unit refused for good."""
    top = 2**53 - 1
    far = {"type": "Polygon", "coordinates": [
        [[106.8, 13.6], [106.9, 13.6], [106.9, 13.7], [106.8, 13.7], [106.8, 13.6]]]}
    world.submit(ADMIN, "forest_unit.register", {
        "unit_id": "KH005-FU2", "project_id": "KH005", "name": "all to the buffer",
        "boundary": json.dumps(far), "jurisdiction": "Stung Treng", "reference_level": top,
        "leakage_rate_bp": 0, "buffer_rate_bp": 10_000,
    })
    for report_id, year, tonnes in (("KH005-B1", 2022, top), ("KH005-B2", 2023, 1)):
        submit_report(world, report_id, tonnes, period=(f"{year}-01-01", f"{year}-12-31"),
                      project="KH005", party="kh-gov", unit="KH005-FU2")
        verify_report(world, report_id, tonnes)
    world.submit(ADMIN, "credits.issue", {"report_id": "KH005-B1", "vintage": 2022,
                                          "allocations": []})
    assert world.http.get("/v1/forest-units/KH005-FU2")["buffer_pool"] == top
    one_more = {"report_id": "KH005-B2", "vintage": 2023, "allocations": []}
    with world.unchanged():
        error = world.refuse(ADMIN, "credits.issue", one_more, status=422,
                             code="invalid_quantity")
        assert error["details"] == {"pool": top, "buffer": 1, "max": top}
    answer = world.submit(ADMIN, "redd.reversal", reversal(10, unit="KH005-FU2"))
    assert (answer["result"]["pool_before"], answer["result"]["cancelled"]) == (top, 10)
    world.submit(ADMIN, "credits.issue", one_more)  # now there is room
    assert world.http.get("/v1/forest-units/KH005-FU2")["buffer_pool"] == top - 9
    check_offline(registry, tmp_path)


def test_the_administrator_may_cancel_buffer_credits(
    world: World, registry: Registry, tmp_path: Path
) -> None:
    """Buffer credits leave the pool only by cancellation: a reversal, or the administrator
    holding the pool cancelling them itself (say, after a loss found in the field)."""
    issue_redd(world, gross=1000, issuable=720)  # buffer: serials 721-900
    answer = world.submit(ADMIN, "credits.cancel", {
        "account": BUFFER, "batch": BATCH_2024, "quantity": 100,
        "reason": "fire damage confirmed by the field survey (illustrative)"})
    assert answer["result"] == {"batch": BATCH_2024, "from": BUFFER, "quantity": 100,
                                "blocks": [{"start": 721, "end": 820}]}
    assert world.blocks(BUFFER) == [(BATCH_2024, 821, 900, "active")]
    assert world.http.get(f"/v1/forest-units/{UNIT}")["buffer_pool"] == 80
    assert world.blocks("CANCELLATION") == [(BATCH_2024, 721, 820, "cancelled")]
    check_offline(registry, tmp_path)


def test_a_reversal_that_would_take_the_shortfall_past_what_json_carries_is_refused(
    world: World, registry: Registry
) -> None:
    """Each reversal's shortfall stops at 2^53 - 1, but a unit's adds them up: the one that
    would take the total past 2^53 - 1 is a 422, not a failure of the registry, nor a public
    figure a JavaScript client reads as another number."""
    top = 2**53 - 1
    with write_transaction(registry.engine) as session:  # as if after many huge reversals
        session.execute(update(ForestUnitRow).where(col(ForestUnitRow.id) == UNIT)
                        .values(shortfall=top - 99))
    with world.unchanged():
        error = world.refuse(ADMIN, "redd.reversal", reversal(100), status=422,
                             code="invalid_quantity")
    assert error["details"] == {"unit": UNIT, "shortfall": top - 99, "added": 100, "max": top}
    answer = world.submit(ADMIN, "redd.reversal", reversal(99))
    assert (answer["result"]["cancelled"], answer["result"]["shortfall"]) == (0, 99)
    assert world.http.get(f"/v1/forest-units/{UNIT}")["shortfall"] == top
