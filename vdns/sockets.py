"""Bind a DNS server's UDP and TCP sockets before serving, and move hierarchies to other ports."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
from collections.abc import Iterable, Mapping

from vdns.errors import VdnsError
from vdns.mds import DomainConfig

# Connections that arrive before the server's loop accepts them wait here instead of
# being refused: the harness binds a whole hierarchy first and serves it afterwards.
LISTEN_BACKLOG = 128
# With port 0 the kernel picks a UDP port whose TCP twin may be taken; a few tries suffice.
EPHEMERAL_ATTEMPTS = 8


def bind_dns_sockets(
    host: str, port: int, *, owner: str | None = None
) -> tuple[socket.socket, socket.socket]:
    """A bound UDP socket and a listening TCP socket on the same `host:port` (0: any free).

    `owner` names the user in error messages, e.g. "DNS of level0.testdomain.info".
    The caller owns both sockets (a DnsServer takes them over in `start`).
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        raise VdnsError(f"{host!r} is not an IP address; give the address to serve on") from None
    attempts = EPHEMERAL_ATTEMPTS if port == 0 else 1
    for _ in range(attempts):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            udp.bind((host, port))
            chosen: int = udp.getsockname()[1]
            tcp = socket.socket(family, socket.SOCK_STREAM)
            try:
                # Only for TCP: lets a restarted server reuse a port in TIME_WAIT. On UDP
                # it would let two servers share a port silently, so it is not set there.
                tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                tcp.bind((host, chosen))
                tcp.listen(LISTEN_BACKLOG)
            except BaseException:
                tcp.close()
                raise
        except OSError as exc:
            udp.close()
            if port == 0 and exc.errno == errno.EADDRINUSE:
                continue
            raise _bind_error(exc, host=host, port=port, owner=owner) from exc
        except BaseException:
            udp.close()
            raise
        udp.setblocking(False)
        tcp.setblocking(False)
        return udp, tcp
    raise VdnsError(
        f"{host}: no port was free for both UDP and TCP after {attempts} attempts; "
        "too many ports in use?"
    )


def remap_ports(
    configs: Iterable[DomainConfig], mapping: Mapping[int, int]
) -> list[DomainConfig]:
    """The configs with every port that is a key of `mapping` replaced by its value.

    Ports are matched by number alone, as `.mds` hierarchies run on one host. A
    ParentDNSPort of 0 marks the root and is never mapped.
    """

    def new(port: int) -> int:
        return mapping.get(port, port)

    return [
        dataclasses.replace(
            config,
            self_port=new(config.self_port),
            parent_dns_port=new(config.parent_dns_port) if config.parent_dns_port else 0,
            urs_port=new(config.urs_port),
            cm_port=new(config.cm_port),
            pm_port=new(config.pm_port),
            local_mcast_port=new(config.local_mcast_port),
            anycast_port=new(config.anycast_port),
            delegations=tuple(
                dataclasses.replace(d, port=new(d.port)) for d in config.delegations
            ),
        )
        for config in configs
    ]


def _bind_error(exc: OSError, *, host: str, port: int, owner: str | None) -> VdnsError:
    where = f"{host}:{port}" + (f" ({owner})" if owner else "")
    if exc.errno == errno.EADDRINUSE:
        return VdnsError(f"{where} is already in use; stop the other server or pick another port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return VdnsError(f"{where}: {host} is not an address of this machine")
    if exc.errno == errno.EACCES:
        return VdnsError(f"{where}: permission denied (ports below 1024 need privileges)")
    return VdnsError(f"{where}: cannot bind ({exc.strerror or exc})")
