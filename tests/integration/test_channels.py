"""UdpTransport on real sockets: multicast to 239.255.x.x on loopback, unicast on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest

from msd.channels import UNICAST, Channel, DatagramHandler, Transport, UdpTransport
from msd.errors import ChannelError

pytestmark = pytest.mark.integration

LOCAL = "127.0.0.1"
# Waiting for a datagram that should come: a generous bound, not a measurement.
ARRIVAL = 5.0
# Waiting for one that must not come: loopback delivers in well under a millisecond.
SILENCE = 0.2


@dataclass
class Inbox:
    """An on_datagram handler that keeps what it got and lets a test wait for it."""

    got: list[tuple[bytes, tuple[str, int], Channel | None]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __call__(self, payload: bytes, *, source: tuple[str, int], via: Channel | None) -> None:
        self.got.append((payload, source, via))
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(ARRIVAL):
            while len(self.got) < count:
                self.changed.clear()
                await self.changed.wait()

    @property
    def payloads(self) -> list[bytes]:
        return [payload for payload, _, _ in self.got]


class Nodes:
    """Starts UdpTransports on 127.0.0.1, each with an Inbox, and closes them all at the end."""

    def __init__(self) -> None:
        self.opened: list[UdpTransport] = []

    async def start(
        self,
        *,
        on_datagram: DatagramHandler | None = None,
        multicast_enabled: bool = True,
        max_datagram: int = 65507,
        queue_limit: int = 1024,
    ) -> tuple[UdpTransport, Inbox]:
        inbox = Inbox()
        transport = UdpTransport(
            LOCAL,
            on_datagram=on_datagram or inbox,
            multicast_enabled=multicast_enabled,
            max_datagram=max_datagram,
            queue_limit=queue_limit,
        )
        await transport.start()
        self.opened.append(transport)
        return transport, inbox


@pytest.fixture
async def nodes() -> AsyncIterator[Nodes]:
    made = Nodes()
    yield made
    for transport in made.opened:
        await transport.close()


def free_group_port() -> tuple[str, int]:
    """A random 239.255.x.y group and a port the kernel just had free for it.

    The random group keeps parallel runs (other checkouts, CI) out of each other's way.
    """
    group = f"239.255.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((group, 0))
        port: int = probe.getsockname()[1]
    return group, port


@pytest.fixture
def channel() -> Channel:
    return Channel("cmcast", *free_group_port())


async def eventually(condition: Callable[[], bool], *, poll: float = 0.01) -> None:
    """Poll `condition` for up to ARRIVAL seconds: counters have no event to wait on."""
    for _ in range(int(ARRIVAL / poll)):
        if condition():
            return
        await asyncio.sleep(poll)
    raise AssertionError(f"still false after {ARRIVAL} s")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_two_joined_transports_hear_a_third(nodes: Nodes, channel: Channel) -> None:
    a, inbox_a = await nodes.start()
    b, inbox_b = await nodes.start()
    sender, inbox_sender = await nodes.start()
    await a.join(channel)
    await b.join(channel)

    await sender.send_multicast(channel, b"heartbeat")

    await inbox_a.wait_for(1)
    await inbox_b.wait_for(1)
    assert inbox_a.got == [(b"heartbeat", sender.unicast_address, channel)]
    assert inbox_b.got == [(b"heartbeat", sender.unicast_address, channel)]
    assert sender.counters.of("cmcast").datagrams_sent == 1
    assert sender.counters.of("cmcast").bytes_sent == len(b"heartbeat")
    assert a.counters.of("cmcast").datagrams_received == 1
    assert inbox_sender.got == []


async def test_not_joined_and_other_group_on_same_port_hear_nothing(
    nodes: Nodes, channel: Channel
) -> None:
    member, inbox_member = await nodes.start()
    outsider, inbox_outsider = await nodes.start()
    neighbour, inbox_neighbour = await nodes.start()
    other = "239.255.0.1" if channel.group != "239.255.0.1" else "239.255.0.2"
    other_group = Channel("local", other, channel.port)
    await member.join(channel)
    await neighbour.join(other_group)

    await member.send_multicast(channel, b"mine")

    # Our own multicast comes back too (loop_back): the core filters by sender.
    await inbox_member.wait_for(1)
    assert inbox_member.got == [(b"mine", member.unicast_address, channel)]
    await asyncio.sleep(SILENCE)
    assert inbox_outsider.got == []
    assert inbox_neighbour.got == []
    assert outsider.counters.traffic == {}


async def test_unicast_round_trip(nodes: Nodes) -> None:
    a, inbox_a = await nodes.start()
    b, inbox_b = await nodes.start()

    await a.send_unicast(b.unicast_address, b"ping")
    await inbox_b.wait_for(1)
    payload, source, via = inbox_b.got[0]
    assert (payload, source, via) == (b"ping", a.unicast_address, None)
    await b.send_unicast(source, b"pong")
    await inbox_a.wait_for(1)

    assert inbox_a.got == [(b"pong", b.unicast_address, None)]
    assert a.counters.of(UNICAST).datagrams_sent == 1
    assert a.counters.of(UNICAST).datagrams_received == 1
    assert b.unicast_address[0] == LOCAL


async def test_multicast_disabled_drops_and_counts(nodes: Nodes, channel: Channel) -> None:
    listener, inbox_listener = await nodes.start()
    await listener.join(channel)
    unicast_only, inbox_unicast_only = await nodes.start(multicast_enabled=False)

    await unicast_only.join(channel)
    await unicast_only.send_multicast(channel, b"lost")
    await unicast_only.send_unicast(listener.unicast_address, b"still here")

    await inbox_listener.wait_for(1)
    await asyncio.sleep(SILENCE)
    assert inbox_listener.payloads == [b"still here"]
    assert unicast_only.joined == frozenset()
    assert unicast_only.counters.dropped_multicast_off == 1
    assert "cmcast" not in unicast_only.counters.traffic
    await listener.send_multicast(channel, b"unheard")
    await asyncio.sleep(SILENCE)
    assert inbox_unicast_only.got == []


async def test_oversized_datagram_refused_and_counted(nodes: Nodes) -> None:
    small, _ = await nodes.start(max_datagram=100)
    receiver, inbox = await nodes.start()

    await small.send_unicast(receiver.unicast_address, bytes(101))
    await small.send_unicast(receiver.unicast_address, bytes(100))
    await receiver.send_unicast(small.unicast_address, bytes(65508))
    # The largest IPv4 UDP payload goes through whole, and is read whole.
    await receiver.send_unicast(receiver.unicast_address, bytes(65507))

    await inbox.wait_for(2)
    assert sorted(len(payload) for payload in inbox.payloads) == [100, 65507]
    assert small.counters.dropped_oversized == 1
    assert receiver.counters.dropped_oversized == 1
    assert small.counters.of(UNICAST).datagrams_sent == 1


async def test_leave_stops_delivery_and_rejoin_restores_it(
    nodes: Nodes, channel: Channel
) -> None:
    member, inbox = await nodes.start()
    sender, _ = await nodes.start()
    await member.join(channel)
    await member.join(channel)  # a second join changes nothing
    await sender.send_multicast(channel, b"one")
    await inbox.wait_for(1)

    await member.leave(channel)
    await member.leave(channel)
    assert member.joined == frozenset()
    await sender.send_multicast(channel, b"two")
    await asyncio.sleep(SILENCE)
    assert inbox.payloads == [b"one"]

    await member.join(channel)
    await sender.send_multicast(channel, b"three")
    await inbox.wait_for(2)
    assert inbox.payloads == [b"one", b"three"]


async def test_close_is_idempotent_and_leaves_no_socket(channel: Channel) -> None:
    before = open_fds()
    inbox = Inbox()
    transport = UdpTransport(LOCAL, on_datagram=inbox)
    await transport.start()
    await transport.join(channel)
    await transport.join(Channel("pmcast", *free_group_port()))
    address = transport.unicast_address
    assert open_fds() == before + 3

    await transport.close()
    await transport.close()

    assert open_fds() == before
    assert "closed" in repr(transport)
    assert transport.unicast_address == address
    await transport.send_unicast(address, b"late")  # dropped quietly during shutdown
    assert transport.counters.dropped_send_error == 1
    with pytest.raises(ChannelError, match="closed"):
        await transport.join(channel)


async def test_context_manager_closes(channel: Channel) -> None:
    before = open_fds()
    async with UdpTransport(LOCAL, on_datagram=Inbox()) as transport:
        await transport.join(channel)
        assert "open" in repr(transport)
    assert open_fds() == before


async def test_burst_beyond_queue_limit_drops_and_counts_without_blocking(
    nodes: Nodes,
) -> None:
    release = asyncio.Event()
    handled: list[bytes] = []

    async def slow(payload: bytes, *, source: tuple[str, int], via: Channel | None) -> None:
        handled.append(payload)
        await release.wait()

    receiver, _ = await nodes.start(on_datagram=slow, queue_limit=8)
    sender, _ = await nodes.start()

    async with asyncio.timeout(ARRIVAL):  # sending never waits for the receiver
        for n in range(50):
            await sender.send_unicast(receiver.unicast_address, b"%d" % n)
    await eventually(lambda: receiver.counters.of(UNICAST).datagrams_received == 50)

    # One is in the handler, eight wait in the queue, the other 41 were dropped.
    assert receiver.counters.dropped_queue_full == 41
    release.set()
    await eventually(lambda: len(handled) == 9)
    assert handled == [b"%d" % n for n in range(9)]


async def test_send_errors_are_counted_not_raised(nodes: Nodes) -> None:
    transport, _ = await nodes.start()
    await transport.send_unicast((LOCAL, 0), b"nowhere")  # EINVAL from the kernel
    assert transport.counters.dropped_send_error == 1
    assert UNICAST not in transport.counters.traffic


async def test_handler_error_is_counted_and_delivery_goes_on(
    nodes: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    good: list[bytes] = []

    def fragile(payload: bytes, *, source: tuple[str, int], via: Channel | None) -> None:
        if payload == b"bad":
            raise ValueError("handler bug")
        good.append(payload)

    receiver, _ = await nodes.start(on_datagram=fragile)
    sender, _ = await nodes.start()
    await sender.send_unicast(receiver.unicast_address, b"bad")
    await sender.send_unicast(receiver.unicast_address, b"good")

    await eventually(lambda: good == [b"good"])
    assert receiver.counters.handler_errors == 1
    assert "handler failed" in caplog.text


async def test_every_socket_pins_the_multicast_interface(nodes: Nodes, channel: Channel) -> None:
    transport, _ = await nodes.start()
    await transport.join(channel)
    # The hard rule (never the default route) is checked on the sockets themselves.
    sockets = [transport._sender] + [
        endpoint.transport.get_extra_info("socket") for endpoint in transport._members.values()
    ]
    for sock in sockets:
        assert sock is not None
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, 4) == socket.inet_aton(
            LOCAL
        )
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL) == 1
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP) == 1


@pytest.mark.parametrize("interface", ["0.0.0.0", "eth0", "::1", "localhost"])
def test_interface_must_be_an_explicit_ipv4_address(interface: str) -> None:
    with pytest.raises(ChannelError, match="interface"):
        UdpTransport(interface, on_datagram=Inbox())


def test_limits_are_checked() -> None:
    with pytest.raises(ChannelError, match="ttl"):
        UdpTransport(LOCAL, on_datagram=Inbox(), ttl=256)
    with pytest.raises(ChannelError, match="max_datagram"):
        UdpTransport(LOCAL, on_datagram=Inbox(), max_datagram=65508)
    with pytest.raises(ChannelError, match="queue_limit"):
        UdpTransport(LOCAL, on_datagram=Inbox(), queue_limit=0)
    with pytest.raises(ChannelError, match="unicast_port"):
        UdpTransport(LOCAL, on_datagram=Inbox(), unicast_port=70000)
    with pytest.raises(ChannelError, match="multicast group"):
        Channel("pmcast", "10.0.0.1", 5300)
    with pytest.raises(ChannelError, match="port"):
        Channel("pmcast", "239.255.0.1", 0)
    with pytest.raises(ChannelError, match="unicast"):
        Channel("unicast", "239.255.0.1", 5300)


async def test_ipv6_groups_and_host_names_are_refused(nodes: Nodes) -> None:
    transport, _ = await nodes.start()
    v6 = Channel("local", "ff15::1", 5353)
    with pytest.raises(ChannelError, match="IPv6"):
        await transport.join(v6)
    with pytest.raises(ChannelError, match="IPv6"):
        await transport.send_multicast(v6, b"x")
    with pytest.raises(ChannelError, match="IPv4"):
        await transport.send_unicast(("localhost", 5300), b"x")


async def test_use_before_start_is_an_error() -> None:
    transport = UdpTransport(LOCAL, on_datagram=Inbox())
    with pytest.raises(ChannelError, match="start"):
        _ = transport.unicast_address
    with pytest.raises(ChannelError, match="start"):
        await transport.send_unicast((LOCAL, 9), b"x")
    await transport.close()  # closing a never-started transport is fine


async def test_satisfies_the_transport_interface(nodes: Nodes) -> None:
    transport: Transport = (await nodes.start())[0]
    assert transport.joined == frozenset()


async def test_handler_may_close_its_own_transport(nodes: Nodes) -> None:
    before = open_fds()
    closed: list[bool] = []

    async def quit_on_first(
        payload: bytes, *, source: tuple[str, int], via: Channel | None
    ) -> None:
        await receiver.close()
        closed.append(True)

    receiver = UdpTransport(LOCAL, on_datagram=quit_on_first)
    await receiver.start()
    sender, _ = await nodes.start()
    await sender.send_unicast(receiver.unicast_address, b"stop")
    await sender.send_unicast(receiver.unicast_address, b"unheard")

    await eventually(lambda: closed == [True])
    assert "closed" in repr(receiver)
    assert open_fds() == before + 1  # only the sender's socket is left
