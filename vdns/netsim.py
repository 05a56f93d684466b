"""A virtual network and clock that run the MSD tree cores (msd.hierarchy.Node) in one process.

The very protocol code the daemons run, with multicast groups, unicast addresses,
latency, loss, blocked multicast and dead domains simulated; time is virtual, so a
20-minute scenario runs in well under a second. Deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from collections.abc import Iterable

from msd.codec import KEY_BYTES, SIGNATURE_BYTES, encode
from msd.hierarchy import Action, HierarchyConfig, Node, SendChildren, SendParent, SendUnicast
from msd.messages import Message, Peer
from vdns.startorder import Start

TICKS_PER_HEARTBEAT = 10  # as often as the daemons tick their node (msd.daemon)
_SIM_KEY = bytes(KEY_BYTES)


class _SizeOnly:
    """Signs nothing: a signature's bytes without the cost of Ed25519 (sizes are counted)."""

    def sign(self, data: bytes) -> bytes:
        return bytes(SIGNATURE_BYTES)


_SIZE_ONLY = _SizeOnly()


@dataclasses.dataclass
class SimDomain:
    """One domain on the virtual network: its node and its multicast groups."""

    node: Node
    cmcast: str  # the group it talks to its children on (and hears their reports)
    pmcast: str | None  # the group it hears its parent on (None at the root)
    alive: bool = True
    multicast_blocked: bool = False
    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0  # encoded datagrams, counted only when the network has a wire key


@dataclasses.dataclass(frozen=True, slots=True)
class _Delivery:
    target: str
    message: Message
    multicast: bool
    port: int | None  # unicast: the port it was sent to


