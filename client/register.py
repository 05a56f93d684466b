"""Register a session with a URS over HTTP (the MSD part arrives with the sessions issue)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

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
