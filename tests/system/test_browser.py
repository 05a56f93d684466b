"""The URS's pages in a real browser: headless Chromium (Debian's) driven by Playwright.

A demo hierarchy runs in this process (DNS, URS and MSD of edu, ufl.edu, mit.edu and
cise.ufl.edu on 127.0.0.1); the browser opens landing pages and the search page, finds
controls by their labels and roles as a screen reader would, submits queries and checks
what a person sees. Screenshots go to test-artifacts/screenshots/ at the repository root.
Skipped, with the reason, when Chromium or the playwright package is missing
(`deploy/quickstart system-packages` installs Chromium).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from client.register import register_everywhere
from tests.integration.test_msd_tree import _settled, _start, _wait
from vdns.harness import Hierarchy

try:
    from playwright.async_api import Browser, Page, async_playwright, expect
except ImportError:  # the test extra installs it; without it there is nothing to drive
    async_playwright = None

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
SAMPLES = ROOT / "configs" / "demo" / "sessions.json"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# TESTING.md: headless as root, nothing fetched from anywhere but the pages under test.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian package "
                       "'chromium'; deploy/quickstart system-packages installs it as root)"),
    pytest.mark.skipif(async_playwright is None, reason="the playwright package is missing "
                       "(pip install -e '.[test]')"),
    pytest.mark.timeout(240),  # a hierarchy to settle and a browser to start, on 2 busy cores
]

JAZZ_CLUB = {"id": "jazz-club", "title": "MIT jazz club", "keywords": ["jazz", "music"],
             "group": "239.255.7.7", "port": 5010, "place": "Cambridge, MA",
             "lat": 42.36, "lon": -71.09}


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    """The demo hierarchy with its sample sessions, and MIT's jazz club."""
    hierarchy = await _start(tmp_path, "demo")
    await _wait(hierarchy, lambda s: _settled(s, expected=4), timeout=60)
    samples: list[dict[str, Any]] = json.loads(SAMPLES.read_text())
    samples.append({"domain": "mit.edu", "session": JAZZ_CLUB})
    async with aiohttp.ClientSession() as http:
        for sample in samples:
            await register_everywhere(http, domain=sample["domain"], session=sample["session"],
                                      dns_server=hierarchy.root.dns_address, wait=True)
    yield hierarchy
    await hierarchy.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert async_playwright is not None and CHROMIUM is not None
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM,
                                                    args=CHROMIUM_ARGS)
        yield chromium
        await chromium.close()


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1100, "height": 900},
                                        accept_downloads=True)
    page = await context.new_page()
    page.set_default_timeout(15_000)
    yield page
    await context.close()


async def shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


async def download(page: Page, link_name: str) -> str:
    """Click a link the way a person does and read the file the browser saved."""
    async with page.expect_download() as started:
        await page.get_by_role("link", name=link_name).click()
    saved = await (await started.value).path()
    data = await asyncio.to_thread(Path(saved).read_bytes)
    return data.decode()  # as saved: SDP lines end CRLF


def urs(demo: Hierarchy, domain: str) -> str:
    return demo.domains[domain].urs_url


async def test_landing_pages_show_the_session_and_how_to_watch_it(
    demo: Hierarchy, page: Page,
) -> None:
    response = await page.goto(f"{urs(demo, 'ufl.edu')}/gators")
    assert response is not None and response.status == 200
    await expect(page).to_have_title("Gators football, live from the Swamp — mcast.ufl.edu/gators")
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        "Gators football, live from the Swamp")
    main = page.get_by_role("main")
    for seen in ("mcast.ufl.edu/gators", "Ben Hill Griffin Stadium, MPEG-TS over RTP.",
                 "Gainesville, Florida", "29.64990, -82.34860", "ffplay rtp://@239.255.0.150:5004",
                 "ffplay -protocol_whitelist file,rtp,udp gators.sdp",
                 "mdns open mcast.ufl.edu/gators", "This name stops resolving at"):
        await expect(main).to_contain_text(seen)
    for keyword in ("football", "gators", "sports", "live"):
        await expect(page.get_by_role("link", name=keyword, exact=True)).to_be_visible()
    parameters = page.get_by_role("table", name="Every parameter of mcast.ufl.edu/gators")
    await expect(parameters.get_by_role("row", name="group 239.255.0.150")).to_be_visible()
    await expect(parameters.get_by_role("row", name=re.compile(r"^expires \d{4}-"))) \
        .to_be_visible()
    for landmark in ("banner", "navigation", "main", "contentinfo"):
        await expect(page.get_by_role(landmark)).to_have_count(1)
    await shot(page, "landing-gators")

    sdp = await download(page, "Download the SDP file")
    assert sdp.startswith("v=0\r\n") and "c=IN IP4 239.255.0.150/127\r\n" in sdp
    assert "m=video 5004 RTP/AVP 33\r\n" in sdp
    m3u = await download(page, "M3U playlist")
    assert m3u == ("#EXTM3U\n#EXTINF:-1,Gators football, live from the Swamp\n"
                   "rtp://@239.255.0.150:5004\n")

    await page.goto(f"{urs(demo, 'cise.ufl.edu')}/jazz-night")
    amt = page.get_by_role("link", name="amt://10.1.2.3@232.1.1.1:5006")
    await expect(amt).to_have_attribute("href", "amt://10.1.2.3@232.1.1.1:5006")
    await expect(page.get_by_role("main")).to_contain_text("vlc udp://10.1.2.3@232.1.1.1:5006")
    await shot(page, "landing-ssm-jazz-night")

    missing = await page.goto(f"{urs(demo, 'ufl.edu')}/no-such-thing")
    assert missing is not None and missing.status == 404
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        "No session at mcast.ufl.edu/no-such-thing")


