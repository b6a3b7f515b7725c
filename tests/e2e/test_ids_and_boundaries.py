"""Ids that could never issue or never fit, and boundaries that break the JSON parser, are 4xx."""

from __future__ import annotations

import json
from typing import Any

from tests.world import ADMIN, World

PROJECT: dict[str, Any] = {
    "title": "Illustrative project",
    "partner_country": "KH",
    "methodology": "KH_AM001",
    "sector": "Energy efficiency", "programme": "JCM",
    "participants": ["kh-water"],
    "third_party_entity": "lrqa",
    "crediting_period_start": "2024-01-01",
    "crediting_period_end": "2030-12-31",
}
UNIT: dict[str, Any] = {
    "project_id": "KH005",
    "name": "Illustrative unit",
    "jurisdiction": "Stung Treng",
    "reference_level": 1000,
    "leakage_rate_bp": 0,
    "buffer_rate_bp": 0,
}
SQUARE = {
    "type": "Polygon",
    "coordinates": [[[104.0, 12.0], [104.1, 12.0], [104.1, 12.1], [104.0, 12.1], [104.0, 12.0]]],
}


def test_a_project_id_outside_the_serial_alphabet_is_refused(world: World) -> None:
    for bad in ("KH-007", "KH_007", "kh007"):
        error = world.refuse(ADMIN, "project.register", {**PROJECT, "project_id": bad},
                             status=422, code="invalid_request")
        assert "project_id" in error["message"]


def test_a_unit_id_too_long_for_its_buffer_account_is_refused(world: World) -> None:
    world.refuse(ADMIN, "forest_unit.register",
                 {**UNIT, "unit_id": "U" * 29, "boundary": json.dumps(SQUARE)},
                 status=422, code="invalid_request")
    result = world.submit(ADMIN, "forest_unit.register",
                          {**UNIT, "unit_id": "U" * 28, "boundary": json.dumps(SQUARE)})
    assert result["result"]["buffer_account"] == "BUF-" + "U" * 28


def test_boundaries_that_break_the_json_parser_are_invalid_geometry(world: World) -> None:
    huge_number = '{"type":"Polygon","coordinates":[[[1' + "0" * 5000 + ",1]]]}"
    deep = "[" * 100_000
    for text in (huge_number, deep):
        world.refuse(ADMIN, "forest_unit.register", {**UNIT, "unit_id": "KH005-FU9",
                                                     "boundary": text},
                     status=422, code="invalid_geometry")


def test_a_boundary_laid_out_over_several_lines_is_taken(world: World) -> None:
    """A boundary is JSON text, and JSON may be laid out with line breaks, tabs and carriage
    returns between its tokens, as GIS tools write it: that is the same polygon as its compact
    form, not public text holding a control character."""
    corners = [(104.0, 12.0), (104.1, 12.0), (104.1, 12.1), (104.0, 12.1), (104.0, 12.0)]

    def square(east: float) -> dict[str, Any]:
        return {"type": "Polygon", "coordinates": [[[x + east, y] for x, y in corners]]}

    for unit_id, east, indent in (("KH005-FU7", 0.0, 2), ("KH005-FU8", 0.5, "\t")):
        text = json.dumps(square(east), indent=indent).replace("\n", "\r\n")
        result = world.submit(ADMIN, "forest_unit.register",
                              {**UNIT, "unit_id": unit_id, "boundary": text})
        assert result["result"]["buffer_account"] == f"BUF-{unit_id}"
    # The layout is all it may hold: a text-direction mark in it is still refused.
    error = world.refuse(ADMIN, "forest_unit.register",
                         {**UNIT, "unit_id": "KH005-FU9",
                          "boundary": json.dumps(square(1.0)).replace("{", "{\u202e", 1)},
                         status=422, code="invalid_request")
    assert "U+202E" in error["message"]
