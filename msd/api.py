"""The MSD's HTTP routes for sessions: register, routed remote-register, msd-probe, ext-search.

Bad input: 4xx with `{"error": ...}` and nothing stored, counted by reason. Everything
one MSD sends another (routed requests, the owners' replies) is signed with the sending
domain's Ed25519 key and tagged with the hierarchy's HMAC key (msd.relay.RelayAuth), so
nobody outside the hierarchy can plant records, fake an answer or aim an MSD's replies at
a third party, and no member can do so in another domain's name. The domain's URS pushes
the sessions it registers with the domain's MSD key (`Authorization: Bearer`). Clients'
registrations and searches are rate-limited per address (429 with Retry-After).
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from msd.errors import MsdError
from msd.http_limits import BodyTimeout, BodyTooLarge, ClientGone, read_body
from msd.inprocess import InProcessSearch
from msd.keyspace import SPACE, key_of, shadow_of
from msd.query import WITHIN_MAX_KM
from msd.ratelimit import RateLimit, TokenBuckets, retry_after
from msd.relay import AUTH_HEADER, NotAuthentic, Overloaded, RelayAuth, RoutingFailed
from msd.schema import SessionRecord
from msd.sessions import NotDesignated, Search, SessionService, parse_record
from msd.store import MirrorCursor

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_KEYWORD_CHARS = 64
MAX_HOPS = 64
_HEX_KEY = re.compile(r"[0-9a-fA-F]{1,32}")
_HEX_END = re.compile(r"[0-9a-fA-F]{1,33}")  # the end of a range may be 2**128 itself
MAX_CURSOR_URI_CHARS = 512  # a session URI in a mirror page's cursor
_SESSION_ID = re.compile(r"[a-z0-9_-][a-z0-9._-]{0,62}")  # msd.schema's rule for URS ids


# Per client address. Searches are generous: a whole NAT may share one address, and one
# search takes two or three requests.
REGISTER_LIMIT = RateLimit(rate=20, burst=100)  # POST /sessions
SEARCH_LIMIT = RateLimit(rate=500, burst=1000)  # msd-probe, ext-search, local-search, /search


@dataclasses.dataclass(frozen=True, kw_only=True)
class ApiLimits:
    """Per-address rates (clients only: requests signed by MSDs or the URS are not limited)
    and body limits of the MSD's HTTP routes."""

    register: RateLimit = REGISTER_LIMIT
    search: RateLimit = SEARCH_LIMIT
    max_body_bytes: int = MAX_BODY_BYTES


