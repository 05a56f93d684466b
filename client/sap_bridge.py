"""The SAP bridge's I/O shells: multicast sockets, the listener that ingests, the announcer.

The decisions are made by the pure cores (client.sap_ingest, client.sap_announce);
these classes only move datagrams and HTTP requests. Every multicast socket pins its
interface (IP_MULTICAST_IF / IPV6_MULTICAST_IF): nothing follows the default route.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import ipaddress
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from client.errors import ClientError
from client.register import register_everywhere
from client.sap_announce import Ad, AnnounceSchedule, build_ad
from client.sap_ingest import INGESTED_ID, Expire, Ignore, Register, SapTable
from msd.sap import SapError, decode
from msd.schema import SessionRecord
from urs.locate import LocateError, locate_urs

log = logging.getLogger(__name__)

QUEUE_MAX = 256  # registrations waiting; more are dropped and counted (a later one retries)
WORKERS = 4  # registrations in flight at once
FORGET_EVERY_S = 60.0
LIST_PAGE = 500
ANNOUNCED_MAX = 10_000  # sessions one announcer announces at most
IP_MULTICAST_ALL = 49  # Linux: deliver only the groups this socket joined
_SIOCGIFADDR = 0x8915


# --- sockets --------------------------------------------------------------------------------

def interface_index(address: str) -> int | None:
    """The index of the interface holding the IPv4 `address` (for IPv6 joins), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for index, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), _SIOCGIFADDR,
                                     struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            if socket.inet_ntoa(answer[20:24]) == address:
                return index
    return None


def ipv6_address_of(index: int) -> str | None:
    """An IPv6 address of interface `index` (Linux /proc), for an IPv6 SAP origin."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and int(fields[1], 16) == index:
            return str(ipaddress.IPv6Address(bytes.fromhex(fields[0])))
    return None


def listen_socket(group: str, port: int, *, interface: str) -> socket.socket:
    """A non-blocking socket bound to (group, port) that joined `group` on `interface`."""
    address = ipaddress.ip_address(group)
    if not address.is_multicast:
        raise ClientError(f"{group} is not a multicast group")
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if address.version == 4:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                            socket.inet_aton(interface))
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_IP, IP_MULTICAST_ALL, 0)
            # Binding the group, not the wildcard, keeps unicast and other groups out.
            sock.bind((group, port))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                            socket.inet_aton(group) + socket.inet_aton(interface))
        else:
            index = interface_index(interface)
            if index is None:
                raise OSError(f"no interface holds {interface}")
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
            sock.bind((group, port, 0, index))
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                            address.packed + struct.pack("@I", index))
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ClientError(f"cannot join {group} port {port} on {interface}: "
                          f"{exc.strerror or exc}") from None
    return sock


def send_socket(*, interface: str, ipv6_index: int | None = None) -> socket.socket:
    """A non-blocking sender whose multicast leaves through `interface` (or IPv6 index)."""
    family = socket.AF_INET if ipv6_index is None else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if ipv6_index is None:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF,
                            socket.inet_aton(interface))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)
            sock.bind((interface, 0))
        else:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ipv6_index)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ClientError(f"cannot send multicast from {interface}: {exc.strerror}") from None
    return sock


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self, deliver: Callable[[bytes], None]) -> None:
        self._deliver = deliver

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._deliver(data)

    def error_received(self, exc: Exception) -> None:
        log.debug("SAP socket error: %s", exc)


# --- the owner tokens of ingested sessions --------------------------------------------------

class TokenStore:
    """Owner tokens of the sessions the listener registered, kept in a file (mode 0600) so a
    restarted listener can still update them; in memory only without a path."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._tokens: dict[str, str] = {}
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ClientError(f"{path}: not a readable token file ({exc})") from None
            if isinstance(data, dict):
                self._tokens = {str(k): str(v) for k, v in data.items()}

    def get(self, session_id: str) -> str | None:
        return self._tokens.get(session_id)

    def put(self, session_id: str, token: str) -> None:
        if self._tokens.get(session_id) != token:
            self._tokens[session_id] = token
            self._save()

    def drop(self, ids: Sequence[str]) -> None:
        if any(self._tokens.pop(i, None) is not None for i in list(ids)):
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump(self._tokens, handle)
            tmp.replace(self.path)
        except OSError as exc:
            log.warning("cannot save SAP owner tokens to %s: %s", self.path, exc)


