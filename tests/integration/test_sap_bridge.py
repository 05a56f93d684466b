"""The SAP bridge on real sockets: another process announces, `mdns sap listen` ingests, search
finds it; `mdns sap announce` sends what an independent parser (sdp-transform) reads back.

SAP runs on a random 239.255.x.x group and an ephemeral port on 127.0.0.1, never 9875.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import socket
import struct
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sdp_transform

from client.register import register_everywhere
from client.search import SearchClient
from tests.integration.test_msd_tree import _settled, _start, _wait
from vdns.harness import Hierarchy

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MDNS = [sys.executable, "-m", "client.cli"]
HOME = "ufl.edu"

# A separate process sends one hand-built RFC 2974 packet: no code of this project involved.
SENDER = textwrap.dedent("""
    import socket, struct, sys, zlib
    group, port, sdp, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), int(sys.argv[4])
    body = b"application/sdp\\0" + sdp
    if flags & 1:
        body = zlib.compress(body)
    packet = struct.pack("!BBH", flags, 0, 0x4242) + socket.inet_aton("127.0.0.1") + body
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
    s.sendto(packet, (group, port))
""")


def _sdp(*, version: int = 1, name: str = "Coltrane tribute", group: str = "239.255.77.7",
         port: int = 5004) -> str:
    return ("v=0\r\n"
            f"o=legacy 4242 {version} IN IP4 192.0.2.44\r\n"
            f"s={name}\r\ni=Blue train, live from the basement\r\n"
            f"c=IN IP4 {group}/1\r\nt=0 0\r\na=tool:handmade\r\n"
            "a=keywds:bebop\r\na=cat:Music.Jazz\r\n"
            f"m=video {port} RTP/AVP 33\r\na=rtpmap:33 MP2T/90000\r\n")


def _sap_address() -> tuple[str, int]:
    rng = random.Random()
    group = f"239.255.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return group, int(probe.getsockname()[1])


async def _send(group: str, port: int, sdp: str, *, flags: int = 0x20) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SENDER, group, str(port), sdp, str(flags))
    assert await process.wait() == 0


@dataclasses.dataclass
class Ran:
    """A process of `mdns`; its stderr once it stopped."""

    process: asyncio.subprocess.Process
    stderr: str = ""


@contextlib.asynccontextmanager
async def _mdns(*args: str) -> AsyncIterator[Ran]:
    """`mdns ARGS` as a process, once it printed its first line (ready); stopped with SIGTERM."""
    process = await asyncio.create_subprocess_exec(
        *MDNS, "-v", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env=os.environ | {"PYTHONPATH": str(ROOT)})
    assert process.stdout is not None and process.stderr is not None
    try:
        first = await asyncio.wait_for(process.stdout.readline(), timeout=15)
        if not first:
            raise AssertionError((await process.stderr.read()).decode())
        ran = Ran(process)
        yield ran
    finally:
        if process.returncode is None:
            process.terminate()
        _, err = await process.communicate()
        ran.stderr = err.decode()
        assert process.returncode == 0, ran.stderr
        assert "Traceback" not in ran.stderr, ran.stderr


@pytest.fixture
async def demo(tmp_path: Path) -> AsyncIterator[Hierarchy]:
    hierarchy = await _start(tmp_path, "demo")
    await _wait(hierarchy, lambda s: _settled(s, expected=4), timeout=30)
    yield hierarchy
    await hierarchy.close()


async def _search(client: SearchClient, query: str, *, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        hits = await client.search(query)
        if hits or time.monotonic() > deadline:
            return hits
        await asyncio.sleep(0.05)


async def test_an_announcement_from_another_process_is_found_within_2_s(
    demo: Hierarchy, tmp_path: Path,
) -> None:
    dns_host, dns_port = demo.root.dns_address
    dns = f"{dns_host}:{dns_port}"
    group, port = _sap_address()
    async with aiohttp.ClientSession() as http, _mdns(
        "sap", "listen", "--home", HOME, "--dns", dns, "--groups", group, "--port", str(port),
        "--state", str(tmp_path / "sap.json"),
    ) as listener:
        client = SearchClient(home=HOME, dns_server=demo.root.dns_address, http=http)
        sent = time.monotonic()
        await _send(group, port, _sdp())
        hits = await _search(client, "coltrane", timeout=2.0)
        assert time.monotonic() - sent < 2.0
        [hit] = hits
        session = hit.session
        assert session.id.startswith("sap-") and session.domain == HOME
        assert (session.title, session.group, session.port) == ("Coltrane tribute",
                                                                "239.255.77.7", 5004)
        assert session.description == "Blue train, live from the basement"
        assert session.mime == "video/MP2T" and session.stream_type == "rtp"
        assert session.scope == "local"  # 239.255/16 is administratively scoped
        assert {"bebop", "music", "jazz", "coltrane", "tribute", "blue", "train",
                "sap"} <= set(session.keywords)
        assert [h.session.uri for h in await client.search("bebop")] == [session.uri]

        # The same announcement again, and a compressed re-announcement: still one session.
        await _send(group, port, _sdp(), flags=0x21)
        # A new version with another name and group updates that very session.
        await _send(group, port, _sdp(version=2, name="Coltrane all night",
                                      group="239.255.77.8"))
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            [again] = await client.search("coltrane")
            if again.session.group == "239.255.77.8":
                break
            await asyncio.sleep(0.05)
        assert again.session.uri == session.uri and again.session.title == "Coltrane all night"
        assert [h.session.uri for h in await client.search("sap")] == [session.uri]

        # Garbage on the SAP group is dropped; the listener lives on.
        await _send(group, port, "not sdp at all")
        await _send(group, port, _sdp(), flags=0x00)  # version 0

        # A deletion from the announcement's own source expires the record at once (ttl 10 s).
        await _send(group, port, "o=legacy 4242 2 IN IP4 192.0.2.44\r\n", flags=0x24)
        deadline = time.monotonic() + 2.0
        expires_in = 3600.0
        while time.monotonic() < deadline and expires_in > 60:
            [hit] = await client.search("coltrane")
            expires_in = hit.session.expires_at - time.time()
            await asyncio.sleep(0.05)
        assert expires_in <= 10
    counts = listener.stderr.splitlines()[-1]
    for count in ("new 1", "changed 1", "deleted 1", "expired 1", "bad-sdp 1",
                  "bad-BadVersion 1", "received 6"):
        assert count in counts, counts
    assert (tmp_path / "sap.json").stat().st_mode & 0o777 == 0o600


async def test_announced_sessions_are_read_by_an_independent_parser(
    demo: Hierarchy, tmp_path: Path,
) -> None:
    dns_host, dns_port = demo.root.dns_address
    group, port = _sap_address()
    session = {"id": "gig", "title": "Late gig", "keywords": ["gig", "jazz"],
               "group": "239.255.40.41", "port": 5006, "description": "Trio",
               "scope": "local"}
    ssm = {"id": "ssm-talk", "title": "SSM talk", "keywords": ["talk"], "group": "232.1.2.3",
           "port": 5008, "network": "ssm", "source": "192.0.2.10", "stream_type": "udp"}
    ingested = {"id": "sap-aaaaaaaaaaaaaaaa", "title": "Heard on SAP", "keywords": ["x"],
                "group": "239.255.40.42", "port": 5010}
    async with aiohttp.ClientSession() as http:
        for body in (session, ssm, ingested):
            await register_everywhere(http, domain=HOME, session=body,
                                      dns_server=demo.root.dns_address)
    with _receiver(group, port) as receiver:
        async with _mdns("sap", "announce", "--home", HOME, "--dns", f"{dns_host}:{dns_port}",
                         "--groups", group, "--port", str(port), "--interval", "0.3",
                         "--refresh", "0.3", "--ttl", "1"):
            heard = await _collect(receiver, count=6, timeout=5)
    parsed = {}
    for packet in heard:
        sdp_text, origin = _independent_sap_decode(packet)
        assert origin == "127.0.0.1"
        sdp = sdp_transform.parse(sdp_text)
        parsed[sdp["name"]] = sdp
    assert set(parsed) == {"Late gig", "SSM talk"}  # the ingested one is not echoed back
    gig = parsed["Late gig"]
    assert gig["connection"]["ip"] == "239.255.40.41/15"  # local scope: a site TTL
    [media] = gig["media"]
    assert (media["type"], media["port"], media["protocol"]) == ("video", 5006, "RTP/AVP")
    assert media["rtp"][0]["codec"] == "MP2T" and gig["description"] == "Trio"
    talk = parsed["SSM talk"]
    assert talk["connection"]["ip"] == "232.1.2.3/127"
    assert talk["sourceFilter"]["srcList"] == "192.0.2.10"
    assert (talk["media"][0]["port"], talk["media"][0]["protocol"]) == (5008, "udp")


def _independent_sap_decode(packet: bytes) -> tuple[str, str]:
    """RFC 2974's header read by hand: flags, auth length, hash, IPv4 source, payload type."""
    flags, auth_words, _ = struct.unpack("!BBH", packet[:4])
    assert flags >> 5 == 1 and not flags & 0x10 and not flags & 0x07  # v1 IPv4 announce plain
    origin = socket.inet_ntoa(packet[4:8])
    body = packet[8 + 4 * auth_words:]
    payload_type, _, sdp = body.partition(b"\0")
    assert payload_type == b"application/sdp"
    return sdp.decode(), origin


