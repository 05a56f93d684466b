"""Sessions at an MSD: registration, routed remote-register with shadows, msd-probe, ext-search.

The designated MSD stores every session of its domain locally and, for global scope,
sends one `remote-register` per keyword towards the owner of the keyword's hash and
one towards the owner of the bit-inverted hash (the shadow). Routed requests travel
hop by hop over HTTP along the tree's routing tables (each hop's control port is also
its HTTP port), one way: the owner answers the originating MSD directly (msd.relay).
Registration returns once the session is stored here; its keyword routes follow in the
background (or before the answer, when the caller asks to wait). Searches probe for the
owner (`msd-probe`, answered with a `redirect`), then ask it directly (`ext-search`);
an owner whose range moved answers `ext-search-invalid`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from pydantic import ValidationError

from msd.errors import MsdError
from msd.hierarchy import Node
from msd.keyspace import key_of, shadow_of
from msd.messages import Peer
from msd.mirror import Mirror
from msd.relay import Delay, Relay, RelayAuth, RoutingFailed
from msd.schema import Scope, SessionRecord
from msd.store import HeldRecord, MsdStore, NearRecord

log = logging.getLogger(__name__)

MAX_HOPS = 64
MIGRATE_BATCH = 500
ORIGIN_RETRY_S = 1.0  # a failed routed request is routed afresh for this long
ORIGIN_RETRY_PAUSE_S = 0.1
RETRY_MAX = 10_000  # sessions whose keyword routes await another try (bounded; oldest dropped)


class NotDesignated(MsdError):
    """This daemon is a backup: ask the domain's designated MSD."""