# --- the listener ---------------------------------------------------------------------------

class SapListener:
    """Hears SAP on `groups`, and registers what the table decides with the home domain."""

    def __init__(
        self, *, home: str, dns_server: tuple[str, int] | None, interface: str,
        groups: Sequence[str], port: int, table: SapTable, tokens: TokenStore,
        http: aiohttp.ClientSession, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.home, self.dns_server, self.interface = home, dns_server, interface
        self.groups, self.port = list(groups), port
        self.table, self.tokens, self._http, self._clock = table, tokens, http, clock
        self.counters: collections.Counter[str] = collections.Counter()
        self.joined: list[str] = []
        self._jobs: dict[tuple[str, ...], Register | Expire] = {}
        self._queue: asyncio.Queue[tuple[str, ...]] = asyncio.Queue()

    def __repr__(self) -> str:
        return f"<SapListener home={self.home} joined={self.joined} {dict(self.counters)}>"

    async def run(self, *, stop: asyncio.Event,
                  ready: Callable[[list[str]], None] | None = None) -> None:
        """Listen until `stop` is set; IPv6 groups that cannot be joined are skipped."""
        loop = asyncio.get_running_loop()
        transports: list[asyncio.DatagramTransport] = []
        try:
            for group in self.groups:
                try:
                    sock = listen_socket(group, self.port, interface=self.interface)
                except ClientError as exc:
                    if ipaddress.ip_address(group).version == 6:
                        log.info("IPv6 SAP group skipped: %s", exc)
                        continue
                    raise
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _Receiver(self._datagram), sock=sock)
                transports.append(transport)
                self.joined.append(group)
            if ready is not None:
                ready(self.joined)
            async with asyncio.TaskGroup() as tasks:
                workers = [tasks.create_task(self._worker()) for _ in range(WORKERS)]
                workers.append(tasks.create_task(self._forget()))
                await stop.wait()
                for worker in workers:
                    worker.cancel()
        finally:
            for transport in transports:
                transport.close()

    def _datagram(self, data: bytes) -> None:
        self.counters["received"] += 1
        try:
            packet = decode(data)
        except SapError as exc:
            self.counters[f"bad-{type(exc).__name__}"] += 1
            log.debug("dropped a SAP packet: %s", exc)
            return
        action = self.table.heard(packet, now=self._clock())
        if isinstance(action, Ignore):
            if action.reason != "repeat":
                log.debug("SAP from %s ignored: %s %s", packet.origin, action.reason,
                          action.detail)
            return
        if action.key in self._jobs:
            self._jobs[action.key] = action  # the latest description wins
        elif len(self._jobs) >= QUEUE_MAX:
            self.counters["queue-full"] += 1
            self.table.failed(action.key, now=self._clock())
        else:
            self._jobs[action.key] = action
            self._queue.put_nowait(action.key)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            action = self._jobs.pop(key, None)
            if action is not None:
                await self._carry_out(action)

    async def _carry_out(self, action: Register | Expire) -> None:
        session = action.session
        session_id = str(session["id"])
        token = self.tokens.get(session_id)
        if isinstance(action, Expire) and token is None:
            self.counters["delete-no-token"] += 1
            return
        try:
            registration, _ = await register_everywhere(
                self._http, domain=self.home, session=session, dns_server=self.dns_server,
                token=token)
        except ClientError as exc:
            self.counters["register-failed"] += 1
            if isinstance(action, Register):
                self.table.failed(action.key, now=self._clock())
            log.warning("SAP session %r (%s) not registered: %s", session["title"], session_id,
                        exc)
            return
        if registration.token:
            self.tokens.put(session_id, registration.token)
        if isinstance(action, Register):
            self.table.registered(action.key, now=self._clock())
            self.counters["registered"] += 1
            log.info("%s SAP session %s: %s (%s:%s)", action.reason, registration.uri,
                     session["title"], session["group"], session["port"])
        else:
            self.counters["expired"] += 1
            log.info("SAP deletion: %s expires now", registration.uri)

    async def _forget(self) -> None:
        while True:
            await asyncio.sleep(FORGET_EVERY_S)
            self.tokens.drop(self.table.forget_silent(now=self._clock()))


# --- the announcer --------------------------------------------------------------------------

