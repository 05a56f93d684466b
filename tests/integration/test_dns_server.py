"""vdns DNS servers on 127.0.0.1 with ephemeral ports: whole hierarchies, bad input, failures."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import cast

import dns.asyncbackend
import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from vdns.errors import VdnsError
from vdns.mds import DomainConfig, check_hierarchy, load_hierarchy
from vdns.server import DnsServer
from vdns.sockets import bind_dns_sockets, remap_ports
from vdns.zone import Zone

pytestmark = pytest.mark.integration

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ROOT = "level0.testdomain.info"
LOCAL = "127.0.0.1"


@dataclasses.dataclass
class Running:
    configs: dict[str, DomainConfig]  # remapped to the ports actually bound
    servers: dict[str, DnsServer]

    @property
    def root(self) -> DnsServer:
        return self.servers[ROOT]


@contextlib.contextmanager
def free_ports(count: int) -> Iterator[list[int]]:
    """Distinct free TCP ports, held bound until the block ends so none repeats."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((LOCAL, 0))
        yield [sock.getsockname()[1] for sock in socks]


@contextlib.asynccontextmanager
async def running(
    configs: list[DomainConfig], *, forward_timeout: float = 2.0
) -> AsyncIterator[Running]:
    """Bind every domain's DNS sockets on port 0 first, remap the hierarchy, then serve."""
    servers: dict[str, DnsServer] = {}
    bound: dict[str, tuple[socket.socket, socket.socket]] = {}
    try:
        with free_ports(len(configs)) as urs_ports:
            mapping: dict[int, int] = {}
            for config, urs_port in zip(configs, urs_ports, strict=True):
                bound[config.domain] = bind_dns_sockets(LOCAL, 0)
                mapping[config.self_port] = bound[config.domain][0].getsockname()[1]
                mapping[config.urs_port] = urs_port  # data only: no URS runs here
        remapped = remap_ports(configs, mapping)
        check_hierarchy(remapped)
        for config in remapped:
            server = DnsServer(config, forward_timeout=forward_timeout)
            udp, tcp = bound.pop(config.domain)
            servers[config.domain] = server
            await server.start(udp_sock=udp, tcp_sock=tcp)
        yield Running({c.domain: c for c in remapped}, servers)
    finally:
        for server in servers.values():
            await server.close()
        for udp, tcp in bound.values():
            udp.close()
            tcp.close()


@pytest.fixture(params=["scenario1", "scenario2", "scenario3"])
async def hierarchy(request: pytest.FixtureRequest) -> AsyncIterator[Running]:
    async with running(load_hierarchy(CONFIGS / request.param)) as run:
        yield run


@pytest.fixture
def scenario1() -> dict[str, DomainConfig]:
    return {c.domain: c for c in load_hierarchy(CONFIGS / "scenario1")}


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A UDP port that is bound but never read: a child server that is down but not gone."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOCAL, 0))
        yield sock.getsockname()[1]


def root_with_child_at(configs: dict[str, DomainConfig], port: int) -> DomainConfig:
    """The scenario1 root, its child dom00 moved to `port`."""
    root = configs[ROOT]
    return remap_ports([root], {configs[f"dom00.{ROOT}"].self_port: port})[0]


