"""REDD+ forest boundaries: parsing GeoJSON, measuring area on the ellipsoid, finding overlaps.

A forest unit's boundary decides how many hectares it claims and whether it claims forest another
unit already claims (double counting). Both answers must not depend on a map projection, so areas
are geodesic on the WGS84 ellipsoid (pyproj ``Geod``), while shapely does the planar topology
(validity, intersection) in lon/lat degrees. Edges are straight lines in lon/lat (RFC 7946
3.1.1) for both: pyproj measures an edge as a geodesic, so edges are first cut into pieces of at
most 0.01 degree (about 1 km, where the two lines part by millimetres), and the hectares of units
that only touch add up to those of their union.

Input is strict on purpose: a boundary is evidence in a registry, and a silently "repaired" shape is
not the shape the proponent submitted. Accepted: a bare GeoJSON geometry object (RFC 7946) of type
``Polygon`` or ``MultiPolygon`` in WGS84 lon/lat. A ``Feature`` is refused with a hint to send its
``geometry``, so properties never ride along unnoticed; members other than ``type``,
``coordinates`` and ``bbox`` (ignored) are refused, ``crs`` explicitly, since RFC 7946 coordinates
are always WGS84. A boundary may not cross the antimeridian (longitude extent above 180 degrees).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from pyproj import Geod
from shapely import STRtree, from_geojson, linestrings, segmentize
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.polygon import orient
from shapely.validation import explain_validity

from registry.errors import InvalidGeometryError, InvalidRequestError, OverlapError

__all__ = [
    "MAX_POSITIONS",
    "SQUARE_METRES_PER_HECTARE",
    "Boundary",
    "check_no_overlap",
    "find_overlap",
    "overlap_hectares",
    "parse_boundary",
    "parse_boundary_text",
    "stored_boundary",
]

SQUARE_METRES_PER_HECTARE: Final = 10_000
#: Most positions one boundary may have, over all rings: keeps one request from pinning the CPU.
MAX_POSITIONS: Final = 100_000

_GEOD: Final = Geod(ellps="WGS84")
_MAX_EDGE_DEGREES: Final = 0.01
"""Longest piece of an edge measured as one geodesic (about 1 km)."""
_MAX_MEASURED_POSITIONS: Final = 1_000_000
"""Bound on the positions measured: a boundary with edges thousands of kilometres long gets
longer pieces instead of billions of them."""
_TYPES: Final = ("Polygon", "MultiPolygon")
_ALLOWED_MEMBERS: Final = frozenset({"type", "coordinates", "bbox"})


def _polygons(geometry: Any) -> list[Any]:
    """The polygons of a geometry; lines and points (e.g. where two units touch) have no area."""
    if isinstance(geometry, Polygon):
        return [] if geometry.is_empty else [geometry]
    if hasattr(geometry, "geoms"):
        return [p for part in geometry.geoms for p in _polygons(part)]
    return []


def _geodesic_area_m2(geometry: Any, *, cut: bool = True) -> float:
    """Area in square metres on the WGS84 ellipsoid of the polygonal parts of ``geometry``.

    Each polygon is oriented (exterior counter-clockwise, holes clockwise) before measuring, since
    pyproj's area is signed by orientation and subtracts holes only when they run the other way.
    Without ``cut``, each edge is measured whole, as a geodesic (the measure of ledgers written
    before edges were cut: :func:`edge_by_edge_hectares`).
    """
    polygons = _polygons(geometry)
    degrees = sum(p.exterior.length + sum(h.length for h in p.interiors) for p in polygons)
    piece = max(_MAX_EDGE_DEGREES, degrees / _MAX_MEASURED_POSITIONS)
    total = 0.0
    for polygon in polygons:
        oriented = orient(polygon, sign=1.0)
        dense = segmentize(oriented, max_segment_length=piece) if cut else oriented
        area, _perimeter = _GEOD.geometry_area_perimeter(dense)
        total += abs(float(area))
    return total


def edge_by_edge_hectares(boundary: Boundary) -> int:
    """``boundary``'s area as the registry measured it before edges were cut: each edge a
    geodesic. A unit registered then records this figure in its signed ledger entry (for
    edges under 0.01 degree, the two are the same)."""
    return round(_geodesic_area_m2(boundary.geometry, cut=False) / SQUARE_METRES_PER_HECTARE)


def _oriented(geometry: Any) -> Any:
    """The RFC 7946 orientation: exteriors counter-clockwise, holes clockwise."""
    if isinstance(geometry, MultiPolygon):
        return MultiPolygon([orient(p, sign=1.0) for p in geometry.geoms])
    return orient(geometry, sign=1.0)


@dataclass(frozen=True, slots=True)
class Boundary:
    """A valid forest boundary: a shapely Polygon or MultiPolygon in WGS84 lon/lat degrees.

    Construction checks the invariants (polygonal, 2-D, non-empty, valid, within lon/lat range, not
    across the antimeridian) and normalises orientation; build one with :func:`parse_boundary`.
    ``area_hectares`` is the geodesic area rounded to the nearest whole hectare (ties to even), an
    integer because the ledger carries integers only; ``area_m2`` keeps the unrounded figure.
    """

    geometry: Polygon | MultiPolygon
    area_m2: float = field(init=False)

    def __post_init__(self) -> None:
        geometry = self.geometry
        if not isinstance(geometry, Polygon | MultiPolygon):
            raise InvalidGeometryError(
                f"boundary must be a Polygon or MultiPolygon, got {type(geometry).__name__}"
            )
        if geometry.is_empty:
            raise InvalidGeometryError("boundary is empty")
        if geometry.has_z:
            raise InvalidGeometryError("boundary must be 2-D lon/lat; drop altitudes first")
        if not geometry.is_valid:
            raise InvalidGeometryError(
                f"boundary is not a valid polygon: {explain_validity(geometry)}",
                details={"reason": str(explain_validity(geometry))},
            )
        min_lon, min_lat, max_lon, max_lat = (float(v) for v in geometry.bounds)
        if min_lon < -180 or max_lon > 180 or min_lat < -90 or max_lat > 90:
            raise InvalidGeometryError(
                f"boundary lies outside lon [-180, 180] / lat [-90, 90]: bounds "
                f"({min_lon}, {min_lat}, {max_lon}, {max_lat})"
            )
        if max_lon - min_lon > 180:
            raise InvalidGeometryError(
                f"boundary spans {max_lon - min_lon} degrees of longitude; boundaries across "
                "the antimeridian are not supported"
            )
        oriented = _oriented(geometry)
        area = _geodesic_area_m2(oriented)
        if not area > 0:
            raise InvalidGeometryError(f"boundary has no area (got {area} m2)")
        object.__setattr__(self, "geometry", oriented)
        object.__setattr__(self, "area_m2", area)

    @property
    def area_hectares(self) -> int:
        """Geodesic area in whole hectares (rounded to nearest, ties to even)."""
        return round(self.area_m2 / SQUARE_METRES_PER_HECTARE)

    def to_geojson(self) -> dict[str, Any]:
        """The normalised GeoJSON geometry: same type, float [lon, lat] pairs, RFC 7946 winding.

        Coordinates are floats, so this is for the API and the state tables; it cannot go into a
        ledger payload as-is (canonical JSON there allows integers only).
        """
        if isinstance(self.geometry, Polygon):
            return {"type": "Polygon", "coordinates": _polygon_coordinates(self.geometry)}
        return {
            "type": "MultiPolygon",
            "coordinates": [_polygon_coordinates(p) for p in self.geometry.geoms],
        }


def _ring_coordinates(ring: Any) -> list[list[float]]:
    return [[float(x), float(y)] for x, y in ring.coords]


def _polygon_coordinates(polygon: Any) -> list[list[list[float]]]:
    return [_ring_coordinates(polygon.exterior)] + [
        _ring_coordinates(hole) for hole in polygon.interiors
    ]


# --- parsing ----------------------------------------------------------------------------------


class _Counter:
    """Counts positions across a whole geometry so that MAX_POSITIONS is enforced while parsing."""

    def __init__(self) -> None:
        self.positions = 0


def _short(value: object) -> str:
    """``repr`` cut to a readable length: messages name the bad value without echoing megabytes."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _is_array(value: object) -> bool:
    return isinstance(value, list | tuple)


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidGeometryError(
            f"{where} must be a number, got {type(value).__name__} {_short(value)}"
        )
    try:
        number = float(value)
    except OverflowError as e:  # an int too large for a float
        raise InvalidGeometryError(f"{where} is out of range, got {_short(value)}") from e
    if not math.isfinite(number):
        raise InvalidGeometryError(f"{where} must be finite, got {_short(value)}")
    return number


