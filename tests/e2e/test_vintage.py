"""A batch's vintage is a year of the monitoring period it was issued from."""

from __future__ import annotations

from tests.world import ADMIN, World, submit_report, verify_report


def test_vintage_outside_the_report_period_is_refused(world: World) -> None:
    submit_report(world, "KH004-MR9", 100, period=("2024-06-01", "2025-05-31"))
    verify_report(world, "KH004-MR9", 100)
    body = {
        "report_id": "KH004-MR9",
        "allocations": [{"account": "KH-WATER-1", "quantity": 100}],
    }
    for vintage in (2023, 2026):
        error = world.refuse(
            ADMIN, "credits.issue", {**body, "vintage": vintage}, status=422, code="invalid_request"
        )
        assert "outside the report's period" in error["message"]
    result = world.submit(ADMIN, "credits.issue", {**body, "vintage": 2025})
    assert result["result"]["batch"] == "KH-JCM-KH004-2025-00001"
