"""The MSD daemon: the I/O shell around the election and tree cores (UDP, URS over HTTP, status).

One daemon per process. It bootstraps from its domain's URS, joins the election on
MSD-LOCAL-MCAST and, while designated, runs the domain's tree node on PMCAST/CMCAST with
unicast fallback. The UDP control socket and the HTTP status server share one port
number, so the address the URS publishes for the designated MSD serves both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import secrets
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CONTENT_TYPE_LATEST

from msd.api import ApiLimits, SessionRoutes
from msd.channels import Channel, UdpTransport
from msd.codec import TAG_BYTES, CodecError, decode, encode
from msd.election import (
    BecameDesignated,
    Election,
    PollUrs,
    PutDesignated,
    Role,
    SendLocal,
    SteppedDown,
)
from msd.errors import MsdError
from msd.hierarchy import Action, HierarchyConfig, Node, SendChildren, SendParent, SendUnicast
from msd.http_limits import ConnectionGuard, GuardedSite, HttpLimits
from msd.keys import KeyRing, public_bytes
from msd.messages import Announce, Claim, Message, Peer
from msd.metrics import metrics_text
from msd.relay import Delay, RelayAuth, RoutingFailed
from msd.replay import ReplayGuard
from msd.sessions import SessionService
from msd.store import MsdStore
from msd.store_fast import open_store
from msd.trust import UrsKeys, is_introducer, open_keyring

log = logging.getLogger(__name__)

TICKS_PER_HEARTBEAT = 10
BIND_ATTEMPTS = 20
# Restoring a range from the mirror (msd.mirror): heartbeats the range must stay put
# first, and after which a pass is taken as complete even if a mirror owner was not.
RESTORE_SETTLE_HB = 1
RESTORE_PATIENCE_HB = 10
BOOTSTRAP_LOG_EVERY = 10  # while the URS does not answer, one warning per this many tries
SENT_KEPT = 256  # our own datagrams recognised when the kernel loops them back


@dataclasses.dataclass(frozen=True, kw_only=True)
class MsdSettings:
    """What one MSD daemon needs; everything else comes from its URS's bootstrap document."""

    urs_url: str
    msd_key: str = dataclasses.field(repr=False)  # the domain's secret for its URS
    hierarchy_key: bytes = dataclasses.field(repr=False)  # tags every datagram of the hierarchy
    domain_key: Ed25519PrivateKey = dataclasses.field(repr=False)  # signs for the domain
    # Keys the administrator pinned (`domain key` lines): trusted above every other source.
    pinned_keys: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    known_keys_file: Path | None = None  # where learnt keys are kept (trust on first use)
    tofu: bool = True  # False: only pinned keys (and our own) are trusted
    api_limits: ApiLimits = dataclasses.field(default_factory=ApiLimits)
    http_limits: HttpLimits = dataclasses.field(default_factory=HttpLimits)
    interface: str = "127.0.0.1"
    port: int = 0  # UDP control and HTTP status; 0 = any free port
    multicast: bool = True  # False: this host's multicast is broken; use unicast only
    database_url: str | None = None  # the domain's session store; None: no session service
    collect_every_s: float = 10.0  # how often expired records are removed
    inter_domain_delay: Delay | None = None  # experiments: delay every MSD-to-MSD message
    priority: int = 0
    heartbeat_s: float = 1.0
    alpha: float = 0.1
    beta: float = 0.1
    refresh_every: int = 10  # the damping rule's quiet period, in heartbeats
    urs_timeout_s: float = 2.0
    # More replicas of the domain's URS (same database): used in turn when one is unreachable.
    urs_fallbacks: tuple[str, ...] = ()


@dataclasses.dataclass
class Counters:
    """What the status and metrics report besides the transport's own counters."""

    dropped: int = 0  # malformed, oversized, unauthenticated or replayed datagrams
    dropped_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    urs_errors: int = 0
    http_rejected: Counter[str] = dataclasses.field(default_factory=Counter)  # by reason

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.dropped_reasons[reason] = self.dropped_reasons.get(reason, 0) + 1


