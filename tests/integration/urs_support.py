"""What the URS integration tests share: a fake clock, settings, a valid session, a client."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from urs.app import create_app
from urs.bootstrap import ParentLocator
from urs.errors import UrsError
from urs.settings import GroupPort, UrsSettings

ROOT_DOMAIN = "level0.testdomain.info"
CHILD_DOMAIN = "dom00.level0.testdomain.info"
MSD_KEY = "a-test-msd-key-of-enough-length"
START = 1_700_000_000.0

SESSION: dict[str, Any] = {
    "id": "jazz-night",
    "title": "Jazz night",
    "description": "Live from the club",
    "keywords": ["jazz", "live"],
    "group": "239.1.2.3",
    "port": 5004,
}

Client = TestClient[web.Request, web.Application]


@dataclasses.dataclass
class FakeClock:
    """Unix seconds that move only when a test says so."""

    now: float = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def no_parent(domain: str, *, deadline: float) -> str:
    raise UrsError(f"no DNS in this test (asked for {domain})")


def settings(
    data_dir: Path,
    *,
    domain: str = ROOT_DOMAIN,
    parent: str | None = None,
    **changes: Any,
) -> UrsSettings:
    values: dict[str, Any] = {
        "domain": domain,
        "data_dir": data_dir,
        "pmcast": GroupPort("239.0.0.100", 2001),
        "cmcast": GroupPort("239.0.0.101", 2002),
        "msd_local": GroupPort("239.0.0.102", 2003),
        "anycast": GroupPort("127.0.0.1", 2004),
        "msd_key": MSD_KEY,
        "purge_interval_s": 3600.0,
        "parent_cache_s": 0.0,
        "parent_timeout_s": 2.0,
    }
    if parent is not None:
        values |= {"parent_domain": parent, "parent_dns": ("127.0.0.1", 2000)}
    return UrsSettings(**(values | changes))


async def start(
    aiohttp_client: AiohttpClient,
    urs_settings: UrsSettings,
    *,
    clock: FakeClock,
    locator: ParentLocator = no_parent,
) -> Client:
    """A URS on a real socket at 127.0.0.1, port 0, and a client for it."""
    return await aiohttp_client(create_app(urs_settings, clock=clock, parent_locator=locator))


def base_url(client: Client) -> str:
    return f"http://{client.host}:{client.port}"


async def register(client: Client, **changes: Any) -> dict[str, Any]:
    response = await client.post("/sessions", json=SESSION | changes)
    assert response.status == 201, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
