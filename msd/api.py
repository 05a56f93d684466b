"""The MSD's HTTP routes for sessions: register, routed remote-register, msd-probe, ext-search.

Bad input: 4xx with `{"error": ...}` and nothing stored. A routed write between MSDs
carries an HMAC of its body with the hierarchy key (`X-Mdns-Auth`), so nobody outside
the hierarchy can plant records at an owner.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from msd.errors import MsdError
from msd.schema import SessionRecord
from msd.sessions import (
    AUTH_HEADER,
    NotDesignated,
    RoutingFailed,
    SessionService,
    parse_record,
    sign,
)

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_KEYWORD_CHARS = 64


class SessionRoutes:
    """aiohttp handlers bound to one daemon's session service."""

    def __init__(
        self, *, service: Callable[[], SessionService | None], hierarchy_key: bytes,
        urs_url: str, http: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self._service = service
        self._key = hierarchy_key
        self._urs_url = urs_url
        self._http = http
        self._search_client: Any = None  # made on first use: the search client's cache

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/sessions", self._guard(self.register))
        app.router.add_post("/msd/remote-register", self._guard(self.remote_register))
        app.router.add_post("/msd/probe", self._guard(self.probe))
        app.router.add_post("/msd/ext-search", self._guard(self.ext_search))
        app.router.add_get("/msd/local-search", self._guard(self.local_search))
        app.router.add_get("/search", self._guard(self.search))

    def service(self) -> SessionService:
        service = self._service()
        if service is None:
            raise NotDesignated("this MSD is starting: its session store is not open yet")
        return service

    def _guard(
        self, handler: Callable[[web.Request], Awaitable[dict[str, Any]]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def guarded(request: web.Request) -> web.Response:
            try:
                return web.json_response(await handler(request))
            except NotDesignated as exc:
                return web.json_response({"error": str(exc)}, status=503)
            except RoutingFailed as exc:
                return web.json_response({"error": str(exc)}, status=502)
            except MsdError as exc:
                return web.json_response({"error": str(exc)}, status=400)
            except web.HTTPException:
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                return web.json_response({"error": "internal error; see the MSD log"},
                                         status=500)

        return guarded

    # --- from clients ----------------------------------------------------------------------

    async def register(self, request: web.Request) -> dict[str, Any]:
        """POST /sessions {"id": ...}: index a session that this domain's URS holds."""
        service = self.service()
        body = await _json(request)
        session_id = body.get("id")
        if not isinstance(session_id, str) or not 1 <= len(session_id) <= 63:
            raise MsdError('expected {"id": "<URS identifier>"} of a session registered '
                           "with this domain's URS")
        record = await self._fetch_from_urs(session_id)
        result = await service.register(record)
        log.info("registered %s (%d keyword routes)", record.uri, len(result["routed"]))
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
                                               http=self._http())
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
        keyword = _keyword(request.query.get("keyword"))
        records = await self.service().local_search(keyword)
        return {"keyword": keyword, "sessions": [r.model_dump(mode="json") for r in records]}

    async def probe(self, request: web.Request) -> dict[str, Any]:
        body = await _json(request)
        try:
            key = int(str(body.get("key")), 16)
        except ValueError:
            raise MsdError("key must be 32 hex digits") from None
        if not 0 <= key < 2**128:
            raise MsdError("key must be 32 hex digits")
        search = None
        if body.get("keyword") is not None:
            search = (_keyword(body.get("keyword")), bool(body.get("shadow", False)))
        return await self.service().probe(key, hops=_hops(body), search=search)

    async def ext_search(self, request: web.Request) -> dict[str, Any]:
        body = await _json(request)
        keyword = _keyword(body.get("keyword"))
        shadow = bool(body.get("shadow", False))
        records = await self.service().ext_search(keyword, shadow=shadow)
        if records is None:
            raise web.HTTPConflict(text=json.dumps({"error": "ext-search-invalid",
                                                    "keyword": keyword}),
                                   content_type="application/json")
        return {"keyword": keyword, "shadow": shadow,
                "sessions": [r.model_dump(mode="json") for r in records]}

    # --- from other MSDs -------------------------------------------------------------------

    async def remote_register(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        if len(raw) > MAX_BODY_BYTES:
            raise MsdError(f"body larger than {MAX_BODY_BYTES} bytes")
        given = request.headers.get(AUTH_HEADER, "")
        if not hmac.compare_digest(given, sign(raw, key=self._key)):
            raise web.HTTPForbidden(text=json.dumps({"error": "remote-register not "
                                                     "authenticated by the hierarchy key"}),
                                    content_type="application/json")
        try:
            body = json.loads(raw)
        except ValueError:
            raise MsdError("body is not JSON") from None
        if not isinstance(body, dict):
            raise MsdError("body must be a JSON object")
        record = parse_record(body.get("record"))
        owner = await self.service().remote_register(
            _keyword(body.get("keyword")), record, shadow=bool(body.get("shadow")),
            origin=str(body.get("origin", ""))[:253], hops=_hops(body))
        return {"owner": owner}

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


async def _json(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if len(raw) > MAX_BODY_BYTES:
        raise MsdError(f"body larger than {MAX_BODY_BYTES} bytes")
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise MsdError("body is not JSON") from None
    if not isinstance(body, dict):
        raise MsdError("body must be a JSON object")
    return body


def _keyword(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value.strip()) <= MAX_KEYWORD_CHARS:
        raise MsdError(f"keyword must be 1-{MAX_KEYWORD_CHARS} characters")
    return value.strip().casefold()


def _hops(body: dict[str, Any]) -> tuple[str, ...]:
    hops = body.get("hops", [])
    if not isinstance(hops, list) or len(hops) > 64 or not all(isinstance(h, str) for h in hops):
        raise MsdError("hops must be a list of at most 64 domain names")
    return tuple(hops)
