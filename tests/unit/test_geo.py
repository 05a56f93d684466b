"""The geo grid: cells and sub-cells, the cover that never misses, the exact near: index."""

from __future__ import annotations

import itertools
import math
import random

import pytest
from geopy.distance import geodesic
from hypothesis import example, given, settings
from hypothesis import strategies as st

from msd.errors import MsdError
from msd.geo import (
    COLS,
    PREFIX_BUDGET,
    ROWS,
    Cell,
    Circle,
    GeoError,
    GeoIndex,
    InvalidCellKeyError,
    InvalidCoordinateError,
    InvalidRadiusError,
    InvalidSubdivisionError,
    SubCell,
    UnknownGeoKeyError,
    cell_key,
    cell_of,
    cells_within,
    distance_km,
    parse_cell_key,
    parse_subcell_key,
    prefixes_within,
    subcell_key,
    subcell_of,
)

GAINESVILLE = (29.6, -82.3)
_WGS84 = geodesic(ellipsoid="WGS-84")


def _destination(lat: float, lon: float, bearing: float, km: float) -> tuple[float, float]:
    point = _WGS84.destination((lat, lon), bearing, distance=km)
    return point.latitude, point.longitude


def _points(n: int, seed: int) -> list[tuple[float, float]]:
    """A seeded mix that stresses the grid: uniform, clusters, poles, antimeridian, edges, rims."""
    rnd = random.Random(seed)
    out: list[tuple[float, float]] = []

    def uniform() -> tuple[float, float]:
        return math.degrees(math.asin(rnd.uniform(-1, 1))), rnd.uniform(-180, 180)

    def clamp(lat: float, lon: float) -> tuple[float, float]:
        lon = (lon + 180.0) % 360.0 - 180.0
        return max(-90.0, min(90.0, lat)), lon

    share = n // 10
    out += [uniform() for _ in range(3 * share)]
    for sigma in (0.01, 0.2, 1.0):  # clusters around Gainesville, tight to loose
        out += [
            clamp(rnd.gauss(GAINESVILLE[0], sigma), rnd.gauss(GAINESVILLE[1], sigma))
            for _ in range(share // 2)
        ]
    out += [
        (rnd.uniform(88, 90) * rnd.choice((1, -1)), rnd.uniform(-180, 180)) for _ in range(share)
    ]
    out += [(s * 90.0, rnd.uniform(-180, 180)) for s in (1, -1) for _ in range(20)]  # the poles
    out += [
        (rnd.uniform(-60, 60), rnd.choice((1, -1)) * rnd.uniform(179, 180)) for _ in range(share)
    ]
    out += [(rnd.uniform(-60, 60), rnd.choice((180.0, -180.0))) for _ in range(50)]
    out += [(rnd.randint(-90, 90), rnd.randint(-180, 180)) for _ in range(share // 2)]  # cell edges
    # Rims: a hair inside and outside the radii the tests ask for, around their centres.
    for (lat, lon), km in (
        (GAINESVILLE, 50.0),
        (GAINESVILLE, 1.0),
        ((89.9, 10.0), 50.0),
        ((0.5, 179.95), 50.0),
        ((-10.0, -179.95), 50.0),
    ):
        for _ in range(share // 5):
            rim = km + rnd.choice((-1, 1)) * rnd.uniform(1e-9, 1e-3)
            out.append(_destination(lat, lon, rnd.uniform(0, 360), rim))
    while len(out) < n:
        out.append(uniform())
    return out[:n]


@pytest.fixture(scope="module")
def world() -> tuple[list[tuple[float, float]], GeoIndex[int]]:
    points = _points(10_000, seed=20100807)
    index: GeoIndex[int] = GeoIndex()
    for key, (lat, lon) in enumerate(points):
        index.add(key, lat, lon)
    return points, index


# Each centre's brute-force distances are computed once and shared by its radii.
_BRUTE: dict[tuple[float, float], list[float]] = {}


def _brute(points: list[tuple[float, float]], lat: float, lon: float) -> list[float]:
    if (lat, lon) not in _BRUTE:
        _BRUTE[(lat, lon)] = [geodesic((lat, lon), p).km for p in points]
    return _BRUTE[(lat, lon)]


@pytest.mark.parametrize(
    ("lat", "lon", "km"),
    [
        (*GAINESVILLE, 50.0),  # the acceptance check
        (*GAINESVILLE, 1.0),
        (*GAINESVILLE, 500.0),
        (*GAINESVILLE, 5_000.0),
        (89.9, 10.0, 50.0),
        (89.9, 10.0, 500.0),
        (0.5, 179.95, 50.0),
        (0.5, 179.95, 300.0),
        (-10.0, -179.95, 50.0),
        (-10.0, -179.95, 300.0),
    ],
)
def test_near_is_exactly_the_brute_force_set(
    world: tuple[list[tuple[float, float]], GeoIndex[int]], lat: float, lon: float, km: float
) -> None:
    points, index = world
    distances = _brute(points, lat, lon)
    expected = {key for key, d in enumerate(distances) if d <= km}
    found = index.near(lat, lon, km)
    assert {key for key, _ in found} == expected
    assert expected  # the point mix puts something inside every circle asked about
    assert all(d == distances[key] for key, d in found)
    assert [d for _, d in found] == sorted(d for _, d in found)


def test_every_radius_reaches_everything_beyond_the_longest_geodesic() -> None:
    points = _points(800, seed=7)
    index: GeoIndex[int] = GeoIndex()
    for key, (lat, lon) in enumerate(points):
        index.add(key, lat, lon)
    assert len(index.near(-89.99, 123.0, 20_004.0)) == len(points)
    centre = (12.0, -45.0)
    far = [geodesic(centre, p).km for p in points]
    assert {k for k, _ in index.near(*centre, 15_000.0)} == {
        k for k, d in enumerate(far) if d <= 15_000.0
    }


def test_a_point_at_the_radius_in_any_direction_is_in_the_cover() -> None:
    rnd = random.Random(1)
    for _ in range(1_500):
        lat = rnd.choice((rnd.uniform(-90, 90), rnd.uniform(85, 90), rnd.uniform(-90, -85)))
        lon = rnd.choice((rnd.uniform(-180, 180), rnd.uniform(179, 180), rnd.uniform(-180, -179)))
        km = rnd.choice((0.5, 10.0, 111.0, 1_000.0, rnd.uniform(0, 3_000)))
        cover = cells_within(lat, lon, km)
        assert cell_of(*_destination(lat, lon, rnd.uniform(0, 360), km)) in cover


def test_cell_edges() -> None:
    assert cell_of(-90, -180) == Cell(0, 0)
    assert cell_of(90, 0) == Cell(179, 180)  # the north pole joins the top row
    assert cell_of(89.999, 179.999) == Cell(179, 359)
    assert cell_of(0, 180) == cell_of(0, -180) == Cell(90, 0)  # one meridian, one column
    assert cell_of(0, 0) == Cell(90, 180)
    assert cell_of(-1e-9, -1e-9) == Cell(89, 179)
    assert cell_of(*GAINESVILLE) == Cell(119, 97)
    assert cell_key(*GAINESVILLE) == "119,97"
    assert parse_cell_key("119,97") == Cell(119, 97)


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(90.0001, 0), (-91, 0), (0, 180.5), (0, -181), (math.nan, 0), (0, math.inf), (True, 0)],
)
def test_bad_coordinates_are_refused_by_name(lat: float, lon: float) -> None:
    with pytest.raises(InvalidCoordinateError, match=r"latitude|longitude") as caught:
        cell_of(lat, lon)
    assert isinstance(caught.value, MsdError)
    with pytest.raises(InvalidCoordinateError):
        GeoIndex[str]().add("x", lat, lon)
    with pytest.raises(InvalidCoordinateError):
        cells_within(lat, lon, 1.0)


@pytest.mark.parametrize("key", ["", "119", "119,97,1", "180,0", "0,360", "-1,5", " 1,2", "a,b"])
def test_bad_cell_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidCellKeyError):
        parse_cell_key(key)


def test_subcells_of_a_binary_tree_are_about_3_5_km() -> None:
    sub = subcell_of(*GAINESVILLE)
    assert sub == SubCell(119, 97, "30132", 2)
    assert sub.key == "119,97/30132"
    south, west, north, east = sub.bounds()
    assert south <= GAINESVILLE[0] < north and west <= GAINESVILLE[1] < east
    assert north - south == east - west == 1 / 32
    assert 3.4 < distance_km(south, west, north, west) < 3.5  # the dissertation's "about 3.5 km"
    assert parse_subcell_key(sub.key) == sub
    # An ancestor's key is a prefix of every descendant's: a LIKE 'prefix%' range scan.
    assert subcell_key(*GAINESVILLE, depth=5).startswith(subcell_key(*GAINESVILLE, depth=3))
    assert subcell_key(*GAINESVILLE, depth=0) == "119,97/"


def test_subcells_at_the_edges_and_for_other_k() -> None:
    assert subcell_of(90, 0).path == "22222"  # north-west corner of the top row: NW, NW, ...
    assert subcell_of(0, 180) == subcell_of(0, -180)
    assert subcell_of(0, 180).path == "00000"
    rnd = random.Random(3)
    for _ in range(500):
        lat, lon = rnd.uniform(-90, 90), rnd.uniform(-180, 180)
        sub = subcell_of(lat, lon, k=3, depth=4)
        assert set(sub.path) <= set("012345678") and len(sub.path) == 4
        south, west, north, east = sub.bounds()
        assert south <= lat <= north and west <= lon <= east
        assert sub.cell == cell_of(lat, lon)


@pytest.mark.parametrize(("k", "depth"), [(1, 5), (7, 1), (2, -1), (2, 41), (True, 3)])
def test_bad_subdivisions_are_refused(k: int, depth: int) -> None:
    with pytest.raises(InvalidSubdivisionError):
        subcell_of(0, 0, k=k, depth=depth)


@pytest.mark.parametrize("key", ["119,97", "119,97/4", "119,97/0x", "200,1/0"])
def test_bad_subcell_keys_are_refused(key: str) -> None:
    with pytest.raises(InvalidCellKeyError):
        parse_subcell_key(key)


def test_the_cover_wraps_reaches_poles_and_is_bounded() -> None:
    wrap = cells_within(0.5, 179.95, 50)
    assert Cell(90, 359) in wrap and Cell(90, 0) in wrap and Cell(90, 1) not in wrap
    assert len(wrap) == 2 and not wrap.everything
    assert set(cells_within(-10, -179.95, 50)) == {Cell(r, c) for r in (79, 80) for c in (0, 359)}
    polar = cells_within(89.9, 10, 50)
    assert len(polar) == COLS and {c.row for c in polar} == {179}
    assert list(cells_within(*GAINESVILLE, 0).keys()) == ["119,97"]
    everything = cells_within(0, 0, 20_004)
    assert everything.everything and len(everything) == ROWS * COLS
    assert len(cells_within(0, 0, 1e12)) == ROWS * COLS


@pytest.mark.parametrize("km", [-1.0, math.nan, math.inf, True])
def test_bad_radii_are_refused(km: float) -> None:
    with pytest.raises(InvalidRadiusError):
        GeoIndex[str]().near(0, 0, km)


def test_add_move_remove() -> None:
    index: GeoIndex[str] = GeoIndex()
    index.add("a", *GAINESVILLE)
    index.add("b", 29.65, -82.35)
    index.add("c", -33.9, 151.2)
    assert [k for k, _ in index.near(*GAINESVILLE, 10)] == ["a", "b"]
    index.add("a", 40.7, -74.0)  # re-adding moves the point
    assert [k for k, _ in index.near(*GAINESVILLE, 10)] == ["b"]
    index.remove("b")
    assert index.near(*GAINESVILLE, 10) == [] and len(index) == 2 and "b" not in index
    with pytest.raises(UnknownGeoKeyError):
        index.remove("b")
    index.remove("a")
    index.remove("c")
    assert repr(index) == "GeoIndex(points=0, cells=0)"


def test_distance_is_geopys_geodesic() -> None:
    rnd = random.Random(5)
    for _ in range(100):
        a = (rnd.uniform(-90, 90), rnd.uniform(-180, 180))
        b = (rnd.uniform(-90, 90), rnd.uniform(-180, 180))
        assert distance_km(*a, *b) == geodesic(a, b, ellipsoid="WGS-84").km
    with pytest.raises(InvalidCoordinateError):
        distance_km(91, 0, 0, 0)


# --- the circle's sub-cell prefixes ------------------------------------------------------------

# Database off: property tests must leave no .hypothesis directory behind.
PROPERTY = settings(max_examples=400, database=None, deadline=None)
# Centres anywhere, and many where the grid is awkward: poles, the antimeridian, cell edges.
LATITUDES = st.one_of(st.floats(-90, 90), st.floats(85, 90), st.floats(-90, -85),
                      st.sampled_from([90.0, -90.0, 0.0, 29.6]), st.integers(-90, 90))
LONGITUDES = st.one_of(st.floats(-180, 180), st.floats(179, 180), st.floats(-180, -179),
                       st.sampled_from([180.0, -180.0, 0.0, -82.3]), st.integers(-180, 180))
RADII = st.one_of(st.floats(0, 5), st.floats(0, 300), st.floats(0, 5_000),
                  st.sampled_from([0.0, 1.0, 50.0, 111.0, 20_003.0]))


def _disjoint(prefixes: tuple[str, ...]) -> bool:
    # Sorted: anything between a prefix and a key it starts shares that prefix too.
    return all(not b.startswith(a) for a, b in itertools.pairwise(prefixes))


@PROPERTY
@given(lat=LATITUDES, lon=LONGITUDES, km=RADII, bearing=st.floats(0, 360),
       fraction=st.one_of(st.floats(0, 1), st.just(1.0)), tree=st.sampled_from([(2, 5), (3, 3)]))
# Found by hypothesis: lon + 180 rounds to 360.0, so the point is at column 0's west edge.
@example(lat=0.0, lon=179.99999999999997, km=0.0, bearing=0.0, fraction=1.0, tree=(2, 5))
def test_the_prefixes_never_miss_a_point_of_the_circle(
    lat: float, lon: float, km: float, bearing: float, fraction: float, tree: tuple[int, int]
) -> None:
    k, depth = tree
    prefixes = prefixes_within(lat, lon, km, k=k, depth=depth)
    point = _destination(lat, lon, bearing, km * fraction)
    if prefixes is None:
        assert km >= 20_003.0
        return
    key = subcell_key(*point, k=k, depth=depth)
    assert any(key.startswith(prefix) for prefix in prefixes), (key, prefixes)
    assert 1 <= len(prefixes) <= PREFIX_BUDGET
    assert list(prefixes) == sorted(set(prefixes)) and _disjoint(prefixes)


def test_the_prefixes_narrow_the_cells_to_the_circle() -> None:
    gnv = prefixes_within(*GAINESVILLE, 50)
    assert gnv is not None and 100 < len(gnv) <= PREFIX_BUDGET
    assert {p.split("/")[0] for p in gnv} <= set(cells_within(*GAINESVILLE, 50).keys())
    # Sub-cells cover about the circle: π·50² ≈ 7 850 km² against 4 cells of ≈ 10 700 km².
    area = sum(distance_km(s, w, n, w) * distance_km(s, w, s, e)
               for s, w, n, e in (parse_subcell_key(p).bounds() for p in gnv))
    assert 7_850 < area < 9_000
    assert prefixes_within(*GAINESVILLE, 0) == (subcell_key(*GAINESVILLE),)
    # A pole in reach: every longitude is, so whole rows, one range each.
    assert prefixes_within(89.9, 10, 50) == ("179,",)
    assert prefixes_within(-90, 0, 200) == ("0,", "1,")
    # Across ±180°, both sides; a cover too large for the budget falls back to its rows.
    wrap = prefixes_within(0.5, 179.95, 50)
    assert wrap is not None and {p.split("/")[0] for p in wrap} == {"90,0", "90,359"}
    wide = prefixes_within(*GAINESVILLE, 5_000)
    assert wide is not None and all(p.endswith(",") for p in wide) and len(wide) == 91
    assert prefixes_within(0, 0, 20_004) is None
    # The cover's corner cell (30..31°N, 82..81°W) is 52.8 km away at least: left out.
    assert prefixes_within(*GAINESVILLE, 50, budget=4) == ("119,97/", "119,98/", "120,97/")
    assert prefixes_within(*GAINESVILLE, 50, budget=2) == ("119,", "120,")
    with pytest.raises(GeoError, match="budget"):
        prefixes_within(0, 0, 1, budget=0)


def test_the_circle_keeps_exactly_the_geodesic_distance_within() -> None:
    circle = Circle(*GAINESVILLE, 50)
    assert repr(circle) == "Circle(lat=29.6, lon=-82.3, km=50.0)"
    rnd = random.Random(11)
    for _ in range(300):
        point = _destination(*GAINESVILLE, rnd.uniform(0, 360), rnd.uniform(45, 55))
        exact = distance_km(*GAINESVILLE, *point)
        assert circle.distance(*point) == (exact if exact <= 50 else None)
    assert circle.distance(*GAINESVILLE) == 0.0
    assert Circle(0, 0, 0).distance(0, 0) == 0.0
    assert Circle(0, 0, 20_004).distance(0, 180) is not None  # the antipode
    with pytest.raises(InvalidRadiusError):
        Circle(0, 0, -1)
    with pytest.raises(InvalidCoordinateError):
        circle.distance(91, 0)
