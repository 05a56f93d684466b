"""The URS bootstrap document and designated-MSD soft state, over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pytest_aiohttp import AiohttpClient

from tests.integration.urs_support import (
    CHILD_DOMAIN,
    MSD_KEY,
    ROOT_DOMAIN,
    Client,
    FakeClock,
    base_url,
    bearer,
    settings,
    start,
)
from urs.app import bind_socket, create_app, purge_expired, serve
from urs.errors import SettingsError, UrsError
from urs.settings import GroupPort, MulticastMode, UrsSettings
from vdns.mds import load_mds

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROOT_KEY = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="  # the root domain's Ed25519 public key
ANNOUNCE: dict[str, Any] = {"address": "127.0.0.1", "port": 7000, "term": 3, "ttl": 30}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def root(aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock) -> Client:
    return await start(aiohttp_client, settings(tmp_path / "root", public_key=ROOT_KEY),
                       clock=clock)


async def announce(client: Client, **changes: Any) -> Any:
    return await client.put("/bootstrap/designated", json=ANNOUNCE | changes,
                            headers=bearer(MSD_KEY))


# --- the document --------------------------------------------------------------------


async def test_root_bootstrap_document(root: Client) -> None:
    response = await root.get("/bootstrap")
    assert response.status == 200
    assert await response.json() == {
        "domain": ROOT_DOMAIN,
        "parent": "void",
        "pmcast": {"group": "239.0.0.100", "port": 2001},
        "cmcast": {"group": "239.0.0.101", "port": 2002},
        "msd_local": {"group": "239.0.0.102", "port": 2003},
        "anycast": {"group": "127.0.0.1", "port": 2004},
        "multicast_mode": "asm",
        "designated": None,
        "last_term": 0,
        "public_key": ROOT_KEY,
        "msds": [],
        "parent_designated": None,
        "parent_error": None,
    }


MEMBER = {"address": "127.0.0.1", "port": 40001, "pid": 4242, "role": "backup", "ttl": 3}


async def test_members_report_themselves_and_get_the_bootstrap_document(
    root: Client, clock: FakeClock
) -> None:
    response = await root.put("/bootstrap/msds/msd-a", json=MEMBER, headers=bearer(MSD_KEY))
    assert response.status == 200
    document = await response.json()
    assert document["domain"] == ROOT_DOMAIN and document["multicast_mode"] == "asm"
    assert document["msds"] == [{"id": "msd-a", "address": "127.0.0.1:40001", "pid": 4242,
                                 "role": "backup", "expires_at": clock.now + 3}]
    await root.put("/bootstrap/msds/msd-b", json=MEMBER | {"port": 40002, "role": "designated"},
                   headers=bearer(MSD_KEY))
    await root.put("/bootstrap/msds/msd-a", json=MEMBER | {"role": "candidate"},
                   headers=bearer(MSD_KEY))
    listed = (await (await root.get("/bootstrap")).json())["msds"]
    assert [(m["id"], m["role"]) for m in listed] == [("msd-a", "candidate"),
                                                      ("msd-b", "designated")]
    clock.advance(3)  # soft state: a daemon that stops reporting drops out
    assert (await (await root.get("/bootstrap")).json())["msds"] == []


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "field"),
    [
        ("/bootstrap/msds/msd-a", MEMBER, {}, 401, "request"),
        ("/bootstrap/msds/msd-a", MEMBER, {"Authorization": "Bearer wrong-key-wrong-key"}, 403,
         "request"),
        ("/bootstrap/msds/bad%20id", MEMBER, None, 422, "msd_id"),
        ("/bootstrap/msds/msd-a", MEMBER | {"role": "king"}, None, 422, "role"),
        ("/bootstrap/msds/msd-a", MEMBER | {"address": "239.1.1.1"}, None, 422, "address"),
        ("/bootstrap/msds/msd-a", MEMBER | {"ttl": 0}, None, 422, "ttl"),
        ("/bootstrap/msds/msd-a", MEMBER | {"pid": "1"}, None, 422, "pid"),
    ],
)
async def test_member_reports_are_checked_and_change_nothing_when_refused(
    root: Client, path: str, body: dict[str, Any], headers: dict[str, str] | None,
    status: int, field: str,
) -> None:
    response = await root.put(path, json=body,
                              headers=bearer(MSD_KEY) if headers is None else headers)
    assert response.status == status
    errors = (await response.json())["errors"]
    assert errors[0]["field"] == field or status in (401, 403)
    assert (await (await root.get("/bootstrap")).json())["msds"] == []


def test_settings_from_an_mds_file(tmp_path: Path) -> None:
    config = load_mds(CONFIGS / "scenario1" / "domain01-dom00.mds")
    urs = UrsSettings.from_mds(config, data_dir=tmp_path, multicast_mode="ssm", msd_key=MSD_KEY)
    assert urs.domain == "dom00.level0.testdomain.info"
    assert urs.parent_domain == "level0.testdomain.info"
    assert urs.parent_dns == ("127.0.0.1", 2000)
    assert urs.cmcast == GroupPort("239.0.0.103", 2007)
    assert urs.pmcast == GroupPort("239.0.0.100", 2001)
    assert urs.msd_local == GroupPort("239.0.0.104", 2009)
    assert (urs.host, urs.port) == ("127.0.0.1", 2008)
    assert urs.multicast_mode is MulticastMode.SSM
    assert urs.database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/urs.sqlite"
    assert MSD_KEY not in repr(urs)
    root = UrsSettings.from_mds(load_mds(CONFIGS / "scenario1" / "domain10-level0.mds"),
                                data_dir=tmp_path)
    assert root.is_root and root.parent_dns is None and root.msd_key is None


@pytest.mark.parametrize(("changes", "words"), [
    ({"multicast_mode": "igmp"}, "multicast_mode"),
    ({"purge_interval_s": 0}, "purge_interval_s"),
    ({"max_body_bytes": 10}, "max_body_bytes"),
    ({"msd_key": "short"}, "msd_key"),
    ({"cmcast": GroupPort("not-ip", 1)}, "cmcast"),
    ({"parent_domain": "x.org"}, "parent_dns"),
])
def test_settings_refuse_bad_values(tmp_path: Path, changes: dict[str, Any], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        settings(tmp_path, **changes)


# --- designated soft state -----------------------------------------------------------


async def test_designated_set_and_read(root: Client, clock: FakeClock) -> None:
    response = await announce(root)
    assert response.status == 200
    expected = {"address": "127.0.0.1", "port": 7000, "term": 3, "expires_at": clock.now + 30}
    assert (await response.json())["designated"] == expected
    own = await (await root.get("/bootstrap/designated")).json()
    assert own == {"domain": ROOT_DOMAIN, "designated": expected, "last_term": 3,
                   "public_key": ROOT_KEY}
    assert (await (await root.get("/bootstrap")).json())["designated"] == expected


def test_a_public_key_that_is_not_one_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="public_key: a public key is 32 bytes"):
        settings(tmp_path, public_key="AAAA")


async def test_designated_needs_the_msd_key(root: Client) -> None:
    response = await root.put("/bootstrap/designated", json=ANNOUNCE)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = await root.put("/bootstrap/designated", json=ANNOUNCE,
                              headers=bearer("not-the-key-at-all"))
    assert response.status == 403
    assert (await (await root.get("/bootstrap/designated")).json())["designated"] is None


async def test_designated_disabled_without_a_key(
    aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock
) -> None:
    client = await start(aiohttp_client, settings(tmp_path, msd_key=None), clock=clock)
    response = await client.put("/bootstrap/designated", json=ANNOUNCE, headers=bearer(MSD_KEY))
    assert response.status == 403
    assert "disabled" in (await response.json())["errors"][0]["message"]


@pytest.mark.parametrize(("changes", "field"), [
    ({"ttl": 0}, "ttl"),
    ({"ttl": 601}, "ttl"),
    ({"ttl": "30"}, "ttl"),
    ({"port": 0}, "port"),
    ({"port": True}, "port"),
    ({"term": -1}, "term"),
    ({"address": "239.1.1.1"}, "address"),
    ({"address": "nowhere"}, "address"),
    ({"extra": 1}, "extra"),
])
async def test_designated_bad_input_is_422(
    root: Client, changes: dict[str, Any], field: str
) -> None:
    response = await announce(root, **changes)
    assert response.status == 422
    assert field in [e["field"] for e in (await response.json())["errors"]]


async def test_designated_terms(root: Client, clock: FakeClock) -> None:
    assert (await announce(root, term=5)).status == 200
    response = await announce(root, term=4, address="127.0.0.2")
    assert response.status == 409
    [error] = (await response.json())["errors"]
    assert error["field"] == "term" and "term 5" in error["message"]
    assert (await announce(root, term=5, port=7001)).status == 200  # the holder refreshes
    assert (await announce(root, term=6, address="127.0.0.3")).status == 200
    own = (await (await root.get("/bootstrap/designated")).json())["designated"]
    assert (own["address"], own["term"]) == ("127.0.0.3", 6)
    clock.advance(30)  # expired: a lower term (a restarted election) may take over
    own = await (await root.get("/bootstrap/designated")).json()
    assert own["designated"] is None
    assert own["last_term"] == 6  # but the highest term is remembered, purge or not,
    await purge_expired(root.server.app)  # so that a new claim can go above it
    assert (await (await root.get("/bootstrap")).json())["last_term"] == 6
    assert (await announce(root, term=1)).status == 200


# --- the parent's designated MSD -----------------------------------------------------


async def test_parent_designated_comes_from_the_parent_urs(
    aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock, root: Client
) -> None:
    asked: list[str] = []

    async def locator(domain: str, *, deadline: float) -> str:
        asked.append(domain)
        return base_url(root)

    child = await start(aiohttp_client, settings(tmp_path / "child", domain=CHILD_DOMAIN,
                                                 parent=ROOT_DOMAIN), clock=clock, locator=locator)
    document = await (await child.get("/bootstrap")).json()
    assert document["parent"] == ROOT_DOMAIN
    assert document["parent_designated"] is None and document["parent_error"] is None

    await announce(root, term=2)
    await announce(child, term=9, port=7100)
    document = await (await child.get("/bootstrap")).json()
    # The parent's key rides with its designated entry: what the child's MSDs pin it by.
    assert document["parent_designated"] == {
        "address": "127.0.0.1", "port": 7000, "term": 2, "expires_at": clock.now + 30,
        "public_key": ROOT_KEY,
    }
    assert document["public_key"] is None  # this child URS was given no key of its own
    assert document["designated"]["term"] == 9
    assert asked == [ROOT_DOMAIN, ROOT_DOMAIN]
    # The child's own soft state stays its own: no recursion into the parent.
    own = await (await child.get("/bootstrap/designated")).json()
    assert own["domain"] == CHILD_DOMAIN and own["designated"]["port"] == 7100


async def test_parent_answer_is_cached(
    aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock, root: Client
) -> None:
    calls = 0

    async def locator(domain: str, *, deadline: float) -> str:
        nonlocal calls
        calls += 1
        return base_url(root)

    child = await start(aiohttp_client, settings(tmp_path / "child", domain=CHILD_DOMAIN,
                                                 parent=ROOT_DOMAIN, parent_cache_s=60),
                        clock=clock, locator=locator)
    documents = await asyncio.gather(*(child.get("/bootstrap") for _ in range(5)))
    assert all(d.status == 200 for d in documents)
    assert calls == 1


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_parent_errors_are_reported_not_raised(
    aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock, root: Client
) -> None:
    answers: dict[str, Any] = {}

    async def locator(domain: str, *, deadline: float) -> str:
        what = answers["next"]
        if isinstance(what, Exception):
            raise what
        if what == "hang":
            await asyncio.sleep(30)
        return str(what)

    child = await start(aiohttp_client, settings(tmp_path / "child", domain=CHILD_DOMAIN,
                                                 parent=ROOT_DOMAIN, parent_timeout_s=0.3),
                        clock=clock, locator=locator)
    other = await start(aiohttp_client, settings(tmp_path / "other", domain="elsewhere.org"),
                        clock=clock)
    cases: list[tuple[object, str]] = [
        (UrsError("mcast.level0.testdomain.info has no address record"), "no address record"),
        (f"http://127.0.0.1:{closed_port()}", "ClientConnectorError"),
        ("hang", "locating the URS of parent domain level0.testdomain.info took over 0.3 s"),
        (base_url(other), "answered for domain 'elsewhere.org'"),
        (base_url(root) + "/health/x", "answered HTTP 404"),
    ]
    for answer, words in cases:
        answers["next"] = answer
        document = await (await child.get("/bootstrap")).json()
        assert document["parent_designated"] is None
        assert words in document["parent_error"], document["parent_error"]
        assert ROOT_DOMAIN in document["parent_error"]
    metrics = await (await child.get("/metrics")).text()
    assert 'urs_parent_lookups_total{outcome="error"} 5.0' in metrics


async def test_default_locator_uses_dns_and_reports_its_failure(
    aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))  # a DNS server that never answers
        urs = settings(tmp_path, domain=CHILD_DOMAIN, parent=ROOT_DOMAIN,
                       parent_dns=silent.getsockname(), parent_timeout_s=0.5)
        client = await aiohttp_client(create_app(urs, clock=clock))
        document = await (await client.get("/bootstrap")).json()
    assert document["parent_designated"] is None
    assert document["parent_error"].startswith(
        f"cannot reach the URS of parent domain {ROOT_DOMAIN}: "
    )
    assert f"mcast.{ROOT_DOMAIN}" in document["parent_error"]


# --- serving on a socket bound beforehand --------------------------------------------


async def test_serve_on_a_pre_bound_socket(
    aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock
) -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(serve(settings(tmp_path), sock=sock, stop=stop, clock=clock))
    try:
        async with aiohttp.ClientSession() as http:
            async with asyncio.timeout(5):
                async with http.get(f"http://127.0.0.1:{port}/health") as response:
                    assert response.status == 200
                    assert (await response.json())["domain"] == ROOT_DOMAIN
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


async def test_cancelling_serve_cleans_up_and_propagates(tmp_path: Path, clock: FakeClock) -> None:
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    task = asyncio.create_task(serve(settings(tmp_path, purge_interval_s=0.01), sock=sock,
                                     stop=asyncio.Event(), clock=clock))
    async with aiohttp.ClientSession() as http, asyncio.timeout(5):
        for _ in range(100):  # until it answers
            try:
                async with http.get(f"http://127.0.0.1:{port}/health") as response:
                    assert response.status == 200
                    break
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    leftovers = [t for t in asyncio.all_tasks() if t.get_name().startswith("urs-purge")]
    assert leftovers == []
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