@contextlib.contextmanager
def _receiver(group: str, port: int) -> Any:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
    sock.bind((group, port))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                    socket.inet_aton(group) + socket.inet_aton("127.0.0.1"))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def _collect(sock: socket.socket, *, count: int, timeout: float) -> list[bytes]:
    loop = asyncio.get_running_loop()
    packets: list[bytes] = []
    deadline = loop.time() + timeout
    while len(packets) < count and loop.time() < deadline:
        with contextlib.suppress(TimeoutError):
            packets.append(await asyncio.wait_for(loop.sock_recv(sock, 65536),
                                                  timeout=deadline - loop.time()))
    assert len(packets) >= count, packets
    return packets



@pytest.mark.parametrize(("args", "message"), [
    (["listen", "--groups", "10.0.0.1"], "--groups: 10.0.0.1 is not a multicast group"),
    (["listen", "--groups", "nonsense"], "--groups: 'nonsense' is not an IP address"),
    (["listen", "--interface", "eth0"], "--interface 'eth0' is not an IPv4 address"),
    (["announce", "--interval", "0"], "--interval must be at least 0.1 s"),
    (["announce", "--ttl", "300"], "--ttl must be 1-255"),
])
def test_bad_options_are_one_clear_line(args: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from client.cli import main

    assert main(["sap", *args, "--home", HOME]) == 1
    assert capsys.readouterr().err == f"mdns: {message}\n"