class SessionService:
    """The session side of one MSD daemon; `node` is None unless it is designated."""

    def __init__(
        self, *, domain: str, store: MsdStore, http: aiohttp.ClientSession,
        node: Callable[[], Node | None], clock: Callable[[], float], auth: RelayAuth,
        delay: Delay | None = None, settle_s: float = 1.0, patience_s: float = 10.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.domain = domain
        self.store = store
        self._node = node
        self._clock = clock  # wall-clock seconds: records expire by the URS's clock
        self.relay = Relay(http=http, auth=auth, delay=delay,
                           own_address=lambda: _address(self.node().address))
        self.routed = 0
        self.route_failures = 0
        self.migrated = 0
        # URIs of local sessions with keyword records that could not be routed yet.
        self.unrouted: dict[str, None] = {}
        self._global_writes = asyncio.Lock()
        self.mirror = Mirror(self, settle_s=settle_s, patience_s=patience_s,
                             monotonic=monotonic)

    def current_node(self) -> Node | None:
        """The tree node while this MSD is designated, else None."""
        return self._node()

    def now(self) -> float:
        """Wall-clock seconds: records expire by the URS's clock."""
        return self._clock()

    def node(self) -> Node:
        node = self._node()
        if node is None:
            raise NotDesignated(f"this MSD of {self.domain} is not the designated one")
        return node

    async def close(self) -> None:
        await self.relay.close()

    # --- registration ----------------------------------------------------------------------

    async def register(self, record: SessionRecord, *, wait: bool = False) -> dict[str, Any]:
        """Store a session of this domain; route its keywords if it is global.

        With `wait`, the answer lists every keyword route's owner (or error); else the
        routes go on in the background and the answer says they are pending."""
        self.node()
        if record.domain != self.domain:
            raise MsdError(f"{record.uri} belongs to {record.domain}, not to {self.domain}")
        await self.store.put_local(record, now=self._clock())
        if record.scope is not Scope.GLOBAL:
            return {"uri": record.uri, "routed": []}
        if wait:
            return {"uri": record.uri, "routed": await self.route_record(record)}
        self.relay.spawn(self._route_later(record), name=f"routes of {record.uri}")
        return {"uri": record.uri, "routed": "pending"}

    async def _route_later(self, record: SessionRecord) -> None:
        await self.route_record(record)

    async def route_record(self, record: SessionRecord) -> list[dict[str, Any]]:
        """remote-register every keyword, to its owner and its shadow owner, concurrently."""
        routes = [(k, s) for k in record.keywords for s in (False, True)]
        # The records this MSD owns go into one transaction, not one each.
        own = [(k, s) for k, s in routes if self._owns(k, shadow=s)]
        remote = [route for route in routes if route not in own]

        async def store_own() -> str:
            held = [HeldRecord(keyword, shadow, record, self.domain) for keyword, shadow in own]
            async with self._global_write():
                await self.store.put_global_many(held, now=self._clock())
            return self.domain

        jobs = [self.remote_register(keyword, record, shadow=shadow, origin=self.domain)
                for keyword, shadow in remote]
        gathered = await asyncio.gather(*jobs, *([store_own()] if own else []),
                                        return_exceptions=True)
        by_route = dict(zip(remote, gathered, strict=False))
        if own:
            by_route |= dict.fromkeys(own, gathered[-1])
        results = [by_route[route] for route in routes]
        report = []
        for (keyword, shadow), result in zip(routes, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, MsdError | aiohttp.ClientError | TimeoutError):
                    raise result
                self.route_failures += 1
                log.warning("remote-register %s of %s (shadow=%s) failed: %s", keyword,
                            record.uri, shadow, result)
                report.append({"keyword": keyword, "shadow": shadow, "error": str(result)})
            else:
                report.append({"keyword": keyword, "shadow": shadow, "owner": result})
        self.unrouted.pop(record.uri, None)
        if any("error" in row for row in report):
            self.unrouted[record.uri] = None  # housekeeping tries again
            while len(self.unrouted) > RETRY_MAX:
                self.unrouted.pop(next(iter(self.unrouted)))
        return report

    async def retry_unrouted(self) -> None:
        """Route again the sessions whose keyword records could not reach their owners."""
        for uri in list(self.unrouted)[:MIGRATE_BATCH]:
            record = await self.store.get_local(uri, now=self._clock())
            if record is None:
                self.unrouted.pop(uri, None)  # expired or gone: nothing to route
                continue
            await self.route_record(record)

    async def remote_register(
        self, keyword: str, record: SessionRecord, *, shadow: bool, origin: str
    ) -> str:
        """Store the keyword record here if we own its key, else route it; the owner's name."""
        body = {"keyword": keyword, "shadow": shadow, "origin": origin,
                "record": record.model_dump(mode="json"), "hops": [self.domain]}
        answer = await self.originate(_key(keyword, shadow=shadow), "/msd/remote-register",
                                       body)
        if answer is None:
            await self._store_global(keyword, record, shadow=shadow, origin=origin)
            return self.domain
        return str(answer["owner"])

    def relay_remote_register(
        self, keyword: str, record: SessionRecord, *, shadow: bool, origin: str,
        body: dict[str, Any], hops: tuple[str, ...],
    ) -> None:
        """A routed remote-register reached us: store it if ours, else pass it on."""

        async def store() -> dict[str, Any]:
            await self._store_global(keyword, record, shadow=shadow, origin=origin)
            return {"owner": self.domain}

        self.pass_or_answer(_key(keyword, shadow=shadow), "/msd/remote-register", body=body,
                    hops=hops, at_owner=store)

    async def _store_global(
        self, keyword: str, record: SessionRecord, *, shadow: bool, origin: str
    ) -> None:
        async with self._global_write():
            await self.store.put_global(keyword, record, shadow=shadow, origin=origin,
                                        now=self._clock())

    def _global_write(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """One global-record write at a time where transactions run concurrently
        (PostgreSQL): the records of one session (its keywords, primary and shadow) arrive
        together and share its geo rows, which concurrent transactions would both try to
        replace. Not on SQLite: it runs one writer at a time anyway, and a lock here would
        undo its group commit (msd.writebatch, msd.sqlite_thread)."""
        return contextlib.nullcontext() if self.store.one_writer else self._global_writes

    # --- search ----------------------------------------------------------------------------

    async def probe(self, key: int, *, search: Search | None = None) -> dict[str, Any]:
        """msd-probe: find the owner of `key`; its answer is the redirect for the client.

        With `search` the owner also answers what an ext-search would, saving the client a
        round trip to a remote owner when its cache is cold."""
        body: dict[str, Any] = {"key": f"{key:032x}", "hops": [self.domain]}
        if search is not None:
            body |= search.to_json()
        answer = await self.originate(key, "/msd/probe", body)
        if answer is None:
            return await self._owner_answer(key, hops=(), search=search)
        return answer

    def relay_probe(
        self, key: int, *, search: Search | None, body: dict[str, Any], hops: tuple[str, ...],
    ) -> None:
        """A routed msd-probe reached us: answer its origin if we own the key, else pass it on."""

        async def answer() -> dict[str, Any]:
            return await self._owner_answer(key, hops=hops, search=search)

        self.pass_or_answer(key, "/msd/probe", body=body, hops=hops, at_owner=answer)

    def pass_or_answer(
        self, key: int, path: str, *, body: dict[str, Any], hops: tuple[str, ...],
        at_owner: Callable[[], Awaitable[dict[str, Any]]],
    ) -> None:
        """In the background: answer the origin if we own `key`, else pass the request on;
        a failure here goes to the origin as the error."""

        async def handle() -> None:
            try:
                peer = self.next_peer(key, hops=hops)
                if peer is None:
                    await self.relay.answer(body, result=await at_owner())
                    return
            except MsdError as exc:
                await self.relay.answer(body, error=f"{self.domain}: {exc}")
                return
            self.routed += 1
            self.relay.pass_on(peer, path, body | {"hops": [*hops, self.domain]})

        self.relay.spawn(handle(), name=f"{path} {key:032x}")

    async def _owner_answer(
        self, key: int, *, hops: tuple[str, ...], search: Search | None
    ) -> dict[str, Any]:
        node = self.node()
        start, end = node.owned.to_json()
        answer: dict[str, Any] = {
            "owner": self.domain, "address": _address(node.address), "start": start,
            "end": end, "generation": node.generation, "term": node.term, "hops": len(hops)}
        if search is not None:
            found = await self.ext_search(search)
            if found is not None:
                answer["sessions"] = found
                answer["complete"] = self.mirror.complete(
                    _key(search.keyword, shadow=search.shadow))
        return answer

    async def ext_search(self, search: Search) -> list[dict[str, Any]] | None:
        """The owner's answer for a keyword (JSON sessions, with `distance_km` when near
        was given); None (ext-search-invalid) when we do not own its key."""
        if _key(search.keyword, shadow=search.shadow) not in self.node().owned:
            return None
        if search.near is None:
            records = await self.store.search_global(search.keyword, shadow=search.shadow,
                                                     now=self._clock())
            return [r.model_dump(mode="json") for r in records]
        near = await self.store.search_global_near(
            search.keyword, shadow=search.shadow, near=search.near,
            within_km=search.within_km, now=self._clock())
        return [_with_distance(found) for found in near]

    async def local_search(self, search: Search) -> list[dict[str, Any]]:
        """Administrative scope: the sessions registered in this domain (any scope)."""
        if search.near is None:
            records = await self.store.search_local(search.keyword, now=self._clock())
            return [r.model_dump(mode="json") for r in records]
        near = await self.store.search_local_near(
            search.keyword, near=search.near, within_km=search.within_km, now=self._clock())
        return [_with_distance(found) for found in near]

    # --- housekeeping ----------------------------------------------------------------------

    async def migrate(self) -> bool:
        """Send away the records whose keys a re-split gave to another domain; True once
        none is left here (a record whose new owner cannot be reached waits for a retry)."""
        node = self.node()
        while True:
            outside = await self.store.global_outside(node.owned.start, node.owned.end,
                                                      now=self._clock(), limit=MIGRATE_BATCH)
            moved = 0
            for keyword, shadow, record, origin in outside:
                try:
                    owner = await self.remote_register(keyword, record, shadow=shadow,
                                                       origin=origin)
                except (MsdError, aiohttp.ClientError, TimeoutError) as exc:
                    log.debug("migration of %s %s waits: %s", keyword, record.uri, exc)
                    continue
                if owner != self.domain:
                    await self.store.delete_global(keyword, record.uri, shadow=shadow)
                    moved += 1
            self.migrated += moved
            if moved < len(outside):
                return False
            if len(outside) < MIGRATE_BATCH:
                return True

    # --- plumbing --------------------------------------------------------------------------

    async def originate(
        self, key: int, path: str, body: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Route a request from here to the owner of `key`: its answer, or None if we own it.

        While the tree re-splits, two neighbours may briefly disagree about a key (a
        routing loop, a hop with no route yet) and a dead hop is routed around within a
        few heartbeats: a failure is tried again, freshly routed, for up to
        ORIGIN_RETRY_S, then reported."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ORIGIN_RETRY_S
        while True:
            peer = self.next_peer(key, hops=())
            if peer is None:
                return None
            self.routed += 1
            try:
                return await self.relay.originate(peer, path, body)
            except RoutingFailed as exc:
                if loop.time() + ORIGIN_RETRY_PAUSE_S >= deadline:
                    raise
                log.debug("%s of %032x failed, routing it afresh: %s", path, key, exc)
                await asyncio.sleep(ORIGIN_RETRY_PAUSE_S)

    def _owns(self, keyword: str, *, shadow: bool) -> bool:
        """Whether this MSD holds the keyword's record (a failure: not known to be ours)."""
        try:
            return self.next_peer(_key(keyword, shadow=shadow), hops=()) is None
        except MsdError:
            return False  # remote_register meets the failure again and reports it

    def next_peer(self, key: int, *, hops: tuple[str, ...]) -> Peer | None:
        """The next hop towards the owner of `key`, None if we own it; RoutingFailed for a
        loop, too many hops, or no route (the tree is healing)."""
        if len(hops) >= MAX_HOPS:
            raise RoutingFailed(f"gave up after {MAX_HOPS} hops: {' → '.join(hops[:5])} …")
        if self.domain in hops:
            raise RoutingFailed(f"routing loop through {self.domain}: {' → '.join(hops)}")
        try:
            return self.node().next_peer(key)
        except LookupError as exc:
            raise RoutingFailed(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class Search:
    """One keyword's search at its owner (or shadow owner), optionally within a circle."""

    keyword: str
    shadow: bool = False
    near: tuple[float, float] | None = None
    within_km: float = 0.0

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"keyword": self.keyword, "shadow": self.shadow}
        if self.near is not None:
            body |= {"near": list(self.near), "within_km": self.within_km}
        return body


def _with_distance(found: NearRecord) -> dict[str, Any]:
    return found.record.model_dump(mode="json") | {"distance_km": round(found.distance_km, 3)}


def _key(keyword: str, *, shadow: bool) -> int:
    key = key_of(keyword)
    return shadow_of(key) if shadow else key


def _address(peer: Peer) -> str:
    return f"{peer.host}:{peer.port}"


def parse_record(data: Any) -> SessionRecord:
    """A session record from a request body (raises MsdError with the fields at fault)."""
    try:
        return SessionRecord.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
        raise MsdError(f"not a valid session record ({fields})") from None
