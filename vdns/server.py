"""The asyncio shell of a vdns DNS server: UDP and TCP in, the zone decides, forwards go out."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

import dns._asyncbackend
import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.inet
import dns.message
import dns.rcode

from vdns.errors import VdnsError
from vdns.health import CHECK_INTERVAL_S, ReplicaMonitor
from vdns.mds import DomainConfig
from vdns.replicas import Replica, ReplicaSet
from vdns.sockets import bind_dns_sockets
from vdns.zone import (
    DEFAULT_MAX_FORWARDS,
    MAX_QUERY_BYTES,
    TCP_LIMIT,
    Answer,
    Drop,
    Forward,
    MalformedQueryError,
    Zone,
    encode_response,
    parse_query,
    udp_size_limit,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_TCP_CLIENTS = 64


class ServerState(enum.Enum):
    NEW = "new"
    SERVING = "serving"
    CLOSED = "closed"


@dataclasses.dataclass
class ServerStats:
    """Counters since start; a forwarded query counts as forwarded, then as answered."""

    queries: int = 0  # messages received, over UDP or TCP, well-formed or not
    answered: int = 0  # responses sent (any rcode, including relayed ones)
    forwarded: int = 0  # forwards started to a child's or the parent's server
    forward_failures: int = 0  # forwards that timed out, were refused, or got garbage
    servfail: int = 0  # SERVFAIL responses: failed forwards, the forward limit, bugs
    truncated: int = 0  # UDP responses cut to fit and sent with TC
    dropped_malformed: int = 0  # not a DNS message, or oversized: no response
    dropped_other: int = 0  # responses sent to us, full send buffers, replies after close
    tcp_rejected: int = 0  # TCP connections refused past the client limit
    handler_errors: int = 0  # bugs caught in the handler, answered SERVFAIL


class DnsServer:
    """The DNS server of one domain: authoritative for it, forwarding along the hierarchy."""

    def __init__(
        self,
        config: DomainConfig,
        *,
        host: str = "127.0.0.1",
        forward_timeout: float = 2.0,
        ns_address: str | None = None,
        max_forwards: int = DEFAULT_MAX_FORWARDS,
        max_tcp_clients: int = DEFAULT_MAX_TCP_CLIENTS,
        tcp_idle_timeout: float = 10.0,
        urs_replicas: Sequence[Replica] = (),
        health_interval_s: float = CHECK_INTERVAL_S,
    ) -> None:
        self.config = config
        self.host = host
        self.stats = ServerStats()
        self.state = ServerState.NEW
        # With replicas, mcast.<domain> and its SRV name the healthy ones, least loaded first;
        # without, the .mds file's one URS, as always.
        self.replicas = ReplicaSet(urs_replicas) if urs_replicas else None
        self._monitor = (ReplicaMonitor(self.replicas, domain=config.domain,
                                        interval_s=health_interval_s,
                                        timeout_s=min(0.8, health_interval_s))
                         if self.replicas is not None else None)
        self._zone = Zone(config, ns_address=ns_address or host, max_forwards=max_forwards,
                          replicas=self.replicas)
        self._forward_timeout = forward_timeout
        self._max_tcp_clients = max_tcp_clients
        self._tcp_idle_timeout = tcp_idle_timeout
        self._backend = dns.asyncbackend.get_backend("asyncio")
        # dnspython leaves make_socket unannotated; this is its documented signature
        # (DatagramSocket lives in dns._asyncbackend; dns.asyncbackend re-exports it).
        self._make_socket = cast(
            Callable[..., Awaitable[dns._asyncbackend.DatagramSocket]], self._backend.make_socket
        )
        self._udp: asyncio.DatagramTransport | None = None
        self._udp_lost: asyncio.Future[None] | None = None
        self._udp_paused = False
        self._tcp: asyncio.Server | None = None
        self._port: int | None = None
        self._in_flight = 0
        # Every task this server runs, so close() can cancel and await each one.
        self._forward_tasks: set[asyncio.Task[None]] = set()
        self._tcp_clients: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._port}" if self._port is not None else "unbound"
        return (
            f"<DnsServer {self.config.domain} {where} {self.state.value} "
            f"forwards={self._in_flight} tcp_clients={len(self._tcp_clients)}>"
        )

    @property
    def port(self) -> int:
        """The port the server listens on (UDP and TCP); known once started."""
        if self._port is None:
            raise VdnsError(f"DNS of {self.config.domain} has not been started")
        return self._port

    @property
    def forwards_in_flight(self) -> int:
        """Forwards started and not yet answered (bounded by max_forwards)."""
        return self._in_flight

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(
        self, *, udp_sock: socket.socket | None = None, tcp_sock: socket.socket | None = None
    ) -> None:
        """Serve on the given bound sockets (taken over), else bind host:SelfPort."""
        if self.state is not ServerState.NEW:
            raise VdnsError(f"DNS of {self.config.domain} is {self.state.value}; start it once")
        if (udp_sock is None) != (tcp_sock is None):
            raise VdnsError("give both udp_sock and tcp_sock (bound to one port), or neither")
        if udp_sock is None or tcp_sock is None:
            udp_sock, tcp_sock = bind_dns_sockets(
                self.host, self.config.self_port, owner=f"DNS of {self.config.domain}"
            )
        loop = asyncio.get_running_loop()
        self.state = ServerState.SERVING
        try:
            self._port = udp_sock.getsockname()[1]
            self._udp_lost = loop.create_future()
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp_sock
            )
            self._tcp = await asyncio.start_server(
                self._serve_tcp_client, sock=tcp_sock, limit=MAX_QUERY_BYTES + 2
            )
        except BaseException:
            await self.close()
            udp_sock.close()  # no-op for a socket a transport already closed
            tcp_sock.close()
            raise
        if self._monitor is not None:
            self._monitor.start()
        log.info("DNS of %s serving on %s:%d (UDP, TCP)", self.config.domain, self.host, self.port)

    async def close(self) -> None:
        """Stop serving, cancel forwards and TCP clients, and release every socket."""
        if self.state is ServerState.CLOSED:
            await self._closed.wait()
            return
        self.state = ServerState.CLOSED
        try:
            # The synchronous part first, so a cancelled close() still releases the ports.
            if self._tcp is not None:
                self._tcp.close()
            if self._udp is not None:
                self._udp.close()
            if self._monitor is not None:
                await self._monitor.close()
            tasks = self._forward_tasks | self._tcp_clients
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
            if self._udp is not None and self._udp_lost is not None:
                await self._udp_lost
            if self._tcp is not None:
                await self._tcp.wait_closed()
            # Transports closed by cancelled forwards finish closing on the next loop turn.
            await asyncio.sleep(0)
        finally:
            self._closed.set()
        log.info("DNS of %s closed; %s", self.config.domain, self.stats)

    # -- one message ----------------------------------------------------------------

    def _receive(
        self, wire: bytes, peer: object
    ) -> tuple[dns.message.Message, Answer | Forward] | None:
        """Parse and decide; None when the message is dropped (already counted)."""
        self.stats.queries += 1
        try:
            query = parse_query(wire)
        except MalformedQueryError as exc:
            self.stats.dropped_malformed += 1
            log.debug("%s: dropped %d bytes from %s: %s", self.config.domain, len(wire), peer, exc)
            return None
        try:
            decision = self._zone.decide(query, forwards_in_flight=self._in_flight)
        except Exception:
            # A bug must cost one SERVFAIL, never the server.
            self.stats.handler_errors += 1
            log.exception("%s: handler failed on a query from %s", self.config.domain, peer)
            decision = Answer(self._zone.servfail(query))
        if isinstance(decision, Drop):
            self.stats.dropped_other += 1
            log.debug("%s: dropped message from %s: %s", self.config.domain, peer, decision.reason)
            return None
        if log.isEnabledFor(logging.DEBUG):
            question = query.question[0] if query.question else "-"
            outcome = (
                f"forward to {decision.route.value} {decision.zone} {decision.ip}:{decision.port}"
                if isinstance(decision, Forward)
                else dns.rcode.to_text(decision.message.rcode())
            )
            log.debug("%s: %s from %s -> %s", self.config.domain, question, peer, outcome)
        if isinstance(decision, Forward):
            # Counted now, not when the task runs: a burst of datagrams is handled in one
            # loop turn, and each must see the ones before it against the limit.
            self._in_flight += 1
            self.stats.forwarded += 1
        return query, decision

    async def _forward(self, query: dns.message.Message, forward: Forward) -> dns.message.Message:
        """The relayed upstream answer, or SERVFAIL once the one deadline has passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._forward_timeout
        try:
            async with asyncio.timeout_at(deadline):
                upstream = await self._ask_upstream(forward, deadline=deadline)
            return self._zone.relay(query, upstream)
        except (TimeoutError, dns.exception.DNSException, OSError, EOFError) as exc:
            self.stats.forward_failures += 1
            log.debug(
                "%s: forward to %s %s:%d failed: %r",
                self.config.domain, forward.zone, forward.ip, forward.port, exc,
            )
            return self._zone.servfail(query)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s: forward to %s failed", self.config.domain, forward.zone)
            return self._zone.servfail(query)
        finally:
            self._in_flight -= 1

    async def _ask_upstream(self, forward: Forward, *, deadline: float) -> dns.message.Message:
        loop = asyncio.get_running_loop()
        try:
            # A connected socket hears the ICMP "port unreachable" of a server that is down,
            # so that case fails at once instead of waiting out the deadline.
            udp = await self._make_socket(
                dns.inet.af_for_address(forward.ip),
                socket.SOCK_DGRAM,
                destination=(forward.ip, forward.port),
            )
            async with udp:
                return await dns.asyncquery.udp(
                    forward.query,
                    forward.ip,
                    timeout=max(deadline - loop.time(), 0.0),
                    port=forward.port,
                    ignore_unexpected=True,
                    raise_on_truncation=True,
                    ignore_errors=True,
                    sock=udp,
                )
        except dns.message.Truncated:
            # Same deadline: the TCP retry only gets what the UDP attempt left over.
            return await dns.asyncquery.tcp(
                forward.query,
                forward.ip,
                timeout=max(deadline - loop.time(), 0.0),
                port=forward.port,
                backend=self._backend,
            )

    def _encode(
        self, query: dns.message.Message, response: dns.message.Message, *, limit: int
    ) -> bytes:
        try:
            wire = encode_response(response, limit=limit)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s: cannot encode a response", self.config.domain)
            response = self._zone.servfail(query)
            wire = encode_response(response, limit=limit)
        if response.rcode() == dns.rcode.SERVFAIL:
            self.stats.servfail += 1
        if len(wire) >= 3 and wire[2] & 0x02:  # TC is bit 1 of the third header byte
            self.stats.truncated += 1
        return wire

    # -- UDP ------------------------------------------------------------------------

    def _on_datagram(self, wire: bytes, addr: tuple[str, int]) -> None:
        received = self._receive(wire, addr)
        if received is None:
            return
        query, decision = received
        if isinstance(decision, Answer):
            self._send_udp(query, decision.message, addr)
            return
        task = asyncio.get_running_loop().create_task(self._forward_udp(query, decision, addr))
        self._forward_tasks.add(task)
        task.add_done_callback(self._forward_tasks.discard)

    async def _forward_udp(
        self, query: dns.message.Message, forward: Forward, addr: tuple[str, int]
    ) -> None:
        response = await self._forward(query, forward)
        try:
            self._send_udp(query, response, addr)
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s: cannot send a forwarded answer", self.config.domain)

    def _send_udp(
        self, query: dns.message.Message, response: dns.message.Message, addr: tuple[str, int]
    ) -> None:
        transport = self._udp
        # Paused: the kernel refused more and asyncio's buffer passed its high-water mark;
        # a reply dropped now is one the client retries, memory is not.
        if transport is None or transport.is_closing() or self._udp_paused:
            self.stats.dropped_other += 1
            return
        transport.sendto(self._encode(query, response, limit=udp_size_limit(query)), addr)
        self.stats.answered += 1

    # -- TCP ------------------------------------------------------------------------

    async def _serve_tcp_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        if (
            task is None
            or self.state is not ServerState.SERVING
            or len(self._tcp_clients) >= self._max_tcp_clients
        ):
            self.stats.tcp_rejected += 1
            writer.close()
            return
        self._tcp_clients.add(task)
        try:
            while await self._serve_tcp_message(reader, writer, peer):
                pass
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # idle, half a message, or the client went away: just hang up
        except Exception:
            self.stats.handler_errors += 1
            log.exception("%s: TCP client %s failed", self.config.domain, peer)
        finally:
            self._tcp_clients.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_tcp_message(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: object
    ) -> bool:
        """Answer one length-prefixed query; False when the connection should end."""
        async with asyncio.timeout(self._tcp_idle_timeout):
            try:
                prefix = await reader.readexactly(2)
            except asyncio.IncompleteReadError:
                return False  # a clean close between messages
            size = int.from_bytes(prefix, "big")
            if size > MAX_QUERY_BYTES:
                # Not worth reading; a stream that framed a lie cannot be trusted further.
                self.stats.queries += 1
                self.stats.dropped_malformed += 1
                return False
            wire = await reader.readexactly(size)
        received = self._receive(wire, peer)
        if received is None:
            return False
        query, decision = received
        if isinstance(decision, Answer):
            response = decision.message
        else:
            response = await self._forward(query, decision)
        payload = self._encode(query, response, limit=TCP_LIMIT)
        writer.write(len(payload).to_bytes(2, "big") + payload)
        async with asyncio.timeout(self._tcp_idle_timeout):
            await writer.drain()
        self.stats.answered += 1
        return True


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self._server._on_datagram(data, addr)
        except Exception:
            # Belt and braces: a bug past the handler's own guard still must not stop UDP.
            self._server.stats.handler_errors += 1
            log.exception("%s: datagram handling failed", self._server.config.domain)

    def pause_writing(self) -> None:
        self._server._udp_paused = True

    def resume_writing(self) -> None:
        self._server._udp_paused = False

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for replies to clients that went away; nothing to do.
        log.debug("%s: UDP error %r", self._server.config.domain, exc)

    def connection_lost(self, exc: Exception | None) -> None:
        lost = self._server._udp_lost
        if lost is not None and not lost.done():
            lost.set_result(None)
