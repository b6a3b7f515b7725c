"""Forest boundaries: strict GeoJSON parsing, geodesic area, overlap detection."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from pyproj import Geod
from shapely.geometry import LineString, Point, Polygon

from registry.domain.forest import (
    MAX_POSITIONS,
    Boundary,
    check_no_overlap,
    find_overlap,
    overlap_hectares,
    parse_boundary,
    parse_boundary_text,
    stored_boundary,
)
from registry.errors import (
    ConflictError,
    InvalidGeometryError,
    InvalidRequestError,
    OverlapError,
)

GEOD = Geod(ellps="WGS84")
LON0, LAT0 = 105.9, 13.5  # Cambodia, near Kampong Thom


def offset(lon: float, lat: float, *, east_m: float = 0.0, north_m: float = 0.0) -> list[float]:
    """The point ``east_m`` east and ``north_m`` north of (lon, lat), on the ellipsoid."""
    if east_m:
        lon, lat, _ = GEOD.fwd(lon, lat, 90.0, east_m)
    if north_m:
        lon, lat, _ = GEOD.fwd(lon, lat, 0.0, north_m)
    return [lon, lat]


def square(
    *, east_m: float = 0.0, north_m: float = 0.0, width_m: float = 1000.0, height_m: float = 1000.0
) -> list[list[float]]:
    """A closed counter-clockwise ring, the south-west corner offset from (LON0, LAT0)."""
    sw = offset(LON0, LAT0, east_m=east_m, north_m=north_m)
    se = offset(sw[0], sw[1], east_m=width_m)
    ne = [se[0], offset(se[0], se[1], north_m=height_m)[1]]
    nw = [sw[0], ne[1]]
    return [sw, se, ne, nw, sw]


def polygon(*rings: list[Any]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


KM_SQUARE = polygon(square())


# --- area -------------------------------------------------------------------------------------


def test_the_hectares_of_units_that_only_touch_add_up_to_those_of_their_union() -> None:
    """Two units sharing part of the parallel 13.6 N, with edges 50 to 160 km long: no overlap
    either way. pyproj measured each edge as a geodesic, which bulges north of the parallel,
    and 1,201 ha were counted in both units."""
    south = parse_boundary(polygon([[104.5, 13.0], [106.0, 13.0], [106.0, 13.6], [104.5, 13.6],
                                    [104.5, 13.0]]))
    north = parse_boundary(polygon([[105.0, 13.6], [105.5, 13.6], [105.5, 14.0], [105.0, 14.0],
                                    [105.0, 13.6]]))
    union = parse_boundary(polygon([[104.5, 13.0], [106.0, 13.0], [106.0, 13.6], [105.5, 13.6],
                                    [105.5, 14.0], [105.0, 14.0], [105.0, 13.6], [104.5, 13.6],
                                    [104.5, 13.0]]))
    assert overlap_hectares(south, north) == 0.0
    assert abs(south.area_hectares + north.area_hectares - union.area_hectares) <= 1


def test_a_boundary_of_edges_thousands_of_kilometres_long_is_measured_in_bounded_work() -> None:
    """Edges are cut into pieces of 0.01 degree, but never into more than a million in all."""
    zigzag = [[-85.0 + 0.0018 * i, 80.0 if i % 2 else -80.0] for i in range(90_000)]
    ring = [*zigzag, [zigzag[-1][0], -85.0], [-85.0, -85.0], zigzag[0]]
    boundary = parse_boundary(polygon(ring))
    assert boundary.area_hectares > 0


def test_one_km_square_is_about_100_hectares() -> None:
    b = parse_boundary(KM_SQUARE)
    assert b.area_hectares == 100
    assert isinstance(b.area_hectares, int)
    assert b.area_m2 == pytest.approx(1_000_000, rel=0.01)


def test_winding_order_does_not_change_area_and_is_normalised() -> None:
    clockwise = polygon(list(reversed(square())))
    b = parse_boundary(clockwise)
    assert b.area_m2 == pytest.approx(parse_boundary(KM_SQUARE).area_m2)
    ring = b.to_geojson()["coordinates"][0]
    assert Polygon(ring).exterior.is_ccw


def test_hole_is_subtracted_and_multipolygon_sums() -> None:
    hole = square(east_m=250, north_m=250, width_m=500, height_m=500)
    with_hole = parse_boundary(polygon(square(), hole))
    assert with_hole.area_hectares == 75
    geojson = with_hole.to_geojson()
    assert not Polygon(geojson["coordinates"][1]).exterior.is_ccw  # RFC 7946: holes clockwise

    multi = parse_boundary(
        {"type": "MultiPolygon", "coordinates": [[square()], [square(east_m=5000)]]}
    )
    assert multi.area_hectares == 200
    assert multi.to_geojson()["type"] == "MultiPolygon"


def test_integers_and_altitude_accepted() -> None:
    b = parse_boundary(
        {
            "type": "Polygon",
            "coordinates": [[[105, 13, 7], [106, 13, 7], [106, 14, 7], [105, 13, 7]]],
        }
    )
    assert b.to_geojson()["coordinates"][0][0] == [105.0, 13.0]
    assert b.area_hectares > 0


def test_bbox_is_ignored() -> None:
    b = parse_boundary({**KM_SQUARE, "bbox": [0, 0, 1, 1]})
    assert "bbox" not in b.to_geojson()


def test_to_geojson_round_trips() -> None:
    b = parse_boundary(polygon(list(reversed(square()))))
    again = parse_boundary(b.to_geojson())
    assert again == b
    assert again.to_geojson() == b.to_geojson()
    assert again.area_m2 == b.area_m2


def test_a_stored_boundary_reads_back_as_the_shape_and_area_the_registry_checked() -> None:
    # A new unit's neighbours are read back from the registry's own tables with the faster
    # reader: it must give the overlap check the very shape and area the careful parser gives,
    # or the registry and the auditor's replay (which parses) could disagree at the margin.
    hole = square(east_m=250, north_m=250, width_m=500, height_m=500)
    ragged = [
        offset(LON0, LAT0, east_m=5000 + 997.3 * math.cos(a / 7), north_m=1003.1 * math.sin(a / 7))
        for a in range(44)
    ]
    for geojson in (
        polygon(list(reversed(square())), hole),
        {"type": "MultiPolygon", "coordinates": [[square()], [[*ragged, ragged[0]]]]},
    ):
        checked = parse_boundary(geojson)
        text = json.dumps(checked.to_geojson(), separators=(",", ":"))
        stored = stored_boundary(text)
        assert stored.geometry.equals_exact(checked.geometry, tolerance=0)
        assert stored.area_m2 == parse_boundary_text(text).area_m2 == checked.area_m2
        assert stored.to_geojson() == checked.to_geojson()


# --- refusals ---------------------------------------------------------------------------------


def test_bow_tie_rejected_with_reason() -> None:
    bow_tie = polygon([[105.0, 13.0], [105.1, 13.1], [105.1, 13.0], [105.0, 13.1], [105.0, 13.0]])
    with pytest.raises(InvalidGeometryError, match="not a valid polygon: Self-intersection") as e:
        parse_boundary(bow_tie)
    assert "Self-intersection" in e.value.details["reason"]
    assert e.value.code == "invalid_geometry" and e.value.http_status == 422


RING = [[105.0, 13.0], [105.1, 13.0], [105.1, 13.1], [105.0, 13.0]]


@pytest.mark.parametrize(
    ("geojson", "match"),
    [
        (polygon([*RING[:-1], [105.0, 13.1]]), r"coordinates\[0\] is not closed"),
        (polygon(RING[:3]), "at least 4 positions, got 3"),
        ({"type": "Point", "coordinates": [105.0, 13.0]}, "Polygon or MultiPolygon, got 'Point'"),
        ({"type": "LineString", "coordinates": RING}, "got 'LineString'"),
        ({"type": "polygon", "coordinates": [RING]}, "got 'polygon'"),
        ({"coordinates": [RING]}, "got None"),
        ({"type": "Feature", "geometry": polygon(RING), "properties": {}}, "send its 'geometry'"),
        ({"type": "FeatureCollection", "features": []}, "bare GeoJSON geometry"),
        ({"type": "GeometryCollection", "geometries": []}, "got 'GeometryCollection'"),
        (polygon([[105.0, 13.0], [105.1, 91.0], [105.1, 13.1], [105.0, 13.0]]), "latitude .* 91"),
        (polygon([[105.0, -90.5], [105.1, 0], [105.1, 1], [105.0, -90.5]]), "latitude"),
        (polygon([[181.0, 13.0], [105.1, 13.0], [105.1, 13.1], [181.0, 13.0]]), "longitude .* 181"),
        (polygon([["105.0", 13.0], [105.1, 13.0], [105.1, 13.1], ["105.0", 13.0]]), "got str"),
        (polygon([[105.0, "13"], [105.1, 13.0], [105.1, 13.1], [105.0, "13"]]), r"\(latitude"),
        (polygon([[True, 13.0], [105.1, 13.0], [105.1, 13.1], [True, 13.0]]), "got bool"),
        (polygon([[math.nan, 13.0], [105.1, 13.0], [105.1, 13.1], [105.0, 13.0]]), "finite"),
        (polygon([[math.inf, 13.0], [105.1, 13.0], [105.1, 13.1], [105.0, 13.0]]), "finite"),
        (polygon([[10**400, 13.0], [105.1, 13.0], [105.1, 13.1], [105.0, 13.0]]), "out of range"),
        (polygon([[105.0], [105.1, 13.0], [105.1, 13.1], [105.0]]), "2 numbers"),
        (polygon([[105.0, 13.0, 1, 2], [105.1, 13.0], [105.1, 13.1], [105.0, 13.0]]), "got 4"),
        (polygon(["105.0,13.0", [105.1, 13.0], [105.1, 13.1], "105.0,13.0"]), "lon, lat] array"),
        ({"type": "Polygon", "coordinates": "[[...]]"}, "array of rings"),
        ({"type": "Polygon", "coordinates": []}, "no rings"),
        ({"type": "Polygon", "coordinates": [[]]}, "at least 4 positions, got 0"),
        ({"type": "Polygon"}, "no 'coordinates'"),
        ({"type": "MultiPolygon", "coordinates": []}, "non-empty array of polygons"),
        (
            {"type": "MultiPolygon", "coordinates": [RING]},
            r"coordinates\[0\]\[0\]\[0\] must be a \[lon, lat\] array, got float",
        ),
        ({**polygon(RING), "crs": {"type": "name"}}, "must not carry 'crs'"),
        ({**polygon(RING), "properties": {}}, r"unexpected members \['properties'\]"),
        (polygon([[0, 0], [1, 0], [2, 0], [0, 0]]), "not a valid polygon"),
        (polygon([[0, 0], [0, 0], [0, 0], [0, 0]]), "not a valid polygon: Too few points"),
        (
            {
                "type": "MultiPolygon",
                "coordinates": [[square()], [square(east_m=500)]],
            },
            "not a valid polygon",
        ),
        (polygon([[-170, 0], [170, 0], [170, 1], [-170, 0]]), "antimeridian"),
    ],
)
def test_bad_boundaries_rejected(geojson: Any, match: str) -> None:
    with pytest.raises(InvalidGeometryError, match=match):
        parse_boundary(geojson)


def test_non_mapping_rejected() -> None:
    with pytest.raises(InvalidGeometryError, match="got list"):
        parse_boundary([RING])  # type: ignore[arg-type]
    with pytest.raises(InvalidGeometryError, match="got str"):
        parse_boundary('{"type": "Polygon"}')  # type: ignore[arg-type]


def test_too_many_positions_rejected() -> None:
    ring = [[105.0 + i * 1e-6, 13.0] for i in range(MAX_POSITIONS)] + [[105.0, 13.1], [105.0, 13.0]]
    with pytest.raises(InvalidGeometryError, match=f"more than {MAX_POSITIONS}"):
        parse_boundary(polygon(ring))


def test_boundary_constructor_checks_invariants() -> None:
    with pytest.raises(InvalidGeometryError, match="got Point"):
        Boundary(Point(105, 13))
    with pytest.raises(InvalidGeometryError, match="got LineString"):
        Boundary(LineString([(105, 13), (106, 13)]))
    with pytest.raises(InvalidGeometryError, match="empty"):
        Boundary(Polygon())
    with pytest.raises(InvalidGeometryError, match="Self-intersection"):
        Boundary(Polygon([(0, 0), (1, 1), (1, 0), (0, 1)]))
    with pytest.raises(InvalidGeometryError, match="outside lon"):
        Boundary(Polygon([(0, 0), (200, 0), (200, 1)]))
    with pytest.raises(InvalidGeometryError, match="2-D"):
        Boundary(Polygon([(0, 0, 1), (1, 0, 1), (1, 1, 1)]))


# --- overlap ----------------------------------------------------------------------------------


A = parse_boundary(KM_SQUARE)
FAR = parse_boundary(polygon(square(east_m=10_000)))
TOUCHING = parse_boundary(polygon(square(east_m=1000)))  # shares A's east edge
HALF = parse_boundary(polygon(square(east_m=500)))  # covers A's east half: ~50 ha


def test_overlap_detected_and_named() -> None:
    found = find_overlap(HALF, [("KH-REDD-FAR", FAR), ("KH-REDD-A", A)])
    assert found is not None
    unit_id, hectares = found
    assert unit_id == "KH-REDD-A"
    assert hectares == pytest.approx(50, rel=0.01)
    assert overlap_hectares(A, HALF) == pytest.approx(hectares)

    with pytest.raises(OverlapError, match=r"overlaps forest unit KH-REDD-A by 5\d\.\d\d ha") as e:
        check_no_overlap(HALF, [("KH-REDD-FAR", FAR), ("KH-REDD-A", A)])
    assert e.value.details["unit_id"] == "KH-REDD-A"
    assert e.value.details["overlap_hectares"] == pytest.approx(50, rel=0.01)
    assert e.value.code == "boundary_overlap" and e.value.http_status == 409
    assert isinstance(e.value, ConflictError)


def test_first_offending_unit_is_reported() -> None:
    found = find_overlap(HALF, [("first", A), ("second", A)])
    assert found is not None and found[0] == "first"


def test_touching_only_is_accepted() -> None:
    assert TOUCHING.geometry.touches(A.geometry)
    assert find_overlap(TOUCHING, [("A", A)]) is None
    assert overlap_hectares(TOUCHING, A) == 0.0
    check_no_overlap(TOUCHING, [("A", A), ("FAR", FAR)])


def test_sliver_below_tolerance_is_accepted() -> None:
    sliver = parse_boundary(polygon(square(east_m=995)))  # 5 m x 1 km = 0.5 ha
    hectares = overlap_hectares(sliver, A)
    assert hectares == pytest.approx(0.5, rel=0.05)
    assert find_overlap(sliver, [("A", A)]) is None
    check_no_overlap(sliver, [("A", A)])
    assert find_overlap(sliver, [("A", A)], tolerance_ha=0.1) == ("A", hectares)
    assert find_overlap(sliver, [("A", A)], tolerance_ha=0) == ("A", hectares)


def test_containment_and_identity_overlap() -> None:
    inner = parse_boundary(polygon(square(east_m=100, north_m=100, width_m=500, height_m=500)))
    found = find_overlap(inner, [("A", A)])
    assert found is not None and found[1] == pytest.approx(inner.area_m2 / 10_000)
    found = find_overlap(A, [("A", A)])
    assert found is not None and found[1] == pytest.approx(A.area_m2 / 10_000)


def test_no_existing_units() -> None:
    assert find_overlap(A, []) is None
    check_no_overlap(A, iter([]))


@pytest.mark.parametrize("tolerance", [-1, math.nan, math.inf, True, "1"])
def test_tolerance_validated(tolerance: object) -> None:
    with pytest.raises(InvalidRequestError, match="tolerance_ha"):
        find_overlap(A, [("A", A)], tolerance_ha=tolerance)  # type: ignore[arg-type]


def test_a_small_unit_inside_another_is_no_sliver() -> None:
    """The tolerance is for digitising noise along a shared edge: a unit smaller than it,
    drawn wholly inside another, would credit the same forest twice."""
    small = parse_boundary(polygon(square(east_m=100, north_m=100, width_m=60, height_m=60)))
    assert small.area_m2 < 10_000  # 0.36 ha: less than the 1 ha tolerance
    found = find_overlap(small, [("A", A)])
    assert found is not None and found[1] == pytest.approx(small.area_m2 / 10_000)
    with pytest.raises(OverlapError, match="1% of the smaller unit") as e:
        check_no_overlap(small, [("A", A)])
    assert e.value.details["tolerance_hectares"] == pytest.approx(0.0036, rel=0.01)
    # The same little square astride A's edge, mostly outside: still more than a sliver of it.
    astride = parse_boundary(polygon(square(east_m=990, north_m=100, width_m=60, height_m=60)))
    assert find_overlap(astride, [("A", A)]) is not None


def test_a_ring_whose_last_position_differs_in_altitude_is_not_closed() -> None:
    # RFC 7946 3.1.6: the first and last positions of a ring contain identical values.
    ring = [[105.8, 13.6, 0], [105.9, 13.6, 0], [105.9, 13.7, 0], [105.8, 13.6, 250]]
    with pytest.raises(InvalidGeometryError, match="not closed"):
        parse_boundary(polygon(ring))


def test_a_boundary_naming_its_coordinates_twice_is_refused() -> None:
    """Python's json keeps the last of two members, other readers the first (or refuse): the
    signed evidence would describe two shapes, and the registry must not pick one."""
    text = ('{"type":"Polygon","coordinates":[[[105.8,13.6],[105.9,13.6],[105.9,13.7],'
            '[105.8,13.6]]],"coordinates":[[[105.8,13.6],[106.8,13.6],[106.8,14.6],'
            '[105.8,13.6]]]}')
    with pytest.raises(InvalidGeometryError, match="names a member twice"):
        parse_boundary_text(text)
