"""Abuse on real servers (127.0.0.1): floods, oversized input and slow clients are each bounded,
answered with a clear error, and counted in /metrics at the URS and the MSD."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from msd.api import ApiLimits
from msd.http_limits import HttpLimits
from msd.keyspace import key_of
from msd.ratelimit import RateLimit
from tests.integration.test_msd_tree import _settled, _start, _wait
from tests.integration.urs_support import SESSION, settings
from urs.app import bind_socket, create_app, make_runner, start_site
from vdns.harness import Hierarchy, ServerLimits

pytestmark = pytest.mark.integration

LIMITS = ServerLimits(
    http=HttpLimits(header_timeout_s=1.0, body_timeout_s=1.0),
    msd_api=ApiLimits(register=RateLimit(rate=0.5, burst=2), search=RateLimit(rate=1, burst=5)),
    urs_register=RateLimit(rate=0.5, burst=3),
    urs_list=RateLimit(rate=0.5, burst=2),
)


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    hierarchy = await _start(tmp_path, "demo", limits=LIMITS)
    await _wait(hierarchy, lambda s: _settled(s, expected=4), timeout=30)
    yield hierarchy
    await hierarchy.close()


async def _designated(http: aiohttp.ClientSession, urs: str) -> str:
    async with http.get(f"{urs}/bootstrap/designated") as response:
        found = (await response.json())["designated"]
    return f"http://{found['address']}:{found['port']}"


def _metric(text: str, name: str, **labels: str) -> float:
    """One sample of a Prometheus exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


async def _text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        return await response.text()


# --- floods ----------------------------------------------------------------------------------


async def test_registration_and_search_floods_get_429_with_retry_after_and_are_counted(
    demo: Hierarchy,
) -> None:
    urs = demo.domains["ufl.edu"].urs_url
    async with aiohttp.ClientSession() as http:
        statuses, waits = [], []
        for i in range(8):
            session = SESSION | {"id": f"flood-{i}", "keywords": ["flood"]}
            async with http.post(f"{urs}/sessions", json=session) as response:
                statuses.append(response.status)
                if response.status == 429:
                    waits.append(int(response.headers["Retry-After"]))
                    body = await response.json()
                    assert body["errors"][0]["field"] == "request"
                    assert "too many requests from 127.0.0.1" in body["errors"][0]["message"]
        assert statuses[:3] == [201, 201, 201] and set(statuses[3:]) == {429}, statuses
        assert all(wait >= 1 for wait in waits)
        for _ in range(4):
            async with http.get(f"{urs}/sessions") as response:
                statuses.append(response.status)
        assert statuses[-2:] == [429, 429]
        metrics = await _text(http, f"{urs}/metrics")
        assert _metric(metrics, "urs_rejected_total", reason="rate_limited") == 5 + 2

        # A flood of msd-probe at the root's MSD: 5 answered, then 429 ...
        edu = await _designated(http, demo.domains["edu"].urs_url)
        probe = {"key": f"{key_of('flood'):032x}"}
        answers = []
        for _ in range(12):
            async with http.post(f"{edu}/msd/probe", json=probe) as response:
                answers.append(response.status)
                if response.status == 429:
                    assert int(response.headers["Retry-After"]) >= 1
        assert answers[:5] == [200] * 5 and set(answers[5:]) == {429}, answers
        metrics = await _text(http, f"{edu}/metrics")
        assert _metric(metrics, "msd_http_rejected_total", domain="edu",
                       reason="rate_limited") == 7
        # ... while requests between MSDs, signed, pass through it unthrottled: a probe at
        # mit.edu (a leaf) for a key mit.edu does not own climbs through edu and is answered.
        mit = await _designated(http, demo.domains["mit.edu"].urs_url)
        async with http.get(f"{mit}/status") as response:
            start, end = (int(v, 16) for v in (await response.json())["ranges"][0])
        word = next(w for w in (f"w{i}" for i in range(1000)) if not start <= key_of(w) < end)
        async with http.post(f"{mit}/msd/probe", json={"key": f"{key_of(word):032x}"}) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["owner"] != "mit.edu"


# --- oversized and malformed input -----------------------------------------------------------


async def test_oversized_and_malformed_requests_get_a_clear_error_and_are_counted(
    demo: Hierarchy,
) -> None:
    urs = demo.domains["cise.ufl.edu"].urs_url
    async with aiohttp.ClientSession() as http:
        msd = await _designated(http, urs)
        eleven = SESSION | {"keywords": [f"k{i}" for i in range(11)]}
        async with http.post(f"{urs}/sessions", json=eleven) as response:
            assert response.status == 422
            errors = (await response.json())["errors"]
            assert errors[0]["field"] == "keywords" and "at most 10" in errors[0]["message"]
        huge = b'{"id": "x", "title": "' + b"a" * 70_000 + b'"}'
        async with http.post(f"{urs}/sessions", data=huge,
                             headers={"Content-Type": "application/json"}) as response:
            assert response.status == 413
            assert "larger than 65536 bytes" in (await response.json())["errors"][0]["message"]
        metrics = await _text(http, f"{urs}/metrics")
        assert _metric(metrics, "urs_rejected_total", reason="invalid") >= 1
        assert _metric(metrics, "urs_rejected_total", reason="too_large") >= 1

        async with http.get(f"{msd}/search", params={"q": "jazz " * 400}) as response:
            assert response.status == 400
            assert "the query has 2000 characters; the limit is 1024" in \
                (await response.json())["error"]
        async with http.post(f"{msd}/msd/ext-search", json={"keyword": "k" * 65}) as response:
            assert response.status == 400
            assert "keyword must be 1-64 characters" in (await response.json())["error"]
        async with http.post(f"{msd}/msd/ext-search", data=b"[" * 100_000) as response:
            assert response.status == 400 and (await response.json())["error"] == \
                "body is not JSON"
        async with http.post(f"{msd}/msd/ext-search", data=b" " * 300_000) as response:
            assert response.status == 413
        # Past aiohttp's line limit the parser refuses before any handler (not counted).
        async with http.get(f"{msd}/search", params={"q": "x" * 9_000}) as response:
            assert response.status == 400
        metrics = await _text(http, f"{msd}/metrics")
        assert _metric(metrics, "msd_http_rejected_total", domain="cise.ufl.edu",
                       reason="bad_request") >= 3
        assert _metric(metrics, "msd_http_rejected_total", domain="cise.ufl.edu",
                       reason="too_large") >= 1


