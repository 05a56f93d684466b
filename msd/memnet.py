"""An in-memory network of fake MSD transports: deterministic delivery, blocking, seeded loss."""

from __future__ import annotations

import collections
import dataclasses
import inspect
import logging
import random
from collections.abc import Awaitable

from msd.channels import (
    DEFAULT_QUEUE_LIMIT,
    MAX_UDP_PAYLOAD,
    UNICAST,
    Channel,
    DatagramHandler,
    TransportCounters,
    check_ipv4,
    check_limits,
)
from msd.errors import ChannelError

log = logging.getLogger(__name__)

Address = tuple[str, int]
# Nodes get 10.0.0.1:9000, 10.0.0.2:9000, ... unless given an address.
_FIRST_PORT = 9000


@dataclasses.dataclass
class NetworkCounters:
    """What the network did with each datagram, counted once per destination."""

    delivered: int = 0  # handed to the destination's handler
    lost: int = 0  # dropped by a lossy link (set_loss)
    blocked: int = 0  # multicast to a node whose inbound multicast is blocked
    unroutable: int = 0  # unicast to an address no node holds
    stale: int = 0  # destination left the channel or closed before delivery


@dataclasses.dataclass(frozen=True, slots=True)
class _Delivery:
    target: MemoryTransport
    payload: bytes
    source: Address
    via: Channel | None


