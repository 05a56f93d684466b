"""The UDP shell of the MSD control plane: multicast channels, unicast fallback, counters."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import ipaddress
import logging
import socket
from collections.abc import Awaitable
from typing import Any, Protocol, Self, cast

from msd.errors import ChannelError

log = logging.getLogger(__name__)

# The counters key for the unicast socket; no channel may take this name.
UNICAST = "unicast"
# IPv4: 65535 minus the 20-byte IP and 8-byte UDP headers.
MAX_UDP_PAYLOAD = 65507
DEFAULT_QUEUE_LIMIT = 1024


@dataclasses.dataclass(frozen=True)
class Channel:
    """A named multicast group:port, e.g. Channel("pmcast", "239.255.0.1", 5300)."""

    name: str
    group: str
    port: int

    def __post_init__(self) -> None:
        if not self.name or self.name == UNICAST:
            raise ChannelError(f"channel name {self.name!r}: give one, other than {UNICAST!r}")
        try:
            multicast = ipaddress.ip_address(self.group).is_multicast
        except ValueError:
            multicast = False
        if not multicast:
            raise ChannelError(f"channel {self.name}: {self.group!r} is not a multicast group "
                               "(IPv4 224.0.0.0/4, e.g. 239.255.0.1, or IPv6 ff00::/8)")
        if not 1 <= self.port <= 65535:
            raise ChannelError(f"channel {self.name}: port {self.port} is outside 1..65535")

    def __str__(self) -> str:
        return f"{self.name}={self.group}:{self.port}"


class DatagramHandler(Protocol):
    """Takes each datagram (`via`: None for unicast); a returned awaitable is awaited first."""

    def __call__(
        self, payload: bytes, *, source: tuple[str, int], via: Channel | None
    ) -> Awaitable[None] | None: ...


@dataclasses.dataclass
class TrafficCounters:
    """What one channel (or the unicast socket) carried: datagrams and payload bytes."""

    datagrams_sent: int = 0
    bytes_sent: int = 0
    datagrams_received: int = 0
    bytes_received: int = 0


@dataclasses.dataclass
class TransportCounters:
    """Traffic per channel name (UNICAST: the unicast socket) and drops by cause.

    Received counts every arrival (also those then dropped for a full queue); sent counts
    only what the network accepted.
    """

    traffic: dict[str, TrafficCounters] = dataclasses.field(default_factory=dict)
    dropped_oversized: int = 0
    dropped_queue_full: int = 0
    dropped_send_error: int = 0
    dropped_multicast_off: int = 0
    handler_errors: int = 0

    def of(self, name: str) -> TrafficCounters:
        """The traffic counters of channel `name` (created at zero on first use)."""
        return self.traffic.setdefault(name, TrafficCounters())

    def count_sent(self, name: str, size: int) -> None:
        counters = self.of(name)
        counters.datagrams_sent += 1
        counters.bytes_sent += size

    def count_received(self, name: str, size: int) -> None:
        counters = self.of(name)
        counters.datagrams_received += 1
        counters.bytes_received += size


class Transport(Protocol):
    """Datagram I/O of one MSD: the multicast channels it joins, and its own unicast socket.

    Sends never raise for network reasons: refused, oversized or undeliverable datagrams
    are dropped and counted, so a blocked multicast link looks like silence to the core."""

    @property
    def unicast_address(self) -> tuple[str, int]: ...
    @property
    def counters(self) -> TransportCounters: ...
    @property
    def joined(self) -> frozenset[Channel]: ...
    async def join(self, channel: Channel) -> None: ...
    async def leave(self, channel: Channel) -> None: ...
    async def send_multicast(self, channel: Channel, payload: bytes) -> None: ...
    async def send_unicast(self, address: tuple[str, int], payload: bytes) -> None: ...
    async def close(self) -> None: ...


def check_limits(*, max_datagram: int, queue_limit: int) -> None:
    """Raise ChannelError unless both limits are in range (shared by every Transport)."""
    if not 1 <= max_datagram <= MAX_UDP_PAYLOAD:
        raise ChannelError(f"max_datagram {max_datagram} is outside 1..{MAX_UDP_PAYLOAD} bytes")
    if queue_limit < 1:
        raise ChannelError(f"queue_limit {queue_limit} must be at least 1 datagram")


def check_ipv4(host: str, *, what: str) -> None:
    """Raise ChannelError unless `host` is a dotted-quad IPv4 address (no name lookups)."""
    try:
        socket.inet_pton(socket.AF_INET, host)
    except (OSError, TypeError):
        raise ChannelError(f"{what} {host!r} is not an IPv4 address such as 127.0.0.1") from None


def _ipv4_only(channel: Channel) -> None:
    if ":" in channel.group:
        raise ChannelError(f"channel {channel}: IPv6 groups are not supported by UdpTransport; "
                           "use an IPv4 group such as 239.255.0.1")


class TransportState(enum.Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


# payload, source, via: what waits in the receive queue.
_Arrival = tuple[bytes, tuple[str, int], Channel | None]


class _Endpoint(asyncio.DatagramProtocol):
    """One socket's protocol: hands arrivals to its UdpTransport and reports when it is shut."""

    def __init__(self, owner: UdpTransport, via: Channel | None) -> None:
        self.owner = owner
        self.via = via
        self.transport: asyncio.DatagramTransport  # set by connection_made, before use
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.owner._arrived(data, (str(addr[0]), int(addr[1])), self.via)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors surface here long after the send; they change nothing for the core.
        log.debug("socket error on %s: %s", self.via or UNICAST, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    async def shut(self) -> None:
        """Close the socket; return once asyncio has really closed it (no fd left behind)."""
        self.transport.close()
        await asyncio.shield(self.closed)


class UdpTransport:
    """Real asyncio UDP sockets on one interface: a unicast socket plus one per joined channel.

    Every socket pins IP_MULTICAST_IF to `interface` (never the default route); the unicast
    socket also sends all multicast, so receivers can answer its source address directly.
    Everything that arrives is delivered, our own multicast included: the core filters by
    sender. Arrivals wait in a queue of `queue_limit` datagrams (then drop and count) and
    reach `on_datagram` one at a time. `multicast_enabled=False` (mode `none`): joins do
    nothing, multicast sends drop and count. IPv4 only. See docs/channels.md.
    """

    def __init__(
        self,
        interface: str = "127.0.0.1",
        *,
        on_datagram: DatagramHandler,
        unicast_port: int = 0,
        ttl: int = 1,
        loop_back: bool = True,
        multicast_enabled: bool = True,
        max_datagram: int = MAX_UDP_PAYLOAD,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        check_ipv4(interface, what="interface")
        if interface == "0.0.0.0":
            raise ChannelError("interface 0.0.0.0 would let multicast follow the default "
                               "route; give the address of the interface to use")
        for setting, value, top in (("unicast_port", unicast_port, 65535), ("ttl", ttl, 255)):
            if not 0 <= value <= top:
                raise ChannelError(f"{setting} {value} is outside 0..{top}")
        check_limits(max_datagram=max_datagram, queue_limit=queue_limit)
        self.interface = interface
        self.multicast_enabled = multicast_enabled
        self.max_datagram = max_datagram
        self.queue_limit = queue_limit
        self._on_datagram = on_datagram
        self._unicast_port = unicast_port
        self._ttl = ttl
        self._loop_back = loop_back
        self._state = TransportState.NEW
        self.counters = TransportCounters()
        self._sender: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._unicast: _Endpoint | None = None
        self._members: dict[Channel, _Endpoint] = {}
        self._queue: asyncio.Queue[_Arrival] = asyncio.Queue(maxsize=queue_limit)
        self._dispatcher: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        where = "{}:{}".format(*self._address) if self._address else "unbound"
        joined = ",".join(sorted(channel.name for channel in self._members)) or "-"
        mode = "on" if self.multicast_enabled else "off"
        return f"<UdpTransport {self._state.value} {where} joined={joined} multicast={mode}>"

    @property
    def state(self) -> TransportState:
        return self._state

    @property
    def joined(self) -> frozenset[Channel]:
        return frozenset(self._members)

    @property
    def unicast_address(self) -> tuple[str, int]:
        if self._address is None:
            raise ChannelError("the unicast socket is not bound yet; await start() first")
        return self._address

    async def start(self) -> None:
        """Bind the unicast socket and start handing datagrams to `on_datagram`."""
        if self._state is not TransportState.NEW:
            raise ChannelError(f"start() on a transport that is {self._state.value}")
        sock = self._socket()
        try:
            sock.bind((self.interface, self._unicast_port))
        except OSError as exc:
            sock.close()
            raise ChannelError(f"cannot bind unicast {self.interface}:{self._unicast_port}: "
                               f"{exc.strerror}; is the address local and the port free?") from exc
        self._unicast = await self._serve(sock, via=None)
        self._sender = sock
        self._address = (self.interface, int(sock.getsockname()[1]))
        self._dispatcher = asyncio.create_task(self._dispatch(), name=f"{self!r} dispatch")
        self._state = TransportState.OPEN

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def join(self, channel: Channel) -> None:
        """Receive `channel`'s datagrams (no-op if joined, or if multicast is disabled)."""
        if self._state is not TransportState.OPEN:
            raise ChannelError(f"join() on a transport that is {self._state.value}; "
                               "await start() first and do not use it after close()")
        _ipv4_only(channel)
        if not self.multicast_enabled or channel in self._members:
            return
        sock = self._socket()
        try:
            # Several MSDs (and domains) on one host must each get every datagram.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if hasattr(socket, "SO_REUSEPORT"):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            # Binding the group, not the wildcard, keeps other groups on this port out.
            sock.bind((channel.group, channel.port))
            membership = socket.inet_aton(channel.group) + socket.inet_aton(self.interface)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, membership)
        except OSError as exc:
            sock.close()
            raise ChannelError(f"cannot join {channel} on {self.interface}: {exc.strerror}; "
                               "does the interface exist and allow multicast?") from exc
        endpoint = await self._serve(sock, via=channel)
        if self._state is not TransportState.OPEN or channel in self._members:
            await endpoint.shut()  # closed or joined by someone else while we waited
            return
        self._members[channel] = endpoint

    async def leave(self, channel: Channel) -> None:
        """Stop receiving `channel`; its datagrams still queued are not delivered."""
        endpoint = self._members.pop(channel, None)
        if endpoint is not None:
            await endpoint.shut()  # closing the socket drops its membership

    async def send_multicast(self, channel: Channel, payload: bytes) -> None:
        if not self.multicast_enabled:
            self.counters.dropped_multicast_off += 1
            return
        _ipv4_only(channel)
        self._send(payload, (channel.group, channel.port), name=channel.name)

    async def send_unicast(self, address: tuple[str, int], payload: bytes) -> None:
        check_ipv4(address[0], what="unicast destination")
        self._send(payload, address, name=UNICAST)

    async def close(self) -> None:
        """Close every socket and stop delivery; safe to call twice or from the handler."""
        if self._state is TransportState.CLOSED:
            return
        self._state = TransportState.CLOSED
        endpoints = [*self._members.values(), *([self._unicast] if self._unicast else [])]
        self._members.clear()
        self._sender = None
        # Every socket is told to close before the first await, so a close() that is
        # itself cancelled still leaves no socket open.
        for endpoint in endpoints:
            endpoint.transport.close()
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None and dispatcher is not asyncio.current_task():
            dispatcher.cancel()
            await asyncio.wait([dispatcher])
        for endpoint in endpoints:
            await endpoint.shut()

    def _socket(self) -> socket.socket:
        """A non-blocking IPv4 UDP socket with the multicast options every socket carries."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                            socket.inet_aton(self.interface))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, self._ttl)
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(self._loop_back))
        except OSError as exc:
            sock.close()
            raise ChannelError(f"cannot set multicast options for {self.interface}: "
                               f"{exc.strerror}") from exc
        return sock

    async def _serve(self, sock: socket.socket, *, via: Channel | None) -> _Endpoint:
        # On failure or cancellation asyncio closes the transport it made, and the socket.
        loop = asyncio.get_running_loop()
        _, endpoint = await loop.create_datagram_endpoint(lambda: _Endpoint(self, via), sock=sock)
        return endpoint

    def _send(self, payload: bytes, destination: tuple[str, int], *, name: str) -> None:
        if self._sender is None:
            if self._state is TransportState.NEW:
                raise ChannelError("send before start(); await start() first")
            # A core still talking during shutdown: drop quietly rather than fail it.
            self.counters.dropped_send_error += 1
            log.debug("dropped %d bytes to %s: transport closed", len(payload), name)
            return
        size = len(payload)
        if size > self.max_datagram:
            self.counters.dropped_oversized += 1
            log.debug("refused %d-byte datagram to %s (max %d)", size, name, self.max_datagram)
            return
        try:
            # Straight to the kernel, never into asyncio's unbounded write buffer: a full
            # socket buffer (EAGAIN) is a drop like any other send error.
            self._sender.sendto(payload, destination)
        except OSError as exc:
            self.counters.dropped_send_error += 1
            log.debug("send of %d bytes to %s %s failed: %s", size, name, destination, exc)
            return
        self.counters.count_sent(name, size)

    def _arrived(self, payload: bytes, source: tuple[str, int], via: Channel | None) -> None:
        self.counters.count_received(via.name if via else UNICAST, len(payload))
        try:
            self._queue.put_nowait((payload, source, via))
        except asyncio.QueueFull:
            self.counters.dropped_queue_full += 1

    async def _dispatch(self) -> None:
        while self._state is not TransportState.CLOSED:
            payload, source, via = await self._queue.get()
            if via is not None and via not in self._members:
                continue  # left while it waited in the queue
            try:
                result = self._on_datagram(payload, source=source, via=via)
                if result is not None:
                    await result
            except Exception:
                # A handler bug must not stop the daemon hearing the next datagram.
                self.counters.handler_errors += 1
                log.exception("datagram handler failed on %d bytes from %s via %s",
                              len(payload), source, via or UNICAST)
