"""Resolve a bookmark: DNS finds the domain's URS, the URS returns the session behind the id."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import aiohttp
from pydantic import ValidationError

from client.errors import ClientError
from client.uri import McastUri
from msd.schema import SessionRecord
from urs.locate import LocateError, UrsEndpoint, UrsLocation, locate_urs, with_failover

DEFAULT_TIMEOUT_S = 5.0


@dataclasses.dataclass(frozen=True)
class Resolved:
    """A session found behind a URI, with where it was found."""

    uri: McastUri
    urs: UrsLocation
    record: SessionRecord
    raw: dict[str, Any]


async def resolve(
    uri: McastUri,
    *,
    dns_server: tuple[str, int] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Resolved:
    """Find the URS of the URI's domain and fetch the record (JSON) for its id."""
    deadline = time.monotonic() + timeout
    location = await _locate(uri, dns_server=dns_server, deadline=deadline)
    body, answered = await fetch_from(uri, location=location, accept="application/json",
                                      deadline=deadline)
    try:
        raw = json.loads(body)
        record = SessionRecord.model_validate(raw)
    except (ValueError, ValidationError) as exc:
        raise ClientError(
            f"the URS at {answered.base_url} sent a malformed record: {exc}"
        ) from None
    # `urs` names the replica that answered; `urs.replicas` every one DNS gave.
    location = dataclasses.replace(location, host=answered.host, port=answered.port)
    return Resolved(uri=uri, urs=location, record=record, raw=raw)


async def resolve_sdp(
    uri: McastUri,
    *,
    dns_server: tuple[str, int] | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> str:
    """The session's SDP description, as the URS writes it."""
    deadline = time.monotonic() + timeout
    location = await _locate(uri, dns_server=dns_server, deadline=deadline)
    return await fetch(uri, location=location, accept="application/sdp", deadline=deadline)


async def _locate(
    uri: McastUri, *, dns_server: tuple[str, int] | None, deadline: float
) -> UrsLocation:
    try:
        return await locate_urs(
            uri.domain, dns_server=dns_server, timeout=max(0.1, deadline - time.monotonic())
        )
    except LocateError as exc:
        raise ClientError(str(exc)) from None


async def fetch(uri: McastUri, *, location: UrsLocation, accept: str, deadline: float) -> str:
    """GET the id from the URS, mapping every failure to one clear ClientError."""
    body, _ = await fetch_from(uri, location=location, accept=accept, deadline=deadline)
    return body


async def fetch_from(
    uri: McastUri, *, location: UrsLocation, accept: str, deadline: float
) -> tuple[str, UrsEndpoint]:
    """`fetch`, and which replica answered: the next one is tried when one is unreachable."""

    async def get(endpoint: UrsEndpoint, timeout: aiohttp.ClientTimeout) -> tuple[str, UrsEndpoint]:
        headers = {"Accept": accept, "Host": _host_header(uri, endpoint.port)}
        async with aiohttp.ClientSession(timeout=timeout) as http, http.get(
            f"{endpoint.base_url}/{uri.id}", headers=headers, allow_redirects=False
        ) as response:
            body = await response.text()
            if response.status == 404:
                raise ClientError(f"no session {uri.id!r} at {uri.host} (unknown or expired)")
            if response.status != 200:
                raise ClientError(
                    f"the URS of {uri.domain} at {endpoint.base_url} answered "
                    f"{response.status} {response.reason}"
                )
            return body, endpoint

    where = ", ".join(e.base_url for e in location.endpoints)
    try:
        return await with_failover(location, get, deadline=deadline)
    except aiohttp.ClientConnectorError as exc:
        raise ClientError(
            f"the URS of {uri.domain} at {where} is not reachable ({exc.os_error})"
        ) from None
    except TimeoutError:
        raise ClientError(f"the URS of {uri.domain} at {where} did not answer in time") from None
    except aiohttp.ClientError as exc:
        raise ClientError(f"talking to the URS of {uri.domain} at {where}: {exc}") from None


def _host_header(uri: McastUri, port: int) -> str:
    return uri.host if port == 80 else f"{uri.host}:{port}"


def format_table(resolved: Resolved) -> str:
    """A readable two-column table of every field of the record."""
    rows: list[tuple[str, str]] = [("uri", str(resolved.uri)), ("urs", resolved.urs.base_url)]
    for name, value in resolved.raw.items():
        if name in ("uri",):
            continue
        if value is None or value == "":
            continue
        if isinstance(value, list):
            value = ", ".join(str(item) for item in value)
        elif name in ("expires_at", "updated_at") and isinstance(value, int | float):
            value = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(value))
        rows.append((name, str(value)))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)
