"""A real stream end to end: ffmpeg sends a test pattern to a multicast group, the session
is registered, `mdns resolve --sdp` writes its SDP, and ffprobe receives the stream with
that file alone; after the owner's PUT moves the session to another group, the same URI
leads ffprobe to the new group.

The hierarchy (DNS and URS) and `mdns resolve` run on 127.0.0.1 as everywhere else; ffmpeg
and ffprobe run in a network namespace of this test's own that holds only a loopback
interface, so no multicast datagram can leave the host whatever a player does with its
interface. Skipped without root, `ip`, ffmpeg or ffprobe (Debian's `ffmpeg`:
`deploy/quickstart system-packages` installs it as root).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_msd_tree import _start
from vdns.harness import Hierarchy

ROOT = Path(__file__).resolve().parents[2]
MDNS = [sys.executable, "-m", "client.cli"]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(not all(map(shutil.which, ("ip", "ffmpeg", "ffprobe"))),
                       reason="needs ip (iproute2) and ffmpeg/ffprobe (Debian package "
                              "'ffmpeg'; deploy/quickstart system-packages installs it)"),
    pytest.mark.timeout(180),
]

DOMAIN = "ufl.edu"
SESSION: dict[str, Any] = {
    "id": "testcard", "title": "Test card", "keywords": ["testcard"], "group": "239.255.60.1",
    "port": 5004, "scope": "local", "stream_type": "rtp", "mime": "video/MP2T"}
MOVED_GROUP = "239.255.60.2"


@pytest.fixture
async def hierarchy(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    """The demo's DNS servers and URSes; resolving needs no MSD."""
    running = await _start(tmp_path, "demo", msds=0)
    yield running
    await running.close()


@contextlib.asynccontextmanager
async def streaming(namespace: str, *, group: str, port: int, size: str) -> AsyncIterator[None]:
    """ffmpeg sending an MPEG-2 test pattern of `size` as RTP MPEG-TS to group:port (TESTING.md's
    command, pinned to 127.0.0.1, TTL 1), inside the namespace, until the block ends."""
    sender = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace,
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
        "-i", f"testsrc=size={size}:rate=25", "-c:v", "mpeg2video", "-f", "rtp_mpegts",
        f"rtp://{group}:{port}?localaddr=127.0.0.1&ttl=1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        yield
    finally:
        if sender.returncode is None:
            sender.kill()
        _, err = await sender.communicate()
        assert sender.returncode in (0, -9), err.decode()  # killed by us, not failed


async def mdns_resolve_sdp(hierarchy: Hierarchy, target: str) -> str:
    """`mdns resolve mcast.ufl.edu/testcard --sdp TARGET` as a user runs it; its stdout."""
    host, port = hierarchy.root.dns_address
    process = await asyncio.create_subprocess_exec(
        *MDNS, "resolve", f"mcast.{DOMAIN}/{SESSION['id']}", "--dns", f"{host}:{port}",
        "--sdp", target, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(ROOT)})
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def ffprobe(namespace: str, sdp_file: Path) -> str:
    """ffprobe reading the stream the SDP file describes (TESTING.md's command), in the
    namespace; its -show_streams output."""
    process = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", namespace, "timeout", "20",
        "ffprobe", "-hide_banner", "-v", "error", "-protocol_whitelist", "file,udp,rtp",
        "-localaddr", "127.0.0.1", "-analyzeduration", "2000000", "-show_streams",
        "-of", "compact", "-i", str(sdp_file),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_the_same_uri_leads_ffprobe_to_the_stream_before_and_after_a_move(
    hierarchy: Hierarchy, namespace: str, tmp_path: Path,
) -> None:
    urs = hierarchy.domains[DOMAIN].urs_url
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{urs}/sessions", json=SESSION) as response:
            assert response.status == 201, await response.text()
            token = (await response.json())["token"]

        first = tmp_path / "first.sdp"
        async with streaming(namespace, group=SESSION["group"], port=SESSION["port"],
                                size="160x120"):
            assert await mdns_resolve_sdp(hierarchy, str(first)) == ""
            sdp = first.read_bytes().decode()
            assert "c=IN IP4 239.255.60.1/15\r\n" in sdp
            assert "m=video 5004 RTP/AVP 33\r\na=rtpmap:33 MP2T/90000\r\n" in sdp
            streams = await ffprobe(namespace, first)
            assert "codec_name=mpeg2video" in streams and "width=160" in streams, streams

            # The owner moves the session; the old group keeps streaming its old picture.
            moved = SESSION | {"group": MOVED_GROUP}
            async with http.put(f"{urs}/{SESSION['id']}", json=moved,
                                headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 200, await response.text()
            async with streaming(namespace, group=MOVED_GROUP, port=SESSION["port"],
                                    size="320x240"):
                second = tmp_path / "second.sdp"
                second.write_bytes((await mdns_resolve_sdp(hierarchy, "-")).encode())
                assert f"c=IN IP4 {MOVED_GROUP}/15\r\n" in second.read_bytes().decode()
                streams = await ffprobe(namespace, second)
    # The new group's picture, not the old one's: ffprobe followed the URI to the move.
    assert "codec_name=mpeg2video" in streams and "width=320" in streams, streams