async def ask(
    port: int,
    name: str,
    rdtype: str = "A",
    *,
    tcp: bool = False,
    rd: bool = True,
    within: float = 5.0,
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    if not rd:
        q.flags &= ~dns.flags.RD
    if tcp:
        return await dns.asyncquery.tcp(q, LOCAL, timeout=within, port=port)
    return await dns.asyncquery.udp(q, LOCAL, timeout=within, port=port)


def only_rdata(msg: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> list[str]:
    assert msg.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(msg.rcode())
    return [rd.to_text() for rrset in msg.answer if rrset.rdtype == rdtype for rd in rrset]


# -- whole hierarchies ------------------------------------------------------------------


async def test_root_resolves_every_domain_over_udp(hierarchy: Running) -> None:
    port = hierarchy.root.port
    domains = sorted(hierarchy.configs)
    a_answers = await asyncio.gather(*(ask(port, f"mcast.{d}") for d in domains))
    srv_answers = await asyncio.gather(*(ask(port, f"_mdns-urs._tcp.{d}", "SRV") for d in domains))
    for domain, a, srv in zip(domains, a_answers, srv_answers, strict=True):
        assert only_rdata(a, dns.rdatatype.A) == [LOCAL], domain
        urs_port = hierarchy.configs[domain].urs_port
        assert only_rdata(srv, dns.rdatatype.SRV) == [f"0 0 {urs_port} mcast.{domain}."]
        assert [r.to_text() for r in srv.additional] == [f"mcast.{domain}. 30 IN A {LOCAL}"]
        # The root's own names are its authoritative data; the rest come relayed.
        assert bool(a.flags & dns.flags.AA) == (domain == ROOT)
        assert a.flags & dns.flags.RA
    assert hierarchy.root.stats.forwarded == 2 * (len(domains) - 1)


async def test_root_resolves_every_domain_over_tcp(hierarchy: Running) -> None:
    port = hierarchy.root.port
    for domain, config in sorted(hierarchy.configs.items()):
        srv = await ask(port, f"_mdns-urs._tcp.{domain}", "SRV", tcp=True)
        assert only_rdata(srv, dns.rdatatype.SRV) == [f"0 0 {config.urs_port} mcast.{domain}."]


async def test_every_leaf_resolves_every_domain(hierarchy: Running) -> None:
    """From a leaf the way goes up to a common ancestor, then down into the other branch."""
    leaves = [d for d, c in hierarchy.configs.items() if not c.delegations]
    pairs = [(leaf, target) for leaf in leaves for target in hierarchy.configs]
    answers = await asyncio.gather(
        *(ask(hierarchy.servers[leaf].port, f"mcast.{target}") for leaf, target in pairs)
    )
    for (leaf, target), msg in zip(pairs, answers, strict=True):
        assert only_rdata(msg, dns.rdatatype.A) == [LOCAL], (leaf, target)


async def test_missing_name_in_a_child_is_relayed_nxdomain(hierarchy: Running) -> None:
    deepest = max(hierarchy.configs, key=len)
    msg = await ask(hierarchy.root.port, f"nothing.{deepest}")
    assert msg.rcode() == dns.rcode.NXDOMAIN
    assert [r.rdtype for r in msg.authority] == [dns.rdatatype.SOA]
    assert msg.authority[0].name.to_text() == f"{deepest}."


async def test_name_outside_the_hierarchy_is_refused_from_a_leaf(hierarchy: Running) -> None:
    deepest = max(hierarchy.configs, key=len)
    msg = await ask(hierarchy.servers[deepest].port, "www.example.com")
    assert msg.rcode() == dns.rcode.REFUSED


async def test_rd0_gets_a_referral_as_an_iterative_resolver_would(
    scenario1: dict[str, DomainConfig],
) -> None:
    async with running(list(scenario1.values())) as run:
        msg = await ask(run.root.port, f"mcast.dom0200.dom020.dom02.{ROOT}", rd=False)
    assert msg.rcode() == dns.rcode.NOERROR and not msg.answer
    assert not msg.flags & (dns.flags.AA | dns.flags.RA)
    assert [r.to_text() for r in msg.authority] == [f"dom02.{ROOT}. 30 IN NS ns.dom02.{ROOT}."]
    assert [r.to_text() for r in msg.additional] == [f"ns.dom02.{ROOT}. 30 IN A {LOCAL}"]
    assert run.root.stats.forwarded == 0


# -- bad input --------------------------------------------------------------------------


@pytest.fixture
async def root_server(scenario1: dict[str, DomainConfig]) -> AsyncIterator[DnsServer]:
    """The scenario1 root alone (its children are not running), on an ephemeral port."""
    udp, tcp = bind_dns_sockets(LOCAL, 0)
    server = DnsServer(scenario1[ROOT])
    await server.start(udp_sock=udp, tcp_sock=tcp)
    try:
        yield server
    finally:
        await server.close()


async def test_malformed_datagrams_are_dropped_counted_and_survived(
    root_server: DnsServer,
) -> None:
    bad = [
        b"\xde\xad\xbe\xef garbage",
        b"\x12\x34\x01",  # half a header
        bytes(60_000),  # far beyond any query
        b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07exa",  # question cut short
    ]
    response = dns.message.make_response(dns.message.make_query(ROOT, "SOA")).to_wire()
    good = dns.message.make_query(f"mcast.{ROOT}", "A")
    loop = asyncio.get_running_loop()
    # One socket for all: datagrams from one socket arrive in order, so when the good
    # query is answered, every bad one before it has been handled.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setblocking(False)
        for wire in [*bad, response, good.to_wire()]:
            await loop.sock_sendto(s, wire, (LOCAL, root_server.port))
        async with asyncio.timeout(5):
            data, _ = await loop.sock_recvfrom(s, 65535)
    msg = dns.message.from_wire(data)
    assert msg.id == good.id and only_rdata(msg, dns.rdatatype.A) == [LOCAL]
    stats = root_server.stats
    assert (stats.queries, stats.dropped_malformed, stats.dropped_other) == (6, 4, 1)
    assert stats.answered == 1


async def test_tcp_frame_longer_than_a_query_closes_the_connection(
    root_server: DnsServer,
) -> None:
    reader, writer = await asyncio.open_connection(LOCAL, root_server.port)
    try:
        writer.write(b"\xff\xff" + bytes(100))
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    finally:
        writer.close()
        await writer.wait_closed()
    assert root_server.stats.dropped_malformed == 1
    assert only_rdata(await ask(root_server.port, f"ns.{ROOT}", tcp=True), dns.rdatatype.A)


async def test_tcp_connection_answers_queries_in_turn(root_server: DnsServer) -> None:
    reader, writer = await asyncio.open_connection(LOCAL, root_server.port)
    try:
        names = [f"mcast.{ROOT}", f"ns.{ROOT}", f"nothing.{ROOT}"]
        for name in names:
            writer.write(dns.message.make_query(name, "A").to_wire(prepend_length=True))
        await writer.drain()
        rcodes = []
        for _ in names:
            size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
            rcodes.append(dns.message.from_wire(await reader.readexactly(size)).rcode())
    finally:
        writer.close()
        await writer.wait_closed()
    assert rcodes == [dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN]


async def test_handler_bug_is_logged_and_answered_servfail(
    root_server: DnsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(Zone, "decide", broken)
    with caplog.at_level(logging.ERROR, logger="vdns.server"):
        msg = await ask(root_server.port, f"mcast.{ROOT}")
    assert msg.rcode() == dns.rcode.SERVFAIL
    assert root_server.stats.handler_errors == 1 and root_server.stats.servfail == 1
    assert "handler failed" in caplog.text


# -- failing neighbours -----------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve(
    config: DomainConfig, *, forward_timeout: float = 2.0, max_forwards: int = 256
) -> AsyncIterator[DnsServer]:
    """One server on an ephemeral port, whatever its SelfPort says."""
    udp, tcp = bind_dns_sockets(LOCAL, 0)
    server = DnsServer(config, forward_timeout=forward_timeout, max_forwards=max_forwards)
    await server.start(udp_sock=udp, tcp_sock=tcp)
    try:
        yield server
    finally:
        await server.close()


async def test_child_that_is_down_gives_servfail_within_the_deadline(
    scenario1: dict[str, DomainConfig], black_hole: int
) -> None:
    config = root_with_child_at(scenario1, black_hole)
    async with serve(config, forward_timeout=0.3) as server:
        loop = asyncio.get_running_loop()
        began = loop.time()
        msg = await ask(server.port, f"mcast.dom00.{ROOT}", within=10)
        elapsed = loop.time() - began
        assert msg.rcode() == dns.rcode.SERVFAIL and msg.flags & dns.flags.RA
        assert elapsed < 5  # generous: the point is an answer, not a hang
        assert server.stats.forward_failures == 1 and server.stats.servfail == 1
        assert server.forwards_in_flight == 0


async def test_child_port_closed_gives_servfail(scenario1: dict[str, DomainConfig]) -> None:
    udp, tcp = bind_dns_sockets(LOCAL, 0)
    closed = udp.getsockname()[1]
    udp.close()
    tcp.close()
    # The deadline is far beyond the client's patience: only a refusal can explain an answer.
    async with serve(root_with_child_at(scenario1, closed), forward_timeout=60) as server:
        msg = await ask(server.port, f"mcast.dom00.{ROOT}", tcp=True, within=5)
        assert msg.rcode() == dns.rcode.SERVFAIL
        assert server.stats.forward_failures == 1


async def test_forwards_past_the_limit_are_answered_servfail_at_once(
    scenario1: dict[str, DomainConfig], black_hole: int
) -> None:
    config = root_with_child_at(scenario1, black_hole)
    async with serve(config, forward_timeout=0.5, max_forwards=2) as server:
        answers = await asyncio.gather(
            *(ask(server.port, f"n{i}.dom00.{ROOT}", within=10) for i in range(5))
        )
        assert [m.rcode() for m in answers] == [dns.rcode.SERVFAIL] * 5
        assert server.stats.forwarded == 2 and server.stats.forward_failures == 2


async def test_upstream_truncation_falls_back_to_tcp_and_client_sees_tc(
    scenario1: dict[str, DomainConfig],
) -> None:
    big = [f"10.0.{i // 200}.{i % 200}" for i in range(60)]  # > 512 bytes of answer
    async with fake_child(big) as child_port, serve(
        root_with_child_at(scenario1, child_port)
    ) as server:
        name = f"big.dom00.{ROOT}"
        over_udp = await ask(server.port, name)
        assert over_udp.flags & dns.flags.TC
        over_tcp = await ask(server.port, name, tcp=True)
        assert sorted(only_rdata(over_tcp, dns.rdatatype.A)) == sorted(big)
        assert server.stats.truncated == 1 and server.stats.forward_failures == 0


@contextlib.asynccontextmanager
async def fake_child(addresses: list[str]) -> AsyncIterator[int]:
    """A child server that answers UDP with TC set and the full answer only over TCP."""

    def full_answer(wire: bytes) -> dns.message.Message:
        query = dns.message.from_wire(wire)
        response = dns.message.make_response(query)
        response.answer.append(
            dns.rrset.from_text_list(query.question[0].name, 30, "IN", "A", addresses)
        )
        return response

    class Truncating(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.DatagramTransport, transport)

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            response = dns.message.make_response(dns.message.from_wire(data))
            response.flags |= dns.flags.TC
            self.transport.sendto(response.to_wire(), addr)

    async def over_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = int.from_bytes(await reader.readexactly(2), "big")
        writer.write(full_answer(await reader.readexactly(size)).to_wire(prepend_length=True))
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    udp, tcp = bind_dns_sockets(LOCAL, 0)
    port = udp.getsockname()[1]
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Truncating, sock=udp
    )
    tcp_server = await asyncio.start_server(over_tcp, sock=tcp)
    try:
        yield port
    finally:
        transport.close()
        tcp_server.close()
        await tcp_server.wait_closed()
        await asyncio.sleep(0)


# -- lifecycle --------------------------------------------------------------------------


class SilentChild(asyncio.DatagramProtocol):
    """A child server that hears queries and never answers; each query lands in `heard`."""

    def __init__(self) -> None:
        self.heard: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.heard.put_nowait(data)


async def test_close_cancels_forwards_and_leaves_no_task(
    scenario1: dict[str, DomainConfig],
) -> None:
    child, silent = await asyncio.get_running_loop().create_datagram_endpoint(
        SilentChild, local_addr=(LOCAL, 0)
    )
    try:
        await close_with_forwards_in_flight(
            root_with_child_at(scenario1, child.get_extra_info("sockname")[1]), silent
        )
    finally:
        child.close()
        await asyncio.sleep(0)


async def close_with_forwards_in_flight(config: DomainConfig, silent: SilentChild) -> None:
    before = asyncio.all_tasks()
    server = DnsServer(config, forward_timeout=30)
    udp, tcp = bind_dns_sockets(LOCAL, 0)
    await server.start(udp_sock=udp, tcp_sock=tcp)
    reader, writer = await asyncio.open_connection(LOCAL, server.port)
    writer.write(dns.message.make_query(f"a.dom00.{ROOT}", "A").to_wire(prepend_length=True))
    await writer.drain()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(dns.message.make_query(f"b.dom00.{ROOT}", "A").to_wire(),
                      (LOCAL, server.port))
        async with asyncio.timeout(5):
            for _ in range(2):  # both queries reached the child: both forwards are waiting
                await silent.heard.get()
        assert server.forwards_in_flight == 2
        async with asyncio.timeout(5):
            await server.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""  # the TCP client was hung up on
    writer.close()
    await writer.wait_closed()
    assert server.forwards_in_flight == 0
    assert asyncio.all_tasks() == before
    await server.close()  # a second close is harmless
    with pytest.raises(VdnsError, match="closed"):
        await server.start()


async def test_concurrent_closes_both_wait_for_the_end(root_server: DnsServer) -> None:
    await asyncio.gather(root_server.close(), root_server.close())
    assert root_server.state.value == "closed"


async def test_port_in_use_names_the_address_and_domain(
    scenario1: dict[str, DomainConfig],
) -> None:
    udp, tcp = bind_dns_sockets(LOCAL, 0)
    try:
        port = udp.getsockname()[1]
        config = dataclasses.replace(scenario1[ROOT], self_port=port)
        server = DnsServer(config)
        with pytest.raises(VdnsError, match=rf"{LOCAL}:{port} \(DNS of {ROOT}\) is already in use"):
            await server.start()
    finally:
        udp.close()
        tcp.close()


async def test_start_wants_both_sockets_or_neither(scenario1: dict[str, DomainConfig]) -> None:
    udp, tcp = bind_dns_sockets(LOCAL, 0)
    try:
        with pytest.raises(VdnsError, match="both"):
            await DnsServer(scenario1[ROOT]).start(udp_sock=udp)
    finally:
        udp.close()
        tcp.close()


# -- sockets and ports ------------------------------------------------------------------


def test_bind_dns_sockets_gives_one_port_for_udp_and_tcp() -> None:
    udp, tcp = bind_dns_sockets(LOCAL, 0)
    with udp, tcp:
        assert udp.type == socket.SOCK_DGRAM and tcp.type == socket.SOCK_STREAM
        assert udp.getsockname() == tcp.getsockname()


def test_bind_dns_sockets_rejects_a_host_name() -> None:
    with pytest.raises(VdnsError, match="not an IP address"):
        bind_dns_sockets("localhost", 0)


def test_remap_ports_rewrites_every_port_field(scenario1: dict[str, DomainConfig]) -> None:
    configs = list(scenario1.values())
    ports = {p for c in configs for p in (c.self_port, c.urs_port, c.cm_port, c.pm_port,
                                          c.local_mcast_port, c.anycast_port)}
    mapping = {p: p + 40_000 for p in ports}  # data only; nothing is bound
    remapped = {c.domain: c for c in remap_ports(configs, mapping)}
    check_hierarchy(remapped.values())
    root, child = remapped[ROOT], remapped[f"dom00.{ROOT}"]
    assert root.self_port == 42_000 and root.parent_dns_port == 0
    assert (root.urs_port, root.cm_port, root.pm_port) == (42_003, 42_001, 42_002)
    assert (root.local_mcast_port, root.anycast_port) == (42_004, 42_005)
    assert child.parent_dns_port == 42_000
    assert [d.port for d in root.delegations] == [42_006, 42_011, 42_016]
    assert remap_ports(configs, {}) == configs