# --- slow clients ---------------------------------------------------------------------------


async def _slowloris(host: str, port: int, *, seconds: float) -> tuple[bytes, float]:
    """Dribble a request head a few bytes at a time; what the server said, and when."""
    reader, writer = await asyncio.open_connection(host, port)
    began = time.monotonic()
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    answer = b""
    try:
        for at in range(0, len(head), 4):
            writer.write(head[at:at + 4])
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(4096), timeout=0.1)
            except TimeoutError:
                continue
            if answer or reader.at_eof():
                break
            if time.monotonic() - began > seconds:
                break
        return answer, time.monotonic() - began
    except ConnectionError:
        return answer, time.monotonic() - began
    finally:
        writer.close()


async def _slow_body(url_host: str, port: int, path: str) -> tuple[int, dict[str, Any]]:
    reader, writer = await asyncio.open_connection(url_host, port)
    try:
        writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 100\r\n\r\n{{\"keyword\":".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(65536), timeout=10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_slow_clients_are_cut_off_with_408_and_counted_at_the_msd(demo: Hierarchy) -> None:
    async with aiohttp.ClientSession() as http:
        msd = await _designated(http, demo.domains["mit.edu"].urs_url)
        host, port = msd.removeprefix("http://").rsplit(":", 1)
        answer, took = await _slowloris(host, int(port), seconds=8)
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout"), answer
        assert 0.9 < took < 5, took
        status, body = await _slow_body(host, int(port), "/msd/ext-search")
        assert status == 408 and "did not arrive within 1 s" in body["error"]
        metrics = await _text(http, f"{msd}/metrics")
        assert _metric(metrics, "msd_http_connections_refused_total", domain="mit.edu",
                       reason="slow_headers") >= 1
        assert _metric(metrics, "msd_http_rejected_total", domain="mit.edu",
                       reason="slow_body") >= 1


async def test_slow_and_greedy_clients_at_the_urs_are_bounded_and_counted(tmp_path: Path) -> None:
    limits = HttpLimits(header_timeout_s=0.5, body_timeout_s=0.5, max_connections_per_ip=4)
    runner = make_runner(create_app(settings(tmp_path, http_limits=limits)))
    await runner.setup()
    sock = bind_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    try:
        await start_site(runner, sock)
        answer, took = await _slowloris("127.0.0.1", port, seconds=5)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert took < 3
        status, body = await _slow_body("127.0.0.1", port, "/sessions")
        assert status == 408 and body["errors"][0]["field"] == "body"
        # Four connections at once from one address; the fifth is closed at once.
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]
        extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(extra_reader.read(), timeout=5) == b""
        extra_writer.close()
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as http:
            metrics = await _text(http, f"http://127.0.0.1:{port}/metrics")
        assert _metric(metrics, "urs_connections_refused_total", reason="slow_headers") >= 1
        assert _metric(metrics, "urs_connections_refused_total",
                       reason="too_many_connections") >= 1
        assert _metric(metrics, "urs_rejected_total", reason="slow_body") >= 1
    finally:
        await runner.cleanup()
        sock.close()


async def test_a_hierarchy_without_rate_limits_takes_a_burst_beyond_the_default_limit(
    tmp_path: Path,
) -> None:
    """`mdns up --no-rate-limits` (ServerLimits.unlimited), for benchmarks and experiments
    from one address: 150 registrations at once, beyond the default burst of 100, all
    stored and indexed, and searches beyond the search burst all answered."""
    hierarchy = await _start(tmp_path, "single", limits=ServerLimits.unlimited())
    try:
        await _wait(hierarchy, lambda s: _settled(s, expected=1), timeout=30)
        urs = hierarchy.domains["example.org"].urs_url
        async with aiohttp.ClientSession() as http:

            async def register(number: int) -> int:
                session = SESSION | {"id": f"burst{number}", "keywords": ["burst"]}
                async with http.post(f"{urs}/sessions", json=session) as response:
                    return response.status

            statuses = await asyncio.gather(*(register(n) for n in range(150)))
            assert statuses == [201] * 150
            msd = await _designated(http, urs)

            async def search() -> int:
                async with http.get(f"{msd}/search", params={"q": "burst"}) as response:
                    return response.status

            assert await asyncio.gather(*(search() for _ in range(150))) == [200] * 150
    finally:
        await hierarchy.close()