async def fetch_sessions(http: aiohttp.ClientSession, *, base_url: str) -> list[SessionRecord]:
    """Every unexpired session of a URS (GET /sessions, page by page), up to ANNOUNCED_MAX."""
    records: list[SessionRecord] = []
    after = ""
    while len(records) < ANNOUNCED_MAX:
        try:
            async with http.get(f"{base_url}/sessions",
                                params={"after": after, "limit": str(LIST_PAGE)}) as response:
                if response.status != 200:
                    raise ClientError(f"{base_url}/sessions answered {response.status}")
                page = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ClientError(f"cannot list the sessions of {base_url}: {exc}") from None
        records += [SessionRecord.model_validate(s) for s in page["sessions"]]
        if not page.get("next"):
            break
        after = str(page["next"])
    return records[:ANNOUNCED_MAX]


class SapAnnouncer:
    """Announces a domain's registered sessions on SAP, with RFC 2974 timing."""

    def __init__(
        self, *, domain: str, dns_server: tuple[str, int] | None, interface: str, port: int,
        http: aiohttp.ClientSession, sap_groups: Sequence[str] = (),
        interval_s: float | None = None, hops: int | None = None, refresh_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.domain, self.dns_server, self.interface, self.port = (domain, dns_server,
                                                                   interface, port)
        self.sap_groups, self.hops, self.refresh_s = list(sap_groups), hops, refresh_s
        self.schedule = AnnounceSchedule(interval_s=interval_s)
        self.counters: collections.Counter[str] = collections.Counter()
        self._http, self._clock = http, clock
        self._v4 = ipaddress.IPv4Address(interface)
        self._v6_index = interface_index(interface)
        v6 = ipv6_address_of(self._v6_index) if self._v6_index is not None else None
        self._v6 = ipaddress.IPv6Address(v6) if v6 else None
        self._sockets: dict[int, socket.socket] = {}

    def __repr__(self) -> str:
        return f"<SapAnnouncer {self.domain} {self.schedule!r} {dict(self.counters)}>"

    async def run(self, *, stop: asyncio.Event) -> None:
        """Announce until `stop` is set (no deletions on stop: the sessions live on)."""
        try:
            self._sockets[4] = send_socket(interface=self.interface)
            if self._v6_index is not None and self._v6 is not None:
                with contextlib.suppress(ClientError):
                    self._sockets[6] = send_socket(interface=self.interface,
                                                   ipv6_index=self._v6_index)
            next_refresh = self._clock()
            while not stop.is_set():
                now = self._clock()
                if now >= next_refresh:
                    await self._refresh(now=now)
                    next_refresh = now + self.refresh_s
                for ad in self.schedule.due(now=now):
                    self._send(ad, ad.datagram)
                wake = min(next_refresh, self.schedule.next_at() or next_refresh)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, wake - self._clock()))
        finally:
            for sock in self._sockets.values():
                sock.close()

    async def _refresh(self, *, now: float) -> None:
        try:
            location = await locate_urs(self.domain, dns_server=self.dns_server)
            records = await fetch_sessions(self._http, base_url=location.base_url)
        except (ClientError, LocateError) as exc:
            self.counters["list-failed"] += 1
            log.warning("keeping the current announcements: %s", exc)
            return
        ads: list[Ad] = []
        for record in records:
            if INGESTED_ID.fullmatch(record.id):
                continue  # heard on SAP in the first place: legacy tools have it already
            origin = self._v4 if ipaddress.ip_address(record.group).version == 4 else self._v6
            if origin is None:
                self.counters["skipped-ipv6"] += 1
                continue
            groups: list[str | None] = [*self.sap_groups] or [None]
            for group in groups:
                ads.append(build_ad(record, origin=origin, sap_group=group, hops=self.hops))
        for ad in self.schedule.update(ads, now=now):
            self._send(ad, ad.delete_datagram)
            self.counters["deleted"] += 1

    def _send(self, ad: Ad, datagram: bytes) -> None:
        version = ipaddress.ip_address(ad.sap_group).version
        sock = self._sockets.get(version)
        if sock is None:
            self.counters["skipped-ipv6"] += 1
            return
        try:
            if version == 4:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ad.hops)
                sock.sendto(datagram, (ad.sap_group, self.port))
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ad.hops)
                sock.sendto(datagram, (ad.sap_group, self.port, 0, self._v6_index or 0))
        except OSError as exc:
            self.counters["send-failed"] += 1
            log.warning("cannot send the SAP announcement of %s to %s: %s", ad.uri,
                        ad.sap_group, exc.strerror)
            return
        self.counters["sent"] += 1
