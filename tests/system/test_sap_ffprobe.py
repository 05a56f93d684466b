"""ffmpeg's own SAP and SDP readers take what `mdns sap announce` sends, and play the stream.

The announcer runs on 127.0.0.1 as everywhere else; the datagram it sent is then replayed
inside a network namespace of this test's own, holding only a loopback interface, where
`ffprobe sap://` listens (ffmpeg's SAP input cannot be pinned to an interface, so it
must not run where a default route exists) and ffmpeg streams to the announced group.
Skipped without root, `ip` or ffmpeg.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from client.register import register_everywhere
from tests.integration.test_msd_tree import _settled, _start, _wait
from tests.integration.test_sap_bridge import (
    HOME,
    _collect,
    _independent_sap_decode,
    _mdns,
    _receiver,
    _sap_address,
)
from vdns.harness import Hierarchy

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0 or not all(map(shutil.which, ("ip", "ffmpeg",
                                                                       "ffprobe"))),
                       reason="needs root, ip and ffmpeg"),
]

REPLAY = """
import socket, sys, time
group, port, data = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
for _ in range(40):
    s.sendto(data, (group, port))
    time.sleep(0.25)
"""


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    hierarchy = await _start(tmp_path, "demo")
    await _wait(hierarchy, lambda s: _settled(s, expected=4), timeout=30)
    yield hierarchy
    await hierarchy.close()


async def test_ffprobe_reads_the_announcement_and_plays_the_announced_group(
    demo: Hierarchy, namespace: str, tmp_path: Path,
) -> None:
    session = {"id": "gig", "title": "Late gig", "keywords": ["gig"], "group": "239.255.40.41",
               "port": 5006, "scope": "local"}
    async with aiohttp.ClientSession() as http:
        await register_everywhere(http, domain=HOME, session=session,
                                  dns_server=demo.root.dns_address)
    group, port = _sap_address()
    dns_host, dns_port = demo.root.dns_address
    with _receiver(group, port) as receiver:
        async with _mdns("sap", "announce", "--home", HOME, "--dns", f"{dns_host}:{dns_port}",
                         "--groups", group, "--port", str(port), "--interval", "0.3",
                         "--ttl", "1"):
            [datagram] = await _collect(receiver, count=1, timeout=5)
    assert "s=Late gig" in _independent_sap_decode(datagram)[0]
    (tmp_path / "sap.bin").write_bytes(datagram)

    inside = ["ip", "netns", "exec", namespace]
    replay = await asyncio.create_subprocess_exec(
        *inside, sys.executable, "-c", REPLAY, group, str(port), str(tmp_path / "sap.bin"))
    stream = await asyncio.create_subprocess_exec(
        *inside, "ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
        "-i", "testsrc=size=160x120:rate=25", "-t", "8", "-c:v", "mpeg2video",
        "-f", "rtp_mpegts", "rtp://239.255.40.41:5006?localaddr=127.0.0.1&ttl=1",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        probe = await asyncio.create_subprocess_exec(
            *inside, "timeout", "15", "ffprobe", "-hide_banner", "-v", "verbose",
            "-analyzeduration", "2000000", "-show_streams", "-of", "compact",
            f"sap://{group}:{port}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(probe.communicate(), timeout=20)
    finally:
        for process in (replay, stream):
            if process.returncode is None:
                process.kill()
            await process.wait()
    log = err.decode()
    assert probe.returncode == 0, log
    assert "s=Late gig" in log and "c=IN IP4 239.255.40.41/15" in log  # ffmpeg's SAP reader
    # Frames arrived: ffmpeg's SDP reader joined the announced group and port.
    assert "codec_name=mpeg2video" in out.decode() and "width=160" in out.decode()
