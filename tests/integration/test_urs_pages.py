"""The URS's pages over real HTTP on 127.0.0.1: the landing page's ways to watch, and the
search page over the domain's own store and over a (fake) designated MSD's one-call search."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient

from tests.integration.urs_support import (
    MSD_KEY,
    ROOT_DOMAIN,
    Client,
    FakeClock,
    register,
    settings,
    start,
)

pytestmark = pytest.mark.integration

HTML = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
GAINESVILLE = {"place": "Gainesville, FL", "lat": 29.6516, "lon": -82.3248}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, tmp_path: Path, clock: FakeClock) -> Client:
    return await start(aiohttp_client, settings(tmp_path), clock=clock)


def text_of(page: str) -> str:
    """Roughly what a person reads: tags dropped, entities unescaped, spaces collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


def result_links(page: str) -> list[str]:
    table = page.split('id="results-table"', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<td><a href="([^"]+)">', table)


# --- landing page ------------------------------------------------------------------------


async def test_landing_page_has_every_way_to_watch(client: Client) -> None:
    await register(client, id="ssm", network="ssm", source="192.0.2.10", group="232.1.1.1",
                   keywords=["jazz", "live"], **GAINESVILLE)
    response = await client.get("/ssm", headers=HTML)
    assert response.status == 200
    assert "form-action 'self'" in response.headers["Content-Security-Policy"]
    page = await response.text()
    seen = text_of(page)
    assert '<a href="amt://192.0.2.10@232.1.1.1:5004">' in page
    assert "ffplay rtp://192.0.2.10@232.1.1.1:5004" in seen  # no application: ffplay
    assert "ffplay -protocol_whitelist file,rtp,udp ssm.sdp" in seen
    assert f"mdns open mcast.{ROOT_DOMAIN}/ssm" in seen
    assert 'href="/search?q=jazz&amp;in=all"' in page  # each keyword searches the directory
    for landmark in ("<header>", '<nav aria-label="Directory">', '<main id="main">', "<footer>"):
        assert landmark in page
    assert "Gainesville, FL" in seen and "29.65160, -82.32480" in seen
    assert "expires 2023-11-14 23:13:20 UTC" in seen


async def test_asm_landing_page_has_no_amt_link(client: Client) -> None:
    await register(client)
    page = await (await client.get("/jazz-night", headers=HTML)).text()
    assert "amt://" not in page


# --- search page: this domain ----------------------------------------------------------


async def register_three(client: Client) -> None:
    await register(client, id="near", title="Jazz near", keywords=["jazz", "live"],
                   **GAINESVILLE)
    await register(client, id="far", title="Jazz far", keywords=["jazz"], place="Miami, FL",
                   lat=25.7617, lon=-80.1918)
    await register(client, id="blues", title="jazz", keywords=["blues", "a_b"])


async def test_empty_search_page_is_the_form_and_the_query_language(client: Client) -> None:
    response = await client.get("/search")
    assert response.status == 200 and response.content_type == "text/html"
    page = await response.text()
    assert '<form method="get" action="/search" role="search"' in page
    assert '<label for="q">' in page and 'id="q" name="q"' in page
    assert "<legend>Where to search</legend>" in page
    assert "How to write a query" in page and "and_expr" in page  # msd.query.GRAMMAR
    assert 'id="results"' not in page  # no query, no results section


async def test_domain_search_ranks_by_distance_and_links_to_landing_pages(
    client: Client,
) -> None:
    await register_three(client)
    response = await client.get("/search", params={"q": "jazz near:29.65,-82.32 within:600",
                                                   "in": "domain"})
    assert response.status == 200
    page = await response.text()
    assert result_links(page) == ["/near", "/far"]  # nearest first; "blues" is titled jazz only
    seen = text_of(page)
    assert "2 sessions found in level0.testdomain.info" in seen
    assert re.search(r"Jazz near mcast\.level0\.testdomain\.info/near Gainesville, FL 0\.\d km",
                     seen), seen
    assert re.search(r"Jazz far .* Miami, FL 4\d\d\.\d km", seen), seen
    assert 'href="/search?q=jazz+near%3A29.65%2C-82.32+within%3A600&amp;in=domain&amp;' \
        'format=m3u"' in page


async def test_domain_search_m3u_and_json(client: Client) -> None:
    await register_three(client)
    query = {"q": "(jazz OR blues) -live", "in": "domain"}
    m3u = await client.get("/search", params=query | {"format": "m3u"})
    assert m3u.status == 200 and m3u.content_type == "audio/x-mpegurl"
    assert await m3u.text() == (
        "#EXTM3U\n"  # one keyword matched each: then by title
        f"#EXTINF:-1,jazz (mcast.{ROOT_DOMAIN}/blues)\nrtp://@239.1.2.3:5004\n"
        f"#EXTINF:-1,Jazz far (mcast.{ROOT_DOMAIN}/far)\nrtp://@239.1.2.3:5004\n")
    answer = await (await client.get("/search", params=query | {"format": "json"})).json()
    assert [(s["id"], s["page"]) for s in answer["sessions"]] == [("blues", "/blues"),
                                                                 ("far", "/far")]
    assert answer["found"] == 2 and answer["in"] == "domain"