async def test_search_the_whole_directory_and_follow_a_result(
    demo: Hierarchy, page: Page,
) -> None:
    await page.goto(f"{urs(demo, 'ufl.edu')}/gators")
    await page.get_by_role("navigation").get_by_role("link", name="Search sessions").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Search multicast sessions")
    await expect(page.get_by_role("heading", name="How to write a query")).to_be_visible()
    await shot(page, "search-empty")

    await page.get_by_label("Keywords and filters").fill(
        "jazz OR live near:29.65,-82.35 within:2000")
    await page.get_by_label(re.compile("The whole directory")).check()
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_role("heading", level=2, name=re.compile("found"))).to_have_text(
        "3 sessions found in the whole directory")
    rows = page.get_by_role("table", name=re.compile("^Sessions matching")) \
        .get_by_role("row")
    await expect(rows).to_have_count(4)  # the header row and three sessions, best first
    texts = [" ".join(text.split()) for text in await rows.all_inner_texts()]
    assert texts[1].startswith("CISE jazz night mcast.cise.ufl.edu/jazz-night"), texts
    assert texts[2].startswith("Gators football, live from the Swamp mcast.ufl.edu/gators"), texts
    assert texts[3].startswith("MIT jazz club mcast.mit.edu/jazz-club Cambridge, MA"), texts
    distances = [float(re.search(r"([\d,.]+) km", t).group(1).replace(",", ""))  # type: ignore[union-attr]
                 for t in texts[1:]]
    assert distances[0] < 2 and distances[1] < 2 and 1500 < distances[2] < 1800
    await shot(page, "search-results-directory")

    playlist = await download(page, "Download as M3U")
    assert playlist.splitlines() == [
        "#EXTM3U",
        "#EXTINF:-1,CISE jazz night (mcast.cise.ufl.edu/jazz-night)", "udp://10.1.2.3@232.1.1.1:5006",
        "#EXTINF:-1,Gators football, live from the Swamp (mcast.ufl.edu/gators)",
        "rtp://@239.255.0.150:5004",
        "#EXTINF:-1,MIT jazz club (mcast.mit.edu/jazz-club)", "rtp://@239.255.7.7:5010"]

    # Another domain's result links to that domain's own URS, found through DNS.
    await page.get_by_role("link", name="MIT jazz club").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text("MIT jazz club")
    assert page.url == f"{urs(demo, 'mit.edu')}/jazz-club"
    await expect(page.get_by_role("main")).to_contain_text("Cambridge, MA")
    await shot(page, "search-followed-to-mit")


async def test_search_one_domain_and_see_a_query_error(demo: Hierarchy, page: Page) -> None:
    await page.goto(f"{urs(demo, 'ufl.edu')}/search")
    await page.get_by_label("Keywords and filters").fill("jazz OR live")
    await page.get_by_label("Only the sessions of ufl.edu").check()
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_role("heading", level=2, name=re.compile("found"))).to_have_text(
        "1 session found in ufl.edu")  # cise.ufl.edu's jazz night is another domain's
    table = page.get_by_role("table", name=re.compile("^Sessions matching"))
    await expect(table.get_by_role("link")).to_have_text(["Gators football, live from the Swamp"])
    assert "in=domain" in page.url and "q=jazz+OR+live" in page.url  # a GET form: bookmarkable
    await shot(page, "search-results-domain")

    await page.get_by_label("Keywords and filters").fill("jazz OR")
    await page.get_by_role("button", name="Search").click()
    await expect(page.get_by_role("alert")).to_contain_text("OR at column 6 needs a term after it")
    await expect(page.get_by_label("Keywords and filters")).to_have_value("jazz OR")
    await shot(page, "search-query-error")