def _position(value: object, where: str) -> tuple[float, float]:
    if not _is_array(value):
        raise InvalidGeometryError(
            f"{where} must be a [lon, lat] array, got {type(value).__name__} {_short(value)}"
        )
    assert isinstance(value, list | tuple)
    if len(value) not in (2, 3):
        raise InvalidGeometryError(
            f"{where} must have 2 numbers (lon, lat) or 3 (with altitude), got {len(value)}"
        )
    lon = _number(value[0], f"{where}[0] (longitude)")
    lat = _number(value[1], f"{where}[1] (latitude)")
    if len(value) == 3:
        _number(value[2], f"{where}[2] (altitude)")  # checked, then dropped: areas are 2-D
    if not -180 <= lon <= 180:
        raise InvalidGeometryError(f"{where}: longitude must be in [-180, 180], got {lon}")
    if not -90 <= lat <= 90:
        raise InvalidGeometryError(f"{where}: latitude must be in [-90, 90], got {lat}")
    return lon, lat


def _ring(value: object, where: str, counter: _Counter) -> list[tuple[float, float]]:
    if not _is_array(value):
        raise InvalidGeometryError(f"{where} must be an array of positions, got {_short(value)}")
    assert isinstance(value, list | tuple)
    counter.positions += len(value)
    if counter.positions > MAX_POSITIONS:
        raise InvalidGeometryError(f"boundary has more than {MAX_POSITIONS} positions")
    positions = [_position(p, f"{where}[{i}]") for i, p in enumerate(value)]
    if len(positions) < 4:
        raise InvalidGeometryError(
            f"{where} is a linear ring and needs at least 4 positions, got {len(positions)}"
        )
    # Closed means identical positions (RFC 7946 3.1.6), altitude included.
    first, last = ([float(n) for n in value[i]] for i in (0, -1))
    if first != last:
        raise InvalidGeometryError(
            f"{where} is not closed: first position {first} differs from last {last}"
        )
    return positions


