"""The same tonnes are never credited twice through overlapping reports or areas."""

from __future__ import annotations

import json

from tests.world import ADMIN, World, issue_jcm

ELSEWHERE = {
    "type": "Polygon",
    "coordinates": [[[104.0, 12.0], [104.1, 12.0], [104.1, 12.1], [104.0, 12.1], [104.0, 12.0]]],
}


def test_a_project_that_reported_project_wide_cannot_gain_a_forest_unit(world: World) -> None:
    issue_jcm(world, "KH004-MR1", 1000, period=("2024-01-01", "2024-12-31"))
    error = world.refuse(
        ADMIN,
        "forest_unit.register",
        {
            "unit_id": "KH004-FU1",
            "project_id": "KH004",
            "name": "A unit added after project-wide reporting",
            "boundary": json.dumps(ELSEWHERE),
            "jurisdiction": "Kampong Speu",
            "reference_level": 10000,
            "leakage_rate_bp": 0,
            "buffer_rate_bp": 0,
        },
        status=409,
        code="conflict",
    )
    assert "project-wide report KH004-MR1" in error["message"]
