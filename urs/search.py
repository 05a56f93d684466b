"""The search page's engine: this domain's sessions from the URS's own store, the whole
hierarchy through the designated MSD's one-call search (`GET /search?q=` at the MSD).

Why two sources (docs/urs.md, "Search"): the store is the authority for its domain, so a
domain search lists a session the moment it is registered, and works while no MSD runs;
only the designated MSD can reach the other domains' keyword owners, and it already runs
the client's whole protocol for thin callers. Both answers are evaluated by the same
query core (msd.query, msd.matching), so a query means the same thing everywhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any

import aiohttp
import dns.resolver
from pydantic import ValidationError

from msd.gazetteer import OfflineGazetteer, resolve_near
from msd.geo import distance_km
from msd.matching import evaluate
from msd.query import Query, QueryError, parse, positive_keywords
from msd.schema import SessionRecord
from urs.errors import UrsError
from urs.indexing import MsdIndexer
from urs.locate import WELL_KNOWN_URS_PORT, LocateError, locate_urs
from urs.settings import UrsSettings
from urs.store import SessionStore

log = logging.getLogger(__name__)

# The MSD probes each keyword's owner and asks it: a few round trips across the hierarchy.
HIERARCHY_TIMEOUT_S = 8.0
# Rows of this domain a domain search reads at most (those mentioning a query keyword).
DOMAIN_SCAN_MAX = 5_000
# Results shown (and put in the M3U); the rest are counted, not listed.
RESULTS_MAX = 200
# Other domains whose URS is looked up for links, per search, within one deadline.
LINK_LOOKUPS_MAX = 32
LINK_TIMEOUT_S = 1.0


class Where(StrEnum):
    """What a search covers: this domain's sessions, or the whole directory."""

    DOMAIN = "domain"
    ALL = "all"


class BadQuery(UrsError):
    """The query does not parse (or names an unknown place); the message says what to fix."""


class SearchUnavailable(UrsError):
    """The directory cannot be searched now (no designated MSD, or it did not answer)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Result:
    """One row of the results: the session, its distance from near:, its landing page."""

    session: SessionRecord
    distance_km: float | None
    href: str

    def to_json(self) -> dict[str, Any]:
        data = self.session.model_dump(mode="json") | {"page": self.href}
        if self.distance_km is not None:
            data["distance_km"] = round(self.distance_km, 3)
        return data


@dataclasses.dataclass(frozen=True, kw_only=True)
class Outcome:
    """The results in rank order, at most RESULTS_MAX, and how many were found in all."""

    results: list[Result]
    found: int


class UrsSearch:
    """Searches on behalf of the URS's search page; one per app."""

    def __init__(
        self, settings: UrsSettings, *, store: SessionStore, indexer: MsdIndexer,
        http: aiohttp.ClientSession, clock: Callable[[], float],
    ) -> None:
        self._settings = settings
        self._store = store
        self._indexer = indexer
        self._http = http
        self._clock = clock
        self._dns_cache = dns.resolver.Cache()  # answers kept for their TTL

    async def search(self, text: str, *, where: Where) -> Outcome:
        """Rank the sessions matching `text`; BadQuery or SearchUnavailable say why not."""
        try:
            query = parse(text)  # here as well as at the MSD: one round trip less for a typo
        except QueryError as exc:
            raise BadQuery(str(exc)) from None
        if where is Where.DOMAIN:
            found = await self._domain(query)
        else:
            found = await self._hierarchy(text)
        shown = found[:RESULTS_MAX]
        links = await self._landing_bases({record.domain for record, _ in shown})
        results = [Result(session=record, distance_km=distance,
                          href=f"{links[record.domain]}/{record.id}")
                   for record, distance in shown]
        return Outcome(results=results, found=len(found))

    async def _domain(self, query: Query) -> list[tuple[SessionRecord, float | None]]:
        if isinstance(query.near, str):
            # The first place name loads the city list (a second or two): off the loop.
            try:
                query = await asyncio.to_thread(resolve_near, query, gazetteer=OfflineGazetteer())
            except QueryError as exc:
                raise BadQuery(str(exc)) from None
        keywords = positive_keywords(query)
        records = await self._store.mentioning(self._settings.domain, keywords,
                                               now=self._clock(), limit=DOMAIN_SCAN_MAX)
        by_keyword = {k: [r for r in records if k in r.keywords] for k in keywords}
        hits = evaluate(query, by_keyword, geodesic_km=distance_km)
        return [(hit.session, hit.distance_km) for hit in hits]

    async def _hierarchy(self, text: str) -> list[tuple[SessionRecord, float | None]]:
        designated = await self._indexer.designated()
        if designated is None:
            raise SearchUnavailable(
                f"{self._settings.domain} has no designated MSD right now, so the other "
                "domains cannot be reached; search this domain's sessions instead")
        host = f"[{designated.address}]" if ":" in designated.address else designated.address
        url = f"http://{host}:{designated.port}/search"
        try:
            async with self._http.get(
                url, params={"q": text},
                timeout=aiohttp.ClientTimeout(total=HIERARCHY_TIMEOUT_S),
            ) as response:
                answer = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning("search through %s failed: %r", url, exc)
            raise SearchUnavailable(
                f"the designated MSD of {self._settings.domain} did not answer the search "
                f"({exc or type(exc).__name__}); try again, or search this domain only") from None
        error = answer.get("error") if isinstance(answer, dict) else None
        if status == 400 and error:
            raise BadQuery(str(error)[:500])
        if status != 200 or not isinstance(answer, dict):
            raise SearchUnavailable(
                f"the designated MSD of {self._settings.domain} could not search the "
                f"directory ({status}: {str(error or answer)[:300]})")
        try:
            return list(_hits(answer.get("sessions", [])))
        except (ValidationError, AttributeError, TypeError, ValueError) as exc:
            log.warning("malformed search answer from %s: %s", url, exc)
            raise SearchUnavailable(
                f"the designated MSD of {self._settings.domain} sent a malformed answer") \
                from None

    async def _landing_bases(self, domains: set[str]) -> dict[str, str]:
        """Per domain, the base URL of its landing pages: '' (this URS) for our own; for the
        others what DNS says about their URS, or the bookmark http://mcast.<domain>."""
        bases = {domain: f"http://mcast.{domain}" for domain in domains}
        bases[self._settings.domain] = ""
        others = sorted(domains - {self._settings.domain})[:LINK_LOOKUPS_MAX]
        if self._settings.dns_server is None or not others:
            return bases
        found = await asyncio.gather(
            *(locate_urs(domain, dns_server=self._settings.dns_server, timeout=LINK_TIMEOUT_S,
                         cache=self._dns_cache) for domain in others),
            return_exceptions=True)
        for domain, location in zip(others, found, strict=True):
            if isinstance(location, LocateError):
                log.info("no link to %s's URS: %s", domain, location)
            elif isinstance(location, BaseException):
                raise location
            elif location.port_from_srv or location.port != WELL_KNOWN_URS_PORT:
                bases[domain] = location.base_url  # a simulated hierarchy: one host, many ports
        return bases


def _hits(sessions: Iterable[Any]) -> Iterable[tuple[SessionRecord, float | None]]:
    for data in sessions:
        distance = data.get("distance_km")
        record = SessionRecord.model_validate(
            {k: v for k, v in data.items() if k != "distance_km"})
        yield record, (float(distance) if distance is not None else None)