def _polygon(value: object, where: str, counter: _Counter) -> Any:
    if not _is_array(value):
        raise InvalidGeometryError(f"{where} must be an array of rings, got {_short(value)}")
    assert isinstance(value, list | tuple)
    if not value:
        raise InvalidGeometryError(f"{where} has no rings; a polygon needs an exterior ring")
    rings = [_ring(r, f"{where}[{i}]", counter) for i, r in enumerate(value)]
    return Polygon(rings[0], rings[1:])


def parse_boundary(geojson: Mapping[str, Any]) -> Boundary:
    """Turn a GeoJSON Polygon/MultiPolygon geometry object into a checked :class:`Boundary`.

    Raises InvalidGeometryError saying what is wrong and where (e.g. ``coordinates[0][3][1]``).
    Altitudes, if present, are checked to be numbers and dropped; ``bbox`` is ignored.
    """
    if not isinstance(geojson, Mapping):
        raise InvalidGeometryError(
            f"boundary must be a GeoJSON geometry object, got {type(geojson).__name__}"
        )
    kind = geojson.get("type")
    if kind in ("Feature", "FeatureCollection"):
        raise InvalidGeometryError(
            f"boundary must be a bare GeoJSON geometry, got a {kind}; send its 'geometry' member"
        )
    if kind not in _TYPES:
        raise InvalidGeometryError(
            f"boundary type must be Polygon or MultiPolygon, got {_short(kind)}"
        )
    if "crs" in geojson:
        raise InvalidGeometryError(
            "boundary must not carry 'crs': GeoJSON coordinates are WGS84 lon/lat (RFC 7946)"
        )
    unknown = sorted(str(k) for k in geojson if k not in _ALLOWED_MEMBERS)
    if unknown:
        raise InvalidGeometryError(
            f"boundary has unexpected members {unknown}; allowed: type, coordinates, bbox"
        )
    if "coordinates" not in geojson:
        raise InvalidGeometryError("boundary has no 'coordinates'")
    coordinates = geojson["coordinates"]
    counter = _Counter()
    geometry: Any
    if kind == "Polygon":
        geometry = _polygon(coordinates, "coordinates", counter)
    else:
        if not _is_array(coordinates) or not coordinates:
            raise InvalidGeometryError(
                f"MultiPolygon coordinates must be a non-empty array of polygons, "
                f"got {_short(coordinates)}"
            )
        geometry = MultiPolygon(
            [_polygon(p, f"coordinates[{i}]", counter) for i, p in enumerate(coordinates)]
        )
    return Boundary(geometry)


