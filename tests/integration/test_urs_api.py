"""The URS over real HTTP on 127.0.0.1: register, resolve, update, expire, persist, observe."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pytest_aiohttp import AiohttpClient
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.urs_support import (
    ROOT_DOMAIN,
    SESSION,
    Client,
    FakeClock,
    bearer,
    register,
    settings,
    start,
)
from urs.api import CONTEXT
from urs.app import purge_expired
from urs.store import SessionStore

pytestmark = pytest.mark.integration

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
DROP = object()  # a change that removes the field

# One invalid session per schema rule: (rule, changes, the field the 422 must name).
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("id charset", {"id": "Jazz Night"}, "id"),
    ("id length", {"id": "x" * 64}, "id"),
    ("id reserved", {"id": "health"}, "id"),
    ("id leading dot", {"id": ".jazz"}, "id"),
    ("id missing", {"id": DROP}, "id"),
    ("title empty", {"title": "  "}, "title"),
    ("title length", {"title": "t" * 201}, "title"),
    ("title single line", {"title": "a\nb"}, "title"),
    ("description length", {"description": "d" * 4001}, "description"),
    ("description control", {"description": "a\x00b"}, "description"),
    ("keywords missing", {"keywords": DROP}, "keywords"),
    ("keywords empty", {"keywords": []}, "keywords"),
    ("keywords count", {"keywords": [f"k{i}" for i in range(11)]}, "keywords"),
    ("keyword length", {"keywords": ["k" * 65]}, "keywords"),
    ("keyword forbidden", {"keywords": ["near:here"]}, "keywords"),
    ("keyword space", {"keywords": ["two words"]}, "keywords"),
    ("group not multicast", {"group": "10.0.0.1"}, "group"),
    ("group v6 not multicast", {"group": "2001:db8::1"}, "group"),
    ("group garbage", {"group": "239.1.2"}, "group"),
    ("port low", {"port": 0}, "port"),
    ("port high", {"port": 65536}, "port"),
    ("port boolean", {"port": True}, "port"),
    ("source required for ssm", {"network": "ssm"}, "source"),
    ("source unicast", {"network": "ssm", "source": "239.9.9.9"}, "source"),
    ("source same family", {"network": "ssm", "source": "2001:db8::1"}, "source"),
    ("fallback port missing", {"fallback_ip": "192.0.2.7"}, "fallback_port"),
    ("fallback ip missing", {"fallback_port": 6000}, "fallback_ip"),
    ("fallback ip unicast", {"fallback_ip": "239.1.1.1", "fallback_port": 6000}, "fallback_ip"),
    ("scope enum", {"scope": "planet"}, "scope"),
    ("network enum", {"network": "bsm"}, "network"),
    ("stream_type enum", {"stream_type": "tcp"}, "stream_type"),
    ("lat bound", {"lat": 91, "lon": 0}, "lat"),
    ("lon bound", {"lat": 0, "lon": -181}, "lon"),
    ("lat lon pair", {"lat": 29.6}, "lon"),
    ("place single line", {"place": "a\nb"}, "place"),
    ("application length", {"application": "a" * 65}, "application"),
    ("cli_args length", {"cli_args": "a" * 1025}, "cli_args"),
    ("mime syntax", {"mime": "video"}, "mime"),
    ("ttl low", {"ttl": 9}, "ttl"),
    ("ttl high", {"ttl": 7 * 24 * 3600 + 1}, "ttl"),
    ("unknown field", {"colour": "blue"}, "colour"),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock) -> Client:
    return await start(aiohttp_client, settings(tmp_path), clock=clock)


async def active_count(client: Client) -> int:
    response = await client.get("/health")
    assert response.status == 200
    count: int = (await response.json())["sessions"]
    return count


async def get_record(client: Client, session_id: str = "jazz-night") -> dict[str, Any]:
    response = await client.get(f"/{session_id}")
    assert response.status == 200, await response.text()
    record: dict[str, Any] = await response.json()
    return record


# --- POST /sessions ------------------------------------------------------------------


async def test_register_returns_uri_token_and_location(client: Client, clock: FakeClock) -> None:
    response = await client.post("/sessions", json=SESSION)
    assert response.status == 201
    body = await response.json()
    assert body["uri"] == f"mcast.{ROOT_DOMAIN}/jazz-night"
    assert len(body["token"]) >= 40
    assert body["expires_at"] == clock.now + 3600
    assert response.headers["Location"] == "/jazz-night"
    assert await active_count(client) == 1


@pytest.mark.parametrize(("rule", "changes", "field"), INVALID, ids=[c[0] for c in INVALID])
async def test_register_refuses_each_rule_and_stores_nothing(
    client: Client, rule: str, changes: dict[str, Any], field: str
) -> None:
    body = {k: v for k, v in (SESSION | changes).items() if v is not DROP}
    response = await client.post("/sessions", json=body)
    assert response.status == 422, rule
    errors = (await response.json())["errors"]
    assert field in [e["field"] for e in errors], errors
    assert all(e["message"] for e in errors)
    assert (await client.get("/jazz-night")).status == 404
    assert await active_count(client) == 0


@pytest.mark.parametrize(
    "raw", [b"{not json", b"", b'{"lat": NaN}', b"\xff\xfe", b"[" * 5000]
)
async def test_register_body_not_json_is_400(client: Client, raw: bytes) -> None:
    response = await client.post(
        "/sessions", data=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status == 400
    errors = (await response.json())["errors"]
    assert errors[0]["field"] == "body" and "not a JSON document" in errors[0]["message"]
    assert await active_count(client) == 0


async def test_register_not_an_object_is_422(client: Client) -> None:
    response = await client.post("/sessions", json=["jazz"])
    assert response.status == 422
    assert (await response.json())["errors"][0]["field"] == "body"


async def test_register_body_too_large_is_413(client: Client) -> None:
    huge = b'{"title": "' + b"x" * (70 * 1024) + b'"}'
    response = await client.post("/sessions", data=huge)
    assert response.status == 413
    assert (await response.json())["errors"][0]["field"] == "body"

    async def chunks() -> Any:  # no Content-Length: aiohttp's own limit applies
        for _ in range(80):
            yield b"x" * 1024

    response = await client.post("/sessions", data=chunks())
    assert response.status == 413
    assert (await response.json())["errors"][0]["field"] == "body"
    assert await active_count(client) == 0


async def test_register_taken_id_is_409(client: Client) -> None:
    await register(client)
    response = await client.post("/sessions", json=SESSION | {"title": "Another"})
    assert response.status == 409
    [error] = (await response.json())["errors"]
    assert error["field"] == "id"
    assert f"already taken in {ROOT_DOMAIN}" in error["message"]
    assert (await get_record(client))["title"] == "Jazz night"


async def test_concurrent_registrations_of_one_id_have_one_winner(client: Client) -> None:
    responses = await asyncio.gather(
        *(client.post("/sessions", json=SESSION | {"title": f"T{i}"}) for i in range(6))
    )
    assert sorted(r.status for r in responses) == [201] + [409] * 5
    assert await active_count(client) == 1


# --- GET /<id> -----------------------------------------------------------------------


async def test_get_json_by_default(client: Client) -> None:
    await register(client, lat=29.65, lon=-82.32, place="Gainesville")
    record = await get_record(client)
    assert record["uri"] == f"mcast.{ROOT_DOMAIN}/jazz-night"
    assert record["domain"] == ROOT_DOMAIN
    assert record["group"] == "239.1.2.3" and record["lat"] == 29.65
    assert "token" not in record and "token_sha256" not in record


async def test_get_sdp_by_accept_and_by_query(client: Client) -> None:
    await register(client)
    by_accept = await client.get("/jazz-night", headers={"Accept": "application/sdp"})
    by_query = await client.get("/jazz-night?format=sdp")
    for response in (by_accept, by_query):
        assert response.status == 200
        assert response.content_type == "application/sdp"
        text = await response.text()
        assert text.startswith("v=0\r\n")
        assert "m=video 5004 RTP/AVP 33\r\na=rtpmap:33 MP2T/90000\r\n" in text
        assert "c=IN IP4 239.1.2.3/127\r\n" in text


async def test_get_html_for_browsers(client: Client) -> None:
    await register(
        client,
        title="<b>Jazz & Blues</b>",
        place="Gainesville, FL",
        lat=29.65,
        lon=-82.32,
        application="vlc",
        cli_args="--network-caching=500",
    )
    response = await client.get("/jazz-night", headers={"Accept": BROWSER_ACCEPT})
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    page = await response.text()
    assert "&lt;b&gt;Jazz &amp; Blues&lt;/b&gt;" in page and "<b>Jazz" not in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert 'href="?format=sdp"' in page
    assert f"mcast.{ROOT_DOMAIN}/jazz-night" in page
    assert "Gainesville, FL" in page and "29.65000" in page and "-82.32000" in page
    assert "vlc --network-caching=500 rtp://@239.1.2.3:5004" in page
    assert "Live from the club" in page and "jazz" in page
    assert "2023-11-14 23:13:20 UTC" in page  # START + ttl 3600


async def test_get_m3u(client: Client) -> None:
    await register(client)
    response = await client.get("/jazz-night?format=m3u")
    assert response.status == 200
    assert await response.text() == "#EXTM3U\n#EXTINF:-1,Jazz night\nrtp://@239.1.2.3:5004\n"


async def test_get_unknown_format_is_400(client: Client) -> None:
    await register(client)
    response = await client.get("/jazz-night?format=pdf")
    assert response.status == 400
    assert (await response.json())["errors"][0]["field"] == "format"


async def test_get_unknown_is_404_json_and_html(client: Client) -> None:
    response = await client.get("/nobody")
    assert response.status == 404
    [error] = (await response.json())["errors"]
    assert error["field"] == "id" and f"mcast.{ROOT_DOMAIN}/nobody" in error["message"]
    page = await client.get("/nobody", headers={"Accept": BROWSER_ACCEPT})
    assert page.status == 404 and page.content_type == "text/html"
    assert f"No session at mcast.{ROOT_DOMAIN}/nobody" in await page.text()


# --- GET /sessions --------------------------------------------------------------------


async def test_list_pages_through_the_unexpired_sessions(
    client: Client, clock: FakeClock
) -> None:
    for number in range(5):
        await register(client, id=f"s{number}", ttl=100 if number == 2 else 3600)
    clock.advance(200)  # s2 has expired
    first = await client.get("/sessions", params={"limit": "2"})
    assert first.status == 200
    page = await first.json()
    assert [s["id"] for s in page["sessions"]] == ["s0", "s1"] and page["next"] == "s1"
    assert page["sessions"][0]["uri"] == f"mcast.{ROOT_DOMAIN}/s0"
    second = await (await client.get("/sessions", params={"after": "s1", "limit": "2"})).json()
    assert [s["id"] for s in second["sessions"]] == ["s3", "s4"] and second["next"] == "s4"
    last = await (await client.get("/sessions", params={"after": "s4"})).json()
    assert last == {"domain": ROOT_DOMAIN, "sessions": [], "next": None}
    everything = await (await client.get("/sessions")).json()
    assert [s["id"] for s in everything["sessions"]] == ["s0", "s1", "s3", "s4"]
    assert everything["next"] is None


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "501"}, {"limit": "x"},
                                   {"limit": "\u00b2"}, {"after": "a" * 64}])
async def test_list_refuses_bad_paging(client: Client, query: dict[str, str]) -> None:
    response = await client.get("/sessions", params=query)
    assert response.status == 400
    [error] = (await response.json())["errors"]
    assert error["field"] in ("limit", "after")


# --- PUT /<id> -----------------------------------------------------------------------


async def test_put_with_the_token_changes_the_group_not_the_uri(client: Client) -> None:
    created = await register(client)
    response = await client.put(
        "/jazz-night", json=SESSION | {"group": "239.9.9.9"}, headers=bearer(created["token"])
    )
    assert response.status == 200
    assert (await response.json())["group"] == "239.9.9.9"
    record = await get_record(client)
    assert record["uri"] == created["uri"] and record["group"] == "239.9.9.9"


async def test_put_may_omit_the_id(client: Client) -> None:
    created = await register(client)
    body = {k: v for k, v in SESSION.items() if k != "id"} | {"port": 6000}
    response = await client.put("/jazz-night", json=body, headers=bearer(created["token"]))
    assert response.status == 200
    assert (await get_record(client))["port"] == 6000


async def test_put_with_a_wrong_token_is_403_and_changes_nothing(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    await register(client)
    with caplog.at_level(logging.WARNING, logger="urs.api"):
        response = await client.put(
            "/jazz-night", json=SESSION | {"group": "239.9.9.9"}, headers=bearer("x" * 43)
        )
    assert response.status == 403
    assert (await response.json())["errors"][0]["field"] == "authorization"
    assert (await get_record(client))["group"] == "239.1.2.3"
    assert "refused update" in caplog.text and "wrong token" in caplog.text


async def test_put_without_a_token_is_403(client: Client, clock: FakeClock) -> None:
    await register(client)
    before = await get_record(client)
    clock.advance(5)
    for headers in ({}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}):
        response = await client.put("/jazz-night", json=SESSION | {"port": 6000}, headers=headers)
        assert response.status == 403
    assert await get_record(client) == before


async def test_put_checks_the_token_before_the_body(client: Client) -> None:
    await register(client)
    response = await client.put("/jazz-night", data=b"{not json", headers=bearer("wrong"))
    assert response.status == 403


async def test_put_with_a_bad_body_is_422_and_changes_nothing(client: Client) -> None:
    created = await register(client)
    response = await client.put(
        "/jazz-night", json=SESSION | {"port": 0}, headers=bearer(created["token"])
    )
    assert response.status == 422
    assert (await response.json())["errors"][0]["field"] == "port"
    assert (await get_record(client))["port"] == 5004


async def test_put_with_another_id_is_422(client: Client) -> None:
    created = await register(client)
    response = await client.put(
        "/jazz-night", json=SESSION | {"id": "other"}, headers=bearer(created["token"])
    )
    assert response.status == 422
    [error] = (await response.json())["errors"]
    assert error["field"] == "id" and "must equal the id in the path" in error["message"]
    assert (await client.get("/other")).status == 404


async def test_put_unknown_is_404(client: Client) -> None:
    response = await client.put("/nobody", json=SESSION, headers=bearer("x"))
    assert response.status == 404


# --- expiry --------------------------------------------------------------------------


async def test_expired_session_stops_resolving_and_frees_its_id(
    client: Client, clock: FakeClock
) -> None:
    created = await register(client, ttl=60)
    clock.advance(59)
    assert (await client.get("/jazz-night")).status == 200
    clock.advance(1)
    assert (await client.get("/jazz-night")).status == 404
    assert await active_count(client) == 0
    response = await client.put("/jazz-night", json=SESSION, headers=bearer(created["token"]))
    assert response.status == 404
    again = await register(client, title="Reborn")
    assert again["token"] != created["token"]
    assert (await get_record(client))["title"] == "Reborn"


async def test_put_before_expiry_refreshes_it(client: Client, clock: FakeClock) -> None:
    created = await register(client, ttl=60)
    clock.advance(50)
    response = await client.put(
        "/jazz-night", json=SESSION | {"ttl": 60}, headers=bearer(created["token"])
    )
    assert (await response.json())["expires_at"] == clock.now + 60
    clock.advance(50)  # 100 s after registering, 50 s after the refresh
    assert (await client.get("/jazz-night")).status == 200


def row_count(path: Path) -> int:
    with sqlite3.connect(path) as db:
        count: int = db.execute("SELECT count(*) FROM sessions").fetchone()[0]
        return count


async def test_purge_removes_expired_rows(
    aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock
) -> None:
    client = await start(aiohttp_client, settings(tmp_path, purge_interval_s=0.02), clock=clock)
    await register(client, ttl=60)
    await register(client, id="long", ttl=600)
    assert row_count(tmp_path / "urs.sqlite") == 2
    clock.advance(61)
    for _ in range(250):  # the purge task runs every 20 ms; give it up to 5 s
        if row_count(tmp_path / "urs.sqlite") == 1:
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the purge task did not delete the expired row")
    assert "urs_purged_total 1.0" in await (await client.get("/metrics")).text()
    assert await purge_expired(client.app) == 0


async def test_sqlite_runs_in_wal_mode(client: Client, tmp_path: Path) -> None:
    await register(client)
    with sqlite3.connect(tmp_path / "urs.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        [stored] = db.execute("SELECT token_sha256, body FROM sessions").fetchall()
    assert len(stored[0]) == 64 and "token" not in stored[1]


# --- persistence, health, metrics, errors --------------------------------------------


async def test_records_survive_a_restart(
    aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock
) -> None:
    first = await start(aiohttp_client, settings(tmp_path), clock=clock)
    created = await register(first)
    await first.close()
    second = await start(aiohttp_client, settings(tmp_path), clock=clock)
    assert (await get_record(second))["uri"] == created["uri"]
    response = await second.put(
        "/jazz-night", json=SESSION | {"port": 7000}, headers=bearer(created["token"])
    )
    assert response.status == 200
    assert (await second.post("/sessions", json=SESSION)).status == 409


async def test_health(client: Client) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "domain": ROOT_DOMAIN, "sessions": 0,
                                     "load": {"in_flight": 0, "rate": 0.0, "window_s": 10.0}}
    for _ in range(5):  # requests count as load; the health checks themselves do not
        await client.get("/nothing-here")
        await client.get("/health")
    load = (await (await client.get("/health")).json())["load"]
    assert load == {"in_flight": 0, "rate": 0.5, "window_s": 10.0}


async def test_health_is_503_when_the_database_is_unreachable(
    client: Client, tmp_path: Path
) -> None:
    context = client.app[CONTEXT]
    good = context.store_
    broken = SessionStore(create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/no/such/dir.db"))
    context.store_ = broken
    try:
        response = await client.get("/health")
        assert response.status == 503
        assert (await response.json())["status"] == "unavailable"
        response = await client.post("/sessions", json=SESSION)
        assert response.status == 503
        assert (await response.json())["errors"][0]["field"] == "server"
    finally:
        context.store_ = good
        await broken.close()


async def test_metrics_text_has_the_counters(client: Client) -> None:
    created = await register(client)
    await client.post("/sessions", json=SESSION)  # taken
    await client.post("/sessions", json=SESSION | {"port": 0})  # invalid
    await client.put("/jazz-night", json=SESSION, headers=bearer(created["token"]))
    await client.put("/jazz-night", json=SESSION, headers=bearer("wrong"))
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.content_type == "text/plain"
    text = await response.text()
    for line in (
        "urs_registrations_total 1.0",
        "urs_updates_total 1.0",
        'urs_rejected_total{reason="taken"} 1.0',
        'urs_rejected_total{reason="invalid"} 1.0',
        'urs_rejected_total{reason="auth"} 1.0',
        "urs_active_sessions 1.0",
        'urs_requests_total{method="POST",route="/sessions",status="201"} 1.0',
        'urs_requests_total{method="PUT",route="/{id}",status="403"} 1.0',
        "urs_purged_total 0.0",
        'urs_request_duration_seconds_count{route="/sessions"} 3.0',
    ):
        assert line in text, line


async def test_handler_bug_is_a_500_without_traceback(
    client: Client, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    await register(client)

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("urs.api.session_sdp", broken)
    with caplog.at_level(logging.ERROR, logger="urs.api"):
        response = await client.get("/jazz-night?format=sdp")
    assert response.status == 500
    text = await response.text()
    assert "secret internals" not in text and "Traceback" not in text
    assert (await response.json())["errors"][0]["field"] == "server"
    assert "secret internals" in caplog.text
    assert (await client.get("/health")).status == 200


async def test_unknown_paths_and_methods_use_the_error_shape(client: Client) -> None:
    response = await client.get("/a/b/c")
    assert response.status == 404
    assert "no such path: /a/b/c" in (await response.json())["errors"][0]["message"]
    response = await client.delete("/jazz-night")
    assert response.status == 405
    assert "PUT" in response.headers["Allow"]
    assert "errors" in await response.json()
