"""Find a domain's URS through DNS: the `mcast.<domain>` address and the SRV record's port.

A real deployment serves every URS on the well-known HTTP port, so a bookmark
`mcast.ufl.edu/gators` is also a URL a browser opens. Simulated hierarchies run many
URS on one host, so `_mdns-urs._tcp.<domain>` names the port; without it, port 80.

A domain may run several URS replicas: then DNS names each (SRV records in priority
order, least loaded first, or several addresses), and `with_failover` tries them in that
order, moving on when one cannot be reached, so a dead replica costs no error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import aiohttp
import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from urs.errors import UrsError

WELL_KNOWN_URS_PORT = 80
SRV_PREFIX = "_mdns-urs._tcp"


class LocateError(UrsError):
    """The URS of a domain could not be found through DNS; the message says why."""


@dataclasses.dataclass(frozen=True)
class UrsEndpoint:
    """One URS replica: where it listens."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class UrsLocation:
    """Where a domain's URS listens: the first replica to try, and all of them in order."""

    domain: str
    host: str
    port: int
    port_from_srv: bool
    replicas: tuple[UrsEndpoint, ...] = ()  # in the order to try; empty: host:port only

    @property
    def base_url(self) -> str:
        return UrsEndpoint(self.host, self.port).base_url

    @property
    def endpoints(self) -> tuple[UrsEndpoint, ...]:
        return self.replicas or (UrsEndpoint(self.host, self.port),)


T = TypeVar("T")
# Connecting failed: nothing reached the replica, so trying the next one is always safe.
_UNREACHABLE: tuple[type[BaseException], ...] = (aiohttp.ClientConnectorError,
                                                aiohttp.ConnectionTimeoutError)
# The connection broke (a replica killed mid-request, a stale pooled connection): safe to
# retry elsewhere only when the request changes nothing.
_BROKEN: tuple[type[BaseException], ...] = (aiohttp.ServerDisconnectedError,
                                           aiohttp.ClientOSError)


async def with_failover(
    location: UrsLocation,
    call: Callable[[UrsEndpoint, aiohttp.ClientTimeout], Awaitable[T]],
    *, deadline: float, idempotent: bool = True,
) -> T:
    """`call(replica, timeout)` on each replica in turn until one is reached; its result.

    A replica that cannot be reached (refused, or no connection within its share of the
    time left) passes the turn to the next; so does one whose connection breaks, when the
    request is `idempotent`. Anything else, an HTTP error included, is the answer. The
    last replica's failure is raised. `deadline` is on the monotonic clock; `timeout`
    gives each attempt what is left, connecting within an even share of it.
    """
    endpoints = location.endpoints
    retryable = _UNREACHABLE + (_BROKEN if idempotent else ())
    for number, endpoint in enumerate(endpoints):
        left = max(0.05, deadline - time.monotonic())
        share = left / (len(endpoints) - number)
        timeout = aiohttp.ClientTimeout(total=left, sock_connect=share)
        try:
            return await call(endpoint, timeout)
        except retryable:
            if number == len(endpoints) - 1:
                raise
    raise AssertionError("unreachable: a location has at least one endpoint")


