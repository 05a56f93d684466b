"""`mdns dns` and `mdns urs`: serve one domain's DNS server or URS from its `.mds` file.

`mdns up` runs a whole hierarchy in one process; these run one part of one domain, each
in its own process, as a deployment (or the network-namespace testbed, deploy/testbed)
does: one host per domain, its DNS server on port 53 of the host's address, its URS and
its MSD daemons (`mdns msd`) beside it. Both stop cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

from client.errors import ClientError
from vdns.mds import DomainConfig

log = logging.getLogger(__name__)


def add_parsers(commands: Any) -> None:
    dns = commands.add_parser(
        "dns", help="serve one domain's DNS server from its .mds file",
        description="Serve the DNS zone of the domain a .mds file describes, on ADDR:SelfPort "
                    "(UDP and TCP): authoritative for the domain, forwarding to the child "
                    "servers of its '@' lines and to ParentDNS:ParentDNSPort (docs/vdns.md).")
    dns.add_argument("mds", type=Path, metavar="FILE", help="the domain's .mds file")
    dns.add_argument("--bind", default="127.0.0.1", metavar="ADDR",
                     help="the address to serve on, also the zone's ns.<domain> "
                          "(default 127.0.0.1)")

    urs = commands.add_parser(
        "urs", help="serve one domain's URS from its .mds file",
        description="Serve the URS of the domain a .mds file describes on URSIP:URSPort. It "
                    "finds its parent domain's URS through ParentDNS:ParentDNSPort, keeps its "
                    "sessions in DATA_DIR/urs.sqlite, and gives its MSD daemons their "
                    "bootstrap document (docs/urs.md).")
    urs.add_argument("mds", type=Path, metavar="FILE", help="the domain's .mds file")
    urs.add_argument("--data-dir", type=Path, required=True, metavar="DIR",
                     help="where the URS keeps its database")
    urs.add_argument("--msd-key-file", type=Path, metavar="FILE",
                     help="the domain's secret its MSD daemons present (without it, no "
                          "MSD can become designated)")
    urs.add_argument("--multicast-mode", choices=("asm", "ssm", "none"), default="asm",
                     help="what the URS tells the MSDs about multicast (default asm)")


def run(args: argparse.Namespace) -> int:
    from vdns.mds import load_mds  # light; the servers' imports wait for their command

    config = load_mds(args.mds)
    if args.command == "dns":
        asyncio.run(_serve_dns(config, host=args.bind))
    else:
        msd_key = None
        if args.msd_key_file is not None:
            try:
                msd_key = args.msd_key_file.read_text().strip()
            except OSError as exc:
                raise ClientError(f"cannot read {args.msd_key_file}: {exc.strerror}") from None
        args.data_dir.mkdir(parents=True, exist_ok=True)
        asyncio.run(_serve_urs(config, data_dir=args.data_dir, msd_key=msd_key,
                               multicast_mode=args.multicast_mode))
    return 0


async def _serve_dns(config: DomainConfig, *, host: str) -> None:
    from vdns.server import DnsServer

    stop = _stop_on_signals()
    server = DnsServer(config, host=host)
    await server.start()
    log.info("DNS of %s serving on %s:%d", config.domain, host, server.port)
    try:
        await stop.wait()
    finally:
        await server.close()


async def _serve_urs(
    config: DomainConfig, *, data_dir: Path, msd_key: str | None, multicast_mode: str
) -> None:
    from urs.app import bind_socket, serve
    from urs.settings import UrsSettings

    settings = UrsSettings.from_mds(config, data_dir=data_dir, multicast_mode=multicast_mode,
                                    msd_key=msd_key)
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        raise ClientError(f"the URS of {config.domain} cannot listen on "
                          f"{settings.host}:{settings.port}: {exc.strerror or exc}") from None
    await serve(settings, stop=_stop_on_signals(), sock=sock)


def _stop_on_signals() -> asyncio.Event:
    """An event that SIGINT or SIGTERM sets; the handlers do nothing else."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    return stop
