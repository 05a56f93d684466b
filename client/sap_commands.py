"""`mdns sap listen` and `mdns sap announce`: the bridge between SAP (RFC 2974) and mDNS."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import ipaddress
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from client.config import home_domain
from client.errors import ClientError
from client.sap_announce import DEFAULT_LISTEN_GROUPS
from client.sap_bridge import SapAnnouncer, SapListener, TokenStore
from client.sap_ingest import Limits, SapTable
from msd.sap import PORT
from urs.locate import parse_dns_server

log = logging.getLogger(__name__)

LISTEN_HELP = f"""\
Hear SAP announcements (RFC 2974) and list the sessions they describe in your home
domain: each becomes a session registered with the domain's URS and indexed by its
MSD, so `mdns search` finds it. Keywords come from a=keywds, a=cat, and the words of
the name (s=) and information (i=), plus "sap". The id is derived from the o= line,
so re-announcements update one session instead of adding others; a session not heard
for 10 announcement intervals or an hour (the greater) expires. Deletions are obeyed
only from the announcement's own source and only when it was not authenticated.

Groups by default (port {PORT}; IPv6 ones are skipped if they cannot be joined):
  {', '.join(DEFAULT_LISTEN_GROUPS[:3])}
  {', '.join(DEFAULT_LISTEN_GROUPS[3:])}
