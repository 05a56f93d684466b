"""Register a session with its domain's URS, which hands it to the domain's designated MSD.

One call normally does both: the URS stores the session and pushes it to the designated
MSD (urs.indexing). When the URS could not (no designated MSD known, no MSD key), the
client asks the MSD itself to index the session by its id. `keep_alive` repeats the
registration with the owner token until cancelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import aiohttp
import dns.resolver

from client.errors import ClientError
from urs.indexing import INDEXED_HEADER
from urs.locate import LocateError, UrsLocation, locate_urs


class UrsUnreachable(ClientError):
    """No connection to this URS replica: the request never reached it, try the next."""


@dataclasses.dataclass(frozen=True)
class Registration:
    """What the URS answered to a POST /sessions."""

    uri: str
    token: str | None
    created: bool
    # The designated MSD's answer when the URS handed it the session, else None.
    directory: dict[str, Any] | None = None


async def register_with_urs(
    http: aiohttp.ClientSession, *, base_url: str, domain: str, session: dict[str, Any],
    wait: bool = False,
) -> Registration:
    """POST the session; an id already taken is reported (created=False), not raised."""
    params = {"wait": "true"} if wait else None
    try:
        async with http.post(f"{base_url}/sessions", json=session, params=params) as response:
            text = await response.text()
            if response.status == 201:
                body = json.loads(text)
                directory = ({"uri": body["uri"], "routed": body.get("routed", [])}
                             if body.get("indexed") else None)
                return Registration(uri=body["uri"], token=body["token"], created=True,
                                    directory=directory)
            if response.status == 409:
                return Registration(uri=f"mcast.{domain}/{session.get('id')}", token=None,
                                    created=False)
            raise ClientError(f"{base_url} refused session {session.get('id')!r}: "
                              f"{response.status} {_errors(text)}")
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise UrsUnreachable(f"cannot reach the URS at {base_url}: {exc}") from None
    except aiohttp.ClientError as exc:
        raise ClientError(f"cannot reach the URS at {base_url}: {exc}") from None


def _errors(text: str) -> str:
    try:
        errors = json.loads(text)["errors"]
        return "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    except (ValueError, KeyError, TypeError):
        return text[:200]


async def register_everywhere(
    http: aiohttp.ClientSession,
    *,
    domain: str,
    session: dict[str, Any],
    dns_server: tuple[str, int] | None,
    token: str | None = None,
    wait: bool = False,
    location: UrsLocation | None = None,
    dns_cache: dns.resolver.Cache | None = None,
) -> tuple[Registration, dict[str, Any]]:
    """Register with the domain's URS (or update it with `token`) and so with its MSD.

    The answer's second part is the MSD's: the URI and its keyword routes (`"pending"`
    unless `wait`, then each route's owner). The MSD indexes only what the URS holds:
    the URS pushes it, or the MSD fetches it by id. `dns_cache` keeps DNS answers for
    their TTL across calls (urs.locate.locate_urs).
    """
    from client.search import designated_msd  # search pulls in the query language

    if location is None:
        try:
            location = await locate_urs(domain, dns_server=dns_server, cache=dns_cache)
        except LocateError as exc:
            raise ClientError(str(exc)) from None
    replicas = [endpoint.base_url for endpoint in location.endpoints]
    registration = await _first_reachable(replicas, lambda base_url: register_with_urs(
        http, base_url=base_url, domain=domain, session=session, wait=wait))
    if not registration.created:
        if token is None:
            raise ClientError(f"{registration.uri} is already registered; give its owner "
                              "token (--token) to update it")
        registration = await _first_reachable(replicas, lambda base_url: update_with_urs(
            http, base_url=base_url, domain=domain, session=session, token=token, wait=wait))
    if registration.directory is not None:
        return registration, registration.directory
    msd = await designated_msd(domain, dns_server=dns_server, http=http, location=location)
    body = {"id": session.get("id"), "wait": wait}
    try:
        async with http.post(f"{msd}/sessions", json=body) as response:
            answer: dict[str, Any] = await response.json()
            if response.status != 200:
                raise ClientError(f"the MSD of {domain} refused {registration.uri}: "
                                  f"{answer.get('error', answer)}")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ClientError(f"the MSD of {domain} at {msd}: {exc}") from None
    return registration, answer


async def _first_reachable(
    replicas: list[str], attempt: Callable[[str], Awaitable[Registration]]
) -> Registration:
    """`attempt` at each URS replica in DNS's order until one is reached (a dead replica
    never saw the request, so the next may take it)."""
    for number, base_url in enumerate(replicas):
        try:
            return await attempt(base_url)
        except UrsUnreachable:
            if number == len(replicas) - 1:
                raise
    raise AssertionError("unreachable: DNS gave at least one replica")


async def update_with_urs(
    http: aiohttp.ClientSession, *, base_url: str, domain: str, session: dict[str, Any],
    token: str, wait: bool = False,
) -> Registration:
    """PUT new parameters (and a fresh expiry) with the owner token."""
    session_id = session.get("id")
    body = {k: v for k, v in session.items() if k != "id"}
    headers = {"Authorization": f"Bearer {token}"}
    params = {"wait": "true"} if wait else None
    try:
        async with http.put(f"{base_url}/{session_id}", json=body, headers=headers,
                            params=params) as response:
            text = await response.text()
            if response.status != 200:
                raise ClientError(f"{base_url} refused the update of {session_id!r}: "
                                  f"{response.status} {_errors(text)}")
            indexed = response.headers.get(INDEXED_HEADER, "").startswith("yes")
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise UrsUnreachable(f"cannot reach the URS at {base_url}: {exc}") from None
    except aiohttp.ClientError as exc:
        raise ClientError(f"cannot reach the URS at {base_url}: {exc}") from None
    uri = f"mcast.{domain}/{session_id}"
    # With wait, the routes' owners are only in the MSD's own answer: ask it (idempotent).
    directory = {"uri": uri, "routed": "pending"} if indexed and not wait else None
    return Registration(uri=uri, token=token, created=False, directory=directory)


async def keep_alive(
    http: aiohttp.ClientSession,
    *,
    domain: str,
    session: dict[str, Any],
    token: str,
    dns_server: tuple[str, int] | None,
    interval_s: float,
    report: Callable[[str], None],
) -> NoReturn:
    """Register the session again every `interval_s` (ttl/3) until cancelled.

    Each round is `register_everywhere` with the owner token: the URS's PUT gives a fresh
    expiry and the MSD re-indexes and re-routes the record with it. A round that fails is
    reported and the next comes on schedule (two more chances before the expiry). A
    session that expired meanwhile (say, the host slept) is registered anew, and its new
    owner token is used from then on and reported.
    """
    loop = asyncio.get_running_loop()
    due = loop.time() + interval_s
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        due = max(due + interval_s, loop.time())  # a late round does not make the next early
        try:
            registration, answer = await register_everywhere(
                http, domain=domain, session=session, dns_server=dns_server, token=token)
        except (ClientError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            report(f"refresh of {session.get('id')!r} failed, trying again in "
                   f"{interval_s:.0f} s: {exc}")
            continue
        if registration.created and registration.token is not None:
            token = registration.token
            report(f"{registration.uri} had expired and is registered again; "
                   f"new owner token: {token}")
        routed = answer.get("routed", [])
        failed = [r for r in routed if "error" in r] if isinstance(routed, list) else []
        if failed:
            report(f"{len(failed)} keyword record(s) of {registration.uri} not routed yet; "
                   "its MSD retries them")