async def test_domain_search_takes_keywords_literally(client: Client, clock: FakeClock) -> None:
    await register_three(client)
    await register(client, id="axb", keywords=["axb"])
    answer = await (await client.get("/search", params={"q": "a_b", "in": "domain",
                                                        "format": "json"})).json()
    assert [s["id"] for s in answer["sessions"]] == ["blues"]  # LIKE's _ is not a wildcard
    clock.advance(3601)  # every session expires
    answer = await (await client.get("/search", params={"q": "jazz", "in": "domain",
                                                        "format": "json"})).json()
    assert answer["sessions"] == []


@pytest.mark.timeout(120)  # the first place name loads the city list: seconds on a busy host
async def test_domain_search_by_place_name(client: Client) -> None:
    await register_three(client)
    answer = await (await client.get("/search", params={
        "q": 'jazz near:"Gainesville, FL" within:20', "in": "domain", "format": "json"})).json()
    assert [s["id"] for s in answer["sessions"]] == ["near"]
    assert answer["sessions"][0]["distance_km"] < 20


@pytest.mark.parametrize(("params", "status", "field"), [
    ({"q": "jazz OR", "in": "domain"}, 400, "q"),
    ({"q": "NOT jazz", "in": "all"}, 400, "q"),  # refused here, before asking any MSD
    ({"q": "jazz", "in": "everywhere"}, 400, "in"),
    ({"q": "jazz", "format": "pdf"}, 400, "format"),
    ({"q": "", "format": "json"}, 400, "q"),
    ({"q": "jazz", "in": "all"}, 503, "in"),  # no designated MSD in this test
])
async def test_search_refusals_name_the_field(
    client: Client, params: dict[str, str], status: int, field: str,
) -> None:
    json_response = await client.get("/search", params={"format": "json"} | params)
    assert json_response.status == status
    [error] = (await json_response.json())["errors"]
    assert error["field"] == field
    if (field == "q" and params.get("q")) or status == 503:  # a person sees these on the page
        page = await client.get("/search", params=params)
        assert page.status == status and page.content_type == "text/html"
        assert error["message"].split("(")[0] in text_of(await page.text())


# --- search page: the whole hierarchy, through the designated MSD ------------------------


@pytest.fixture
async def fake_msd() -> AsyncIterator[dict[str, Any]]:
    """An MSD that answers GET /search with one session of ours and one of another domain."""
    state: dict[str, Any] = {"asked": []}

    async def search(request: web.Request) -> web.Response:
        state["asked"].append(request.query["q"])
        if request.query["q"] == "boom":
            return web.json_response({"error": "owner unreachable"}, status=502)
        other = {"id": "gig", "title": "Gig elsewhere", "keywords": ["jazz"],
                 "group": "239.9.9.9", "port": 6000, "uri": "mcast.other.example/gig",
                 "domain": "other.example", "expires_at": 2e9, "updated_at": 1.7e9,
                 "distance_km": 12.3456}
        return web.json_response({"query": request.query["q"], "home": ROOT_DOMAIN,
                                  "sessions": [state["ours"], other]})

    async def index(request: web.Request) -> web.Response:
        return web.json_response({"routed": "pending"})

    app = web.Application()
    app.router.add_get("/search", search)
    app.router.add_post("/sessions", index)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    state["port"] = server.port
    yield state
    await server.close()


async def test_whole_directory_search_goes_through_the_designated_msd(
    client: Client, fake_msd: dict[str, Any],
) -> None:
    await register(client)
    fake_msd["ours"] = (await (await client.get("/jazz-night")).json()) | {"distance_km": None}
    announce = {"address": "127.0.0.1", "port": fake_msd["port"], "term": 1, "ttl": 600}
    response = await client.put("/bootstrap/designated", json=announce,
                                headers={"Authorization": f"Bearer {MSD_KEY}"})
    assert response.status == 200
    page = await (await client.get("/search", params={"q": 'jazz near:"Gainesville, FL"'})).text()
    assert fake_msd["asked"] == ['jazz near:"Gainesville, FL"']  # the place goes as it is
    # Our own session links here; without a DNS server, another domain's links to its bookmark.
    assert result_links(page) == ["/jazz-night", "http://mcast.other.example/gig"]
    assert "12.3 km" in text_of(page) and "2 sessions found in the whole directory" in \
        text_of(page)
    failed = await client.get("/search", params={"q": "boom"})
    assert failed.status == 503
    assert "could not search the directory (502: owner unreachable)" in text_of(
        await failed.text())