class SessionRoutes:
    """aiohttp handlers bound to one daemon's session service."""

    def __init__(
        self, *, service: Callable[[], SessionService | None], auth: RelayAuth,
        msd_key: str, urs_url: str, http: Callable[[], aiohttp.ClientSession],
        limits: ApiLimits | None = None, body_timeout_s: float = 10.0,
        rejected: Counter[str] | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._service = service
        self._auth = auth
        self._msd_key = msd_key
        self._urs_url = urs_url
        self._http = http
        self.limits = limits or ApiLimits()
        self._body_timeout_s = body_timeout_s
        self.rejected: Counter[str] = rejected if rejected is not None else Counter()
        self._clock = clock
        self._register_buckets = TokenBuckets(self.limits.register)
        self._search_buckets = TokenBuckets(self.limits.search)
        self._search_client: Any = None  # made on first use: the search client's cache

    def add_to(self, app: web.Application) -> None:
        register, search = self._register_buckets, self._search_buckets
        # Not limited: the URS's pushes (the MSD key) and routed probes (their signatures
        # are checked instead, and a forged one costs one HMAC).
        app.router.add_post("/sessions", self._guard(self.register, buckets=register,
                                                     exempt=self._from_the_urs))
        app.router.add_post("/msd/remote-register", self._guard(self.remote_register))
        app.router.add_post("/msd/probe", self._guard(
            self.probe, buckets=search, exempt=lambda r: AUTH_HEADER in r.headers))
        app.router.add_post("/msd/reply", self._guard(self.reply))
        app.router.add_post("/msd/mirror", self._guard(self.mirror))
        app.router.add_post("/msd/ext-search", self._guard(self.ext_search, buckets=search))
        app.router.add_get("/msd/local-search", self._guard(self.local_search, buckets=search))
        app.router.add_get("/search", self._guard(self.search, buckets=search))

    def service(self) -> SessionService:
        service = self._service()
        if service is None:
            raise NotDesignated("this MSD is starting: its session store is not open yet")
        return service

    def _guard(
        self, handler: Callable[[web.Request], Awaitable[dict[str, Any] | web.Response]], *,
        buckets: TokenBuckets | None = None, exempt: Callable[[web.Request], bool] | None = None,
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def guarded(request: web.Request) -> web.Response:
            try:
                if buckets is not None and not (exempt is not None and exempt(request)):
                    refusal = self._rate_limited(request, buckets)
                    if refusal is not None:
                        return refusal
                result = await handler(request)
                return result if isinstance(result, web.Response) else web.json_response(result)
            except BodyTooLarge as exc:
                return self._refuse("too_large", 413, str(exc))
            except BodyTimeout as exc:
                return self._refuse("slow_body", 408, str(exc))
            except ClientGone as exc:
                return self._refuse("client_gone", 400, str(exc))
            except NotAuthentic as exc:
                log.debug("refused %s from %s: %s", request.path, request.remote, exc)
                return self._refuse(f"auth_{exc.reason}", 403, str(exc))
            except Overloaded as exc:
                return self._refuse("overloaded", 503, str(exc))
            except NotDesignated as exc:
                return web.json_response({"error": str(exc)}, status=503)
            except RoutingFailed as exc:
                return web.json_response({"error": str(exc)}, status=502)
            except MsdError as exc:
                return self._refuse("bad_request", 400, str(exc))
            except web.HTTPException as exc:
                if exc.status == 403:
                    self.rejected["auth_msd_key"] += 1
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                return web.json_response({"error": "internal error; see the MSD log"},
                                         status=500)

        return guarded

    def _from_the_urs(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"),
                                   f"Bearer {self._msd_key}".encode())

    def _rate_limited(self, request: web.Request, buckets: TokenBuckets) -> web.Response | None:
        client = request.remote or "unknown"
        wait = buckets.take(client, now=self._clock())
        if wait is None:
            return None
        seconds = retry_after(wait)
        self.rejected["rate_limited"] += 1
        return web.json_response(
            {"error": f"too many requests from {client}: at most "
                      f"{buckets.limit.rate:g} a second ({buckets.limit.burst} at once); "
                      f"retry in {seconds} s", "retry_after": int(seconds)},
            status=429, headers={"Retry-After": seconds})

    def _refuse(self, reason: str, status: int, message: str) -> web.Response:
        self.rejected[reason] += 1
        return web.json_response({"error": message}, status=status)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await read_body(request, limit=self.limits.max_body_bytes,
                              timeout_s=self._body_timeout_s)
        return _object(raw)

    # --- from clients ----------------------------------------------------------------------

    async def register(self, request: web.Request) -> dict[str, Any]:
        """POST /sessions: index a session that this domain's URS holds.

        `{"id": ...}` from anyone: the MSD fetches the record from its URS. `{"record":
        {...}}` only from the URS itself (the domain's MSD key), which pushes what it has
        just stored. `"wait": true` answers once every keyword route has its owner."""
        service = self.service()
        body = await self._body(request)
        if "record" in body:
            if not self._from_the_urs(request):
                raise web.HTTPForbidden(text=json.dumps({"error": "a pushed record needs the "
                                                         "domain's MSD key"}),
                                        content_type="application/json")
            record = parse_record(body["record"])
        else:
            session_id = body.get("id")
            if not isinstance(session_id, str) or not _SESSION_ID.fullmatch(session_id):
                raise MsdError('expected {"id": "<URS identifier>"} of a session registered '
                               "with this domain's URS")
            record = await self._fetch_from_urs(session_id)
        result = await service.register(record, wait=body.get("wait") is True)
        log.debug("registered %s (%d keywords, %s scope)", record.uri, len(record.keywords),
                  record.scope.value)
        return result

    async def search(self, request: web.Request) -> dict[str, Any]:
        """GET /search?q=...: the whole search in one call, for browsers and thin clients.

        This MSD runs the client's two-pass protocol on the caller's behalf (its domain is
        the home domain) and keeps one redirect cache for everyone who asks it."""
        from client.search import SearchClient  # the client's protocol, reused as it is
        from msd.query import QueryError

        text = request.query.get("q", "")
        service = self.service()
        if self._search_client is None:
            node = service.node()
            self._search_client = SearchClient(home=service.domain, dns_server=None,
                                               http=self._http(),
                                               in_process=InProcessSearch(service))
            self._search_client.set_home_msd(f"http://{node.address.host}:{node.address.port}")
        try:
            hits = await self._search_client.search(text)
        except QueryError as exc:
            raise MsdError(str(exc)) from None
        sessions = []
        for hit in hits:
            data = hit.session.model_dump(mode="json")
            if hit.distance_km is not None:
                data["distance_km"] = round(hit.distance_km, 3)
            sessions.append(data)
        return {"query": text, "home": service.domain, "sessions": sessions}

    async def local_search(self, request: web.Request) -> dict[str, Any]:
        """GET /msd/local-search?keyword=K[&near=LAT,LON&within_km=KM]"""
        query = request.query
        near = None
        if query.get("near") is not None:
            near = query["near"].split(",")
        search = _search({"keyword": query.get("keyword"), "near": near,
                          "within_km": query.get("within_km")})
        sessions = await self.service().local_search(search)
        return {"keyword": search.keyword, "sessions": sessions}

    async def probe(self, request: web.Request) -> dict[str, Any] | web.Response:
        """msd-probe: from a client (answered when the owner is found), or routed from
        another MSD (acknowledged with 202; the owner answers the origin)."""
        routed = AUTH_HEADER in request.headers
        body = await (self._signed_json(request) if routed else self._body(request))
        text = body.get("key")
        if not isinstance(text, str) or not _HEX_KEY.fullmatch(text):
            raise MsdError("key must be 32 hex digits")
        key = int(text, 16)
        search = _search(body) if body.get("keyword") is not None else None
        if not routed:
            return await self.service().probe(key, search=search)
        self.service().relay_probe(key, search=search, body=_reply_path(body),
                                   hops=_hops(body))
        return web.json_response({"accepted": True}, status=202)

    async def reply(self, request: web.Request) -> dict[str, Any]:
        """The owner's answer (or a hop's error) to a routed request this MSD sent."""
        body = await self._signed_json(request)
        if not self.service().relay.resolve(body):
            log.debug("late or unknown reply %s", str(body.get("request"))[:32])
            return {"accepted": False}
        return {"accepted": True}

    async def ext_search(self, request: web.Request) -> dict[str, Any]:
        """ext-search: {"keyword", "shadow"[, "near": [lat, lon], "within_km"]}."""
        search = _search(await self._body(request))
        service = self.service()
        sessions = await service.ext_search(search)
        if sessions is None:
            raise web.HTTPConflict(text=json.dumps({"error": "ext-search-invalid",
                                                    "keyword": search.keyword}),
                                   content_type="application/json")
        key = key_of(search.keyword)
        complete = service.mirror.complete(shadow_of(key) if search.shadow else key)
        return {"keyword": search.keyword, "shadow": search.shadow, "sessions": sessions,
                "complete": complete}

    # --- from other MSDs -------------------------------------------------------------------

    async def remote_register(self, request: web.Request) -> web.Response:
        """A routed remote-register from another MSD: acknowledged with 202 at once."""
        body = await self._signed_json(request)
        record = parse_record(body.get("record"))
        self.service().relay_remote_register(
            _keyword(body.get("keyword")), record, shadow=bool(body.get("shadow")),
            origin=str(body.get("origin", ""))[:253], body=_reply_path(body), hops=_hops(body))
        return web.json_response({"accepted": True}, status=202)

    async def mirror(self, request: web.Request) -> web.Response:
        """A routed request for the records of a key range (a domain restoring its own
        range from the mirror): acknowledged with 202; the owner of `start` answers."""
        body = await self._signed_json(request)
        start_text, end_text = body.get("start"), body.get("end")
        if not (isinstance(start_text, str) and _HEX_KEY.fullmatch(start_text)
                and isinstance(end_text, str) and _HEX_END.fullmatch(end_text)):
            raise MsdError("start and end must be hex keys")
        start, end = int(start_text, 16), int(end_text, 16)
        if not 0 <= start < end <= SPACE:
            raise MsdError("need 0 <= start < end <= 2**128")
        after = body.get("after")
        cursor = None
        if after is not None:
            if not (isinstance(after, list) and len(after) == 4
                    and isinstance(after[0], str) and _HEX_KEY.fullmatch(after[0])
                    and isinstance(after[1], str) and len(after[1]) <= MAX_KEYWORD_CHARS
                    and isinstance(after[2], str) and len(after[2]) <= MAX_CURSOR_URI_CHARS
                    and isinstance(after[3], bool)):
                raise MsdError("after must be [key, keyword, uri, shadow]")
            cursor = MirrorCursor(*after)
        self.service().mirror.relay(start, end, after=cursor, body=_reply_path(body),
                                    hops=_hops(body))
        return web.json_response({"accepted": True}, status=202)

    async def _signed_json(self, request: web.Request) -> dict[str, Any]:
        """The body of a request from another MSD of the hierarchy (403 if not signed in its
        sender's name, or replayed)."""
        raw = await read_body(request, limit=self.limits.max_body_bytes,
                              timeout_s=self._body_timeout_s)
        self._auth.check(request.method, request.path, request.headers, raw)
        return _object(raw)

    async def _fetch_from_urs(self, session_id: str) -> SessionRecord:
        url = f"{self._urs_url}/{session_id}"
        try:
            async with self._http().get(url, headers={"Accept": "application/json"}) as response:
                if response.status == 404:
                    raise MsdError(f"the domain's URS has no session {session_id!r} "
                                   "(register it there first)")
                if response.status != 200:
                    raise MsdError(f"the domain's URS answered {response.status}")
                return parse_record(await response.json())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise MsdError(f"the domain's URS is not reachable: {exc}") from None


def _object(raw: bytes) -> dict[str, Any]:
    """A request body that must be a JSON object (a bounded parse: MsdError, never a crash)."""
    try:
        body = json.loads(raw or b"{}", parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise MsdError("body is not JSON") from None
    if not isinstance(body, dict):
        raise MsdError("body must be a JSON object")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _search(body: dict[str, Any]) -> Search:
    """A keyword search from a request: keyword, shadow, and optionally near + within_km."""
    keyword = _keyword(body.get("keyword"))
    shadow = body.get("shadow", False)
    if not isinstance(shadow, bool):
        raise MsdError("shadow must be true or false")
    near = body.get("near")
    if near is None:
        return Search(keyword, shadow)
    try:
        if not isinstance(near, list | tuple) or len(near) != 2:
            raise ValueError(near)
        lat, lon = (_number(v) for v in near)
        within = _number(body["within_km"])
    except (TypeError, ValueError, KeyError, OverflowError):
        raise MsdError("near must be [LAT, LON] with within_km, numbers in degrees and "
                       "kilometres") from None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise MsdError("near must be LAT -90..90, LON -180..180")
    if not 0 < within <= WITHIN_MAX_KM:
        raise MsdError(f"within_km must be more than 0 and at most {WITHIN_MAX_KM}")
    return Search(keyword, shadow, (lat, lon), within)


def _number(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(value)
    if isinstance(value, str) and len(value) > 32:
        raise ValueError(value)
    return float(value)


def _keyword(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= MAX_KEYWORD_CHARS:
        raise MsdError(f"keyword must be 1-{MAX_KEYWORD_CHARS} characters")
    return value.strip().casefold()


def _reply_path(body: dict[str, Any]) -> dict[str, Any]:
    """A routed request's body, checked for where its answer goes (`reply_to`, `request`)."""
    reply_to, request = body.get("reply_to"), body.get("request")
    host, _, port = str(reply_to).rpartition(":")
    if (not isinstance(reply_to, str) or not host or len(reply_to) > 64
            or not port.isascii() or not port.isdigit() or len(port) > 5 or int(port) > 65535):
        raise MsdError("reply_to must be HOST:PORT of the originating MSD")
    if not isinstance(request, str) or not 1 <= len(request) <= 64:
        raise MsdError("request must be the originator's request id (1-64 characters)")
    if not body.get("hops"):
        raise MsdError("hops must name at least the originating domain")
    return body


def _hops(body: dict[str, Any]) -> tuple[str, ...]:
    hops = body.get("hops", [])
    if (not isinstance(hops, list) or len(hops) > MAX_HOPS
            or not all(isinstance(h, str) and 1 <= len(h) <= 253 for h in hops)):
        raise MsdError(f"hops must be a list of at most {MAX_HOPS} domain names")
    return tuple(hops)