# --- overlaps ---------------------------------------------------------------------------------


def _without_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object; one naming a member twice is refused, since tools differ on which of
    the two they keep, and the evidence would then describe two shapes."""
    members = dict(pairs)
    if len(members) != len(pairs):
        twice = sorted(name for name, count in Counter(k for k, _ in pairs).items() if count > 1)
        raise InvalidGeometryError(f"boundary JSON names a member twice: {_short(twice)}")
    return members


def parse_boundary_text(text: str) -> Boundary:
    """A boundary as instructions carry it: JSON text holding a GeoJSON geometry object.

    Instructions carry the boundary as text so that the signed bytes hold no floats (the
    ledger's canonical JSON is integers only); the registry and the auditor parse it here.
    """
    try:
        geojson = json.loads(text, object_pairs_hook=_without_duplicate_members)
    except json.JSONDecodeError as e:
        raise InvalidGeometryError(f"boundary is not JSON: {e.msg} at position {e.pos}") from e
    except (ValueError, RecursionError) as e:
        # Numbers too long to convert, or nesting deeper than the parser goes.
        raise InvalidGeometryError(f"boundary is not usable JSON: {str(e)[:200]}") from e
    if not isinstance(geojson, dict):
        raise InvalidGeometryError("boundary must be a GeoJSON geometry object")
    return parse_boundary(geojson)


def stored_boundary(text: str) -> Boundary:
    """A boundary the registry stored itself (the JSON of :meth:`Boundary.to_geojson` of one it
    checked), read again with GEOS's own GeoJSON reader.

    The same shape and area as :func:`parse_boundary_text` gives for that text, about three
    times faster for a large unit: the position-by-position checks that untrusted input needs
    are skipped, which matters because a new unit's neighbours are read under the ledger's lock.
    :class:`Boundary` still checks the invariants and measures the area.
    """
    return Boundary(from_geojson(text))


def _tolerance(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequestError(f"tolerance_ha must be a number, got {_short(value)}")
    if not math.isfinite(value) or value < 0:
        raise InvalidRequestError(f"tolerance_ha must be finite and >= 0, got {_short(value)}")
    return float(value)


#: Most crossings between two boundaries' edges per edge: neighbours digitised apart along a
#: shared edge cross a few times per edge; boundaries crossing each other far more often (two
#: combs across each other) would make an intersection of millions of pieces to measure.
MAX_CROSSINGS_PER_EDGE: Final = 8


def _edges(geometry: Any) -> Any:
    """Every edge of ``geometry``'s rings, as an array of two-position LineStrings."""
    rings = [r for p in _polygons(geometry) for r in (p.exterior, *p.interiors)]
    coords = [np.asarray(r.coords)[:, :2] for r in rings]
    return np.concatenate([linestrings(np.stack([c[:-1], c[1:]], axis=1)) for c in coords])


class _EdgeIndex:
    """A boundary's edges, indexed once for every neighbour it is checked against."""

    def __init__(self, boundary: Boundary) -> None:
        self.edges = _edges(boundary.geometry)
        self.tree = STRtree(self.edges)

    def entangled_with(self, other: Boundary) -> bool:
        """Whether these edges and ``other``'s cross more than :data:`MAX_CROSSINGS_PER_EDGE`
        times per edge: counted in chunks, so that counting stops (and memory stays small)
        once they do."""
        theirs = _edges(other.geometry)
        limit = MAX_CROSSINGS_PER_EDGE * (len(self.edges) + len(theirs))
        count = 0
        for start in range(0, len(theirs), 256):
            count += self.tree.query(theirs[start : start + 256], predicate="intersects").shape[1]
            if count > limit:
                return True
        return False


def overlap_hectares(a: Boundary, b: Boundary) -> float:
    """Geodesic area, in hectares, that both boundaries cover (0.0 if they only touch)."""
    if not a.geometry.intersects(b.geometry):
        return 0.0
    return _geodesic_area_m2(a.geometry.intersection(b.geometry)) / SQUARE_METRES_PER_HECTARE


#: The largest share of the smaller unit a tolerated sliver may cover: the tolerance in
#: hectares is for digitising noise along a shared edge, and must not let a small unit lie
#: wholly (or mostly) inside another, crediting the same forest twice.
SLIVER_SHARE = 0.01


def find_overlap(
    new: Boundary, existing: Iterable[tuple[str, Boundary]], *, tolerance_ha: float = 1.0
) -> tuple[str, float] | None:
    """The first ``(unit_id, hectares)`` in ``existing`` that ``new`` overlaps by more than a
    sliver, or None.

    Boundaries that only touch, or overlap by a sliver (digitising noise along a shared edge:
    no more than ``tolerance_ha``, nor than :data:`SLIVER_SHARE` of the smaller unit), pass.
    When re-checking an existing unit's own boundary, leave that unit out of ``existing``.
    Raises OverlapError, without measuring, for a unit whose edges cross ``new``'s more than
    :data:`MAX_CROSSINGS_PER_EDGE` times per edge (an overlap of too many pieces to measure).
    """
    found = _first_overlap(new, existing, _tolerance(tolerance_ha))
    return None if found is None else found[:2]


def _boxes_meet(a: Boundary, b: Boundary) -> bool:
    """Whether the bounding boxes of ``a`` and ``b`` meet (only then can their edges cross)."""
    aw, as_, ae, an = a.geometry.bounds
    bw, bs, be, bn = b.geometry.bounds
    return bool(aw <= be and bw <= ae and as_ <= bn and bs <= an)


def _first_overlap(
    new: Boundary, existing: Iterable[tuple[str, Boundary]], tolerance: float
) -> tuple[str, float, float] | None:
    """:func:`find_overlap`, with the sliver that was tolerated against that unit."""
    index: _EdgeIndex | None = None  # made for the first neighbour whose box meets new's
    for unit_id, other in existing:
        if _boxes_meet(new, other) and (index := index or _EdgeIndex(new)).entangled_with(other):
            raise OverlapError(
                f"boundary crosses the boundary of forest unit {unit_id} more than "
                f"{MAX_CROSSINGS_PER_EDGE} times per edge: the two overlap in too many pieces "
                "to be neighbours along a shared edge",
                details={"unit_id": unit_id},
            )
        hectares = overlap_hectares(new, other)
        smaller = min(new.area_m2, other.area_m2) / SQUARE_METRES_PER_HECTARE
        allowed = min(tolerance, SLIVER_SHARE * smaller)
        if hectares > allowed:
            return unit_id, hectares, allowed
    return None


def check_no_overlap(
    new: Boundary, existing: Iterable[tuple[str, Boundary]], *, tolerance_ha: float = 1.0
) -> None:
    """Raise OverlapError naming the first unit ``new`` overlaps by more than a sliver."""
    found = _first_overlap(new, existing, _tolerance(tolerance_ha))
    if found is None:
        return
    unit_id, hectares, allowed = found
    raise OverlapError(
        f"boundary overlaps forest unit {unit_id} by {hectares:.2f} ha (a sliver of up to "
        f"{tolerance_ha} ha and {SLIVER_SHARE:.0%} of the smaller unit is tolerated: here "
        f"{allowed:.4g} ha)",
        details={
            "unit_id": unit_id,
            "overlap_hectares": round(hectares, 4),
            "tolerance_hectares": round(allowed, 4),
        },
    )
