"""Global search, the client's side: per keyword a cached redirect or an msd-probe, then ext-search.

For each keyword that the query needs (msd.query.positive_keywords):
1. the redirect cache, else `msd-probe` through the home domain's designated MSD,
   which routes it to the owner of the keyword's hash and answers with a redirect;
2. `ext-search` at the owner; `ext-search-invalid` (the range moved) → invalidate the
   cached redirect and probe afresh, once;
3. the owner does not answer, cannot be found (a hop is down), or says its answer may be
   incomplete (it gained that key lately, e.g. from a domain that died, and has not yet
   restored its records from the mirror) → the shadow as well: probe for the
   bit-inverted hash and ask its owner for the shadow records.
The home domain's own sessions (administrative scope, any scope) come from its MSD's
local records. msd.matching.evaluate then combines, filters, removes duplicates, ranks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Protocol

import aiohttp

from client.errors import ClientError
from msd.cache import Redirect, RedirectCache
from msd.errors import MsdError
from msd.gazetteer import OfflineGazetteer, resolve_near
from msd.geo import distance_km
from msd.inprocess import OwnerRecords
from msd.keyspace import KeyRange, key_of, shadow_of
from msd.matching import Hit, evaluate
from msd.query import Query, parse, positive_keywords
from msd.relay import Delay, RoutingFailed
from msd.schema import Scope, SessionRecord
from msd.sessions import Search
from urs.locate import LocateError, UrsEndpoint, UrsLocation, locate_urs, with_failover

CACHE_CAPACITY = 10_000
REQUEST_TIMEOUT_S = 3.0


class InProcessMsd(Protocol):
    """An MSD running in this very process (one searching for its callers, GET /search):
    the search asks it by a call instead of an HTTP request to itself. Errors are
    MsdErrors, as its HTTP routes would have answered them (msd.inprocess)."""

    def answers_at(self, base_url: str) -> bool:
        """Whether `http://host:port` is this MSD."""

    async def local_records(self, search: Search) -> list[SessionRecord]:
        """GET /msd/local-search."""

    async def probe_records(
        self, key: int, *, search: Search | None
    ) -> tuple[dict[str, Any], OwnerRecords | None]:
        """POST /msd/probe: the redirect, and the owner's records when `search` was given."""

    async def ext_records(self, search: Search) -> OwnerRecords | None:
        """POST /msd/ext-search; None for ext-search-invalid."""


class _Invalid(Exception):
    """ext-search-invalid: the owner's range moved."""


class _Unreachable(Exception):
    """The owner did not answer."""


class RouteFailed(ClientError):
    """The home MSD could not reach the owner of a key (502: a hop or the owner is down)."""


@dataclasses.dataclass
class SearchStats:
    """What one search cost: for the latency experiment and for --verbose."""

    probes: int = 0
    cache_hits: int = 0
    invalid: int = 0
    shadow_used: int = 0