class VirtualNetwork:
    """Domains, groups, a clock and a delivery queue."""

    def __init__(
        self,
        *,
        config: HierarchyConfig,
        latency_s: float = 0.002,
        jitter_s: float = 0.0,
        loss: float = 0.0,
        seed: int = 0,
        wire_key: bytes | None = None,
    ) -> None:
        """`wire_key`: encode every datagram sent (msd.codec, tagged with this key, with a
        stand-in signature) to count its real size in `SimDomain.bytes_sent` and
        `bytes_by_kind`; None skips the cost."""
        self.config = config
        self.wire_key = wire_key
        self.bytes_by_kind: dict[str, int] = {}
        self.latency_s = latency_s
        self.jitter_s = jitter_s
        self.loss = loss
        self.random = random.Random(seed)
        self.now = 0.0
        self.domains: dict[str, SimDomain] = {}
        self._by_address: dict[tuple[str, int], str] = {}
        # Who hears each group (as CMCAST or PMCAST), in the order the domains were first
        # added: a multicast costs its members, not a scan of every domain.
        self._members: dict[str, dict[str, None]] = {}
        self._tick_order: list[str] | None = None  # every domain by name; None after an add
        self._children: dict[str, dict[str, None]] = {}  # parent domain → its child domains
        # (due time, sequence, delivery): plain tuples, so the heap compares in C.
        self._queue: list[tuple[float, int, _Delivery]] = []
        self._seq = 0
        self._next_port = 10_000
        self.delivered = 0
        self.lost = 0

    def add(
        self, domain: str, *, parent: str | None, cmcast: str, pmcast: str | None, term: int = 1
    ) -> Node:
        """Start (or restart) a domain's designated MSD now; it gets a fresh unicast port."""
        self._next_port += 1
        # A stand-in public key: the cores carry it untouched, so datagrams have their real size.
        address = Peer(domain=domain, host="127.0.0.1", port=self._next_port, key=_SIM_KEY)
        node = Node(address=address, parent_domain=parent, msd_id=f"sim-{self._next_port}",
                    term=term, config=self.config, now=self.now)
        old = self.domains.get(domain)
        if old is not None:
            for group in (old.cmcast, old.pmcast):
                if group is not None and group not in (cmcast, pmcast):
                    self._members[group].pop(domain, None)
            if old.node.parent_domain != parent:
                self._children[old.node.parent_domain or ""].pop(domain, None)
        self.domains[domain] = SimDomain(node=node, cmcast=cmcast, pmcast=pmcast)
        self._tick_order = None
        for group in (cmcast, pmcast):
            if group is not None:
                self._members.setdefault(group, {})[domain] = None
        self._children.setdefault(parent or "", {})[domain] = None
        self._by_address[(address.host, address.port)] = domain
        # The URS soft state: children learn where their parent's designated MSD is.
        for name in self._children.get(domain, ()):
            other = self.domains[name]
            if other.alive:
                self._carry(domain=name, actions=other.node.set_parent_address(address, self.now))
        if parent in self.domains and self.domains[parent].alive:
            self._carry(domain=domain, actions=node.set_parent_address(
                self.domains[parent].node.address, self.now))
        self._carry(domain=domain, actions=node.start(self.now))
        return node

    def kill(self, domain: str) -> None:
        """The domain's MSDs die: it neither sends nor receives."""
        self.domains[domain].alive = False

    def block_multicast(self, domain: str, *, blocked: bool = True) -> None:
        """Multicast to this domain is dropped (unicast still flows)."""
        self.domains[domain].multicast_blocked = blocked

    def run(self, *, until: float, step: float | None = None) -> None:
        """Advance the clock to `until`, ticking every live node each `step` seconds."""
        step = step or self.config.heartbeat_s / TICKS_PER_HEARTBEAT
        while self.now < until - 1e-9:
            next_tick = min(until, self.now + step)
            self._deliver_until(next_tick)
            self.now = next_tick
            if self._tick_order is None:
                self._tick_order = sorted(self.domains)
            for name in self._tick_order:
                sim = self.domains[name]
                if sim.alive:
                    self._carry(domain=name, actions=sim.node.tick(self.now))

    def settle(self, *, within: float = 0.05) -> None:
        """Deliver what is in flight (for `within` seconds) without ticking any node."""
        self.deliver(until=self.now + within)

    def deliver(self, *, until: float) -> None:
        """Deliver what is due by `until` without ticking any node; the clock moves there."""
        self._deliver_until(until)
        self.now = max(self.now, until)

    def live_nodes(self) -> list[Node]:
        return [sim.node for sim in self.domains.values() if sim.alive]

    def route(
        self, key: int, *, start: str, max_hops: int = 256, path: list[str] | None = None
    ) -> tuple[str | None, int]:
        """Follow next hops from `start` to the domain that owns `key`: (owner, hops).

        Every live domain the lookup visits, `start` and the owner included, is appended to
        `path` when one is given."""
        current, hops = start, 0
        seen: set[str] = set()
        while hops <= max_hops:
            sim = self.domains.get(current)
            if sim is None or not sim.alive or current in seen:
                return None, hops
            seen.add(current)
            if path is not None:
                path.append(current)
            hop = sim.node.route(key)
            if hop is None:
                return current, hops
            current, hops = hop, hops + 1
        return None, hops

    # --- delivery --------------------------------------------------------------------------

    def _carry(self, *, domain: str, actions: Iterable[Action]) -> None:
        sender = self.domains[domain]
        for action in actions:
            sender.messages_sent += 1
            match action:
                case SendParent(message=message) if sender.pmcast is not None:
                    self._multicast(sender, sender.pmcast, message)
                case SendChildren(message=message):
                    self._multicast(sender, sender.cmcast, message)
                case SendUnicast(peer=peer, message=message):
                    self._count_bytes(sender, message)
                    target = self._by_address.get((peer.host, peer.port))
                    if target is not None:
                        self._enqueue(target, message, multicast=False, port=peer.port)

    def _multicast(self, sender: SimDomain, group: str, message: Message) -> None:
        if not self.config.multicast:
            return
        self._count_bytes(sender, message)  # one datagram, however many members hear it
        for name in self._members.get(group, ()):
            sim = self.domains[name]
            if sim is sender or sim.multicast_blocked:
                continue
            self._enqueue(name, message, multicast=True)

    def _count_bytes(self, sender: SimDomain, message: Message) -> None:
        if self.wire_key is None:
            return
        size = len(encode(message, key=self.wire_key, signer=_SIZE_ONLY))
        sender.bytes_sent += size
        self.bytes_by_kind[message.kind] = self.bytes_by_kind.get(message.kind, 0) + size

    def _enqueue(
        self, target: str, message: Message, *, multicast: bool, port: int | None = None
    ) -> None:
        if self.loss and self.random.random() < self.loss:
            self.lost += 1
            return
        self._seq += 1
        delay = self.latency_s + (self.random.uniform(0, self.jitter_s) if self.jitter_s else 0)
        heapq.heappush(self._queue, (self.now + delay, self._seq,
                                     _Delivery(target, message, multicast, port)))

    def _deliver_until(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until:
            at, _, delivery = heapq.heappop(self._queue)
            sim = self.domains.get(delivery.target)
            # A datagram addressed to a dead process's port is lost, even after a restart.
            if sim is None or not sim.alive or delivery.port not in (None, sim.node.address.port):
                continue
            node = sim.node
            # The clock stands at the delivery, so whatever the node sends in answer leaves
            # then, and a chain of answers pays the latency once per hop.
            self.now = max(self.now, at)
            self.delivered += 1
            sim.messages_received += 1
            self._carry(domain=delivery.target, actions=node.receive(
                delivery.message, self.now, multicast=delivery.multicast))


def run_schedule(net: VirtualNetwork, starts: Iterable[Start], *, until: float) -> None:
    """Start each domain at its time (a start order, `vdns.startorder.schedule`), then run the
    clock to `until`: the dissertation's controller on the virtual clock."""
    for start in sorted(starts, key=lambda s: s.at):
        net.run(until=start.at)
        config = start.config
        net.add(config.domain, parent=config.parent_domain, cmcast=config.cmcast,
                pmcast=None if config.is_root else config.pmcast)
    net.run(until=until)
