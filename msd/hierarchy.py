"""The tree of designated MSDs: one domain's state machine (messages and ticks in, actions out).

Each designated MSD is a `Node`. It hears its parent's heartbeats (with its key range),
reports its subtree's domain count upward, splits its range among itself (a share of
one) and its children in proportion to their counts, and keeps a routing table
(range → next hop, default → parent). When the parent falls silent it first asks for
unicast, then sends a tracer to the root to be grafted under its nearest live ancestor,
keeps pinging its own parent and returns to it when it answers. With no reachable
ancestor at all it acts as the root of its own subtree (the forest heals when the
parents return). The split itself and its bookkeeping are msd.division; when to split
again (α below the root, β at the root, a quiet period) is in docs/hierarchy.md.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable
from typing import Any

from msd.division import Child, Division, LinkMode
from msd.keyspace import FULL, KeyRange, RoutingTable
from msd.messages import (
    Assignment,
    CountReport,
    Graft,
    Heartbeat,
    Leave,
    Message,
    Peer,
    Ping,
    Pong,
    Tracer,
)

MAX_TRACER_HOPS = 64
STALL_HB = 0.5  # a gap between ticks longer than this (in heartbeats) is our stall
MAX_ANCESTORS = 64  # the codec's limit; deeper trees keep the 64 nearest ancestors


class NodeState(enum.StrEnum):
    """Where a node stands in the tree."""

    ROOT = "root"  # the hierarchy's root
    WAITING = "waiting"  # has a parent domain but no parent yet: acts as a root meanwhile
    JOINED = "joined"  # under its own parent
    ORPHAN = "orphan"  # lost its parent, tracing towards the root
    FOSTERED = "fostered"  # grafted under a live ancestor until its parent returns


@dataclasses.dataclass(frozen=True, kw_only=True)
class HierarchyConfig:
    """Timers (in heartbeat intervals) and damping thresholds; every one settable."""

    heartbeat_s: float = 1.0
    unicast_after: float = 2.0  # parent silent this long → ask it for unicast heartbeats
    dead_after: float = 3.0  # parent silent this long → it is lost: trace to the root
    child_timeout: float = 3.0  # child silent this long → drop it and re-split
    tracer_timeout: float = 1.0  # no graft this long → try the next ancestor down
    retrace_every: float = 2.0  # no ancestor answered (loss?) → trace again this often
    alpha: float = 0.1  # relative count change that re-splits below the root
    beta: float = 0.1  # relative count change that re-splits at the root
    refresh_every: int = 10  # quiet heartbeats after which a stale split is refreshed anyway
    multicast: bool = True  # False: multicast mode `none`, every link unicast


# --- actions -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SendParent:
    """Multicast on PMCAST (the parent's CMCAST group)."""

    message: Message


@dataclasses.dataclass(frozen=True)
class SendChildren:
    """Multicast on this domain's CMCAST group."""

    message: Message


@dataclasses.dataclass(frozen=True)
class SendUnicast:
    """A datagram to one peer's unicast control socket."""

    peer: Peer
    message: Message


Action = SendParent | SendChildren | SendUnicast


class Node:
    """One domain's designated MSD in the tree of domains."""

    def __init__(
        self,
        *,
        address: Peer,
        parent_domain: str | None,
        msd_id: str,
        term: int,
        config: HierarchyConfig,
        now: float,
    ) -> None:
        self.domain = address.domain
        self.address = address
        self.parent_domain = parent_domain
        self.msd_id = msd_id
        self.term = term
        self.config = config
        self.state = NodeState.ROOT if parent_domain is None else NodeState.WAITING
        self.parent: Peer | None = None  # whom we report to now (own parent or adopter)
        self.own_parent: Peer | None = None  # our own parent's address, when known
        self.parent_link = LinkMode.MULTICAST if config.multicast else LinkMode.UNICAST
        self.parent_heard_at = now
        self.ancestors: tuple[Peer, ...] = ()  # root … parent, from the last heartbeat
        self.division = Division(self.domain)
        self.routes = RoutingTable([(FULL, self.domain)], default=None)
        self.route_switches = 0
        self.last_change = now
        self._seq = 0
        self._beats = 0
        self._last_tick = now
        self._ticked_at = now  # the last tick (of any kind), for stall detection
        self._tracing: list[Peer] = []  # ancestors still to try, nearest-to-root first
        self._tracer_sent_at = now
        self._lost_parent: str | None = None  # the parent (or adopter) we trace around
        self._max_term: dict[str, int] = {}
        self._resplit_unsent = False  # children have not heard the latest split yet

    def __repr__(self) -> str:
        return (f"<Node {self.domain} {self.state} parent={self.parent and self.parent.domain}"
                f" children={len(self.children)} owned={self.owned}>")

    # --- inputs ----------------------------------------------------------------------------

    def set_parent_address(self, peer: Peer | None, now: float) -> list[Action]:
        """The shell learnt (from the URS) where our own parent's designated MSD listens."""
        if peer is not None and peer.domain != self.parent_domain:
            return []
        self.own_parent = peer
        if self.state is NodeState.JOINED and peer is not None and self.parent != peer:
            self.parent = peer  # the parent domain elected another MSD: follow it
        if self.state is NodeState.WAITING and peer is not None:
            return [self._report(to=peer, now=now)]
        return []

    def start(self, now: float) -> list[Action]:
        """The first reports: a node that has a parent domain knocks at once."""
        self._last_tick = now
        return self._beat(now)

    def _with_split_news(self, actions: list[Action], now: float) -> list[Action]:
        """After a re-split, tell the children at once rather than at the next heartbeat,
        so the window in which parent and child disagree on a range is one network delay."""
        if self._resplit_unsent and self.children and not self._joining_soon:
            actions = [*actions, *self._heartbeats(now)]
            self._resplit_unsent = False
        return actions

    def tick(self, now: float) -> list[Action]:
        """Timers: parent silence, child timeouts, heartbeats and reports once per interval."""
        actions: list[Action] = []
        self._forgive_stall(now)
        beat = now - self._last_tick >= self.config.heartbeat_s * 0.999
        actions += self._check_parent(now)
        actions += self._check_children(now)
        if beat:
            self._last_tick = now
            self._beats += 1
            actions += self._beat(now)
        return self._with_split_news(actions, now)

    def _forgive_stall(self, now: float) -> None:
        """Silence is counted in time we ran: after a gap between ticks longer than
        STALL_HB heartbeats (our process did not run: a busy machine, a blocked event loop)
        the gap is credited to the parent and every child, whose datagrams are still
        queued in our sockets. Otherwise a stall of 3 heartbeats would drop every child
        and orphan us, and each such round moves ranges. A dead peer's silence still
        counts from the next tick on."""
        gap = now - self._ticked_at
        self._ticked_at = now
        if gap <= STALL_HB * self.config.heartbeat_s:
            return
        self.parent_heard_at += gap
        for child in self.children.values():
            child.heard_at += gap
        self._tracer_sent_at += gap

    def receive(self, message: Message, now: float, *, multicast: bool) -> list[Action]:
        """One authenticated control message, from a channel or the unicast socket."""
        return self._with_split_news(self._receive(message, now, multicast=multicast), now)

    def _receive(self, message: Message, now: float, *, multicast: bool) -> list[Action]:
        if message.sender == self.domain:
            return []
        # A deposed designated MSD of another domain cannot act: terms only grow.
        if message.term < self._max_term.get(message.sender, 0):
            return []
        self._max_term[message.sender] = message.term
        match message:
            case Heartbeat():
                return self._on_heartbeat(message, now, multicast=multicast)
            case CountReport():
                return self._on_report(message, now, multicast=multicast)
            case Tracer():
                return self._on_tracer(message, now)
            case Graft():
                return self._on_graft(message, now)
            case Leave() if message.parent == self.domain:
                return self._drop_child(message.sender, now)
            case Ping() if message.target == self.domain:
                return [self._unicast(message.reply_to, Pong, now, address=self.address)]
            case Pong():
                return self._on_pong(message, now)
        return []

    # --- what we know ----------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Domains in this subtree, this one included, as the children last reported."""
        return self.division.count

    @property
    def children(self) -> dict[str, Child]:
        return self.division.children

    @property
    def range(self) -> KeyRange:
        """The range our parent gave us (the whole space at a root)."""
        return self.division.range

    @range.setter
    def range(self, value: KeyRange) -> None:
        self.division.range = value

    @property
    def owned(self) -> KeyRange:
        """Our own piece of the range: the keys this domain answers for."""
        return self.division.owned

    @property
    def generation(self) -> int:
        """Grows with every change of the pieces (records may have to move)."""
        return self.division.generation

    @property
    def acting_root(self) -> bool:
        return self.parent is None

    def route(self, key: int) -> str | None:
        """The next hop for a key: a child, the parent, or None when this domain owns it."""
        hop = self.routes.lookup(key)
        return None if hop == self.domain else hop

    def next_peer(self, key: int) -> Peer | None:
        """Where to send a routed request for `key`: None when this domain owns it.

        Raises LookupError when no next hop is known (an orphan's default route)."""
        hop = self.route(key)
        if hop is None:
            if key not in self.owned:
                raise LookupError(f"{self.domain} has no route for {key:032x}")
            return None
        if hop in self.children:
            return self.children[hop].peer
        if self.parent is not None and hop == self.parent.domain:
            return self.parent
        raise LookupError(f"{self.domain} routes {key:032x} to {hop}, whose address it lacks")

    def route_rows(self) -> list[dict[str, str | None]]:
        """The routing table as rows covering the whole space (RoutingTable.covering_rows)."""
        return self.routes.covering_rows()

    def status(self) -> dict[str, Any]:
        """The tree as this node sees it, for `mdns status`."""
        return {
            "name": self.domain,
            "state": str(self.state),
            "term": self.term,
            "parent": self.parent.domain if self.parent else None,
            "own_parent": self.parent_domain,
            "children": sorted(self.children),
            "links": {
                **({self.parent.domain: str(self.parent_link)} if self.parent else {}),
                **{name: str(child.link) for name, child in sorted(self.children.items())},
            },
            "count": self.count,
            "ranges": [self.owned.to_json()],
            "routes": self.route_rows(),
            "route_switches": self.route_switches,
            "last_change": self.last_change,
            "generation": self.generation,
        }

    # --- the parent side -------------------------------------------------------------------

    def _check_parent(self, now: float) -> list[Action]:
        if self.parent is None:
            return self._check_waiting(now) + self._check_tracer(now)
        silent = now - self.parent_heard_at
        hb = self.config.heartbeat_s
        if silent >= self.config.dead_after * hb:
            return self._parent_lost(now)
        if silent >= self.config.unicast_after * hb and self.parent_link is LinkMode.MULTICAST:
            # Multicast may be what failed, not the parent: ask for unicast first.
            self.parent_link = LinkMode.UNICAST
            return [self._report(to=self.parent, now=now)]
        return []

    def _parent_lost(self, now: float) -> list[Action]:
        lost = self.parent
        assert lost is not None
        self.parent = None
        self.parent_link = LinkMode.UNICAST
        # Whether our parent or our adopter died, trace with every ancestor we know.
        self.state = NodeState.ORPHAN
        self._lost_parent = lost.domain
        self._tracing = [a for a in self.ancestors if a.domain != lost.domain]
        self._set_routes(self.range, now)  # no default route while orphaned
        return self._send_tracer(lost.domain, now)

    def _send_tracer(self, dead: str, now: float) -> list[Action]:
        self._tracer_sent_at = now
        if self._tracing:
            target = self._tracing[0]
            return [self._unicast(target, Tracer, now, orphan=self.address, dead=dead)]
        # Nobody left to ask: be the root of our own subtree until someone answers.
        self.state = NodeState.WAITING if self.parent_domain else NodeState.ROOT
        self.range = FULL
        self._resplit(now)
        return []

    def _check_waiting(self, now: float) -> list[Action]:
        """Knocking on our parent's door in vain: perhaps its heartbeats cannot reach us by
        multicast (a firewall), and the parent, hearing our multicast reports, sends them
        there. Ask for unicast, as a joined child does when its parent falls silent."""
        if self.state is not NodeState.WAITING or self.parent_link is not LinkMode.MULTICAST:
            return []
        if now - self.parent_heard_at < self.config.unicast_after * self.config.heartbeat_s:
            return []
        self.parent_link = LinkMode.UNICAST
        return [self._report(to=self.own_parent, now=now)]

    def _check_tracer(self, now: float) -> list[Action]:
        hb = self.config.heartbeat_s
        if self.state is NodeState.WAITING and self._lost_parent is not None:
            return self._retrace(now)
        if self.state is not NodeState.ORPHAN:
            return []
        if now - self._tracer_sent_at < self.config.tracer_timeout * hb:
            return []
        self._tracing = self._tracing[1:]  # that ancestor did not answer: try the next one
        return self._send_tracer(self._lost_parent or self.parent_domain or "", now)

    def _retrace(self, now: float) -> list[Action]:
        """Standing in as a root because no ancestor answered our tracer: under loss the
        tracer or the graft may simply have been lost, so trace again now and then (the
        highest live ancestor forwards it down to the nearest one)."""
        if now - self._tracer_sent_at < self.config.retrace_every * self.config.heartbeat_s:
            return []
        self._tracer_sent_at = now
        ancestors = [a for a in self.ancestors if a.domain != self._lost_parent]
        if not ancestors:
            return []
        return [self._unicast(ancestors[0], Tracer, now, orphan=self.address,
                              dead=self._lost_parent)]

    def _on_heartbeat(self, beat: Heartbeat, now: float, *, multicast: bool) -> list[Action]:
        actions: list[Action] = []
        sender = beat.ancestors[-1] if beat.ancestors else None
        if sender is None or sender.domain != beat.sender:
            return []
        if beat.sender == self.parent_domain and self.parent != sender:
            # Our own parent is (back) there: leave any adopter and rejoin it.
            if self.parent is not None and self.parent.domain != beat.sender:
                actions.append(self._unicast(self.parent, Leave, now, parent=self.parent.domain))
            self.parent, self.own_parent, self.state = sender, sender, NodeState.JOINED
            self._lost_parent = None
            # Optimistic: try multicast again; silence makes us ask for unicast once more.
            self.parent_link = LinkMode.MULTICAST if self.config.multicast else LinkMode.UNICAST
        if self.parent is None or beat.sender != self.parent.domain:
            return actions
        self.parent_heard_at = now
        if multicast and self.config.multicast:
            self.parent_link = LinkMode.MULTICAST
        self.ancestors = beat.ancestors
        mine = next((a for a in beat.assignments if a.child == self.domain), None)
        if mine is None:
            # The parent does not count us yet: tell it we are here.
            return [*actions, self._report(to=self.parent, now=now)]
        assigned = KeyRange(mine.start, mine.end)
        if assigned != self.range or self.routes.default != self.parent.domain:
            self.range = assigned
            if not self._listening:  # else divided on the first beat, children and all
                self._resplit(now)
        return actions

    def _on_graft(self, graft: Graft, now: float) -> list[Action]:
        tracing = self.state is NodeState.ORPHAN or (
            self.state is NodeState.WAITING and self._lost_parent is not None)
        if graft.orphan != self.domain or not tracing:
            return []
        # A tracer that went out after losing an adopter can reach our own parent, back
        # again: then we are home, not fostered (its heartbeats would never say otherwise).
        home = graft.adopter.domain == self.parent_domain
        self.parent = graft.adopter
        self.state = NodeState.JOINED if home else NodeState.FOSTERED
        if home:
            self.own_parent, self._lost_parent = graft.adopter, None
        self.parent_link, self.parent_heard_at = LinkMode.UNICAST, now
        self._tracing = []
        return [self._report(to=graft.adopter, now=now)]

    def _on_pong(self, pong: Pong, now: float) -> list[Action]:
        if pong.sender != self.parent_domain or self.state is NodeState.JOINED:
            return []
        # Our own parent answers again: report to it; its heartbeat completes the return.
        self.own_parent = pong.address
        return [self._report(to=pong.address, now=now)]

    # --- the children side -----------------------------------------------------------------

    def _on_report(self, report: CountReport, now: float, *, multicast: bool) -> list[Action]:
        if report.parent != self.domain:
            return []
        child = self.children.get(report.sender)
        own_child = report.sender.endswith("." + self.domain) and (
            report.sender.count(".") == self.domain.count(".") + 1
        )
        if child is None and not own_child:
            return []  # only grafts make foster children
        link = LinkMode.UNICAST if (report.unicast or not multicast) else LinkMode.MULTICAST
        if child is None:
            return self._join(report, link, now)
        if child.count != report.count:
            self.division.changed(self._beats)
        child.peer, child.heard_at, child.count = report.address, now, report.count
        if link is LinkMode.UNICAST and child.link is LinkMode.MULTICAST:
            child.link = link
            return [self._heartbeat_to(child, now)]
        if report.unicast is False and multicast:
            child.link = LinkMode.UNICAST if child.foster else LinkMode.MULTICAST
        # A changed count waits for the beat (docs/hierarchy.md, "Damping").
        return []

    def _join(self, report: CountReport, link: LinkMode, now: float) -> list[Action]:
        """A new child: a piece of our own piece when its subtree is small against ours
        (nothing else moves), else a fresh division of the whole range. While we are about
        to join our own parent, only counted: the range its heartbeat brings is divided by
        the current counts, the newcomer included, so neither we nor it switch twice."""
        child = Child(peer=report.address, count=report.count, used=report.count,
                      heard_at=now, link=link)
        self.division.changed(self._beats)
        if self._joining_soon or self._listening:
            self.division.admit(report.sender, child)  # placed on our join, or on the beat
            return []
        self._place(report.sender, child, now)
        return [self._heartbeat_to(child, now)]

    def _place(self, name: str, child: Child, now: float) -> None:
        """The damping rule's carve or division for a newcomer (Division.join)."""
        if self.division.join(name, child, threshold=self._threshold):
            self._routes_from_division(now)

    @property
    def _listening(self) -> bool:
        """Started less than a heartbeat ago: children that waited for us knock once a
        heartbeat, so by our first beat we have heard them all. Until then our range and
        the children are only recorded, and the first beat divides once (Node._beat)."""
        return self._beats == 0

    @property
    def _joining_soon(self) -> bool:
        """Waiting for a parent whose address we know: its range for us is on its way, so
        news of our split would be replaced within a network delay."""
        return self.state is NodeState.WAITING and self.own_parent is not None

    def _on_tracer(self, tracer: Tracer, now: float) -> list[Action]:
        if len(tracer.hops) >= MAX_TRACER_HOPS or tracer.orphan.domain == self.domain:
            return []
        orphan = tracer.orphan.domain
        hops = (*tracer.hops, self.domain)
        for name, child in self.children.items():
            on_path = orphan.endswith("." + name) and name != tracer.dead
            if on_path and name != orphan:
                return [self._unicast(child.peer, Tracer, now, orphan=tracer.orphan,
                                      dead=tracer.dead, hops=hops)]
        # We are the nearest live ancestor: adopt (our own child, if it is one, comes home).
        own_child = orphan.endswith("." + self.domain) and (
            orphan.count(".") == self.domain.count(".") + 1)
        self.children[orphan] = Child(peer=tracer.orphan, count=1, used=1, heard_at=now,
                                      link=LinkMode.UNICAST, foster=not own_child)
        self.division.changed(self._beats)
        self._resplit(now)
        return [self._unicast(tracer.orphan, Graft, now, adopter=self.address, orphan=orphan),
                self._heartbeat_to(self.children[orphan], now)]

    def _check_children(self, now: float) -> list[Action]:
        limit = self.config.child_timeout * self.config.heartbeat_s
        gone = [name for name, child in self.children.items() if now - child.heard_at >= limit]
        actions: list[Action] = []
        for name in gone:
            actions += self._drop_child(name, now)
        return actions

    def _drop_child(self, name: str, now: float) -> list[Action]:
        if self.division.drop(name):
            self.division.changed(self._beats)
            self._resplit(now)
        return []

    @property
    def _threshold(self) -> float:
        """θ of the damping rule: β where we act as the root, α below it."""
        return self.config.beta if self.acting_root else self.config.alpha

    def _split_due(self) -> bool:
        """On the beat: is a stale split to be refreshed now (msd.division.Division.due)?"""
        depth = 0 if self.acting_root else len(self.ancestors)
        return self.division.due(beat=self._beats, threshold=self._threshold, depth=depth,
                                 quiet=self.config.refresh_every)

    # --- once per heartbeat ----------------------------------------------------------------

    def _beat(self, now: float) -> list[Action]:
        actions: list[Action] = []
        if self._beats == 1:
            # The first beat: our range (if our parent answered) and the children heard
            # while listening, in one division, so one table change for us and for them.
            self._resplit(now)
        for name in self.division.unplaced():  # our parent did not answer within the beat
            self._place(name, self.children[name], now)
        if self._split_due():
            self._resplit(now)
        if self.parent is not None:
            actions.append(self._report(to=self.parent, now=now))
        elif self.state is NodeState.WAITING:
            # Knock on the parent's door: by unicast if we know where it is, else on PMCAST.
            actions.append(self._report(to=self.own_parent, now=now))
        if self.state in (NodeState.FOSTERED, NodeState.ORPHAN) and self.own_parent is not None:
            actions.append(self._unicast(self.own_parent, Ping, now, target=self.own_parent.domain,
                                         reply_to=self.address))
        if self.children:
            actions += self._heartbeats(now)
            self._resplit_unsent = False
        return actions

    def _heartbeats(self, now: float) -> list[Action]:
        """One heartbeat: on CMCAST for multicast children, by unicast to the others."""
        beat = self._heartbeat(now)
        actions: list[Action] = []
        if self.config.multicast and any(
            c.link is LinkMode.MULTICAST for c in self.children.values()
        ):
            actions.append(SendChildren(beat))
        actions += [SendUnicast(c.peer, beat) for c in self.children.values()
                    if c.link is LinkMode.UNICAST]
        return actions

    def _heartbeat(self, now: float) -> Heartbeat:
        ancestors = (*self.ancestors, self.address) if self.parent else (self.address,)
        assignments = tuple(
            Assignment(child=name, start=row.start, end=row.end)
            for row, name in self._child_rows()
        )
        return Heartbeat(sender=self.domain, msd_id=self.msd_id, term=self.term,
                         seq=self._next_seq(), sent_at_ms=int(now * 1000),
                         ancestors=ancestors[-MAX_ANCESTORS:], generation=self.generation,
                         assignments=assignments)

    def _heartbeat_to(self, child: Child, now: float) -> SendUnicast:
        return SendUnicast(child.peer, self._heartbeat(now))

    def _report(self, *, to: Peer | None, now: float) -> Action:
        """A count report to `to`, or on PMCAST to our own parent when its address is unknown."""
        parent = to.domain if to is not None else self.parent_domain
        assert parent is not None
        report = CountReport(sender=self.domain, msd_id=self.msd_id, term=self.term,
                             seq=self._next_seq(), sent_at_ms=int(now * 1000), parent=parent,
                             count=self.count, address=self.address,
                             unicast=self.parent_link is LinkMode.UNICAST)
        multicast = self.parent_link is LinkMode.MULTICAST and self.config.multicast
        if to is None or (multicast and parent == self.parent_domain):
            return SendParent(report)
        return SendUnicast(to, report)

    def _unicast(self, peer: Peer, kind: type[Message], now: float, **fields: Any) -> SendUnicast:
        message = kind(sender=self.domain, msd_id=self.msd_id, term=self.term,
                       seq=self._next_seq(), sent_at_ms=int(now * 1000), **fields)
        return SendUnicast(peer, message)

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # --- splitting -------------------------------------------------------------------------

    def _child_rows(self) -> Iterable[tuple[KeyRange, str]]:
        return ((piece, name) for name, piece in sorted(self.division.pieces.items()))

    def _resplit(self, now: float) -> None:
        """Divide our range: a share of one for us, then each child by its subtree count."""
        if self.parent is None and self.state is not NodeState.ORPHAN:
            self.range = FULL
        self.division.divide()
        self._routes_from_division(now)

    def _routes_from_division(self, now: float) -> None:
        """The routing table from the division's pieces; children hear of a change at once."""
        if self._set_routes(self.range, now, rows=self.division.rows()):
            self._resplit_unsent = True

    def _set_routes(
        self, covered: KeyRange, now: float, *, rows: list[tuple[KeyRange, str]] | None = None
    ) -> bool:
        """Install a routing table; a route switch is counted only when it differs from the
        one in force (some key's next hop changes). True if it did."""
        if rows is None:
            rows = [(row, hop) for row, hop in self.routes.rows]
        default = self.parent.domain if self.parent else None
        table = RoutingTable(rows, default=default)
        if table == self.routes:
            return False
        self.routes = table
        self.route_switches += 1
        self.last_change = now
        return True

