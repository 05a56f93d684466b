"""The MSD control messages, as frozen dataclasses: what the pure cores take in and send out.

These are events, not wire formats: `msd/codec.py` turns them into versioned,
size-bounded, authenticated datagrams and back. Every message names its sender's
domain, the sender daemon and that daemon's designated term, so a deposed server's
words can be recognised and ignored.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar


@dataclasses.dataclass(frozen=True, kw_only=True)
class Peer:
    """Where one domain's designated MSD listens for unicast control datagrams.

    `key` is the domain's Ed25519 public key (32 bytes), or empty when the sender does not
    know it. The cores never look at it: it travels with the address so that receivers can
    learn keys along the tree (docs/threat-model.md). It takes no part in equality, so a
    peer learnt from the URS (no key) and the same peer heard on the wire are one peer.
    """

    domain: str
    host: str
    port: int
    key: bytes = dataclasses.field(default=b"", compare=False, repr=False)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Assignment:
    """The key range a parent hands one child: [start, end) of the 128-bit space."""

    child: str
    start: int
    end: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Message:
    """Common to every control message."""

    kind: ClassVar[str] = ""
    sender: str  # the sending domain
    msd_id: str  # the sending daemon (unique within its domain)
    term: int  # the sender's designated term (election epoch) in its domain
    seq: int = 0  # per-sender sequence number, for replay protection
    sent_at_ms: int = 0  # sender's clock, milliseconds, for replay protection


# --- the tree of domains -------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    """Parent → children (CMCAST, or unicast to a child that asked): alive, and your ranges.

    `ancestors` runs from the root of the sender's tree down to the sender itself, so a
    child that loses its parent knows whom to send a tracer to. `generation` grows with
    every re-split the sender makes; `assignments` hold every child's current range.
    """

    kind: ClassVar[str] = "heartbeat"
    ancestors: tuple[Peer, ...]
    generation: int
    assignments: tuple[Assignment, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class CountReport(Message):
    """Child → parent (PMCAST, or unicast): alive, my subtree's domain count, my address.

    `unicast` asks the parent to send this child its heartbeats by unicast (the child
    stopped hearing multicast). `parent` names the intended receiver, since siblings hear
    each other's reports on the shared group.
    """

    kind: ClassVar[str] = "count-report"
    parent: str
    count: int
    address: Peer
    unicast: bool = False


@dataclasses.dataclass(frozen=True, kw_only=True)
class Tracer(Message):
    """An orphan's request, sent towards the root, to be adopted by its nearest live ancestor.

    `dead` is the parent it lost (never forward to it); `hops` lists the domains the
    tracer has passed, to bound its path.
    """

    kind: ClassVar[str] = "tracer"
    orphan: Peer
    dead: str
    hops: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Graft(Message):
    """Adopter → orphan (unicast): I am your parent until your own parent returns."""

    kind: ClassVar[str] = "graft"
    adopter: Peer
    orphan: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Leave(Message):
    """Child → (foster) parent: stop counting me, I am going back to my own parent."""

    kind: ClassVar[str] = "leave"
    parent: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ping(Message):
    """Are you there? (an orphan probing its lost parent, a child asking for unicast)."""

    kind: ClassVar[str] = "ping"
    target: str
    reply_to: Peer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Pong(Message):
    """Yes: I am `sender`'s designated MSD at `address`."""

    kind: ClassVar[str] = "pong"
    address: Peer


# --- election inside one domain (MSD-LOCAL-MCAST) --------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Announce(Message):
    """The designated MSD's heartbeat to its domain's other MSDs."""

    kind: ClassVar[str] = "announce"
    priority: int
    address: Peer


@dataclasses.dataclass(frozen=True, kw_only=True)
class Claim(Message):
    """A backup that heard no announce asks to be designated for `term`."""

    kind: ClassVar[str] = "claim"
    priority: int
    address: Peer


MESSAGE_TYPES: tuple[type[Message], ...] = (
    Heartbeat, CountReport, Tracer, Graft, Leave, Ping, Pong, Announce, Claim,
)
BY_KIND: dict[str, type[Message]] = {cls.kind: cls for cls in MESSAGE_TYPES}
