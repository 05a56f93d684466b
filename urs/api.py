"""The URS's HTTP routes: register, resolve, update, bootstrap, health and metrics (aiohttp).

Policy for bad input: a bad request gets a 4xx whose body names the field and the rule,
`{"errors": [{"field", "message"}]}`, and changes nothing; a handler bug gets a 500
without a traceback and a log line; a database outage gets a 503.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError

from msd.http_limits import BodyTimeout, BodyTooLarge, ClientGone, ConnectionGuard, read_body
from msd.ratelimit import TokenBuckets, retry_after
from msd.schema import FieldError, Session, SessionRecord, field_errors
from urs.bootstrap import BootstrapService, DesignatedUpdate, MemberUpdate, ParentLocator
from urs.errors import (
    IdTakenError,
    SessionNotFoundError,
    StoreError,
    TermConflictError,
    TokenRejectedError,
    UrsError,
)
from urs.indexing import INDEXED_HEADER, MsdIndexer
from urs.load import LoadMeter, load_middleware
from urs.metrics import UrsMetrics
from urs.negotiate import negotiate
from urs.pages import CONTENT_SECURITY_POLICY, render_landing, render_not_found, render_search
from urs.playlist import m3u_playlist
from urs.sdp import session_sdp
from urs.search import BadQuery, SearchUnavailable, UrsSearch, Where
from urs.settings import UrsSettings
from urs.store import SessionStore, session_uri

log = logging.getLogger(__name__)

JSON = "application/json"
SDP = "application/sdp"
HTML = "text/html"
M3U = "audio/x-mpegurl"
# What GET /<id> can answer, in the order that wins a tie (JSON for programs by default).
RECORD_OFFERS = (JSON, SDP, HTML)
FORMATS = {"json": JSON, "sdp": SDP, "html": HTML, "m3u": M3U}
SEARCH_FORMATS = ("html", "json", "m3u")
TOKEN_MAX_CHARS = 256
MSD_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
LIST_LIMIT_DEFAULT = 100
LIST_LIMIT_MAX = 500

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class UrsContext:
    """What the handlers share; the store and bootstrap service exist once the app started."""

    settings: UrsSettings
    clock: Callable[[], float]
    metrics: UrsMetrics
    locator: ParentLocator | None = None
    # In flight and recent rate, for GET /health: how the DNS server ranks replicas.
    load: LoadMeter = dataclasses.field(default_factory=LoadMeter)
    store_: SessionStore | None = None
    bootstrap_: BootstrapService | None = None
    indexer_: MsdIndexer | None = None
    search_: UrsSearch | None = None
    monotonic: Callable[[], float] = time.monotonic  # the rate limits' clock
    register_buckets: TokenBuckets = dataclasses.field(init=False)
    list_buckets: TokenBuckets = dataclasses.field(init=False)
    connections: ConnectionGuard = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.register_buckets = TokenBuckets(self.settings.register_limit)
        self.list_buckets = TokenBuckets(self.settings.list_limit)
        self.connections = ConnectionGuard(self.settings.http_limits)

    @property
    def store(self) -> SessionStore:
        if self.store_ is None:
            raise UrsError("the URS has not started: its database is not open")
        return self.store_

    @property
    def bootstrap(self) -> BootstrapService:
        if self.bootstrap_ is None:
            raise UrsError("the URS has not started: its bootstrap service is not ready")
        return self.bootstrap_

    @property
    def indexer(self) -> MsdIndexer:
        if self.indexer_ is None:
            raise UrsError("the URS has not started: it cannot reach its MSD yet")
        return self.indexer_

    @property
    def search(self) -> UrsSearch:
        if self.search_ is None:
            raise UrsError("the URS has not started: it cannot search yet")
        return self.search_


CONTEXT = web.AppKey("urs_context", UrsContext)


class RequestRejected(UrsError):
    """A request the URS refuses: the status, the reason counted, and the errors to show."""

    def __init__(
        self,
        status: int,
        errors: Sequence[FieldError],
        *,
        reason: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.status = status
        self.errors = list(errors)
        self.reason = reason
        self.headers = headers or {}


def add_routes(app: web.Application) -> None:
    app.middlewares.append(load_middleware(app[CONTEXT].load, clock=time.monotonic))
    app.middlewares.append(observe)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/sessions", register)
    app.router.add_get("/sessions", list_sessions)  # beside the POST: one resource, two methods
    app.router.add_get("/bootstrap", bootstrap_document)
    app.router.add_get("/bootstrap/designated", designated_get)
    app.router.add_put("/bootstrap/designated", designated_put)
    app.router.add_put("/bootstrap/msds/{msd_id}", member_put)
    app.router.add_get("/search", search)  # before /{id}: "search" is a reserved id
    app.router.add_get("/{id}", resolve)
    app.router.add_put("/{id}", replace)


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into the error shape, and count and time every request."""
    context = request.app[CONTEXT]
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    with context.metrics.latency.labels(route=route).time():
        try:
            response = await handler(request)
        except RequestRejected as exc:
            context.metrics.rejected.labels(reason=exc.reason).inc()
            response = _errors(exc.status, exc.errors, headers=exc.headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            if exc.status == 413:
                context.metrics.rejected.labels(reason="too_large").inc()
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            field, message = "request", exc.reason
            if exc.status == 413:
                field, message = "body", exc.text or message
            elif exc.status == 404:
                message = f"no such path: {request.path} (sessions are at /<id>)"
            response = _error(exc.status, field=field, message=message, headers=headers)
        except StoreError as exc:
            log.error("%s %s: %s", request.method, request.path, exc)
            response = _error(503, field="server", message="the session database is unavailable")
        except Exception:
            # A bug: the client learns only that it happened, the log learns where.
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = _error(500, field="server", message="internal error; see the URS log")
    context.metrics.requests.labels(
        route=route, method=request.method, status=str(response.status)
    ).inc()
    return response


async def register(request: web.Request) -> web.Response:
    """POST /sessions: validate, take the id, hand back the URI and the owner token.

    The record then goes to the domain's designated MSD (urs.indexing); the answer says
    whether it was indexed. `?wait=true` waits until every keyword route has its owner."""
    context = request.app[CONTEXT]
    domain = context.settings.domain
    _throttle(request, context.register_buckets)
    session = _validate_session(await _read_json(request))
    token = secrets.token_urlsafe(32)
    try:
        record = await context.store.create(domain, session, token=token, now=context.clock())
    except IdTakenError as exc:
        taken = FieldError(field="id", message=str(exc))
        raise RequestRejected(409, [taken], reason="taken") from None
    context.metrics.registrations.inc()
    log.info("registered %s (expires in %d s)", record.uri, session.ttl)
    indexed = await context.indexer.push(record, wait=_wait(request))
    return web.json_response(
        {"uri": record.uri, "token": token, "expires_at": record.expires_at} | indexed,
        status=201,
        headers={"Location": f"/{record.id}"},
    )


async def list_sessions(request: web.Request) -> web.Response:
    """GET /sessions?after=<id>&limit=<n>: the domain's unexpired sessions, a page at a time.

    Pages follow id order; `next` is the `after` of the next page (null on the last)."""
    context = request.app[CONTEXT]
    _throttle(request, context.list_buckets)
    after = request.query.get("after", "")
    limit_text = request.query.get("limit", str(LIST_LIMIT_DEFAULT))
    if len(after) > 63:
        raise RequestRejected(400, [FieldError(field="after", message=(
            "after must be a session id (at most 63 characters)"))], reason="invalid")
    if not re.fullmatch(r"[0-9]{1,4}", limit_text) or not 1 <= int(limit_text) <= LIST_LIMIT_MAX:
        raise RequestRejected(400, [FieldError(field="limit", message=(
            f"limit must be a whole number 1-{LIST_LIMIT_MAX}"))], reason="invalid")
    limit = int(limit_text)
    records = await context.store.list_active(
        context.settings.domain, now=context.clock(), after=after, limit=limit)
    following = records[-1].id if len(records) == limit else None
    return web.json_response(
        {"domain": context.settings.domain, "sessions": [_record_json(r) for r in records],
         "next": following},
        headers={"Cache-Control": "no-cache"})


async def resolve(request: web.Request) -> web.Response:
    """GET /<id>: the record as JSON, SDP, an HTML page or an M3U playlist."""
    context = request.app[CONTEXT]
    session_id = request.match_info["id"]
    wanted = _wanted_format(request)
    now = context.clock()
    record = await context.store.get(context.settings.domain, session_id, now=now)
    if record is None:
        return _not_found(context, session_id, html=wanted == HTML)
    headers = {"Cache-Control": "no-cache", "Vary": "Accept"}
    if wanted == SDP:
        page_url = str(request.url.with_query(None))
        headers["Content-Disposition"] = f'attachment; filename="{record.id}.sdp"'
        return web.Response(
            text=session_sdp(record, page_url=page_url), content_type=SDP, headers=headers
        )
    if wanted == M3U:
        headers["Content-Disposition"] = f'attachment; filename="{record.id}.m3u"'
        return web.Response(text=m3u_playlist([record]), content_type=M3U, headers=headers)
    if wanted == HTML:
        # Relative links: they resolve against this very URL, whatever host served it.
        page = render_landing(
            record,
            now=now,
            sdp_href="?format=sdp",
            json_href="?format=json",
            m3u_href="?format=m3u",
        )
        return web.Response(text=page, content_type=HTML, headers=headers | _html_headers())
    return web.json_response(_record_json(record), headers=headers)


async def search(request: web.Request) -> web.Response:
    """GET /search?q=<query>&in=all|domain[&format=html|json|m3u]: the search page.

    `in=domain` searches this domain's sessions in the URS's own store; `in=all` (the
    default) the whole directory through the designated MSD's one-call search."""
    context = request.app[CONTEXT]
    domain = context.settings.domain
    text = request.query.get("q", "")
    where_text = request.query.get("in", Where.ALL.value)
    fmt = request.query.get("format", "html").lower()
    if fmt not in SEARCH_FORMATS:
        raise RequestRejected(400, [FieldError(field="format", message=(
            f"format must be one of {', '.join(SEARCH_FORMATS)}"))], reason="bad_format")
    if where_text not in {w.value for w in Where}:
        raise RequestRejected(400, [FieldError(field="in", message=(
            "in must be all (the whole directory) or domain (this domain's sessions)"))],
            reason="invalid")
    where = Where(where_text)
    headers = {"Cache-Control": "no-cache"}
    if not text.strip():
        if fmt == "html":  # the empty form, with the query language
            page = render_search(domain=domain, query=text, where=where)
            return web.Response(text=page, content_type=HTML, headers=headers | _html_headers())
        raise RequestRejected(400, [FieldError(field="q", message=(
            "give a query, e.g. q=jazz"))], reason="invalid")
    status, field, error = 200, "", ""
    try:
        outcome = await context.search.search(text, where=where)
    except BadQuery as exc:
        status, field, error = 400, "q", str(exc)
    except SearchUnavailable as exc:
        status, field, error = 503, "in", str(exc)
    outcome_label = {200: "ok", 400: "bad_query", 503: "unavailable"}[status]
    context.metrics.searches.labels(where=where.value, outcome=outcome_label).inc()
    if fmt == "html":
        if status != 200:
            page = render_search(domain=domain, query=text, where=where, error=error)
        else:
            page = render_search(domain=domain, query=text, where=where,
                                 results=outcome.results, found=outcome.found)
        return web.Response(text=page, status=status, content_type=HTML,
                            headers=headers | _html_headers())
    if status != 200:
        return _error(status, field=field, message=error)
    if fmt == "m3u":
        headers["Content-Disposition"] = 'attachment; filename="mdns-search.m3u"'
        playlist = m3u_playlist((r.session for r in outcome.results), with_uri=True)
        return web.Response(text=playlist, content_type=M3U, headers=headers)
    return web.json_response(
        {"query": text, "in": where.value, "domain": domain, "found": outcome.found,
         "sessions": [r.to_json() for r in outcome.results]}, headers=headers)


async def replace(request: web.Request) -> web.Response:
    """PUT /<id>: the owner replaces the parameters; the URI stays, the expiry is refreshed."""
    context = request.app[CONTEXT]
    domain = context.settings.domain
    session_id = request.match_info["id"]
    _throttle(request, context.register_buckets)
    token = _bearer_token(request)
    try:
        # The owner is checked before the body is read: strangers learn nothing of the rules.
        await context.store.check_owner(domain, session_id, token=token, now=context.clock())
        data = await _read_json(request)
        if isinstance(data, dict) and "id" not in data:
            data = data | {"id": session_id}
        session = _validate_session(data)
        if session.id != session_id:
            message = f"id in the body ({session.id}) must equal the id in the path ({session_id})"
            raise RequestRejected(422, [FieldError(field="id", message=message)], reason="invalid")
        assert token is not None  # check_owner accepted it
        record = await context.store.replace(domain, session, token=token, now=context.clock())
    except SessionNotFoundError:
        return _not_found(context, session_id, html=False)
    except TokenRejectedError:
        why = "no bearer token" if token is None else "a wrong token"
        log.warning("refused update of %s from %s: %s", session_uri(domain, session_id),
                    request.remote, why)
        _reject_auth(403, "the owner token is missing or wrong (Authorization: Bearer <token>)")
    context.metrics.updates.inc()
    log.info("updated %s (expires in %d s)", record.uri, session.ttl)
    indexed = await context.indexer.push(record, wait=_wait(request))
    # The body stays the record; whether the directory has the update goes in a header.
    state = "yes" if indexed["indexed"] else " ".join(f"no; {indexed['reason']}".split())
    return web.json_response(_record_json(record), headers={INDEXED_HEADER: state[:300]})


async def bootstrap_document(request: web.Request) -> web.Response:
    """GET /bootstrap: the channels, mode, parent and designated MSDs of this domain."""
    return web.json_response(await request.app[CONTEXT].bootstrap.document())


async def designated_get(request: web.Request) -> web.Response:
    """GET /bootstrap/designated: this domain's own soft state, what a child URS asks for."""
    return web.json_response(await request.app[CONTEXT].bootstrap.own_designated())


def _check_msd_key(request: web.Request, *, what: str) -> None:
    """MSD → URS calls carry the domain's MSD key as a bearer token."""
    key = request.app[CONTEXT].settings.msd_key
    token = _bearer_token(request)
    if key is None:
        _reject_auth(403, f"{what} updates are disabled on this URS (no msd_key set)")
    if token is None:
        log.warning("refused %s update from %s: no bearer key", what, request.remote)
        _reject_auth(401, "the MSD key is required (Authorization: Bearer <msd_key>)",
                     headers={"WWW-Authenticate": 'Bearer realm="urs"'})
    if not secrets.compare_digest(token.encode(), key.encode()):
        log.warning("refused %s update from %s: wrong key", what, request.remote)
        _reject_auth(403, "wrong MSD key")


async def member_put(request: web.Request) -> web.Response:
    """PUT /bootstrap/msds/<msd_id>: an MSD daemon reports itself; answers the bootstrap document.

    One request per heartbeat does both jobs of a daemon's URS poll: stay listed, and
    learn the designated MSDs of this domain and of the parent.
    """
    context = request.app[CONTEXT]
    _check_msd_key(request, what="MSD member")
    msd_id = request.match_info["msd_id"]
    if not MSD_ID_PATTERN.fullmatch(msd_id):
        raise RequestRejected(422, [FieldError(field="msd_id", message=(
            "msd_id must be 1-64 characters of a-z, A-Z, 0-9, '-' and '_'"))], reason="invalid")
    try:
        update = MemberUpdate.model_validate(await _read_json(request))
    except ValidationError as exc:
        raise RequestRejected(422, field_errors(exc), reason="invalid") from None
    await context.bootstrap.set_member(msd_id, update)
    return web.json_response(await context.bootstrap.document(wait_for_parent=False))


async def designated_put(request: web.Request) -> web.Response:
    """PUT /bootstrap/designated: the elected MSD announces itself, with the domain's MSD key."""
    context = request.app[CONTEXT]
    _check_msd_key(request, what="designated-MSD")
    data = await _read_json(request)
    try:
        update = DesignatedUpdate.model_validate(data)
    except ValidationError as exc:
        raise RequestRejected(422, field_errors(exc), reason="invalid") from None
    try:
        entry = await context.bootstrap.set_designated(update)
    except TermConflictError as exc:
        raise RequestRejected(409, [FieldError(field="term", message=str(exc))],
                              reason="stale_term") from None
    log.info("designated MSD of %s is %s:%d (term %d)", context.settings.domain,
             entry.address, entry.port, entry.term)
    return web.json_response({"domain": context.settings.domain, "designated": entry.to_json()})


async def health(request: web.Request) -> web.Response:
    """GET /health: 200 with the active session count and the load (requests in flight, and
    per second over the last 10 s), 503 when the database does not answer."""
    context = request.app[CONTEXT]
    domain = context.settings.domain
    try:
        count = await context.store.count_active(domain, now=context.clock())
    except StoreError as exc:
        log.error("health check failed: %s", exc)
        return web.json_response(
            {"status": "unavailable", "domain": domain, "error": "database unreachable"},
            status=503,
        )
    return web.json_response({"status": "ok", "domain": domain, "sessions": count,
                              "load": context.load.report(time.monotonic())})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: the Prometheus text format."""
    context = request.app[CONTEXT]
    try:
        count = await context.store.count_active(context.settings.domain, now=context.clock())
    except StoreError:
        pass  # the gauge keeps its last value; /health reports the outage
    else:
        context.metrics.active_sessions.set(count)
    body = context.metrics.exposition()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _wait(request: web.Request) -> bool:
    return request.query.get("wait", "").lower() in {"1", "true", "yes"}


def _wanted_format(request: web.Request) -> str:
    name = request.query.get("format")
    if name is not None:
        if name.lower() not in FORMATS:
            choices = ", ".join(FORMATS)
            raise RequestRejected(
                400, [FieldError(field="format", message=f"format must be one of {choices}")],
                reason="bad_format",
            )
        return FORMATS[name.lower()]
    # Nothing acceptable: answer JSON anyway, which is more useful than a bare 406.
    return negotiate(request.headers.get("Accept"), RECORD_OFFERS) or JSON


def _throttle(request: web.Request, buckets: TokenBuckets) -> None:
    """429 with Retry-After when this client address has used up its rate."""
    context = request.app[CONTEXT]
    client = request.remote or "unknown"
    wait = buckets.take(client, now=context.monotonic())
    if wait is None:
        return
    seconds = retry_after(wait)
    limit = buckets.limit
    message = (f"too many requests from {client}: at most {limit.rate:g} a second "
               f"({limit.burst} at once); retry in {seconds} s")
    raise RequestRejected(429, [FieldError(field="request", message=message)],
                          reason="rate_limited", headers={"Retry-After": seconds})


async def _read_json(request: web.Request) -> Any:
    settings = request.app[CONTEXT].settings
    try:
        raw = await read_body(request, limit=settings.max_body_bytes,
                              timeout_s=settings.http_limits.body_timeout_s)
    except BodyTooLarge as exc:
        raise RequestRejected(413, [FieldError(field="body", message=str(exc))],
                              reason="too_large") from None
    except BodyTimeout as exc:
        raise RequestRejected(408, [FieldError(field="body", message=str(exc))],
                              reason="slow_body") from None
    except ClientGone as exc:
        raise RequestRejected(400, [FieldError(field="body", message=str(exc))],
                              reason="client_gone") from None
    return parse_json_body(raw)


def parse_json_body(raw: bytes) -> Any:
    """A request body as JSON: strict UTF-8, no NaN or Infinity, bounded nesting; a 400
    RequestRejected naming the problem otherwise (never another exception)."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        message = f"body is not a JSON document ({type(exc).__name__}: {exc})"[:300]
        raise RequestRejected(
            400, [FieldError(field="body", message=message)], reason="bad_json"
        ) from None


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _validate_session(data: Any) -> Session:
    try:
        return Session.model_validate(data)
    except ValidationError as exc:
        raise RequestRejected(422, field_errors(exc), reason="invalid") from None


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > TOKEN_MAX_CHARS:
        return None
    return token


def _reject_auth(status: int, message: str, *, headers: dict[str, str] | None = None) -> NoReturn:
    raise RequestRejected(
        status, [FieldError(field="authorization", message=message)], reason="auth",
        headers=headers,
    )


def _not_found(context: UrsContext, session_id: str, *, html: bool) -> web.Response:
    domain = context.settings.domain
    if html:
        page = render_not_found(domain=domain, session_id=session_id)
        return web.Response(text=page, status=404, content_type=HTML, headers=_html_headers())
    message = f"no session {session_uri(domain, session_id)}: never registered, or expired"
    return _error(404, field="id", message=message)


def _record_json(record: SessionRecord) -> dict[str, Any]:
    return record.model_dump(mode="json")


def _html_headers() -> dict[str, str]:
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def _error(
    status: int, *, field: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return _errors(status, [FieldError(field=field, message=message)], headers=headers)


def _errors(
    status: int, errors: Sequence[FieldError], *, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"errors": [error.model_dump() for error in errors]}
    return web.json_response(body, status=status, headers=headers)
