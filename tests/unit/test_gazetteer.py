"""The offline gazetteer (msd/gazetteer.py): GeoNames lookups behind geopy, no network."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from geopy.exc import GeocoderQueryError, GeocoderServiceError
from geopy.geocoders.base import Geocoder
from geopy.location import Location

from msd.gazetteer import GEOCODE_QUERY_MAX, OfflineGazetteer, resolve_near
from msd.matching import evaluate
from msd.query import QueryError, parse

GAINESVILLE_FL = (29.65163, -82.32483)
GAINESVILLE_GA = (34.29788, -83.82407)
PARIS_FR = (48.85341, 2.3488)
PARIS_TX = (33.66094, -95.55551)


class NetworkUsed(AssertionError):
    """The gazetteer tried to reach the network."""


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkUsed(f"network use: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield


@pytest.fixture(scope="module")
def gazetteer() -> OfflineGazetteer:
    # Module scope: the index loads once per process anyway; the instance is just cheap.
    return OfflineGazetteer()


def point(gazetteer: OfflineGazetteer, query: str) -> tuple[float, float] | None:
    location = gazetteer.geocode(query)
    if location is None:
        return None
    assert isinstance(location, Location)
    return (location.latitude, location.longitude)


def test_the_network_guard_works() -> None:
    with pytest.raises(NetworkUsed):
        socket.create_connection(("192.0.2.1", 80))


def test_it_is_a_geopy_geocoder_that_never_fetches(gazetteer: OfflineGazetteer) -> None:
    assert isinstance(gazetteer, Geocoder)
    assert repr(gazetteer) == "OfflineGazetteer(min_population=500)"
    with pytest.raises(GeocoderServiceError, match="no network"):
        gazetteer.adapter.get_json("https://nominatim.openstreetmap.org/", timeout=1, headers={})
    with pytest.raises(GeocoderServiceError, match="no network"):
        gazetteer.adapter.get_text("https://example.org/", timeout=1, headers={})


@pytest.mark.parametrize(
    "query",
    ["Gainesville, FL", "Gainesville, Florida", "Gainesville, US", "Gainesville, USA",
     "Gainesville, United States", "Gainesville, FL, US", "Gainesville, Florida, United States",
     "Gainesville", "gainesville", "GAINESVILLE, fl", "  Gainesville ,  FL ", "Gainesville FL",
     "Gainesville   FL",
     "Gainesville Florida"],
)
def test_gainesville_florida(gazetteer: OfflineGazetteer, query: str) -> None:
    assert point(gazetteer, query) == pytest.approx(GAINESVILLE_FL, abs=1e-5)


@pytest.mark.parametrize("query", ["Gainesville, GA", "Gainesville, Georgia", "gainesville ga",
                                   "Gainesville, GA, US"])
def test_gainesville_georgia_by_state(gazetteer: OfflineGazetteer, query: str) -> None:
    assert point(gazetteer, query) == pytest.approx(GAINESVILLE_GA, abs=1e-5)


@pytest.mark.parametrize(
    ("query", "expected"),
    [("Paris, France", PARIS_FR), ("Paris, FR", PARIS_FR), ("Paris, FRA", PARIS_FR),
     ("Paris France", PARIS_FR), ("Paris", PARIS_FR),  # a tie goes to the most populous
     ("Paris, Texas", PARIS_TX), ("paris, tx", PARIS_TX), ("Paris, TX, US", PARIS_TX)],
)
def test_paris_france_versus_paris_texas(
    gazetteer: OfflineGazetteer, query: str, expected: tuple[float, float]
) -> None:
    assert point(gazetteer, query) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    "query",
    ["Xyzzyville", "Gainesville, France", "Paris, Florida, France", "", "   ", ", FL", ",",
     "Gainesville, Narnia", "New  York  City, Paris"],
)
def test_unknown_places_are_none(gazetteer: OfflineGazetteer, query: str) -> None:
    assert gazetteer.geocode(query) is None
    assert gazetteer.geocode(query, exactly_one=False) is None
    assert gazetteer.coordinates(query) is None


def test_the_location_says_which_place_it_found(gazetteer: OfflineGazetteer) -> None:
    location = gazetteer.geocode("Gainesville, FL")
    assert isinstance(location, Location)
    assert location.address == "Gainesville, Florida, United States"
    assert location.raw["countrycode"] == "US"
    assert location.raw["admin1code"] == "FL"
    assert location.raw["population"] > 100_000
    paris = gazetteer.geocode("Paris, France")
    assert isinstance(paris, Location)
    assert paris.address == "Paris, France"


def test_several_matches_most_populous_first(gazetteer: OfflineGazetteer) -> None:
    found = gazetteer.geocode("Gainesville", exactly_one=False)
    assert isinstance(found, list)
    assert len(found) >= 3
    populations = [location.raw["population"] for location in found]
    assert populations == sorted(populations, reverse=True)
    assert (found[0].latitude, found[0].longitude) == pytest.approx(GAINESVILLE_FL)
    assert (found[1].latitude, found[1].longitude) == pytest.approx(GAINESVILLE_GA)
    two = gazetteer.geocode("Gainesville", exactly_one=False, limit=2)
    assert isinstance(two, list)
    assert len(two) == 2
    one = gazetteer.geocode("Gainesville", exactly_one=False, limit=-3)
    assert isinstance(one, list)
    assert len(one) == 1
    assert all(c.country == "US" for c in gazetteer.search("Gainesville, US"))


def test_other_spellings_of_large_cities(gazetteer: OfflineGazetteer) -> None:
    munich = gazetteer.geocode("München")
    assert isinstance(munich, Location)
    assert munich.address == "Munich, Germany"
    assert point(gazetteer, "Sao Paulo") == pytest.approx((-23.5475, -46.63611), abs=1e-4)


def test_bounded_and_typed_queries(gazetteer: OfflineGazetteer) -> None:
    with pytest.raises(GeocoderQueryError, match=f"at most {GEOCODE_QUERY_MAX} characters"):
        gazetteer.geocode("x" * (GEOCODE_QUERY_MAX + 1))
    assert gazetteer.coordinates("x" * (GEOCODE_QUERY_MAX + 1)) is None
    structured: Any = {"city": "Paris"}  # some geopy geocoders take these; this one does not
    with pytest.raises(GeocoderQueryError, match="string"):
        gazetteer.geocode(structured)
    with pytest.raises(ValueError, match="min_population must be one of"):
        OfflineGazetteer(min_population=100)


def test_a_smaller_city_list() -> None:
    large_only = OfflineGazetteer(min_population=15000)
    assert large_only.coordinates("Gainesville, GA") == pytest.approx(GAINESVILLE_GA)


# --- with the query language ----------------------------------------------------------------------


def test_resolve_near_geocodes_a_place(gazetteer: OfflineGazetteer) -> None:
    query = resolve_near(parse('jazz near:"Gainesville, FL" within:50'), gazetteer=gazetteer)
    assert query.near == pytest.approx(GAINESVILLE_FL)
    assert query.within_km == 50
    coordinates = parse("jazz near:1,2")
    assert resolve_near(coordinates, gazetteer=gazetteer) is coordinates
    with pytest.raises(QueryError, match="'Xyzzyville' is not in the offline gazetteer"):
        resolve_near(parse("jazz near:Xyzzyville"), gazetteer=gazetteer)


class Stream:
    def __init__(self, uri: str, lat: float, lon: float) -> None:
        self.uri, self.title, self.lat, self.lon = uri, uri, lat, lon
        self.keywords, self.scope, self.stream_type, self.mime = ["jazz"], "global", "rtp", "v/t"


def test_search_near_a_named_place(gazetteer: OfflineGazetteer) -> None:
    answers = {"jazz": [Stream("ga", *GAINESVILLE_GA), Stream("fl", 29.6, -82.3)]}
    query = resolve_near(parse('jazz near:"Gainesville, Florida"'), gazetteer=gazetteer)
    hits = evaluate(query, answers)
    assert [hit.session.uri for hit in hits] == ["fl"]
    assert hits[0].distance_km is not None and hits[0].distance_km < 10
    query = resolve_near(parse('jazz near:"Gainesville, GA"'), gazetteer=gazetteer)
    assert [hit.session.uri for hit in evaluate(query, answers)] == ["ga"]
