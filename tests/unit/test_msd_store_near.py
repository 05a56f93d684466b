"""The store's proximity search: candidates by sub-cell key ranges, then exact geopy distance
(on SQLite, and on PostgreSQL when it can run)."""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from geopy.distance import geodesic
from hypothesis import given, settings
from hypothesis import strategies as st

from msd.errors import MsdError
from msd.geo import InvalidCoordinateError, InvalidRadiusError
from msd.query import parse, positive_keywords
from msd.schema import SessionRecord
from msd.store import HeldRecord, MsdStore, NearRecord, StoreError, sqlite_url
from tests.databases import BACKENDS, Database

DOMAIN = "dom01.level0.testdomain.info"
T0 = 1_700_000_000.0
GAINESVILLE = (29.6, -82.3)
_WGS84 = geodesic(ellipsoid="WGS-84")
# The centres of the fixed cases, whose rims the point mix crowds with near misses.
RIMS = [(GAINESVILLE, 50.0), (GAINESVILLE, 1.0), ((89.9, 10.0), 50.0), ((0.5, 179.95), 50.0),
        ((-10.0, -179.95), 300.0), ((-89.95, -120.0), 100.0)]


def _record(number: int, point: tuple[float, float] | None, *,
            keywords: tuple[str, ...] = ("jazz",), scope: str = "global",
            expires_at: float = T0 + 600) -> SessionRecord:
    lat, lon = point if point is not None else (None, None)
    return SessionRecord(
        id=f"s{number}", title=f"Session {number}", keywords=list(keywords),
        group="233.252.0.1", port=5004, scope=scope, lat=lat, lon=lon,
        uri=f"mcast.{DOMAIN}/s{number}", domain=DOMAIN, expires_at=expires_at, updated_at=T0)


def _destination(centre: tuple[float, float], bearing: float, km: float) -> tuple[float, float]:
    point = _WGS84.destination(centre, bearing, distance=km)
    return point.latitude, point.longitude