See docs/sap.md."""

ANNOUNCE_HELP = f"""\
Announce the sessions registered in your home domain on SAP (RFC 2974), so legacy
tools (VLC, sdr, ffmpeg's sap://) see them. Each session goes to the SAP group of its
own scope (224.2.127.254 global, 239.255.255.255 local, 239.195.255.255
organisation, ff0X::2:7ffe for IPv6) on port {PORT}, every max(300 s, 8 * bytes /
4000 bit/s) times a random 2/3..4/3; --interval replaces the base interval for lab
use. Sessions heard on SAP by `mdns sap listen` are not announced again. See docs/sap.md."""


def add_parsers(commands: Any) -> None:
    sap = commands.add_parser("sap", help="bridge SAP announcements and the directory",
                              description="The SAP (RFC 2974) bridge: listen or announce.")
    actions = sap.add_subparsers(dest="sap_command", metavar="ACTION", required=True)

    listen = actions.add_parser("listen", help="ingest SAP announcements into your home domain",
                                description=LISTEN_HELP,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(listen)
    listen.add_argument("--scope", choices=("auto", "global", "local"), default="auto",
                        help="scope of the ingested sessions; auto keeps administratively "
                             "scoped groups (239/8, IPv6 below global) local (default auto)")
    listen.add_argument("--state", type=Path, metavar="FILE",
                        help="where the owner tokens of ingested sessions are kept, so a "
                             "restarted listener can update them (default: $MDNS_STATE_DIR "
                             "or ~/.local/state/mdns/sap-<home>-<hash>.json)")
    listen.add_argument("--max-sessions", type=int, default=Limits.max_sessions, metavar="N",
                        help=f"sessions tracked at once (default {Limits.max_sessions})")
    listen.add_argument("--new-per-second", type=float, default=Limits.new_per_s,
                        metavar="R", help="new sessions accepted per second on average, "
                        f"bursts of {Limits.new_burst} (default {Limits.new_per_s:g})")

    announce = actions.add_parser("announce", help="announce your home domain's sessions",
                                  description=ANNOUNCE_HELP,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(announce)
    announce.add_argument("--interval", type=float, metavar="SECONDS",
                          help="base interval between announcements instead of RFC 2974's "
                               "(lab use; at least 0.1)")
    announce.add_argument("--ttl", type=int, metavar="HOPS",
                          help="multicast TTL / hop limit of the announcements (default: the "
                               "session's, 127 global, 15 local)")
    announce.add_argument("--refresh", type=float, default=30.0, metavar="SECONDS",
                          help="how often the URS is asked for the sessions (default 30)")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", help="your home domain (default: $MDNS_HOME, then the "
                        "config file, then the DNS search domain)")
    parser.add_argument("--dns", metavar="HOST:PORT", help="DNS server to find the domain")
    parser.add_argument("--interface", default="127.0.0.1", metavar="ADDR",
                        help="IPv4 address of the interface SAP is heard and sent on; the "
                             "default 127.0.0.1 keeps SAP on this host: give your LAN "
                             "address to reach other hosts")
    parser.add_argument("--groups", metavar="G[,G...]",
                        help="SAP groups instead of the standard ones (tests, labs)")
    parser.add_argument("--port", type=int, default=PORT,
                        help=f"SAP port (default {PORT})")


def run(args: argparse.Namespace, *, out: TextIO) -> int:
    groups = _groups(args.groups)
    try:
        ipaddress.IPv4Address(args.interface)
    except ValueError:
        raise ClientError(f"--interface {args.interface!r} is not an IPv4 address") from None
    if not 1 <= args.port <= 65535:
        raise ClientError("--port must be 1-65535")
    if args.sap_command == "listen":
        return asyncio.run(_listen(args, groups=groups or list(DEFAULT_LISTEN_GROUPS), out=out))
    if args.interval is not None and args.interval < 0.1:
        raise ClientError("--interval must be at least 0.1 s")
    if args.ttl is not None and not 1 <= args.ttl <= 255:
        raise ClientError("--ttl must be 1-255")
    if args.refresh < 0.1:
        raise ClientError("--refresh must be at least 0.1 s")
    return asyncio.run(_announce(args, groups=groups, out=out))


async def _listen(args: argparse.Namespace, *, groups: list[str], out: TextIO) -> int:
    home = home_domain(args.home)
    dns_server = parse_dns_server(args.dns) if args.dns else None
    if args.max_sessions < 1 or args.new_per_second <= 0:
        raise ClientError("--max-sessions and --new-per-second must be positive")
    limits = Limits(max_sessions=args.max_sessions, new_per_s=args.new_per_second)
    table = SapTable(limits=limits, scope=args.scope)
    tokens = TokenStore(args.state or _state_file(home, args.dns))
    stop = _stop_on_signals()

    def ready(joined: list[str]) -> None:
        print(f"listening for SAP on {', '.join(joined)} port {args.port} "
              f"(interface {args.interface}); sessions go to {home}", file=out, flush=True)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        listener = SapListener(home=home, dns_server=dns_server, interface=args.interface,
                               groups=groups, port=args.port, table=table, tokens=tokens,
                               http=http)
        await listener.run(stop=stop, ready=ready)
    counts = {**listener.counters, **table.counters}
    print("stopped; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
          file=sys.stderr)
    return 0


async def _announce(args: argparse.Namespace, *, groups: list[str], out: TextIO) -> int:
    home = home_domain(args.home)
    dns_server = parse_dns_server(args.dns) if args.dns else None
    stop = _stop_on_signals()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        announcer = SapAnnouncer(domain=home, dns_server=dns_server, interface=args.interface,
                                 port=args.port, http=http, sap_groups=groups,
                                 interval_s=args.interval, hops=args.ttl,
                                 refresh_s=args.refresh)
        where = ", ".join(groups) if groups else "the SAP group of each session's scope"
        print(f"announcing the sessions of {home} on {where} port {args.port} "
              f"(interface {args.interface})", file=out, flush=True)
        await announcer.run(stop=stop)
    print("stopped; " + ", ".join(f"{k} {v}" for k, v in sorted(announcer.counters.items())),
          file=sys.stderr)
    return 0


def _groups(text: str | None) -> list[str]:
    if not text:
        return []
    groups = []
    for part in text.split(","):
        try:
            address = ipaddress.ip_address(part.strip())
        except ValueError:
            raise ClientError(f"--groups: {part.strip()!r} is not an IP address") from None
        if not address.is_multicast:
            raise ClientError(f"--groups: {address} is not a multicast group")
        groups.append(str(address))
    return groups


def _state_file(home: str, dns: str | None) -> Path:
    base = os.environ.get("MDNS_STATE_DIR") or str(Path.home() / ".local" / "state" / "mdns")
    tag = hashlib.sha256(f"{home} {dns}".encode()).hexdigest()[:8]
    return Path(base) / f"sap-{home}-{tag}.json"


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop
