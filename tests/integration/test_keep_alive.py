"""`mdns register --keep-alive` as a user runs it, against real URS and MSD servers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from client.errors import ClientError
from client.resolve import resolve
from client.search import SearchClient
from client.uri import parse_uri
from msd.schema import TTL_MIN
from tests.integration.test_msd_tree import _settled, _start, _wait
from vdns.harness import Hierarchy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
TTL = TTL_MIN  # 10 s, the shortest the schema allows: this test waits about three of them
URI = "mcast.mit.edu/keepalive-radio"
KEYWORD = "keepaliveradio"
SLACK = 0.7  # seconds past an expiry before checking that it took effect


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    hierarchy = await _start(tmp_path, "demo")
    try:
        await _wait(hierarchy, lambda s: _settled(s, expected=4), timeout=30)
        yield hierarchy
    finally:
        await hierarchy.close()


async def _expiry(dns: tuple[str, int]) -> float | None:
    """The session's expiry as its URS serves it, or None if it does not resolve."""
    try:
        return (await resolve(parse_uri(URI), dns_server=dns)).record.expires_at
    except ClientError as exc:
        assert "unknown or expired" in str(exc), exc
        return None


async def _found(dns: tuple[str, int], http: aiohttp.ClientSession) -> list[str]:
    """The URIs a search from another domain (the root, edu) finds for the keyword."""
    client = SearchClient(home="edu", dns_server=dns, http=http)
    return [hit.session.uri for hit in await client.search(KEYWORD)]


async def _sleep_until(wall_clock: float) -> None:
    await asyncio.sleep(max(0.0, wall_clock - time.time()))


async def _line(stream: asyncio.StreamReader | None, starting: str, *, timeout: float) -> str:
    assert stream is not None
    async with asyncio.timeout(timeout):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"the stream ended before a line starting {starting!r}"
            if line.startswith(starting):
                return line


@pytest.mark.timeout(150)
async def test_keep_alive_outlives_the_ttl_survives_a_lapse_and_stopping_lets_it_expire(
    demo: Hierarchy,
) -> None:
    dns = demo.root.dns_address
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.cli", "register", "--domain", "mit.edu",
        "--dns", f"{dns[0]}:{dns[1]}", "--keep-alive", "--id", "keepalive-radio",
        "--title", "Kept alive", "--keywords", f"{KEYWORD},radio", "--group", "239.255.9.9",
        "--port", "5004", "--ttl", str(TTL), "--lat", "42.36", "--lon", "-71.09",
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with aiohttp.ClientSession() as http:
            line = await _line(process.stdout, "keeping", timeout=30)
            assert line.startswith(f"keeping {URI} alive every ")
            registered = time.time()  # the first registration expires by registered + TTL
            first = await _expiry(dns)
            assert first is not None and first <= registered + TTL
            assert await _found(dns, http) == [URI]

            # 1. Refreshed every ttl/3: alive past the first registration's expiry.
            await _sleep_until(first + SLACK)
            later = await _expiry(dns)
            assert later is not None and later > time.time() > first
            assert await _found(dns, http) == [URI]

            # 2. A lapse longer than the ttl (the host slept): the session expires, and the
            # keep-alive registers it again, with the new owner token, and goes on.
            process.send_signal(signal.SIGSTOP)
            await asyncio.sleep(0.5)  # a refresh sent just before the stop lands first
            lapsed = await _expiry(dns)
            assert lapsed is not None
            await _sleep_until(lapsed + SLACK)
            assert await _expiry(dns) is None
            assert await _found(dns, http) == []
            process.send_signal(signal.SIGCONT)
            notice = await _line(process.stderr, "mdns: ", timeout=10)
            assert f"{URI} had expired and is registered again; new owner token: " in notice
            renewed = await _expiry(dns)
            assert renewed is not None and renewed > time.time()
            assert await _found(dns, http) == [URI]

            # 3. Stopped (Ctrl-C): nothing refreshes it, and it expires on time.
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(10):
                assert await process.wait() == 130
            last = await _expiry(dns)
            assert last is not None and await _found(dns, http) == [URI]
            await _sleep_until(last + SLACK)
            assert await _expiry(dns) is None
            assert await _found(dns, http) == []
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGCONT)
                process.kill()
            await process.wait()