class MemoryNetwork:
    """Carries datagrams between MemoryTransports, in send order, when it is told to.

    A send never runs a handler: it appends to one FIFO, and `deliver_pending()` (plain
    code, no event loop) or `await drain()` hands the datagrams over. So a handler that
    replies never re-enters another handler halfway through its work, and a simulator
    with a virtual clock decides when a hop happens (e.g. one `deliver_pending()` per
    tick). Loss is drawn when a datagram is sent, from one `random.Random(seed)`, and only
    on lossy links: the same seed and the same sends give the same run.
    """

    def __init__(self, *, seed: int = 0) -> None:
        self.counters = NetworkCounters()
        self._random = random.Random(seed)
        self._hosts: dict[Address, MemoryTransport] = {}
        # (group, port) -> members in join order; a dict keeps order and removes in O(1).
        self._groups: dict[Address, dict[tuple[MemoryTransport, Channel], None]] = {}
        self._pending: collections.deque[_Delivery] = collections.deque()
        self._loss: dict[tuple[Address | None, Address | None], float] = {}
        self._blocked_in: set[Address] = set()
        self._blocked_out: set[Address] = set()
        self._next_host = 1

    def __repr__(self) -> str:
        return f"<MemoryNetwork nodes={len(self._hosts)} pending={len(self._pending)}>"

    @property
    def pending(self) -> int:
        """Datagrams sent and not yet delivered."""
        return len(self._pending)

    def attach(
        self,
        on_datagram: DatagramHandler,
        *,
        address: Address | None = None,
        multicast_enabled: bool = True,
        loop_back: bool = True,
        max_datagram: int = MAX_UDP_PAYLOAD,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> MemoryTransport:
        """A new node on this network, at `address` (default: the next free 10.x.y.z:9000)."""
        check_limits(max_datagram=max_datagram, queue_limit=queue_limit)
        if address is None:
            address = self._free_address()
        check_ipv4(address[0], what="node address")
        if not 1 <= address[1] <= 65535:
            raise ChannelError(f"node port {address[1]} is outside 1..65535")
        if address in self._hosts:
            raise ChannelError(f"{address[0]}:{address[1]} is already taken on this network")
        transport = MemoryTransport(
            self, address, on_datagram, multicast_enabled=multicast_enabled,
            loop_back=loop_back, max_datagram=max_datagram, queue_limit=queue_limit)
        self._hosts[address] = transport
        return transport

    def block_multicast(self, address: Address, *, inbound: bool = True,
                        outbound: bool = False) -> None:
        """Set exactly how multicast is blocked at `address`; unicast always flows.

        inbound: no multicast reaches it (a firewall dropping 224.0.0.0/4). outbound: its
        multicast sends fail and count as send errors (no multicast route). Both False
        unblocks.
        """
        for blocked, on in ((self._blocked_in, inbound), (self._blocked_out, outbound)):
            if on:
                blocked.add(address)
            else:
                blocked.discard(address)

    def set_loss(self, rate: float, *, source: Address | None = None,
                 destination: Address | None = None) -> None:
        """Lose `rate` (0..1) of datagrams from `source` to `destination` (None: any node).

        The most specific setting wins: (source, destination), then (source, any), then
        (any, destination), then (any, any).
        """
        if not 0.0 <= rate <= 1.0:
            raise ChannelError(f"loss rate {rate} is outside 0..1")
        self._loss[(source, destination)] = rate

    def deliver_pending(self, *, limit: int | None = None) -> int:
        """Deliver what is pending now (up to `limit`), not what is sent meanwhile.

        Needs plain-function handlers; a handler that returns an awaitable raises
        ChannelError (use `await drain()`). Returns how many reached a handler.
        """
        before = self.counters.delivered
        count = len(self._pending) if limit is None else min(limit, len(self._pending))
        for _ in range(count):
            result = self._deliver(self._pending.popleft())
            if result is not None:
                if inspect.iscoroutine(result):
                    result.close()  # never awaited otherwise, and Python would warn
                raise ChannelError("a handler returned an awaitable; deliver_pending() runs "
                                   "without an event loop: use `await network.drain()`")
        return self.counters.delivered - before

    async def drain(self, *, max_rounds: int = 1000) -> int:
        """Deliver round after round until nothing is pending, awaiting async handlers.

        Stops after `max_rounds` rounds (handlers that always answer each other would
        never settle); returns how many datagrams reached a handler.
        """
        before = self.counters.delivered
        for _ in range(max_rounds):
            if not self._pending:
                break
            for _ in range(len(self._pending)):
                delivery = self._pending.popleft()
                result = self._deliver(delivery)
                if result is None:
                    continue
                try:
                    await result
                except Exception:
                    self._handler_failed(delivery)
        return self.counters.delivered - before

    def _free_address(self) -> Address:
        while True:
            n, self._next_host = self._next_host, self._next_host + 1
            if n >= 1 << 24:
                raise ChannelError("no free 10.x.y.z address left; give addresses explicitly")
            address = (f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", _FIRST_PORT)
            if address not in self._hosts:
                return address

    def _loss_rate(self, source: Address, destination: Address) -> float:
        for link in ((source, destination), (source, None), (None, destination), (None, None)):
            rate = self._loss.get(link)
            if rate is not None:
                return rate
        return 0.0

    def _enqueue(self, source: Address, target: MemoryTransport, payload: bytes,
                 via: Channel | None) -> None:
        rate = self._loss_rate(source, target.unicast_address)
        # Draw only on lossy links, so adding loss elsewhere leaves lossless runs unchanged.
        if rate > 0.0 and (rate >= 1.0 or self._random.random() < rate):
            self.counters.lost += 1
            return
        target.counters.count_received(via.name if via else UNICAST, len(payload))
        if target._queued >= target.queue_limit:
            target.counters.dropped_queue_full += 1
            return
        target._queued += 1
        self._pending.append(_Delivery(target, payload, source, via))

    def _multicast(self, sender: MemoryTransport, channel: Channel, payload: bytes) -> None:
        for target, via in list(self._groups.get((channel.group, channel.port), ())):
            if target is sender and not sender.loop_back:
                continue
            if target.unicast_address in self._blocked_in:
                self.counters.blocked += 1
                continue
            self._enqueue(sender.unicast_address, target, payload, via)

    def _unicast(self, sender: MemoryTransport, address: Address, payload: bytes) -> None:
        target = self._hosts.get(address)
        if target is None:
            self.counters.unroutable += 1
            return
        self._enqueue(sender.unicast_address, target, payload, None)

    def _deliver(self, delivery: _Delivery) -> Awaitable[None] | None:
        target = delivery.target
        target._queued -= 1
        if target.closed or (delivery.via is not None and delivery.via not in target.joined):
            self.counters.stale += 1
            return None
        self.counters.delivered += 1
        try:
            return target._on_datagram(delivery.payload, source=delivery.source,
                                       via=delivery.via)
        except Exception:
            self._handler_failed(delivery)
            return None

    def _handler_failed(self, delivery: _Delivery) -> None:
        # As in UdpTransport: a handler bug is logged and counted, delivery goes on.
        delivery.target.counters.handler_errors += 1
        log.exception("datagram handler of %s failed on %d bytes from %s via %s",
                      delivery.target, len(delivery.payload), delivery.source,
                      delivery.via or UNICAST)

    def _join(self, transport: MemoryTransport, channel: Channel) -> None:
        self._groups.setdefault((channel.group, channel.port), {})[(transport, channel)] = None

    def _leave(self, transport: MemoryTransport, channel: Channel) -> None:
        members = self._groups.get((channel.group, channel.port), {})
        members.pop((transport, channel), None)
        if not members:
            self._groups.pop((channel.group, channel.port), None)

    def _detach(self, transport: MemoryTransport) -> None:
        self._hosts.pop(transport.unicast_address, None)


class MemoryTransport:
    """One node of a MemoryNetwork, with UdpTransport's interface and limits and no sockets.

    Each async method has a `*_sync` twin, so a simulator can drive a node without an
    event loop. With `loop_back` a node hears its own multicast, as UdpTransport does.
    """

    def __init__(self, network: MemoryNetwork, address: Address, on_datagram: DatagramHandler,
                 *, multicast_enabled: bool, loop_back: bool, max_datagram: int,
                 queue_limit: int) -> None:
        self.network = network
        self.multicast_enabled = multicast_enabled
        self.loop_back = loop_back
        self.max_datagram = max_datagram
        self.queue_limit = queue_limit
        self.counters = TransportCounters()
        self.closed = False
        self._address = address
        self._on_datagram = on_datagram
        self._joined: dict[Channel, None] = {}  # ordered, for a stable repr
        self._queued = 0  # datagrams pending for this node in the network's FIFO

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        joined = ",".join(channel.name for channel in self._joined) or "-"
        return f"<MemoryTransport {state} {self._address[0]}:{self._address[1]} joined={joined}>"

    @property
    def unicast_address(self) -> Address:
        return self._address

    @property
    def joined(self) -> frozenset[Channel]:
        return frozenset(self._joined)

    def join_sync(self, channel: Channel) -> None:
        if self.closed:
            raise ChannelError(f"join() on closed {self!r}")
        if self.multicast_enabled and channel not in self._joined:
            self._joined[channel] = None
            self.network._join(self, channel)

    def leave_sync(self, channel: Channel) -> None:
        if channel in self._joined:
            del self._joined[channel]
            self.network._leave(self, channel)

    def send_multicast_sync(self, channel: Channel, payload: bytes) -> None:
        if not self.multicast_enabled:
            self.counters.dropped_multicast_off += 1
        elif self._accept(payload, name=channel.name):
            if self._address in self.network._blocked_out:
                self.counters.dropped_send_error += 1  # no multicast route, like ENETUNREACH
                return
            self.counters.count_sent(channel.name, len(payload))
            self.network._multicast(self, channel, payload)

    def send_unicast_sync(self, address: Address, payload: bytes) -> None:
        check_ipv4(address[0], what="unicast destination")
        if self._accept(payload, name=UNICAST):
            self.counters.count_sent(UNICAST, len(payload))
            self.network._unicast(self, address, payload)

    def close_sync(self) -> None:
        if self.closed:
            return
        self.closed = True
        for channel in list(self._joined):
            self.leave_sync(channel)
        self.network._detach(self)

    async def join(self, channel: Channel) -> None:
        self.join_sync(channel)

    async def leave(self, channel: Channel) -> None:
        self.leave_sync(channel)

    async def send_multicast(self, channel: Channel, payload: bytes) -> None:
        self.send_multicast_sync(channel, payload)

    async def send_unicast(self, address: Address, payload: bytes) -> None:
        self.send_unicast_sync(address, payload)

    async def close(self) -> None:
        self.close_sync()

    def _accept(self, payload: bytes, *, name: str) -> bool:
        """Whether a send may go out; counts it dropped otherwise (closed or oversized)."""
        if self.closed:
            self.counters.dropped_send_error += 1
            return False
        if len(payload) > self.max_datagram:
            self.counters.dropped_oversized += 1
            log.debug("refused %d-byte datagram to %s (max %d)", len(payload), name,
                      self.max_datagram)
            return False
        return True