def parse_dns_server(text: str) -> tuple[str, int]:
    """Parse `HOST:PORT` (or `[V6]:PORT`, or a bare HOST meaning port 53)."""
    host, port_text = text, "53"
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise LocateError(f"--dns {text!r}: expected [IPV6]:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise LocateError(f"--dns {text!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise LocateError(f"--dns {text!r}: port must be 1-65535")
    return host, int(port_text)


def _resolver(
    dns_server: tuple[str, int] | None, cache: dns.resolver.Cache | None
) -> dns.asyncresolver.Resolver:
    if dns_server is None:
        try:
            resolver = dns.asyncresolver.Resolver()
        except dns.resolver.NoResolverConfiguration as exc:
            raise LocateError(
                "this host has no DNS resolver configured; give one with --dns HOST:PORT"
            ) from exc
    else:
        resolver = dns.asyncresolver.Resolver(configure=False)
        host, port = dns_server
        resolver.nameservers = [dns.nameserver.Do53Nameserver(host, port)]
    resolver.cache = cache
    return resolver


async def locate_urs(
    domain: str, *, dns_server: tuple[str, int] | None = None, timeout: float = 3.0,
    cache: dns.resolver.Cache | None = None,
) -> UrsLocation:
    """Resolve `mcast.<domain>` (A, else AAAA) and the URS port (SRV, else port 80).

    With `cache` (dnspython's, which keeps each answer for its TTL), a long-running
    client asks DNS again only when the answers expire, as a caching stub resolver does."""
    domain = domain.rstrip(".").lower()
    resolver = _resolver(dns_server, cache)
    # One deadline for the whole lookup, on the monotonic clock.
    deadline = time.monotonic() + timeout
    where = f"DNS server {dns_server[0]}:{dns_server[1]}" if dns_server else "the system resolver"
    name = f"mcast.{domain}"

    # The address and the SRV record are independent: ask for both at once.
    both = await asyncio.gather(
        _query(resolver, name, dns.rdatatype.A, deadline=deadline, where=where),
        _query(resolver, f"{SRV_PREFIX}.{domain}", dns.rdatatype.SRV, deadline=deadline,
               where=where),
        return_exceptions=True)
    for failure in both:  # the address's error first: it names what the user asked for
        if isinstance(failure, BaseException):
            raise failure
    address, srv = cast(tuple[dns.resolver.Answer | None, dns.resolver.Answer | None], both)
    if address is None:
        address = await _query(resolver, name, dns.rdatatype.AAAA, deadline=deadline,
                               where=where)
    if address is None:
        raise LocateError(f"{name} has no address record ({where})")
    hosts = [str(record.address) for record in address]

    if srv is None:
        replicas = tuple(UrsEndpoint(host, WELL_KNOWN_URS_PORT) for host in hosts)
    else:
        replicas = await _srv_endpoints(resolver, srv, mcast=name, hosts=hosts,
                                        deadline=deadline, where=where)
    first = replicas[0]
    return UrsLocation(domain=domain, host=first.host, port=first.port,
                       port_from_srv=srv is not None, replicas=replicas)


async def _srv_endpoints(
    resolver: dns.asyncresolver.Resolver, srv: dns.resolver.Answer, *, mcast: str,
    hosts: list[str], deadline: float, where: str,
) -> tuple[UrsEndpoint, ...]:
    """The SRV records' targets and ports, lowest priority (least loaded) first.

    A target's address comes from the answer's additional section, else from the
    `mcast.<domain>` lookup when it is that name, else from a lookup of its own."""
    records = sorted(srv, key=lambda record: (record.priority, -record.weight))
    glue: dict[str, list[str]] = {dns.name.from_text(mcast).to_text().lower(): hosts}
    for rrset in srv.response.additional:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            glue.setdefault(rrset.name.to_text().lower(), []).extend(
                str(r.address) for r in rrset)
    missing = sorted({r.target.to_text().lower() for r in records} - set(glue))
    found = await asyncio.gather(*(_query(resolver, target, dns.rdatatype.A,
                                          deadline=deadline, where=where)
                                   for target in missing), return_exceptions=True)
    for target, answer in zip(missing, found, strict=True):
        if isinstance(answer, dns.resolver.Answer):
            glue[target] = [str(r.address) for r in answer]
    endpoints = [UrsEndpoint(host, int(record.port)) for record in records
                 for host in glue.get(record.target.to_text().lower(), [])[:1]]
    if not endpoints:
        raise LocateError(f"no SRV target of {srv.qname} has an address ({where})")
    return tuple(dict.fromkeys(endpoints))


async def _query(
    resolver: dns.asyncresolver.Resolver,
    name: str,
    rdtype: dns.rdatatype.RdataType,
    *,
    deadline: float,
    where: str,
) -> dns.resolver.Answer | None:
    """One lookup within what is left of the deadline; None when the name has no such record."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise LocateError(f"looking up {name} took too long ({where})")
    try:
        return await resolver.resolve(name, rdtype, lifetime=remaining, search=False)
    except dns.resolver.NXDOMAIN:
        raise LocateError(f"no such domain: {name} does not exist ({where})") from None
    except dns.resolver.NoAnswer:
        return None
    except dns.resolver.LifetimeTimeout:
        raise LocateError(f"{where} did not answer for {name} in time") from None
    except dns.resolver.NoNameservers as exc:
        raise LocateError(f"{where} failed to resolve {name} ({_first_error(exc)})") from None
    except dns.exception.DNSException as exc:
        raise LocateError(f"looking up {name} via {where} failed: {exc}") from None


def _first_error(exc: dns.resolver.NoNameservers) -> str:
    errors = exc.kwargs.get("errors") or []
    if errors:
        return str(errors[0][3]) if len(errors[0]) > 3 else str(errors[0])
    return "SERVFAIL or REFUSED"