class SearchClient:
    """Searches from one home domain; keeps its redirect cache across searches."""

    def __init__(
        self, *, home: str, dns_server: tuple[str, int] | None,
        http: aiohttp.ClientSession, cache: RedirectCache | None = None,
        delay: Delay | None = None, in_process: InProcessMsd | None = None,
    ) -> None:
        self.home = home
        self._in_process = in_process  # asked by call when a URL is its own
        self._delay = delay  # injected per message to or from another domain (experiments)
        self.dns_server = dns_server
        self._http = http
        self.cache = cache or RedirectCache(CACHE_CAPACITY)
        self._home_msd: str | None = None
        self._home_fixed = False
        self.stats = SearchStats()

    def set_home_msd(self, url: str) -> None:
        """Use this MSD as the home one (an MSD searching on its callers' behalf)."""
        self._home_msd = url
        self._home_fixed = True

    async def prime(self, keyword: str) -> None:
        """Probe for a keyword's owner now and cache the redirect (a warm cache)."""
        redirect, _ = await self._probe(key_of(keyword))
        self.cache.put(keyword, redirect, _now_ms())

    async def home_msd(self, *, refresh: bool = False) -> str:
        """The base URL of the home domain's designated MSD (DNS → URS → bootstrap)."""
        if self._home_msd is None or refresh:
            self._home_msd = await designated_msd(self.home, dns_server=self.dns_server,
                                                  http=self._http)
        return self._home_msd

    async def search(self, text: str | Query) -> list[Hit[SessionRecord]]:
        """The whole hierarchy's global sessions, plus the home domain's own."""
        query = _prepared(text)
        keywords = positive_keywords(query)
        answers = await asyncio.gather(*(self._keyword(_search(k, query), scope=query.scope)
                                         for k in keywords))
        by_keyword = dict(zip(keywords, answers, strict=True))
        return evaluate(query, by_keyword, geodesic_km=distance_km)

    async def search_domain(self, text: str | Query) -> list[Hit[SessionRecord]]:
        """Only the home domain's sessions that may leave it (global scope), from its MSD."""
        query = _prepared(text)
        keywords = positive_keywords(query)
        answers = await asyncio.gather(*(self._local(_search(k, query)) for k in keywords))
        by_keyword = {k: [r for r in found if r.scope is Scope.GLOBAL]
                      for k, found in zip(keywords, answers, strict=True)}
        return evaluate(query, by_keyword, geodesic_km=distance_km)

    async def _keyword(self, search: Search, *, scope: Scope | None) -> list[SessionRecord]:
        found: dict[str, SessionRecord] = {}
        local, remote = await asyncio.gather(  # the home MSD and the owner, at once
            self._local(search) if scope is not Scope.GLOBAL else _nothing(),
            self._global(search) if scope is not Scope.LOCAL else _nothing())
        for record in (*local, *remote):
            found.setdefault(record.uri, record)
        if scope is Scope.LOCAL:
            return [r for r in found.values() if r.domain == self.home]
        return list(found.values())

    async def _local(self, search: Search) -> list[SessionRecord]:
        msd = await self.home_msd()
        if self._in_process is not None and self._in_process.answers_at(msd):
            try:
                return await self._in_process.local_records(search)
            except MsdError as exc:
                raise ClientError(f"{msd}/msd/local-search: {exc}") from None
        params: dict[str, str] = {"keyword": search.keyword}
        if search.near is not None:
            params |= {"near": f"{search.near[0]},{search.near[1]}",
                       "within_km": str(search.within_km)}
        answer = await self._at_home("GET", "/msd/local-search", params=params)
        return [_record(s) for s in answer["sessions"]]

    async def _global(self, search: Search) -> list[SessionRecord]:
        keyword = search.keyword
        key = key_of(keyword)
        try:
            owners = await self._owner(search, key)
        except ClientError as exc:  # no way to the owner: a hop is down, the tree heals
            owners, failure = None, str(exc)
        else:
            failure = "unreachable" if owners is None else ""
        if owners is not None and owners.complete:
            return owners.records
        # The owner is gone, or keeps moving, or has not yet restored every record of a
        # range it gained: its shadow holds the same records.
        self.stats.shadow_used += 1
        try:
            shadows = await self._owner(dataclasses.replace(search, shadow=True),
                                        shadow_of(key), cache=False)
        except ClientError as exc:
            shadows, failure = None, f"{failure}; shadow: {exc}"
        if shadows is None:
            if owners is not None:
                return owners.records  # the owner's answer is the best there is
            raise ClientError(f"neither the owner nor the shadow of {keyword!r} answered "
                              f"({failure or 'unreachable'})")
        found = {r.uri: r for r in shadows.records}
        if owners is not None:
            found |= {r.uri: r for r in owners.records}
        return list(found.values())

    async def _owner(
        self, search: Search, key: int, *, cache: bool = True
    ) -> OwnerRecords | None:
        """The answer of `key`'s owner for `search` (redirect cache, msd-probe, ext-search,
        one more probe after ext-search-invalid); None if the owner does not answer."""
        for _ in range(2):
            redirect = self.cache.get(search.keyword, _now_ms()) if cache else None
            if redirect is None or not redirect.covers(key):
                redirect, answered = await self._probe(key, search=search)
                if cache:
                    self.cache.put(search.keyword, redirect, _now_ms())
                if answered is not None:
                    return answered  # the owner answered the search with the redirect
            else:
                self.stats.cache_hits += 1
            try:
                return await self._ext_search(redirect, search)
            except _Invalid:
                self.stats.invalid += 1
                if cache:
                    self.cache.invalidate(search.keyword)
            except _Unreachable:
                if cache:
                    self.cache.invalidate(search.keyword)
                return None
        return None

    async def _probe(
        self, key: int, *, search: Search | None = None
    ) -> tuple[Redirect, OwnerRecords | None]:
        """The owner's redirect and, when `search` was given and the owner could answer it,
        its records for that keyword (msd-probe-reply carrying the ext-search answer)."""
        self.stats.probes += 1
        msd = await self.home_msd()
        if self._in_process is not None and self._in_process.answers_at(msd):
            try:
                answer, found = await self._in_process.probe_records(key, search=search)
            except RoutingFailed as exc:
                raise RouteFailed(f"{msd}/msd/probe: {exc}") from None
            except MsdError as exc:
                raise ClientError(f"{msd}/msd/probe: {exc}") from None
            return _redirect(answer), found
        body: dict[str, Any] = {"key": f"{key:032x}"}
        if search is not None:
            body |= search.to_json()
        answer = await self._at_home("POST", "/msd/probe", json=body)
        sessions = answer.get("sessions")
        if sessions is None:
            return _redirect(answer), None
        return _redirect(answer), OwnerRecords([_record(s) for s in sessions],
                                               complete=answer.get("complete") is not False)

    async def _ext_search(self, redirect: Redirect, search: Search) -> OwnerRecords:
        owner = f"http://{redirect.host}:{redirect.port}"
        if self._in_process is not None and self._in_process.answers_at(owner):
            try:
                found = await self._in_process.ext_records(search)
            except MsdError:
                raise _Unreachable() from None
            if found is None:
                raise _Invalid()
            return found
        url = f"{owner}/msd/ext-search"
        delay = self._delay if redirect.domain != self.home else None
        for attempt in (1, 2):
            try:
                if delay is not None:
                    await delay(redirect.domain)  # the request crosses the network
                async with self._http.post(
                    url, json=search.to_json(),
                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                ) as response:
                    if response.status == 409:
                        raise _Invalid()
                    if response.status != 200:
                        raise _Unreachable()
                    answer = await response.json()
                    if delay is not None:
                        await delay(redirect.domain)  # and so does the answer
                    return OwnerRecords([_record(s) for s in answer["sessions"]],
                                        complete=answer.get("complete") is not False)
            except aiohttp.ServerDisconnectedError:
                if attempt == 2:
                    raise _Unreachable() from None
            except (aiohttp.ClientError, TimeoutError, ValueError):
                raise _Unreachable() from None
        raise AssertionError("unreachable")

    async def _at_home(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """Ask the home MSD; if it fails, ask the URS who that is now, and if another MSD
        has taken over (the one we knew died or stepped down), ask it once."""
        msd = await self.home_msd()
        try:
            return await self._call(method, f"{msd}{path}", **kwargs)
        except RouteFailed:
            raise  # the home MSD answered: the way on from it is down
        except ClientError:
            if self._home_fixed:
                raise
            fresh = await self.home_msd(refresh=True)
            if fresh == msd:
                raise
            return await self._call(method, f"{fresh}{path}", **kwargs)

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        for attempt in (1, 2):
            try:
                async with self._http.request(
                    method, url, timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
                    **kwargs,
                ) as response:
                    answer: dict[str, Any] = await response.json()
                    if response.status != 200:
                        failure = RouteFailed if response.status == 502 else ClientError
                        raise failure(f"{url} answered {response.status}: "
                                      f"{answer.get('error', answer)}")
                    return answer
            except aiohttp.ServerDisconnectedError:
                if attempt == 2:  # a stale pooled connection gets one fresh try (reads only)
                    raise ClientError(f"{url}: the server disconnected twice") from None
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise ClientError(f"{url}: {exc or type(exc).__name__}") from None
        raise AssertionError("unreachable")


async def designated_msd(
    domain: str, *, dns_server: tuple[str, int] | None, http: aiohttp.ClientSession,
    location: UrsLocation | None = None,
) -> str:
    """The base URL of a domain's designated MSD, found through DNS and its URS."""
    if location is None:
        try:
            location = await locate_urs(domain, dns_server=dns_server)
        except LocateError as exc:
            raise ClientError(str(exc)) from None
    async def ask(endpoint: UrsEndpoint, timeout: aiohttp.ClientTimeout) -> Any:
        async with http.get(f"{endpoint.base_url}/bootstrap/designated",
                            timeout=timeout) as response:
            return (await response.json()).get("designated")

    try:  # the next URS replica when one is unreachable
        designated = await with_failover(location, ask,
                                         deadline=time.monotonic() + REQUEST_TIMEOUT_S)
    except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
        where = ", ".join(e.base_url for e in location.endpoints)
        raise ClientError(f"the URS of {domain} at {where}: {exc}") from None
    if not designated:
        raise ClientError(f"{domain} has no designated MSD (are its MSD daemons running?)")
    return f"http://{designated['address']}:{designated['port']}"


def _search(keyword: str, query: Query) -> Search:
    """What to ask the owner for one keyword: with the query's circle, when it has one
    (near: filters every result, so the owner may apply it; evaluate checks it again)."""
    if isinstance(query.near, tuple):
        return Search(keyword, near=query.near, within_km=query.within_km)
    return Search(keyword)


def _redirect(answer: dict[str, Any]) -> Redirect:
    """The owner's redirect from an msd-probe answer."""
    host, _, port = str(answer["address"]).rpartition(":")
    owned = KeyRange.from_json([answer["start"], answer["end"]])
    return Redirect(domain=answer["owner"], host=host, port=int(port), start=owned.start,
                    end=owned.end, term=int(answer.get("term", 0)))


def _record(data: dict[str, Any]) -> SessionRecord:
    """A session from an MSD's answer (its `distance_km`, if any, is recomputed later)."""
    return SessionRecord.model_validate({k: v for k, v in data.items() if k != "distance_km"})


async def _nothing() -> list[SessionRecord]:
    return []


def _prepared(text: str | Query) -> Query:
    query = parse(text) if isinstance(text, str) else text
    if isinstance(query.near, str):
        query = resolve_near(query, gazetteer=gazetteer())
    return query


_GAZETTEER: OfflineGazetteer | None = None


def gazetteer() -> OfflineGazetteer:
    """One offline gazetteer per process: loading the city list takes a second or two."""
    global _GAZETTEER
    if _GAZETTEER is None:
        _GAZETTEER = OfflineGazetteer()
    return _GAZETTEER


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000
