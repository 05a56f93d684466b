"""Register a session with its domain's URS and MSD over HTTP, once or kept alive."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any, NoReturn

import aiohttp

from client.errors import ClientError


@dataclasses.dataclass(frozen=True)
class Registration:
    """What the URS answered to a POST /sessions."""

    uri: str
    token: str | None
    created: bool


async def register_with_urs(
    http: aiohttp.ClientSession, *, base_url: str, domain: str, session: dict[str, Any]
) -> Registration:
    """POST the session; an id already taken is reported (created=False), not raised."""
    try:
        async with http.post(f"{base_url}/sessions", json=session) as response:
            text = await response.text()
            if response.status == 201:
                body = json.loads(text)
                return Registration(uri=body["uri"], token=body["token"], created=True)
            if response.status == 409:
                return Registration(uri=f"mcast.{domain}/{session.get('id')}", token=None,
                                    created=False)
            raise ClientError(f"{base_url} refused session {session.get('id')!r}: "
                              f"{response.status} {_errors(text)}")
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
) -> tuple[Registration, dict[str, Any]]:
    """Register with the domain's URS (or update it with `token`), then with its MSD.

    The MSD indexes what the URS holds: it fetches the record by id, so only sessions
    the URS accepted reach the directory.
    """
    from client.search import designated_msd  # search pulls in the query language
    from urs.locate import LocateError, locate_urs

    try:
        location = await locate_urs(domain, dns_server=dns_server)
    except LocateError as exc:
        raise ClientError(str(exc)) from None
    registration = await register_with_urs(http, base_url=location.base_url, domain=domain,
                                           session=session)
    if not registration.created:
        if token is None:
            raise ClientError(f"{registration.uri} is already registered; give its owner "
                              "token (--token) to update it")
        registration = await update_with_urs(http, base_url=location.base_url, domain=domain,
                                             session=session, token=token)
    msd = await designated_msd(domain, dns_server=dns_server, http=http, location=location)
    try:
        async with http.post(f"{msd}/sessions", json={"id": session.get("id")}) as response:
            answer: dict[str, Any] = await response.json()
            if response.status != 200:
                raise ClientError(f"the MSD of {domain} refused {registration.uri}: "
                                  f"{answer.get('error', answer)}")
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ClientError(f"the MSD of {domain} at {msd}: {exc}") from None
    return registration, answer


async def update_with_urs(
    http: aiohttp.ClientSession, *, base_url: str, domain: str, session: dict[str, Any],
    token: str,
) -> Registration:
    """PUT new parameters (and a fresh expiry) with the owner token."""
    session_id = session.get("id")
    body = {k: v for k, v in session.items() if k != "id"}
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with http.put(f"{base_url}/{session_id}", json=body, headers=headers) as response:
            text = await response.text()
            if response.status != 200:
                raise ClientError(f"{base_url} refused the update of {session_id!r}: "
                                  f"{response.status} {_errors(text)}")
    except aiohttp.ClientError as exc:
        raise ClientError(f"cannot reach the URS at {base_url}: {exc}") from None
    return Registration(uri=f"mcast.{domain}/{session_id}", token=token, created=False)


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
        failed = [r for r in answer.get("routed", []) if "error" in r]
        if failed:
            report(f"{len(failed)} keyword record(s) of {registration.uri} not routed yet; "
                   "its MSD retries them")