class MsdDaemon:
    """One MSD: election always, the tree node while designated."""

    def __init__(self, settings: MsdSettings) -> None:
        self.settings = settings
        self.msd_id = secrets.token_hex(8)
        self.counters = Counters()
        self.bootstrap: dict[str, Any] = {}
        self.domain = ""
        self.node: Node | None = None
        self.election: Election | None = None
        self.transport: UdpTransport | None = None
        self.keyring: KeyRing | None = None
        self.urs_keys: UrsKeys | None = None
        self.auth: RelayAuth | None = None
        self.connections = ConnectionGuard(settings.http_limits)
        self._public_key = public_bytes(settings.domain_key)
        self._replay = ReplayGuard()
        # Our latest datagrams by tag: our own multicast, looped back, is known by its bytes
        # and skipped before the signature check (half of what a daemon hears).
        self._sent: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        # Sequence numbers start from the wall clock, so a restarted daemon is not "replayed".
        self._seq = time.time_ns() // 1000
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._channels: dict[str, Channel] = {}
        self._started = time.monotonic()
        self.store: MsdStore | None = None
        self.sessions: SessionService | None = None
        self.record_counts: dict[str, int] = {}
        self._housekeeping: asyncio.Task[None] | None = None
        self._migrated_generation = -1
        self._urs_urls = (settings.urs_url, *settings.urs_fallbacks)
        self._urs_index = 0
        self._designated_since: float | None = None
        # URS calls run beside the tick loop, never inside it: a slow URS must not delay
        # announces and heartbeats (that deposed healthy designated MSDs on a busy host).
        self._urs_poll: asyncio.Task[None] | None = None
        self._urs_put: asyncio.Task[None] | None = None
        self._put_wanted: PutDesignated | None = None
        # Election inputs and the actions they cause are carried one at a time, so that a
        # URS answer arriving mid-transition cannot interleave a step-down with a join.
        self._transition = asyncio.Lock()

    def __repr__(self) -> str:
        role = self.election.role if self.election else "starting"
        return f"<MsdDaemon {self.domain or '?'} {role} id={self.msd_id}>"

    @property
    def urs_url(self) -> str:
        """The URS replica this daemon talks to now; the next one after a failure."""
        return self._urs_urls[self._urs_index]

    def _next_urs(self) -> None:
        if len(self._urs_urls) > 1:
            self._urs_index = (self._urs_index + 1) % len(self._urs_urls)
            log.info("%s: trying the URS replica at %s", self.domain or "?", self.urs_url)

    @property
    def multicast(self) -> bool:
        """Multicast is used unless the domain's mode is `none` or this host opted out."""
        return self.settings.multicast and self.bootstrap.get("multicast_mode") != "none"

    @property
    def address(self) -> Peer:
        """Where we listen, with our domain's public key: every peer we send carries it."""
        assert self.transport is not None
        host, port = self.transport.unicast_address
        return Peer(domain=self.domain, host=host, port=port, key=self._public_key)

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Bootstrap, serve until `stop` is set, then leave cleanly."""
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.urs_timeout_s))
        try:
            bootstrap = await self._bootstrap_when_answered(stop)
            if bootstrap is None:
                return  # stopped before the URS ever answered
            self.bootstrap = bootstrap
            self.domain = self.bootstrap["domain"]
            self.keyring = open_keyring(
                domain=self.domain, own=self._public_key, pinned=self.settings.pinned_keys,
                known_file=self.settings.known_keys_file, tofu=self.settings.tofu)
            self.urs_keys = UrsKeys(self.keyring, own=self._public_key)
            self.auth = RelayAuth(hierarchy_key=self.settings.hierarchy_key, domain=self.domain,
                                  signer=self.settings.domain_key, keyring=self.keyring,
                                  clock_ms=lambda: int(time.time() * 1000))
            self.urs_keys.update(self.bootstrap)
            if self.settings.database_url:
                self.store = await open_store(self.settings.database_url)
                self.sessions = SessionService(
                    domain=self.domain, store=self.store, http=self._http,
                    node=lambda: self.node, clock=time.time, auth=self.auth,
                    delay=self.settings.inter_domain_delay,
                    settle_s=RESTORE_SETTLE_HB * self.settings.heartbeat_s,
                    patience_s=RESTORE_PATIENCE_HB * self.settings.heartbeat_s)
            await self._open_sockets()
            now = time.monotonic()
            self.election = Election(
                domain=self.domain, msd_id=self.msd_id, priority=self.settings.priority,
                address=self.address, heartbeat_s=self.settings.heartbeat_s, now=now,
                use_multicast=self.multicast)
            log.info("MSD %s of %s on %s:%d (multicast %s)", self.msd_id, self.domain,
                     *self.transport_address(),
                     self.bootstrap["multicast_mode"] if self.multicast else "off here")
            await self._loop(stop)
        finally:
            await self._close()

    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    def transport_address(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.unicast_address

    async def _open_sockets(self) -> None:
        """The UDP control socket and the HTTP status server on the same port number."""
        for _ in range(BIND_ATTEMPTS):
            transport = UdpTransport(self.settings.interface, on_datagram=self._on_datagram,
                                     unicast_port=self.settings.port,
                                     multicast_enabled=self.multicast)
            await transport.start()
            port = transport.unicast_address[1]
            try:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.settings.interface, port))
                sock.listen(64)
            except OSError:
                sock.close()
                await transport.close()
                if self.settings.port:
                    raise MsdError(
                        f"TCP port {port} is taken; the status server needs it too"
                    ) from None
                continue
            self.transport = transport
            self._runner = web.AppRunner(status_app(self), access_log=None,
                                         **self.settings.http_limits.runner_options())
            await self._runner.setup()
            await GuardedSite(self._runner, sock, guard=self.connections).start()
            local = self.bootstrap["msd_local"]
            self._channels["local"] = Channel("local", local["group"], local["port"])
            await transport.join(self._channels["local"])
            return
        raise MsdError("could not find a port free for both UDP and TCP")

    async def _close(self) -> None:
        """Release everything; one step failing must not leave the others' sockets open."""
        tasks = [t for t in (self._housekeeping, self._urs_poll, self._urs_put) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        steps: list[Callable[[], Awaitable[None]]] = []
        if self.sessions is not None:
            steps.append(self.sessions.close)
        if self.node is not None:
            steps.append(self._leave_tree)
        for part in (self._runner, self.transport, self._http, self.store):
            if part is not None:
                steps.append(part.cleanup if isinstance(part, web.AppRunner) else part.close)
        for step in steps:
            try:
                await step()
            except Exception:
                log.exception("closing the MSD of %s", self.domain or "?")

    async def _loop(self, stop: asyncio.Event) -> None:
        tick = self.settings.heartbeat_s / TICKS_PER_HEARTBEAT
        next_poll = 0.0
        if self.sessions is not None:
            self._housekeeping = asyncio.create_task(self._keep_house(stop),
                                                     name=f"{self!r} housekeeping")
        while not stop.is_set():
            now = time.monotonic()
            assert self.election is not None
            async with self._transition:
                await self._carry_election(self.election.tick(now))
            if self.node is not None:
                await self._carry_tree(self.node.tick(now))
            if now >= next_poll:
                next_poll = now + self.settings.heartbeat_s
                self._start_poll()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=tick)

    async def _keep_house(self, stop: asyncio.Event) -> None:
        """Migrate records after a re-split; remove expired ones; never let one error stop it."""
        assert self.sessions is not None and self.store is not None
        next_collect = 0.0
        while not stop.is_set():
            try:
                node = self.node
                if node is not None and node.generation != self._migrated_generation:
                    generation = node.generation
                    if await self.sessions.migrate():
                        self._migrated_generation = generation
                if node is not None and not self.sessions.mirror.records_complete:
                    await self._restore()
                if node is not None and self.sessions.unrouted:
                    await self.sessions.retry_unrouted()
                if time.monotonic() >= next_collect:
                    next_collect = time.monotonic() + self.settings.collect_every_s
                    await self.store.collect_expired(now=time.time())
                    self.record_counts = await self.store.counts(now=time.time())
            except MsdError as exc:
                log.warning("housekeeping: %s", exc)
            except Exception:  # a bug: log it, and keep migrating, restoring, collecting
                log.exception("housekeeping failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.heartbeat_s)

    async def _restore(self) -> None:
        """Restore from the mirror what our range may lack; an unreachable mirror owner (the
        tree is still healing) is no news: housekeeping tries again a heartbeat later."""
        assert self.sessions is not None
        mirror = self.sessions.mirror
        try:
            await mirror.restore()
        except RoutingFailed as exc:
            log.debug("restoring from the mirror waits: %s", exc)
            return
        if mirror.records_complete:
            log.info("%s: holds every record of its range (%d copied from the mirror so far)",
                     self.domain, mirror.restored)

    # --- inbound ---------------------------------------------------------------------------

    async def _on_datagram(
        self, payload: bytes, *, source: tuple[str, int], via: Channel | None
    ) -> None:
        assert self.keyring is not None
        if self._sent.get(payload[-TAG_BYTES:]) == payload:
            return  # our own multicast, looped back (or a copy of it: harmless either way)
        try:
            message = decode(payload, key=self.settings.hierarchy_key,
                             verifier=self.keyring.verifier)
        except CodecError as exc:
            self.counters.drop(type(exc).__name__)
            log.debug("dropped a datagram from %s:%d: %s", *source, exc)
            return
        if message.sender == self.domain and message.msd_id == self.msd_id:
            return  # our own multicast, looped back
        refusal = self._replay.admit(message, now_ms=int(time.time() * 1000))
        if refusal is not None:
            self.counters.drop(str(refusal))
            return
        self.keyring.absorb(message, introducer=is_introducer(self.node, message))
        now = time.monotonic()
        if isinstance(message, Announce | Claim):
            if message.sender == self.domain and self.election is not None:
                async with self._transition:
                    await self._carry_election(self.election.receive(message, now))
            return
        if self.node is not None:
            await self._carry_tree(self.node.receive(message, now, multicast=via is not None))

    # --- outbound --------------------------------------------------------------------------

    def _wire(self, message: Message) -> bytes:
        """Stamp one daemon-wide sequence and the wall clock (for replay checks), then sign."""
        self._seq += 1
        stamped = dataclasses.replace(message, seq=self._seq,
                                      sent_at_ms=int(time.time() * 1000))
        datagram = encode(stamped, key=self.settings.hierarchy_key,
                          signer=self.settings.domain_key)
        self._sent[datagram[-TAG_BYTES:]] = datagram
        if len(self._sent) > SENT_KEPT:
            self._sent.popitem(last=False)
        return datagram

    async def _carry_tree(self, actions: Iterable[Action]) -> None:
        assert self.transport is not None
        if self.sessions is not None:  # every step of the node passes here
            self.sessions.mirror.observe_range(self.node.owned if self.node is not None else None)
        for action in actions:
            match action:
                case SendParent(message=message) if "pmcast" in self._channels:
                    await self.transport.send_multicast(self._channels["pmcast"],
                                                        self._wire(message))
                case SendChildren(message=message):
                    await self.transport.send_multicast(self._channels["cmcast"],
                                                        self._wire(message))
                case SendUnicast(peer=peer, message=message):
                    await self.transport.send_unicast((peer.host, peer.port), self._wire(message))

    async def _carry_election(self, actions: Iterable[object]) -> None:
        """Carry out what the election decided; the caller holds `_transition`."""
        assert self.transport is not None and self.election is not None
        for action in actions:
            match action:
                case SendLocal(message=message):
                    await self.transport.send_multicast(self._channels["local"],
                                                        self._wire(message))
                case PutDesignated():
                    self._want_put(action)
                case PollUrs():
                    self._start_poll()
                case BecameDesignated(term=term):
                    await self._join_tree(term)
                case SteppedDown(term=term, reason=reason):
                    log.warning("%s: no longer designated (term %d): %s", self.domain, term,
                                reason)
                    await self._leave_tree()

    async def _join_tree(self, term: int) -> None:
        assert self.transport is not None
        log.info("%s: designated, term %d", self.domain, term)
        self._designated_since = time.time()
        b = self.bootstrap
        self._channels["cmcast"] = Channel("cmcast", b["cmcast"]["group"], b["cmcast"]["port"])
        await self.transport.join(self._channels["cmcast"])
        if b["parent"] != "void":
            self._channels["pmcast"] = Channel("pmcast", b["pmcast"]["group"],
                                               b["pmcast"]["port"])
            await self.transport.join(self._channels["pmcast"])
        config = HierarchyConfig(heartbeat_s=self.settings.heartbeat_s,
                                 alpha=self.settings.alpha, beta=self.settings.beta,
                                 refresh_every=self.settings.refresh_every,
                                 multicast=self.multicast)
        now = time.monotonic()
        self.node = Node(address=self.address,
                         parent_domain=None if b["parent"] == "void" else b["parent"],
                         msd_id=self.msd_id, term=term, config=config, now=now)
        await self._carry_tree(self.node.set_parent_address(self._parent_peer(), now))
        await self._carry_tree(self.node.start(now))

    async def _leave_tree(self) -> None:
        self.node = None
        if self.sessions is not None:
            self.sessions.mirror.observe_range(None)
        for name in ("cmcast", "pmcast"):
            channel = self._channels.pop(name, None)
            if channel is not None and self.transport is not None:
                await self.transport.leave(channel)

    # --- the URS ---------------------------------------------------------------------------

    async def _bootstrap_when_answered(self, stop: asyncio.Event) -> dict[str, Any] | None:
        """The first bootstrap document, asked for every heartbeat until the URS answers.

        A daemon may start before its URS listens, while it restarts, or while it is too
        busy to answer in time; giving up would leave the domain short of an MSD for good.
        """
        failures = 0
        while not stop.is_set():
            try:
                return await self._fetch_bootstrap()
            except MsdError as exc:
                failures += 1
                if failures == 1 or failures % BOOTSTRAP_LOG_EVERY == 0:
                    log.warning("%s (try %d; trying again every %g s)", exc, failures,
                                self.settings.heartbeat_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.settings.heartbeat_s)
        return None

    async def _fetch_bootstrap(self) -> dict[str, Any]:
        assert self._http is not None
        for attempt in range(len(self._urs_urls)):
            url = f"{self.urs_url}/bootstrap"
            try:
                async with self._http.get(url) as response:
                    if response.status != 200:
                        raise MsdError(f"{url} answered {response.status}")
                    document: dict[str, Any] = await response.json()
                    return document
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                if attempt == len(self._urs_urls) - 1:
                    raise MsdError(f"cannot bootstrap from {url}: "
                                   f"{str(exc) or type(exc).__name__}") from None
                self._next_urs()
        raise AssertionError("unreachable: there is at least one URS")

    def _start_poll(self) -> None:
        """Poll the URS in the background, unless a poll is still on its way."""
        if self._urs_poll is None or self._urs_poll.done():
            self._urs_poll = asyncio.create_task(_logged(self._poll_urs()),
                                                 name=f"{self!r} URS poll")

    def _want_put(self, put: PutDesignated) -> None:
        """PUT our designated entry in the background; while one PUT is on its way, only
        the latest wanted one follows it (a renewal or a claim, each carrying its term)."""
        self._put_wanted = put
        if self._urs_put is None or self._urs_put.done():
            self._urs_put = asyncio.create_task(_logged(self._put_wanted_entries()),
                                                name=f"{self!r} URS designated entry")

    async def _put_wanted_entries(self) -> None:
        while self._put_wanted is not None:
            put, self._put_wanted = self._put_wanted, None
            accepted, current = await self._put_designated(put.term, put.ttl_s)
            assert self.election is not None
            async with self._transition:
                await self._carry_election(self.election.urs_put_result(
                    accepted=accepted, term=current, now=time.monotonic()))

    async def _poll_urs(self) -> None:
        """Report ourselves to the URS; its answer is the fresh bootstrap document."""
        assert self._http is not None and self.election is not None
        host, port = self.transport_address()
        role = {Role.DESIGNATED: "designated", Role.CANDIDATE: "candidate"}.get(
            self.election.role, "backup")
        body = {"address": host, "port": port, "pid": os.getpid(), "role": role,
                "ttl": max(1, round(3 * self.settings.heartbeat_s))}
        url = f"{self.urs_url}/bootstrap/msds/{self.msd_id}"
        headers = {"Authorization": f"Bearer {self.settings.msd_key}"}
        try:
            async with self._http.put(url, json=body, headers=headers) as response:
                if response.status != 200:
                    raise MsdError(f"{url} answered {response.status}")
                document = await response.json()
                if not isinstance(document, dict):
                    raise MsdError(f"{url} answered no bootstrap document")
                self.bootstrap = document
        except (MsdError, aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.counters.urs_errors += 1
            log.debug("URS poll failed: %s", exc)
            self._next_urs()
            return
        if self.urs_keys is not None:
            self.urs_keys.update(self.bootstrap)
        now = time.monotonic()
        designated = self.bootstrap.get("designated")
        assert self.election is not None
        view = None
        if designated:
            # The URS speaks wall-clock time; the cores run on the monotonic clock.
            expires = now + float(designated["expires_at"]) - time.time()
            view = (int(designated["term"]), f"{designated['address']}:{designated['port']}",
                    expires)
        last_term = int(self.bootstrap.get("last_term") or 0)
        async with self._transition:
            await self._carry_election(self.election.urs_state(view, now, last_term=last_term))
        if self.node is not None:
            await self._carry_tree(self.node.set_parent_address(self._parent_peer(), now))

    def _parent_peer(self) -> Peer | None:
        parent = self.bootstrap.get("parent_designated")
        if not parent or self.bootstrap.get("parent") in (None, "void"):
            return None
        return Peer(domain=self.bootstrap["parent"], host=parent["address"],
                    port=int(parent["port"]))

    async def _put_designated(self, term: int, ttl: float) -> tuple[bool, int]:
        assert self._http is not None
        host, port = self.transport_address()
        body = {"address": host, "port": port, "term": term, "ttl": max(1, round(ttl))}
        headers = {"Authorization": f"Bearer {self.settings.msd_key}"}
        try:
            async with self._http.put(f"{self.urs_url}/bootstrap/designated",
                                      json=body, headers=headers) as response:
                if response.status == 200:
                    return True, term
                if response.status == 409:
                    current = await self._current_term()
                    return False, current
                self.counters.urs_errors += 1
                log.warning("URS refused our designated entry: %s", response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counters.urs_errors += 1
            log.debug("URS unreachable for the designated entry: %s", exc)
        return False, term

    async def _current_term(self) -> int:
        with contextlib.suppress(MsdError):
            self.bootstrap = await self._fetch_bootstrap()
        designated = self.bootstrap.get("designated") or {}
        return int(designated.get("term", 0))

    # --- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """This daemon and, while designated, its view of the tree."""
        assert self.election is not None and self.transport is not None
        traffic = self.transport.counters.traffic.values()
        host, port = self.transport_address()
        tree = self.node.status() if self.node else {}
        children = ({name: f"{c.peer.host}:{c.peer.port}" for name, c in
                     sorted(self.node.children.items())} if self.node else {})
        uptime = max(time.monotonic() - self._started, 1e-3)
        control_bytes = sum(t.bytes_sent + t.bytes_received for t in traffic)
        if self.node is not None:
            # The core keeps monotonic time; people and other hosts want the wall clock.
            tree["last_change"] = time.time() - (time.monotonic() - self.node.last_change)
        return {
            "name": self.domain,
            "msd": {"address": f"{host}:{port}", "pid": os.getpid(), "id": self.msd_id,
                    "role": "designated" if self.election.role is Role.DESIGNATED else "backup",
                    "uptime_s": round(uptime, 1)},
            "msds": self.bootstrap.get("msds") or [],
            "designated": f"{host}:{port}" if self.node else None,
            "term": self.election.term,
            # Unix time this daemon last took office (a claim won, or a term bump).
            "designated_since": self._designated_since if self.node else None,
            **tree,
            "child_addresses": children,
            "ancestors": [f"{a.domain}@{a.host}:{a.port}" for a in
                          (self.node.ancestors if self.node else ())],
            "records": self.record_counts,
            "routed_requests": self.sessions.routed if self.sessions else 0,
            "route_failures": self.sessions.route_failures if self.sessions else 0,
            "unrouted_sessions": len(self.sessions.unrouted) if self.sessions else 0,
            "migrated": self.sessions.migrated if self.sessions else 0,
            "restored": self.sessions.mirror.restored if self.sessions else 0,
            "records_complete": self.sessions.mirror.records_complete if self.sessions else False,
            "control_bytes": control_bytes,
            "control_bytes_per_s": round(control_bytes / uptime, 1),
            "dropped": self.counters.dropped,
            "dropped_reasons": dict(self.counters.dropped_reasons),
            "dropped_queue_full": self.transport.counters.dropped_queue_full,
            "handler_errors": self.transport.counters.handler_errors,
            "http_rejected": dict(self.counters.http_rejected),
            "connections_refused": dict(self.connections.counts),
            "keys": self.keyring.status() if self.keyring else {},
            "urs_key_mismatch": self.urs_keys.own_mismatch if self.urs_keys else 0,
            "heartbeat_s": self.settings.heartbeat_s,
        }


async def _logged(work: Coroutine[Any, Any, None]) -> None:
    """Run a background step; a bug in it is logged, and the daemon goes on (never dies)."""
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("a background step of the MSD failed")


async def run_daemon(**settings: Any) -> None:
    """Run one daemon until SIGINT or SIGTERM (the handlers only set an event)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await MsdDaemon(MsdSettings(**settings)).run(stop)


def status_app(daemon: MsdDaemon) -> web.Application:
    """GET /status (JSON), GET /metrics (Prometheus) and GET /health for one daemon."""

    async def status(_: web.Request) -> web.Response:
        return web.json_response(daemon.status())

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "domain": daemon.domain})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=metrics_text(daemon.status),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    limits = daemon.settings.api_limits
    assert daemon.auth is not None, "the key ring opens before the HTTP server"
    app = web.Application(client_max_size=limits.max_body_bytes)
    SessionRoutes(service=lambda: daemon.sessions, auth=daemon.auth,
                  msd_key=daemon.settings.msd_key, urs_url=daemon.settings.urs_url,
                  http=daemon.http, limits=limits,
                  body_timeout_s=daemon.settings.http_limits.body_timeout_s,
                  rejected=daemon.counters.http_rejected).add_to(app)
    app.router.add_get("/status", status)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    return app