def _mix(n: int, seed: int) -> list[tuple[float, float]]:
    """Uniform on the globe, plus crowds near the poles, the antimeridian, cell edges and rims."""
    rnd = random.Random(seed)

    def uniform() -> tuple[float, float]:
        return math.degrees(math.asin(rnd.uniform(-1, 1))), rnd.uniform(-180, 180)

    out = [uniform() for _ in range(n // 4)]
    out += [(rnd.choice((1, -1)) * rnd.uniform(85, 90), rnd.uniform(-180, 180))
            for _ in range(n // 8)]
    out += [(s * 90.0, rnd.uniform(-180, 180)) for s in (1, -1) for _ in range(5)]
    out += [(rnd.uniform(-70, 70), rnd.choice((1, -1)) * rnd.uniform(178, 180))
            for _ in range(n // 8)]
    out += [(rnd.uniform(-60, 60), rnd.choice((180.0, -180.0))) for _ in range(10)]
    out += [(rnd.randint(-90, 90), rnd.randint(-180, 180)) for _ in range(n // 20)]
    out += [_destination(GAINESVILLE, rnd.uniform(0, 360), rnd.uniform(0, 150))
            for _ in range(n // 8)]
    for centre, km in RIMS:  # a micrometre to a metre either side of the boundary
        out += [_destination(centre, rnd.uniform(0, 360),
                             km + rnd.choice((-1, 1)) * 10 ** rnd.uniform(-9, -3))
                for _ in range(n // 50)]
    while len(out) < n:
        out.append(uniform())
    return out[:n]


def _brute(points: list[tuple[float, float] | None], centre: tuple[float, float],
           km: float) -> dict[str, float]:
    """The answer by definition: geopy's geodesic to every point, kept if ≤ km."""
    found = {}
    for number, point in enumerate(points):
        if point is not None:
            d = geodesic(centre, point, ellipsoid="WGS-84").km
            if d <= km:
                found[f"mcast.{DOMAIN}/s{number}"] = d
    return found


def _check(found: list[NearRecord], expected: dict[str, float]) -> None:
    assert {near.record.uri: near.distance_km for near in found} == expected
    assert [n.distance_km for n in found] == sorted(n.distance_km for n in found)


class World:
    """One store, filled once per module: global records, their shadows, local sessions."""

    def __init__(self, store: MsdStore, points: list[tuple[float, float] | None]) -> None:
        self.store, self.points = store, points


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=BACKENDS)
async def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    if request.param == "sqlite":
        url = sqlite_url(tmp_path_factory.mktemp("near"), DOMAIN)
    else:
        url = request.getfixturevalue("postgres_server").create_database()
    store = await MsdStore.open(url)
    points: list[tuple[float, float] | None] = list(_mix(1_500, seed=2010))
    points[::15] = [None] * len(points[::15])  # no coordinates: never in a near: answer
    records = [_record(n, p) for n, p in enumerate(points)]
    await store.put_global_many([HeldRecord("jazz", False, r, DOMAIN) for r in records], now=T0)
    # Shadows, other keywords and local sessions, to show that each search keeps to its own.
    await store.put_global_many([HeldRecord("jazz", True, r, DOMAIN) for r in records[::2]],
                                now=T0)
    for record in records[1::50]:
        other = record.model_copy(update={"keywords": ["jazz", "blues"]})
        await store.put_global("blues", other, shadow=False, origin=DOMAIN, now=T0)
        await store.put_local(other.model_copy(update={"keywords": ["blues"]}), now=T0)
    try:
        yield World(store, points)
    finally:
        await store.close()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("centre", "km"), [
    *RIMS, (GAINESVILLE, 500.0), (GAINESVILLE, 5_000.0), ((89.9, 10.0), 2_000.0),
    ((90.0, 0.0), 600.0), ((0.0, 180.0), 150.0), ((12.0, -45.0), 20_004.0), ((45.0, 7.0), 0.0),
])
async def test_near_is_exactly_the_brute_force_set(
    world: World, centre: tuple[float, float], km: float
) -> None:
    expected = _brute(world.points, centre, km)
    found = await world.store.search_global_near("jazz", shadow=False, near=centre,
                                                 within_km=km, now=T0, limit=len(world.points))
    _check(found, expected)
    if (centre, km) in RIMS:
        assert expected  # the mix crowds every rim, so each of these circles holds points


@settings(max_examples=25, database=None, deadline=None)
@given(lat=st.one_of(st.floats(-90, 90), st.floats(84, 90), st.floats(-90, -84),
                     st.sampled_from([90.0, -90.0])),
       lon=st.one_of(st.floats(-180, 180), st.floats(178, 180), st.floats(-180, -178),
                     st.sampled_from([180.0, -180.0, -82.3])),
       km=st.one_of(st.floats(0, 200), st.floats(0, 3_000)),
       shadow=st.booleans())
@pytest.mark.asyncio(loop_scope="module")
async def test_random_circles_match_brute_force(
    world: World, lat: float, lon: float, km: float, shadow: bool
) -> None:
    points = [p if not shadow or n % 2 == 0 else None for n, p in enumerate(world.points)]
    found = await world.store.search_global_near("jazz", shadow=shadow, near=(lat, lon),
                                                 within_km=km, now=T0, limit=len(points))
    _check(found, _brute(points, (lat, lon), km))


@pytest.mark.asyncio(loop_scope="module")
async def test_limit_keeps_the_nearest_and_each_search_keeps_to_its_records(
    world: World
) -> None:
    everything = _brute(world.points, GAINESVILLE, 150.0)
    nearest = sorted(everything, key=lambda uri: (everything[uri], uri))[:7]
    found = await world.store.search_global_near("jazz", shadow=False, near=GAINESVILLE,
                                                 within_km=150, now=T0, limit=7)
    assert [n.record.uri for n in found] == nearest
    blues = await world.store.search_global_near("blues", shadow=False, near=(0.0, 0.0),
                                                 within_km=20_004, now=T0)
    located = [n for n, p in enumerate(world.points) if p is not None]
    assert {n.record.uri for n in blues} == {
        f"mcast.{DOMAIN}/s{n}" for n in range(1, len(world.points), 50) if n in located}
    assert all("blues" in n.record.keywords for n in blues)
    assert await world.store.search_global_near("blues", shadow=True, near=(0.0, 0.0),
                                                within_km=20_004, now=T0) == []
    local = await world.store.search_local_near("blues", near=(0.0, 0.0), within_km=20_004,
                                                now=T0)
    assert {n.record.uri for n in local} == {n.record.uri for n in blues}
    assert await world.store.search_global_near("nothing", shadow=False, near=GAINESVILLE,
                                                within_km=100, now=T0) == []


async def test_the_issues_check_near_gainesville_within_50_km(database: Database) -> None:
    """The issue's check: `near:29.6,-82.3 within:50` returns exactly the sessions within
    50 km, checked against geopy's geodesic distance on 10,000 random points."""
    query = parse("jazz near:29.6,-82.3 within:50")
    assert isinstance(query.near, tuple)
    rnd = random.Random(296823)
    points: list[tuple[float, float] | None] = []
    for _ in range(5_000):  # half within 200 km of the centre: many inside, many just outside
        points.append(_destination(query.near, rnd.uniform(0, 360), rnd.uniform(0, 200)))
        points.append((math.degrees(math.asin(rnd.uniform(-1, 1))), rnd.uniform(-180, 180)))
    store = await MsdStore.open(database.url)
    try:
        (keyword,) = positive_keywords(query)
        await store.put_global_many(
            [HeldRecord(keyword, False, _record(n, p), DOMAIN) for n, p in enumerate(points)],
            now=T0)
        found = await store.search_global_near(keyword, shadow=False, near=query.near,
                                               within_km=query.within_km, now=T0,
                                               limit=len(points))
    finally:
        await store.close()
    distances = [geodesic(query.near, p, ellipsoid="WGS-84").km for p in points if p]
    expected = {f"mcast.{DOMAIN}/s{n}" for n, d in enumerate(distances) if d <= 50}
    assert {near.record.uri for near in found} == expected
    assert len(expected) > 1_000
    assert sum(45 <= d <= 50 for d in distances) > 100 < sum(50 < d <= 55 for d in distances)


async def test_local_near_keeps_scope_expiry_and_coordinates(database: Database) -> None:
    store = await MsdStore.open(database.url)
    try:
        here = _record(1, (29.65, -82.32), scope="local")
        wide = _record(2, (29.7, -82.4))
        far = _record(3, (30.5, -82.3))  # ≈ 100 km north
        nowhere = _record(4, None)
        brief = _record(5, (29.6, -82.3), expires_at=T0 + 60)
        for session in (here, wide, far, nowhere, brief):
            await store.put_local(session, now=T0)
        found = await store.search_local_near("jazz", near=GAINESVILLE, within_km=50, now=T0)
        assert [n.record for n in found] == [brief, here, wide]
        assert found[0].distance_km == 0.0
        assert found[1].distance_km == geodesic(GAINESVILLE, (29.65, -82.32)).km
        later = await store.search_local_near("jazz", near=GAINESVILLE, within_km=50,
                                              now=T0 + 60)
        assert [n.record for n in later] == [here, wide]
        scoped = await store.search_local_near("jazz", near=GAINESVILLE, within_km=50,
                                               now=T0, scope="local")
        assert [n.record for n in scoped] == [here]
        moved = far.model_copy(update={"lat": 29.61})  # an update moves its geo row
        await store.put_local(moved, now=T0)
        again = await store.search_local_near("jazz", near=GAINESVILLE, within_km=50, now=T0)
        assert moved in [n.record for n in again]
    finally:
        await store.close()


async def test_rows_written_with_bare_one_degree_keys_are_still_found(database: Database) -> None:
    """Before sub-cells the geo rows held 'row,col'; such a row stays a candidate."""
    store = await MsdStore.open(database.url)
    try:
        old, new = _record(1, (29.65, -82.32)), _record(2, (29.66, -82.31))
        for session in (old, new):
            await store.put_global("jazz", session, shadow=False, origin=DOMAIN, now=T0)
        await database.execute("UPDATE geo_cells SET cell = '119,97' WHERE uri = :uri",
                               uri=old.uri)
        for km in (2.0, 10.0, 100.0, 1_000.0, 20_004.0):  # the two are 1.5 km apart
            found = await store.search_global_near("jazz", shadow=False, near=(29.65, -82.32),
                                                   within_km=km, now=T0)
            assert [n.record for n in found] == [old, new]
        assert await store.near(["119,97"], kinds=["global"], now=T0) == [old, new]
    finally:
        await store.close()


async def test_bulk_put_is_put_global_many_times(database: Database) -> None:
    store = await MsdStore.open(database.url)
    try:
        first = _record(1, (10.0, 10.0))
        moved = first.model_copy(update={"lat": 10.5, "title": "moved"})
        held = [HeldRecord("jazz", False, first, DOMAIN), HeldRecord("jazz", False, moved, DOMAIN),
                HeldRecord("jazz", True, _record(2, None), "other.example")]
        assert await store.put_global_many(held, now=T0) == 3
        assert await store.search_global("jazz", shadow=False, now=T0) == [moved]
        assert await store.search_global("jazz", shadow=True, now=T0) == [_record(2, None)]
        found = await store.search_global_near("jazz", shadow=False, near=(10.5, 10.0),
                                               within_km=1, now=T0)
        assert [n.record for n in found] == [moved]
        assert await store.put_global_many([], now=T0) == 0
        with pytest.raises(StoreError, match="does not carry keyword 'blues'"):
            await store.put_global_many([HeldRecord("blues", False, first, DOMAIN)], now=T0)
    finally:
        await store.close()


@pytest.mark.parametrize(("near", "km", "error"), [
    ((91.0, 0.0), 10.0, InvalidCoordinateError), ((0.0, 181.0), 10.0, InvalidCoordinateError),
    ((0.0, 0.0), -1.0, InvalidRadiusError), ((0.0, 0.0), math.nan, InvalidRadiusError),
    ((0.0,), 10.0, StoreError),
])
async def test_a_bad_circle_is_refused_by_name(
    tmp_path: Path, near: tuple[float, float], km: float, error: type[MsdError]
) -> None:
    store = await MsdStore.open(sqlite_url(tmp_path, DOMAIN))  # checked before any query
    try:
        with pytest.raises(error) as raised:
            await store.search_global_near("jazz", shadow=False, near=near, within_km=km,
                                           now=T0)
        assert isinstance(raised.value, MsdError)
        with pytest.raises(StoreError, match="limit"):
            await store.search_local_near("jazz", near=(0, 0), within_km=1, now=T0, limit=0)
    finally:
        await store.close()
